"""Operator actions on failures and projections: the one set of operations that
the Python API, the CLI and the HTTP API all call.

Every action is recorded in the audit log with who, what, when and why —
refused ones too — and refused with a typed error when it makes no sense.
The actions only change state; the worker holding the projection does the work
(a retry, applying the parked events), so they are safe to call from any
process while workers run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from stoic.errors import (
    ActionRefused,
    ConfigurationError,
    FailureNotFound,
    InvalidArgument,
    OperationTimeout,
    UnknownProjection,
)
from stoic.health import BUILD_SUFFIX, Cause, ProjectionHealth, Status, Thresholds, assess
from stoic.projection import MAX_SEGMENTS
from stoic.reconcile import Reconciler, ReconcileReport, reconcilable
from stoic.store import (
    OPEN_STATUSES,
    AuditEntry,
    AuditRecord,
    FailureChange,
    FailureRecord,
    FailureStatus,
    ProjectionDetails,
    Resolution,
    Store,
    StoreSession,
    Transaction,
    WorkerInfo,
)

if TYPE_CHECKING:
    from stoic.projection import App, Projection

MAX_REASON_CHARS = 2000  #: longest reason an operator may give


def _reason(reason: str | None, required: bool, action: str) -> str | None:
    if reason is not None and not isinstance(reason, str):
        raise InvalidArgument(f"{action}: reason must be text")
    reason = (reason or "").strip() or None
    if required and reason is None:
        raise InvalidArgument(f"{action}: a reason is required (say why, for the audit log)")
    if reason is not None and len(reason) > MAX_REASON_CHARS:
        raise InvalidArgument(f"{action}: reason is over {MAX_REASON_CHARS} characters")
    return reason


def _actor(actor: str) -> str:
    if not isinstance(actor, str) or not actor.strip():
        raise InvalidArgument("actor must name who acts (a user or a service)")
    return actor.strip()[:200]


@dataclass(frozen=True, slots=True)
class RewindRequest:
    """A reset or replay an operator asked for; the projection's holder carries it out."""

    projection: str
    action: str  #: ``reset`` or ``replay``
    position: int  #: where the checkpoint goes back to
    seq: int  #: the request's number (a newer request replaces an older pending one)
    head: int  #: the store's head when asked: the work to redo is ``head - position`` events
    streams: tuple[str, ...] = ()  #: the streams a ``repair`` rebuilds


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a projection stands, and any pending operator request."""

    projection: str
    position: int
    head: int
    events_processed: int
    updated_at: datetime | None
    holder: str | None
    holder_alive: bool
    epoch: int
    request: str | None
    request_position: int | None


@dataclass(frozen=True, slots=True)
class SystemStatus:
    """The whole system at a glance: what ``GET /admin/status`` and ``stoic status`` show."""

    head: int
    at: datetime
    projections: list[ProjectionHealth]
    failures: dict[str, int]  #: failures by status, all projections together
    workers: list[WorkerInfo]


class Operations:
    """Lists failures and changes them, pauses and resumes projections.

    Parameters
    ----------
    store:
        The store to act on.
    projections:
        Names of the projections the application knows, to refuse unknown
        names; when omitted, the names the store has seen are used.
    """

    def __init__(
        self,
        store: Store,
        projections: Iterable[str] | None = None,
        thresholds: Thresholds | None = None,
        app: App | None = None,
    ) -> None:
        self.store = store
        self.app = app
        if projections is None and app is not None:
            projections = [p.name for p in app.projections]
        self._known = set(projections) if projections is not None else None
        self.thresholds = thresholds or Thresholds()
        self._samples: dict[str, tuple[float, int, float | None]] = {}

    # -- health ---------------------------------------------------------------------------

    def health(self) -> list[ProjectionHealth]:
        """Returns the health of every projection (the app's, and any the store knows)."""
        head = self.store.head()
        now = self.store.now()
        counts = self.store.failure_counts()
        results = []
        seen = set()
        everything = self.store.projection_details()
        builds = {d.name.removesuffix(BUILD_SUFFIX): d for d in everything if d.name.endswith(BUILD_SUFFIX)}
        for details in everything:
            seen.add(details.name)
            oldest = self.store.oldest_unprocessed(details.position) if details.position < head else None
            halted = [c.halted_at for c in counts if c.projection == details.name and c.halted_at is not None]
            results.append(assess(
                details, head, oldest, counts, now, self.thresholds,
                halted_at=min(halted) if halted else None,
                throughput=self._throughput(details.name, details.events_processed), build=builds.get(details.name)))
        units = {name.rpartition("#")[0] for name in seen if "#" in name}
        for name in sorted((self._known or set()) - seen - units):
            results.append(ProjectionHealth(
                name=name, status=Status.OFFLINE,
                causes=(Cause("never_started", Status.OFFLINE, "no worker has run this projection yet"),),
                position=0, head=head, lag_events=head, lag_seconds=0.0, events_processed=0))
        return results

    def projection_health(self, name: str) -> ProjectionHealth:
        """Returns one projection's health; raises UnknownProjection."""
        self._check_projection(name)
        for item in self.health():
            if item.name == name:
                return item
        raise UnknownProjection(f"no projection named {name!r}", name=name)

    def _throughput(self, name: str, processed: int) -> float | None:
        """Events/s since the previous sample of this projection (at least 1 s apart)."""
        now = time.monotonic()
        previous = self._samples.get(name)
        if previous is None:
            self._samples[name] = (now, processed, None)
            return None
        at, count, rate = previous
        if now - at >= 1.0:
            rate = max(0.0, (processed - count) / (now - at))
            self._samples[name] = (now, processed, rate)
        return rate

    def _check_projection(self, name: str) -> str:
        known = self._known if self._known is not None else {p.name for p in self.store.projections()}
        unit_of = name.removesuffix(BUILD_SUFFIX) if name.endswith(BUILD_SUFFIX) else name.rpartition("#")[0]
        if name not in known and unit_of not in known:
            raise UnknownProjection(
                f"no projection named {name!r} (known: {', '.join(sorted(known)) or 'none'})", name=name)
        return name

    def status(self) -> SystemStatus:
        """Returns projections' health, failures by status, workers and the head."""
        health = self.health()
        totals: dict[str, int] = {}
        for count in self.store.failure_counts():
            totals[count.status.value] = totals.get(count.status.value, 0) + count.count
        return SystemStatus(head=max((h.head for h in health), default=self.store.head()), at=self.store.now(),
                            projections=health, failures=totals, workers=self.store.workers())

    def checkpoint(self, name: str) -> Checkpoint:
        """Returns a projection's checkpoint; raises UnknownProjection."""
        self._check_projection(name)
        head = self.store.head()
        details = self._details(name)
        if details is None:
            return Checkpoint(name, 0, head, 0, None, None, False, 0, None, None)
        return Checkpoint(name, details.position, head, details.events_processed, details.updated_at,
                          details.holder, details.holder_alive, details.epoch, details.request,
                          details.request_position)

    def _details(self, name: str) -> ProjectionDetails | None:
        return next((d for d in self.store.projection_details() if d.name == name), None)

    # -- reading ------------------------------------------------------------------------

    def failures(
        self,
        projection: str | None = None,
        status: FailureStatus | str | None = None,
        stream_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[FailureRecord]:
        """Returns failures, newest first, filtered by projection, status and stream."""
        if projection is not None:
            self._check_projection(projection)
        return self.store.list_failures(projection, _status(status), stream_id, limit, offset)

    def failure(self, failure_id: int) -> FailureRecord:
        """Returns one failure; raises FailureNotFound."""
        failure = self.store.get_failure(_failure_id(failure_id))
        if failure is None:
            raise FailureNotFound(f"no failure with id {failure_id}", failure_id=failure_id)
        return failure

    def audit(self, limit: int = 100, offset: int = 0, action: str | None = None) -> list[AuditEntry]:
        """Returns recorded admin actions, newest first."""
        return self.store.audit_log(limit, offset, action)

    # -- acting on failures -----------------------------------------------------------------

    def retry(self, failure_id: int, actor: str, reason: str | None = None) -> FailureRecord:
        """Asks for an immediate retry of a retrying or dead failure."""
        return self._change(failure_id, "retry", actor, _reason(reason, False, "retry"), FailureChange(
            allowed=OPEN_STATUSES, status=FailureStatus.RETRYING, resolution=None, actor=_actor(actor),
            note=reason, retry_requested=True, retry_now=True))

    def revive(self, failure_id: int, actor: str, reason: str | None = None) -> FailureRecord:
        """Brings a dead failure back to retrying, with its whole retry schedule."""
        return self._change(failure_id, "revive", actor, _reason(reason, False, "revive"), FailureChange(
            allowed=(FailureStatus.DEAD,), status=FailureStatus.RETRYING, resolution=None,
            actor=_actor(actor), note=reason, retry_requested=True, retry_now=True, reset_attempts=True))

    def skip(self, failure_id: int, actor: str, reason: str) -> FailureRecord:
        """Gives up on the event for good; its parked followers are then applied."""
        why = _reason(reason, True, "skip")
        return self._change(failure_id, "skip", actor, why, FailureChange(
            allowed=OPEN_STATUSES, status=FailureStatus.SKIPPED, resolution=Resolution.MANUAL_SKIP,
            actor=_actor(actor), note=why))

    def resolve(self, failure_id: int, actor: str, reason: str) -> FailureRecord:
        """Marks the failure fixed by hand; its parked followers are then applied."""
        why = _reason(reason, True, "resolve")
        return self._change(failure_id, "resolve", actor, why, FailureChange(
            allowed=OPEN_STATUSES, status=FailureStatus.RESOLVED, resolution=Resolution.MANUAL_RESOLVE,
            actor=_actor(actor), note=why))

    def retry_all(self, projection: str, actor: str, reason: str | None = None) -> list[FailureRecord]:
        """Asks for an immediate retry of every retrying or dead failure of a projection."""
        self._check_projection(projection)
        why = _reason(reason, False, "retry-all")
        changed = []
        for status in OPEN_STATUSES:
            while True:
                batch = self.store.list_failures(projection, status, None, 500, 0)
                pending = [f for f in batch if not f.retry_requested]
                for failure in pending:
                    updated = self.store.change_failure(failure.id, FailureChange(
                        allowed=OPEN_STATUSES, status=FailureStatus.RETRYING, resolution=None,
                        actor=_actor(actor), note=why, retry_requested=True, retry_now=True,
                    ), AuditRecord(_actor(actor), "retry", f"failure:{failure.id}", why, "ok",
                                   {"via": "retry-all", "projection": projection}))
                    if updated is not None:
                        changed.append(updated)
                if len(batch) < 500 or not pending:
                    break
        self.store.record_audit(AuditRecord(
            _actor(actor), "retry-all", f"projection:{projection}", why,
            f"ok: {len(changed)} failure{'' if len(changed) == 1 else 's'}",
            {"failure_ids": [f.id for f in changed][:1000]}))
        return changed

    def _change(
        self, failure_id: int, action: str, actor: str, reason: str | None, change: FailureChange
    ) -> FailureRecord:
        failure_id = _failure_id(failure_id)
        target = f"failure:{failure_id}"
        updated = self.store.change_failure(
            failure_id, change, AuditRecord(_actor(actor), action, target, reason, "ok"))
        if updated is not None:
            return updated
        current = self.store.get_failure(failure_id)
        if current is None:
            raise FailureNotFound(f"no failure with id {failure_id}", failure_id=failure_id)
        how = f" ({current.resolution.value} by {current.actor})" if current.resolution and current.actor else ""
        allowed = " or ".join(s.value for s in change.allowed)
        raise ActionRefused(
            f"cannot {action} failure {failure_id}: it is {current.status.value}{how}; "
            f"{action} applies to {allowed} failures",
            failure_id=failure_id, status=current.status.value, action=action,
        )

    # -- acting on projections ----------------------------------------------------------------

    def pause(self, projection: str, actor: str, reason: str | None = None) -> None:
        """Pauses a projection: its holder stops after the batch in hand."""
        self._pause(projection, True, actor, _reason(reason, False, "pause"))

    def resume(self, projection: str, actor: str, reason: str | None = None) -> None:
        """Resumes a paused projection."""
        self._pause(projection, False, actor, _reason(reason, False, "resume"))

    def _pause(self, projection: str, paused: bool, actor: str, reason: str | None) -> None:
        self._check_projection(projection)
        action = "pause" if paused else "resume"
        ok = self.store.set_paused(projection, paused, _actor(actor), reason)
        self.store.record_audit(AuditRecord(
            _actor(actor), action, f"projection:{projection}", reason, "ok" if ok else "refused"))
        if not ok:
            raise UnknownProjection(f"projection {projection!r} has never run", name=projection)


    # -- rewinding: reset and replay -------------------------------------------------------

    def reset(self, projection: str, actor: str, reason: str) -> RewindRequest:
        """Asks the holder to clear the read model (``reset()`` then ``setup()``) and
        rebuild it from position 0, in one transaction with the checkpoint move.
        Open failures are closed as ``reset``: their events are processed again."""
        why = _reason(reason, True, "reset")
        who = _actor(actor)
        details = self._rewindable(projection, "reset", who, why)
        if not self._declares(projection, details, "resettable"):
            self._refuse("reset", projection, who, why, (
                f"cannot reset {projection!r}: the projection does not implement reset(tx), so its "
                "read model cannot be cleared; implement reset() (and setup()) first"))
        return self._request_rewind(projection, "reset", 0, who, why)

    def replay(self, projection: str, from_position: int, actor: str, reason: str) -> RewindRequest:
        """Asks the holder to move the checkpoint back to ``from_position`` and apply
        the events after it again — only for projections declared idempotent."""
        why = _reason(reason, True, "replay")
        who = _actor(actor)
        if isinstance(from_position, bool) or not isinstance(from_position, int) or from_position < 0:
            raise InvalidArgument(f"replay: from_position must be an integer >= 0, got {from_position!r}")
        details = self._rewindable(projection, "replay", who, why)
        if not self._declares(projection, details, "idempotent"):
            self._refuse("replay", projection, who, why, (
                f"cannot replay {projection!r}: it is not declared idempotent (idempotent = True), so "
                "applying its events twice could double-count; use reset to rebuild it from 0"))
        assert details is not None
        if from_position > details.position:  # refused (and audited), not invalid: the checkpoint moves
            self._refuse("replay", projection, who, why, (
                f"cannot replay {projection!r} from position {from_position}: it is past the checkpoint "
                f"{details.position}; replay only goes back"))
        return self._request_rewind(projection, "replay", from_position, who, why)

    # -- reconciliation and per-stream rebuild ----------------------------------------------

    def reconcile(self, projection: str, actor: str, stream_id: str | None = None, repair: bool = False,
                  reason: str | None = None) -> ReconcileReport:
        """Compares the read model with the fold of the events, for one stream or
        all; with ``repair``, asks the holder to rebuild the mismatched streams."""
        who, why = _actor(actor), _reason(reason, False, "reconcile")
        code = self._code(projection, "reconcile")
        if not reconcilable(code):
            self._refuse("reconcile", projection, who, why, (
                f"cannot reconcile {projection!r}: it does not implement expected_state() and actual_state()"))
        if repair and not code.repairable:
            self._refuse("reconcile", projection, who, why, (
                f"cannot repair {projection!r}: it does not implement forget(stream_id, tx)"))
        if stream_id is not None:
            _stream(stream_id)
        session = self.store.open_session()
        try:
            if code.versioned:
                state = session.versioning(projection)
                if state is None or state.generation is None:
                    self._refuse("reconcile", projection, who, why,
                                 f"cannot reconcile {projection!r}: no generation of its read model serves yet")
                assert state is not None and state.generation is not None
                code = code.bound(state.generation)
            report = Reconciler(session, code).run([stream_id] if stream_id is not None else None,
                                                   checks=stream_id is None)
        finally:
            session.close()
        failed = [c.name for c in report.checks if not c.ok]
        self.store.record_audit(AuditRecord(
            who, "reconcile", f"projection:{projection}" + (f"/stream:{stream_id}" if stream_id else ""), why,
            f"ok: {report.matched} of {report.checked} streams match"
            + (f"; failed checks: {', '.join(failed)}" if failed else ""),
            {"mismatched_streams": list(report.mismatched_streams[:1000]), "position": report.position}))
        if repair and report.mismatched_streams:
            self.rebuild_streams(projection, list(report.mismatched_streams), who, why or "reconcile --repair")
            return dataclasses.replace(report, repair_requested=True)
        return report

    def rebuild_streams(self, projection: str, stream_ids: list[str], actor: str, reason: str) -> RewindRequest:
        """Asks the holder to rebuild these streams on their own: remove their rows
        (``forget``), apply their events again; other streams are not touched."""
        who, why = _actor(actor), _reason(reason, True, "rebuild-streams")
        if not stream_ids:
            raise InvalidArgument("rebuild-streams: name at least one stream")
        for stream in stream_ids:
            _stream(stream)
        details = self._rewindable(projection, "rebuild-streams", who, why)
        code = self._code(projection, "rebuild-streams") if self.app is not None else None
        if code is not None and not code.repairable:
            self._refuse("rebuild-streams", projection, who, why, (
                f"cannot rebuild streams of {projection!r}: it does not implement forget(stream_id, tx)"))
        unique = list(dict.fromkeys(stream_ids))
        return self._request_rewind(projection, "repair", details.position, who, why, unique)

    # -- versioned read models: rebuild, rollback, drop the previous generation ------------

    def rebuild(self, projection: str, actor: str, reason: str) -> RewindRequest:
        """Asks for a new generation of a versioned projection's read model, built
        beside the serving one and switched in atomically once it has caught up
        and passed verification; reads are served by the old one meanwhile."""
        who, why = _actor(actor), _reason(reason, True, "rebuild")
        code = self._code(projection, "rebuild")
        if not code.versioned:
            self._refuse("rebuild", projection, who, why, (
                f"cannot rebuild {projection!r} without downtime: it declares no tables (tables = (...)); "
                "use reset to rebuild it in place"))
        details = self._rewindable(projection, "rebuild", who, why)
        request = self._request_rewind(projection, "rebuild", details.position, who, why)
        session = self.store.open_session()
        try:  # a build in progress (or refused by the gate) starts over with the code deployed now
            session.administer(lambda tx: session.abandon_build(tx, f"{projection}{BUILD_SUFFIX}"))
        finally:
            session.close()
        return request

    def rollback(self, projection: str, actor: str, reason: str) -> int:
        """Points a versioned projection back at the generation the last switch
        replaced (while its tables exist); returns that generation."""
        who, why = _actor(actor), _reason(reason, True, "rollback")
        code = self._code(projection, "rollback")
        session = self.store.open_session()
        try:
            state = session.versioning(projection)
            if state is None or state.previous_generation is None:
                self._refuse("rollback", projection, who, why, (
                    f"cannot roll back {projection!r}: there is no previous generation (no switch yet, or its "
                    "tables were dropped)"))
            assert state is not None and state.previous_generation is not None
            previous = state.previous_generation

            def back(tx: Transaction) -> None:
                session.point_views(tx, code.physical_tables(previous))
                session.rollback_version(tx, projection)

            session.administer(back)
        finally:
            session.close()
        self.store.record_audit(AuditRecord(who, "rollback", f"projection:{projection}", why,
                                            f"ok: generation {previous} serves again", {"generation": previous}))
        return previous

    def drop_previous(self, projection: str, actor: str, reason: str | None = None) -> int:
        """Drops the tables of the generation the last switch replaced (no rollback after this)."""
        who, why = _actor(actor), _reason(reason, False, "drop-previous")
        code = self._code(projection, "drop-previous")
        session = self.store.open_session()
        try:
            state = session.versioning(projection)
            if state is None or state.previous_generation is None:
                self._refuse("drop-previous", projection, who, why,
                             f"{projection!r} has no previous generation to drop")
            assert state is not None and state.previous_generation is not None
            previous = state.previous_generation
            tables = list(code.physical_tables(previous).values())

            def drop(tx: Transaction) -> None:
                session.drop_tables(tx, tables)
                session.forget_previous(tx, projection)

            session.administer(drop)
        finally:
            session.close()
        self.store.record_audit(AuditRecord(who, "drop-previous", f"projection:{projection}", why,
                                            f"ok: dropped generation {previous}", {"tables": tables}))
        return previous

    # -- segmented projections: change the number of segments ---------------------------------

    def resegment(self, projection: str, count: int, actor: str, reason: str, timeout: float = 300.0,
                  progress: Callable[[int, int], None] | None = None) -> int:
        """Changes how many segments a projection is split into, without losing or
        repeating an event: every current segment processes up to a barrier
        position B (the head when asked) and stops there; then, in one
        transaction, the old segment rows are replaced by ``count`` new ones at B
        and each open failure moves to the segment that now owns its stream.
        Needs live workers (or a runner) to bring the segments to B; returns B."""
        who, why = _actor(actor), _reason(reason, True, "resegment")
        code = self._code(projection, "resegment")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SEGMENTS:
            raise InvalidArgument(f"resegment: the segment count must be 1 to {MAX_SEGMENTS}, got {count!r}")
        if code.versioned:
            self._refuse("resegment", projection, who, why,
                         f"cannot resegment {projection!r}: versioned projections are not segmented yet")
        session = self.store.open_session()
        try:
            segment_rows = session.segment_rows(projection)
            old = [row[0] for row in segment_rows]
            if segment_rows and len(old) != segment_rows[0][4]:
                self._refuse("resegment", projection, who, why, (
                    f"cannot resegment {projection!r} yet: {len(old)} of its {segment_rows[0][4]} segments have "
                    "started; try again in a moment"))
            if not old:
                if self._details(projection) is None:
                    self._refuse("resegment", projection, who, why,
                                 f"cannot resegment {projection!r}: no worker has run it yet")
                old = [projection]
            if len(old) == count:
                self._refuse("resegment", projection, who, why, f"{projection!r} already has {count} segments")
            barrier = self._drain(session, old, who, why)
            self.store.record_audit(AuditRecord(who, "resegment", f"projection:{projection}", why, "requested",
                                                {"from": len(old), "to": count, "barrier": barrier}))
            self._wait_for_barrier(session, old, barrier, timeout, progress)

            def replace(tx: Transaction) -> None:
                rows = {name: (position, request, at) for name, position, request, at, _ in
                        session.segment_rows(projection)}
                if len(old) == 1 and old[0] == projection:
                    plain = self._details(projection)
                    rows = {projection: (plain.position, plain.request, plain.request_position)} if plain else {}
                if set(rows) != set(old) or any(rows.get(name) != (barrier, "drain", barrier) for name in old):
                    raise ActionRefused(f"resegment of {projection!r}: the segments changed while draining; "
                                        "nothing was changed, try again")
                session.resegment(tx, projection, old, count, barrier)

            session.administer(replace)
        finally:
            session.close()
        self.store.record_audit(AuditRecord(who, "resegment", f"projection:{projection}", why,
                                            f"ok: {len(old)} -> {count} segments at position {barrier}",
                                            {"from": len(old), "to": count, "barrier": barrier}))
        return barrier

    def _drain(self, session: StoreSession, rows: list[str], actor: str, reason: str | None) -> int:
        """Sets a barrier on every row; raises it until no row had already passed it."""
        barrier = self.store.head()
        while True:
            for name in rows:
                self.store.request_rewind(name, "drain", barrier, actor, reason)
            positions = {d.name: d.position for d in self.store.projection_details() if d.name in rows}
            highest = max(positions.values(), default=0)
            if highest <= barrier:
                return barrier
            barrier = highest

    def _wait_for_barrier(self, session: StoreSession, rows: list[str], barrier: int, timeout: float,
                          progress: Callable[[int, int], None] | None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            positions = {d.name: d.position for d in self.store.projection_details() if d.name in rows}
            done = sum(1 for name in rows if positions.get(name, 0) >= barrier)
            if progress is not None:
                progress(done, len(rows))
            if done == len(rows):
                return
            if time.monotonic() > deadline:
                for name in rows:
                    session.cancel_request(name)
                raise OperationTimeout(
                    f"resegment: {len(rows) - done} of {len(rows)} segments did not reach position {barrier} in "
                    f"{timeout:.0f} s (is a worker running them?); nothing was changed")
            time.sleep(0.1)

    def _code(self, projection: str, action: str) -> Projection:
        self._check_projection(projection)
        if self.app is None:
            raise ConfigurationError(f"{action} needs the application's code: pass the app (--app module:app)")
        return self.app.projection(projection)

    def _rewindable(self, projection: str, action: str, actor: str, reason: str | None) -> ProjectionDetails:
        self._check_projection(projection)
        if any(d.name.startswith(f"{projection}#") for d in self.store.projection_details()):
            self._refuse(action, projection, actor, reason, (
                f"cannot {action} {projection!r}: it is segmented, and its segments' checkpoints would move "
                f"apart; resegment it to 1 segment first, {action}, then resegment back"))
        details = self._details(projection)
        if details is None:
            self._refuse(action, projection, actor, reason,
                         f"cannot {action} {projection!r}: no worker has run it yet, there is nothing to {action}")
        assert details is not None
        return details

    def _declares(self, projection: str, details: ProjectionDetails | None, flag: str) -> bool:
        """What the projection declares: the app's code when known, else what its worker stored."""
        if self.app is not None:
            code = self.app.projection(projection)
            return bool(code.resettable if flag == "resettable" else code.idempotent)
        return bool(details is not None and getattr(details, flag))

    def _refuse(self, action: str, projection: str, actor: str, reason: str | None, message: str) -> None:
        self.store.record_audit(AuditRecord(actor, action, f"projection:{projection}", reason, "refused"))
        raise ActionRefused(message, projection=projection, action=action)

    def _request_rewind(self, projection: str, action: str, position: int, actor: str,
                        reason: str | None, streams: list[str] | None = None) -> RewindRequest:
        pending = self._details(projection)
        if pending is not None and pending.request is not None and pending.request != action:
            who = f" by {pending.requested_by}" if pending.requested_by else ""
            self._refuse(action, projection, actor, reason, (
                f"cannot {action} {projection!r}: a {pending.request} requested{who} is still pending; wait until "
                "the projection's holder has carried it out (see its checkpoint)"))
        head = self.store.head()
        seq = self.store.request_rewind(projection, action, position, actor, reason, streams)
        if seq is None:
            raise UnknownProjection(f"projection {projection!r} has never run", name=projection)
        self.store.record_audit(AuditRecord(
            actor, action, f"projection:{projection}", reason, "requested",
            {"position": position, "head": head, "seq": seq, **({"streams": streams[:1000]} if streams else {})}))
        return RewindRequest(projection, action, position, seq, head, tuple(streams or ()))


def _status(status: FailureStatus | str | None) -> FailureStatus | None:
    if status is None or isinstance(status, FailureStatus):
        return status
    try:
        return FailureStatus(status)
    except ValueError:
        choices = ", ".join(s.value for s in FailureStatus)
        raise InvalidArgument(f"status must be one of {choices}, got {status!r}") from None


def _stream(stream_id: object) -> str:
    if not isinstance(stream_id, str) or not stream_id or len(stream_id) > 1000 or "\x00" in stream_id:
        raise InvalidArgument(f"stream id must be 1-1000 characters without NUL, got {stream_id!r}")
    return stream_id


def _failure_id(failure_id: object) -> int:
    if isinstance(failure_id, bool) or not isinstance(failure_id, int) or failure_id < 1:
        raise InvalidArgument(f"failure id must be a positive integer, got {failure_id!r}")
    return failure_id
