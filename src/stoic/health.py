"""Truthful health per projection: a status, and for every non-healthy status
the causes — a stable code and a sentence that says why.

The rules (docs/failures.md lists them for operators):

=========  ==================================================================
paused     an operator paused the projection
offline    nobody holds the lease, or the holder's heartbeat expired
critical   the circuit breaker is open; a failure is dead; a halted
           projection stopped at a failing event; the late-arrival self-check
           found events below the checkpoint that were never applied
stalled    behind, held by a live worker, and neither the checkpoint nor the
           oldest unprocessed event has moved for ``stalled_after`` seconds
degraded   open (retrying) failures or parked streams; lag over a threshold in
           events or seconds; the breaker is half-open (probing)
healthy    none of the above
=========  ==================================================================

Lag in seconds is the age of the oldest committed event the projection has not
processed — not "now minus last processed", which reads green while stuck.
Pure functions: no database here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from stoic.store import FailureCount, FailureStatus, ProjectionDetails

BUILD_SUFFIX = "@build"  #: the checkpoint row of a projection's next generation (see stoic.projection)


class Status(str, Enum):
    """A projection's health, from best to most urgent."""

    HEALTHY = "healthy"  #: processing, no open failures, lag under the thresholds
    DEGRADED = "degraded"  #: working, but with open failures, parked streams or high lag
    STALLED = "stalled"  #: held and behind, but not advancing
    CRITICAL = "critical"  #: needs a person: breaker open, dead failure, halted, late arrival
    OFFLINE = "offline"  #: no live worker holds it
    PAUSED = "paused"  #: an operator paused it
    REBUILDING = "rebuilding"  #: a new version is being built (reserved for rebuilds)


_RANK = {Status.HEALTHY: 0, Status.REBUILDING: 1, Status.DEGRADED: 2, Status.STALLED: 3, Status.CRITICAL: 4,
         Status.OFFLINE: 5, Status.PAUSED: 6}


@dataclass(frozen=True, slots=True)
class Cause:
    """Why a projection is not healthy: a stable code for machines, a sentence for people."""

    code: str
    status: Status
    message: str


@dataclass(frozen=True)
class Thresholds:
    """When lag counts as degraded and lack of progress as stalled."""

    lag_events: int = 10_000
    lag_seconds: float = 60.0
    stalled_after: float = 60.0


@dataclass(frozen=True)
class ProjectionHealth:
    """One projection's health and the figures behind it."""

    name: str
    status: Status
    causes: tuple[Cause, ...]
    position: int
    head: int
    lag_events: int
    lag_seconds: float
    events_processed: int
    failures: dict[str, int] = field(default_factory=dict)
    parked_streams: int = 0
    parked_events: int = 0
    last_processed_at: datetime | None = None
    holder: str | None = None
    holder_alive: bool = False
    holder_heartbeat_at: datetime | None = None
    breaker_state: str = "closed"
    throughput: float | None = None  # events/s over the last sampling interval
    drifted_streams: int = 0  # streams the last continuous reconciliation found drifted

    @property
    def healthy(self) -> bool:
        return self.status is Status.HEALTHY


def _ago(now: datetime, then: datetime | None) -> float:
    return 0.0 if then is None else max(0.0, (now - then).total_seconds())


