"""Machine views of the core's values: the JSON that ``stoic ... --json`` prints
and the HTTP API returns. One definition for both, so the two always agree.

Two views of a failure exist on purpose: :class:`FailureSummary` for open
endpoints (error class and a cause code; no message, traceback or stream id,
which may carry customer data or secrets) and :class:`FailureDetail` for
authenticated admins.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from stoic.health import ProjectionHealth
from stoic.operations import Checkpoint, RewindRequest, SystemStatus
from stoic.reconcile import ReconcileReport
from stoic.store import AuditEntry, FailureRecord, WorkerInfo


class CauseView(BaseModel):
    code: str = Field(description="Stable machine code, e.g. breaker_open, dead_failures, lagging.")
    status: str
    message: str


class ProjectionHealthView(BaseModel):
    name: str
    status: str = Field(description="healthy, degraded, stalled, critical, offline, paused or rebuilding.")
    causes: list[CauseView]
    position: int
    head: int
    lag_events: int
    lag_seconds: float
    events_processed: int
    throughput: float | None = Field(description="Events/s over the last sampling interval.")
    eta_seconds: float | None = Field(
        description="Seconds to catch up at the current throughput (a rebuild's ETA); None when unknown.")
    drifted_streams: int = Field(description="Streams the last continuous reconciliation found drifted.")
    failures: dict[str, int]
    parked_streams: int
    parked_events: int
    holder: str | None
    holder_alive: bool
    holder_heartbeat_at: datetime | None
    breaker: str
    updated_at: datetime | None

    @classmethod
    def of(cls, h: ProjectionHealth) -> ProjectionHealthView:
        return cls(
            name=h.name, status=h.status.value,
            causes=[CauseView(code=c.code, status=c.status.value, message=c.message) for c in h.causes],
            position=h.position, head=h.head, lag_events=h.lag_events, lag_seconds=round(h.lag_seconds, 3),
            events_processed=h.events_processed,
            throughput=None if h.throughput is None else round(h.throughput, 1), drifted_streams=h.drifted_streams,
            eta_seconds=round(h.lag_events / h.throughput, 1) if h.lag_events and h.throughput else None,
            failures=dict(h.failures), parked_streams=h.parked_streams, parked_events=h.parked_events,
            holder=h.holder, holder_alive=h.holder_alive, holder_heartbeat_at=h.holder_heartbeat_at,
            breaker=h.breaker_state, updated_at=h.last_processed_at,
        )


class CheckpointView(BaseModel):
    projection: str
    position: int
    head: int
    lag_events: int
    events_processed: int
    updated_at: datetime | None
    holder: str | None
    holder_alive: bool
    epoch: int
    pending_request: str | None = Field(description="A reset or replay waiting for the holder.")
    pending_request_position: int | None

    @classmethod
    def of(cls, c: Checkpoint) -> CheckpointView:
        return cls(projection=c.projection, position=c.position, head=c.head,
                   lag_events=max(0, c.head - c.position), events_processed=c.events_processed,
                   updated_at=c.updated_at, holder=c.holder, holder_alive=c.holder_alive, epoch=c.epoch,
                   pending_request=c.request, pending_request_position=c.request_position)


def cause_code(error_class: str) -> str:
    """A coarse, data-free code for why an event failed."""
    if error_class.endswith(("Timeout", "TimeoutError", "QueryCanceled")):
        return "timeout"
    if error_class.endswith(("Transient", "Unavailable", "ConnectionError", "OperationalError")):
        return "dependency_unavailable"
    return "handler_error"


class FailureSummary(BaseModel):
    """A failure without anything that may hold customer data (open endpoints)."""

    id: int
    projection: str
    position: int
    event_type: str
    policy: str
    status: str
    error_class: str
    cause: str = Field(description="timeout, dependency_unavailable or handler_error.")
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    next_retry_at: datetime | None
    blocking: bool
    parked: int
    retry_requested: bool = Field(description="An operator asked for a retry that has not run yet.")

    @classmethod
    def of(cls, f: FailureRecord) -> FailureSummary:
        return cls(**_summary_fields(f))


class FailureDetail(FailureSummary):
    """Everything about a failure (authenticated admins only)."""

    event_id: str
    stream_id: str
    message: str
    traceback: str
    resolution: str | None
    actor: str | None
    note: str | None
    updated_at: datetime

    @classmethod
    def of(cls, f: FailureRecord) -> FailureDetail:
        return cls(**_summary_fields(f), event_id=f.event_id, stream_id=f.stream_id, message=f.message,
                   traceback=f.traceback, resolution=f.resolution.value if f.resolution else None,
                   actor=f.actor, note=f.note, updated_at=f.updated_at)


def _summary_fields(f: FailureRecord) -> dict[str, object]:
    return dict(id=f.id, projection=f.projection, position=f.position, event_type=f.event_type,
                policy=f.policy, status=f.status.value, error_class=f.error_class, cause=cause_code(f.error_class),
                attempts=f.attempts, first_failed_at=f.first_failed_at, last_failed_at=f.last_failed_at,
                next_retry_at=f.next_retry_at, blocking=f.blocking, parked=f.parked, retry_requested=f.retry_requested)


class WorkerView(BaseModel):
    worker_id: str
    hostname: str
    pid: int
    alive: bool
    started_at: datetime
    heartbeat_at: datetime
    expires_at: datetime

    @classmethod
    def of(cls, w: WorkerInfo) -> WorkerView:
        return cls(worker_id=w.worker_id, hostname=w.hostname, pid=w.pid, alive=w.alive,
                   started_at=w.started_at, heartbeat_at=w.heartbeat_at, expires_at=w.expires_at)


class SystemStatusView(BaseModel):
    head: int
    at: datetime
    projections: list[ProjectionHealthView]
    failures: dict[str, int] = Field(description="Failures by status, all projections together.")
    workers: list[WorkerView]

    @classmethod
    def of(cls, s: SystemStatus) -> SystemStatusView:
        return cls(head=s.head, at=s.at, projections=[ProjectionHealthView.of(h) for h in s.projections],
                   failures=dict(s.failures), workers=[WorkerView.of(w) for w in s.workers])


class AuditView(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    reason: str | None
    outcome: str
    details: dict[str, object] | None

    @classmethod
    def of(cls, a: AuditEntry) -> AuditView:
        return cls(id=a.id, at=a.at, actor=a.actor, action=a.action, target=a.target, reason=a.reason,
                   outcome=a.outcome, details=a.details)


class RewindView(BaseModel):
    projection: str
    action: str
    position: int = Field(description="Where the checkpoint goes back to.")
    request: int = Field(description="The request's sequence number.")
    head: int
    events_to_process: int
    streams: list[str] = Field(default_factory=list, description="The streams a repair rebuilds.")

    @classmethod
    def of(cls, r: RewindRequest) -> RewindView:
        return cls(projection=r.projection, action=r.action, position=r.position, request=r.seq, head=r.head,
                   events_to_process=0 if r.action == "repair" else max(0, r.head - r.position),
                   streams=list(r.streams))


class MismatchView(BaseModel):
    stream_id: str
    field: str = Field(description="The differing field, or <row> when one side has no state.")
    expected: object
    actual: object


class CheckView(BaseModel):
    name: str
    ok: bool
    detail: str


class ReconcileView(BaseModel):
    projection: str
    ok: bool
    position: int = Field(description="The checkpoint the comparison saw.")
    checked: int
    matched: int
    mismatched_streams: list[str]
    mismatches: list[MismatchView] = Field(description="Up to 1,000 differing fields.")
    parked: list[str] = Field(description="Streams compared only up to their open failure.")
    checks: list[CheckView]
    duration_seconds: float
    repair_requested: bool

    @classmethod
    def of(cls, r: ReconcileReport) -> ReconcileView:
        return cls(projection=r.projection, ok=r.ok, position=r.position, checked=r.checked, matched=r.matched,
                   mismatched_streams=list(r.mismatched_streams),
                   mismatches=[MismatchView(stream_id=m.stream_id, field=m.field, expected=_plain(m.expected),
                                            actual=_plain(m.actual)) for m in r.mismatches],
                   parked=list(r.parked), checks=[CheckView(name=c.name, ok=c.ok, detail=c.detail) for c in r.checks],
                   duration_seconds=round(r.duration, 3), repair_requested=r.repair_requested)


def _plain(value: object) -> object:
    """JSON-safe: numbers, text, booleans, None, lists and dicts of them; anything else as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)