def assess(
    details: ProjectionDetails,
    head: int,
    oldest_unprocessed_at: datetime | None,
    counts: Iterable[FailureCount],
    now: datetime,
    thresholds: Thresholds = Thresholds(),
    halted_at: int | None = None,
    throughput: float | None = None,
    build: ProjectionDetails | None = None,
) -> ProjectionHealth:
    """Returns the health of one projection from what the store knows about it
    (``build``: the row of its next generation, while one is being built)."""
    mine = [c for c in counts if c.projection == details.name]
    by_status = {c.status.value: c.count for c in mine}
    parked_streams = sum(c.blocking for c in mine if c.status in (FailureStatus.RETRYING, FailureStatus.DEAD))
    parked_events = sum(c.parked for c in mine)
    lag_events = max(0, head - details.position)
    lag_seconds = _ago(now, oldest_unprocessed_at) if lag_events else 0.0
    causes: list[Cause] = []

    if details.paused_at is not None:
        why = f": {details.paused_reason}" if details.paused_reason else ""
        causes.append(Cause("paused", Status.PAUSED,
                            f"paused by {details.paused_by or 'an operator'} since "
                            f"{details.paused_at.isoformat(timespec='seconds')}{why}"))
    building = details.name.endswith(BUILD_SUFFIX)
    if building:
        share = f" ({100 * details.position // head}%)" if head else ""
        causes.append(Cause("rebuilding", Status.REBUILDING,
                            f"building generation {details.generation} (version {details.version}): "
                            f"{details.position} of {head} events{share}"))
        if details.build_note:
            causes.append(Cause("switch_refused", Status.CRITICAL,
                                f"the new generation failed verification: {details.build_note}"))
    if details.holder is None and build is not None:
        causes.append(Cause("serving_previous", Status.REBUILDING,
                            f"reads are served by generation {details.generation} while generation "
                            f"{build.generation} (version {build.version}) builds"))
    elif details.holder is None:
        causes.append(Cause("no_holder", Status.OFFLINE, "no worker holds the lease"))
    elif not details.holder_alive:
        seen = details.holder_heartbeat_at
        when = f"since {seen.isoformat(timespec='seconds')}" if seen else "(worker gone)"
        causes.append(Cause("holder_heartbeat_stale", Status.OFFLINE,
                            f"holder {details.holder} has not sent a heartbeat {when}"))
    if details.breaker_state == "open":
        since = details.breaker_opened_at.isoformat(timespec="seconds") if details.breaker_opened_at else "?"
        causes.append(Cause("breaker_open", Status.CRITICAL,
                            f"circuit breaker open since {since} after {details.breaker_failures} "
                            f"transient errors in a row ({details.breaker_reason or 'no detail'})"))
    elif details.breaker_state == "half_open":
        causes.append(Cause("breaker_half_open", Status.DEGRADED,
                            "circuit breaker half-open: probing the dependency with one batch"))
    dead = by_status.get(FailureStatus.DEAD.value, 0)
    if dead:
        causes.append(Cause("dead_failures", Status.CRITICAL,
                            f"{dead} failure{'s' if dead != 1 else ''} dead after all retries: "
                            "retry, skip or resolve them"))
    if halted_at is not None:
        causes.append(Cause("halted", Status.CRITICAL,
                            f"halted at position {halted_at} by a failing event (on_error=halt)"))
    if details.drift_count:
        when = details.drift_checked_at.isoformat(timespec="seconds") if details.drift_checked_at else "?"
        causes.append(Cause("drift", Status.CRITICAL,
                            f"{details.drift_count} of {details.drift_checked} sampled streams drifted from "
                            f"their events (checked {when}): reconcile and repair them"))
    if details.verified_missing:
        causes.append(Cause("late_arrival", Status.CRITICAL,
                            f"self-check found {details.verified_missing} events at or below the checkpoint "
                            "that were never processed"))
    progress_age = _ago(now, details.updated_at or details.held_since)
    if (lag_events and details.holder_alive and halted_at is None and details.breaker_state == "closed"
            and details.paused_at is None and lag_seconds > thresholds.stalled_after
            and progress_age > thresholds.stalled_after):
        causes.append(Cause("stalled", Status.STALLED,
                            f"{lag_events} events behind and no progress for {progress_age:.0f} s"))
    retrying = by_status.get(FailureStatus.RETRYING.value, 0)
    if retrying:
        causes.append(Cause("retrying_failures", Status.DEGRADED,
                            f"{retrying} failure{'s' if retrying != 1 else ''} waiting for a retry"))
    if parked_streams:
        causes.append(Cause("parked_streams", Status.DEGRADED,
                            f"{parked_streams} stream{'s' if parked_streams != 1 else ''} parked behind a "
                            f"failure ({parked_events} event{'s' if parked_events != 1 else ''} waiting)"))
    if not building and (lag_events > thresholds.lag_events or lag_seconds > thresholds.lag_seconds):
        causes.append(Cause("lagging", Status.DEGRADED,
                            f"{lag_events} events behind; the oldest unprocessed is {lag_seconds:.0f} s old"))

    status = max((c.status for c in causes), key=_RANK.__getitem__, default=Status.HEALTHY)
    return ProjectionHealth(
        name=details.name, status=status, causes=tuple(causes), position=details.position, head=head,
        lag_events=lag_events, lag_seconds=lag_seconds, events_processed=details.events_processed,
        failures=by_status, parked_streams=parked_streams, parked_events=parked_events,
        last_processed_at=details.updated_at, holder=details.holder, holder_alive=details.holder_alive,
        holder_heartbeat_at=details.holder_heartbeat_at, breaker_state=details.breaker_state,
        throughput=throughput, drifted_streams=details.drift_count,
    )
