"""One projection under one lease: batches, failures, parking, retries, breaker.

Invariants:

* exactly once: a batch's handler writes, its failure records and its
  checkpoint move commit together, fenced by the lease;
* the fast path pays nothing for failures: a batch runs without savepoints;
  only when it fails is it rolled back and re-run with a savepoint per event,
  so that the good events commit and each bad one is recorded;
* nothing skipped silently: a permanently failing event is recorded; under
  ``park`` later events of its stream wait behind it (counted as parked) and
  are applied, in order, when the failure is retried successfully, skipped or
  resolved; under ``halt`` the projection stops at it; under ``skip`` it is
  recorded as skipped;
* a dependency that is down is not hammered: transient errors are retried
  with back-off and jitter, and after ``max_attempts`` in a row the circuit
  breaker opens (stored, so every worker sees it) until a half-open probe
  succeeds.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from stoic.errors import LeaseLost, StoreUnavailable, TransientError
from stoic.events import RecordedEvent
from stoic.failures import FailurePolicy, Kind, OnError, classify, describe
from stoic.metrics import BATCH_EVENTS, BATCH_SECONDS, RETRIES
from stoic.projection import Projection, segment_of
from stoic.reconcile import Reconciler, applied_events, reconcilable
from stoic.store import (
    AuditRecord,
    FailureRecord,
    FailureStatus,
    Lease,
    NewFailure,
    ProjectionControl,
    Resolution,
    Store,
    StoreSession,
    Transaction,
)

log = logging.getLogger("stoic.runner")

SUSPECT_BATCHES = 5  #: after a batch with failures, this many batches start with savepoints
MAINTENANCE_INTERVAL_S = 0.5  #: how often a runner looks at its failures and pause flag, seconds
RELEASES_PER_TX = 100  #: failures retried or released in one transaction
SWITCH_RETRY_S = 30.0  #: how long a build waits after a refused switch before verifying again
VERIFY_INTERVAL_S = 60.0  #: how often a runner runs the late-arrival self-check, seconds
TRACEBACK_LIMIT = 20_000  #: characters of a traceback kept in a failure record


@dataclass(slots=True)
class StepResult:
    """What one step of a runner did, and how long its caller may wait before the next."""

    events: int  #: events covered by a committed checkpoint move
    position: int  #: the checkpoint after the step
    wait: float = 0.0  #: seconds to wait (back-off, breaker cool-down, pause); 0 = go on
    idle: bool = False  #: caught up (or blocked): wait for new events
    finished: bool = False  #: this runner's work is over (a build switched in)


class _Rewind(Exception):
    """A handler failed after writing: its segment must be rolled back."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(index)
        self.index, self.error = index, error


@dataclass(slots=True)
class _IsolatedState:
    """What an isolated run has decided so far; copied at each savepoint so that
    a rolled-back segment's decisions are rolled back too."""

    blocked: dict[str, int]
    parked: Counter[int]
    failed: list[int]
    last: int
    count: int
    halted: bool

    def copy(self) -> _IsolatedState:
        return _IsolatedState(dict(self.blocked), Counter(self.parked), list(self.failed),
                              self.last, self.count, self.halted)

    def restore(self, other: _IsolatedState) -> None:
        self.blocked, self.parked, self.failed = other.blocked, other.parked, other.failed
        self.last, self.count, self.halted = other.last, other.count, other.halted


class _CountingTransaction:
    """Passes statements through and counts them, to tell whether a failing
    handler had written anything."""

    __slots__ = ("_tx", "dialect", "statements")

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx
        self.dialect = tx.dialect
        self.statements = 0

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self.statements += 1
        return self._tx.execute(sql, params)

    def executemany(self, sql: str, params_seq: Sequence[Sequence[Any]]) -> None:
        self.statements += 1
        self._tx.executemany(sql, params_seq)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)


def _logged(message: str) -> str:
    """An error message for the log: only when debug logging is on (it may hold event data)."""
    return f": {message[:500]}" if log.isEnabledFor(logging.DEBUG) else " (message withheld: debug logging is off)"


def _nothing(tx: Transaction) -> None:
    """A batch with no event for this segment: only the checkpoint moves."""


def _now() -> datetime:
    return datetime.now(tz=UTC)


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))[-TRACEBACK_LIMIT:]


class ProjectionRunner:
    """Runs one projection under one lease, on its own store session (connection).

    Not thread-safe: one thread drives it through :meth:`step`.
    """

    def __init__(
        self,
        store: Store,
        projection: Projection,
        worker_id: str,
        batch_size: int | None = None,
        policy: FailurePolicy | None = None,
    ) -> None:
        self.store = store
        self.projection = projection
        self.name = projection.name
        self.worker_id = worker_id
        self.batch_size = batch_size or projection.batch_size
        self.policy = policy or projection.failure_policy()
        self.session: StoreSession | None = None
        self.lease: Lease | None = None
        self.position = 0
        self._handlers, self._catch_all = projection.handlers()
        self._blocked: dict[str, int] = {}  # stream id -> blocking failure id (park)
        self._halted: FailureRecord | None = None  # the blocking failure of a halted projection
        self._transient_streak = 0
        self._breaker_state = "closed"
        self._breaker_opened = 0.0  # time.monotonic() when the breaker opened here
        self._paused = False
        self._next_maintenance = 0.0
        self._suspect = 0  # batches left to run with savepoints from the start
        self._next_verify = time.monotonic() + VERIFY_INTERVAL_S
        self.build_of = projection.build_of
        self.inactive = False
        self._drain_at: int | None = None  # a resegmentation's barrier: process up to here, then wait
        self._next_switch_attempt = 0.0
        every = projection.reconcile_every
        self._next_reconcile = time.monotonic() + every if every and reconcilable(projection) else None

    # -- lease and session -------------------------------------------------------------

    def acquire(self) -> bool:
        """Opens a session, takes the lease, runs ``setup`` and loads the failure
        state; False if another live worker holds the projection, or if there is
        nothing for this runner to do (``inactive``: a versioned projection whose
        serving version is not this code's, or a build nobody asked for)."""
        session = self._session()
        self.inactive = False
        if self.projection.versioned and not self._versioned_runnable():
            self.inactive = True
            return False
        segments = None
        if self.build_of is None and not self._segmentation_matches():
            self.inactive = True  # resegmented meanwhile: the worker picks up the new rows
            return False
        if self.projection.segment is not None:
            segments = self.projection.segment[1]
        session.ensure_projection(
            self.name, idempotent=bool(self.projection.idempotent), resettable=self.projection.resettable,
            segments=segments)
        lease = session.claim(self.name, self.worker_id)
        if lease is None:
            return False
        try:
            if self.projection.versioned:
                bound = self._bind_generation(lease)
                if bound is None:
                    session.release(lease)
                    self.inactive = True
                    return False
                lease = bound
            session.run_setup(self.name, self.projection.setup)
        except BaseException:
            # No batch may run on a read model whose setup failed: give the lease back.
            session.release(lease)
            raise
        self.lease, self.position = lease, lease.position
        self._next_maintenance = 0.0  # look at requests (a drain, a pause) before the first batch
        self._load_failures()
        breaker = session.breaker(self.name)
        self._breaker_state, self._transient_streak = breaker.state, breaker.failures
        if breaker.state == "open":
            opened = breaker.opened_at or _now()
            self._breaker_opened = time.monotonic() - (_now() - opened).total_seconds()
        log.info("projection acquired", extra={
            "action": "lease_acquired", "projection": self.name, "worker": self.worker_id,
            "epoch": lease.epoch, "position": lease.position})
        return True

    def _segmentation_matches(self) -> bool:
        """Whether the store's rows are split the way this runner's unit is: a
        unit of another split must not (re)create a row and replay from 0."""
        session = self._session()
        segment = self.projection.segment
        base = self.projection.base_name or self.name
        stored = session.segment_count(base)
        if segment is None:
            return stored is None
        if stored is not None:
            return stored == segment[1]
        plain = session.versioning(base)
        return plain is None or plain.position == 0

    # -- versioned read models -----------------------------------------------------------

    def _versioned_runnable(self) -> bool:
        """Whether this runner has work: the main runner when the serving version is
        this code's (or nothing serves yet); the build runner when the serving
        version differs or an operator asked for a rebuild."""
        session = self._session()
        version = self.projection.version
        if self.build_of is None:
            state = session.versioning(self.name)
            return state is None or (state.generation is None and state.position == 0) or state.version == version
        main = session.versioning(self.build_of)
        if main is None:
            return False
        if main.generation is None:
            return main.position > 0  # a read model from before it was versioned: build generation 1
        rebuild = session.control(self.build_of).request == "rebuild"
        # Only a newer version builds (an older worker of a rolling deploy must not
        # build its version back over the newer one), or an operator's rebuild.
        return (main.version or 0) < version or (rebuild and main.version == version)

    def _bind_generation(self, lease: Lease) -> Lease | None:
        """Under the lease: picks the generation this runner writes (starting a
        build over when it is stale); returns the lease (its position may have
        moved to 0), or None when there is nothing to do."""
        session = self._session()
        state = session.versioning(self.name)
        assert state is not None
        version = self.projection.version
        if self.build_of is None:
            if state.generation is None:
                if state.position > 0:
                    return None
                # First run: generation 1, and the views that readers query.
                first = self.projection.bound(1)

                def activate(tx: Transaction) -> None:
                    first.setup(tx)
                    session.point_views(tx, first.physical_tables(1))
                    session.set_version(tx, self.name, version, 1)

                session.fenced(lease, activate)
                state = session.versioning(self.name)
                assert state is not None
            if state.version != version:
                return None
            self._use(self.projection.bound(state.generation or 1))
            return lease
        if not self._versioned_runnable():
            return None
        main = session.versioning(self.build_of)
        assert main is not None
        if state.generation is None or state.version != version or state.generation <= (main.generation or 0):
            generation = max(main.generation or 0, main.previous_generation or 0, state.generation or 0) + 1
            target = self.projection.bound(generation)

            abandoned = state.generation if state.generation not in (
                None, main.generation, main.previous_generation) else None

            def restart(tx: Transaction) -> None:
                session.drop_tables(tx, list(target.physical_tables(generation).values()))
                if abandoned is not None:  # the tables of the build this one replaces
                    session.drop_tables(tx, list(target.physical_tables(abandoned).values()))
                session.restart_build(tx, self.name, version, generation)

            session.fenced(lease, restart)
            lease = Lease(lease.projection, lease.worker_id, lease.epoch, 0)
            log.warning("building generation %d of %s (version %d)", generation, self.build_of, version, extra={
                "action": "build_started", "projection": self.build_of, "generation": generation,
                "version": version})
            self._use(target)
        else:
            self._use(self.projection.bound(state.generation))
        return lease

    def _use(self, projection: Projection) -> None:
        """Runs this (generation-bound) copy of the projection from now on."""
        self.projection = projection
        self._handlers, self._catch_all = projection.handlers()

    def _try_switch(self) -> StepResult:
        """A caught-up build: run the verification gate, then switch the views and
        the serving checkpoint to the new generation in one fenced transaction."""
        assert self.build_of is not None
        now = time.monotonic()
        if now < self._next_switch_attempt:
            return StepResult(0, self.position, idle=True)
        self._next_switch_attempt = now + SWITCH_RETRY_S
        session = self._session()
        session.fenced(self._lease(), _nothing)  # an operator may have restarted the build: LeaseLost
        refusal = self._verify_build()
        if refusal is not None:
            # Fenced too: a holder fenced out meanwhile must not write its note on the new build.
            session.fenced(self._lease(), lambda tx: session.record_build_note(self.name, refusal))
            log.error("switch to the new generation refused: %s", refusal, extra={
                "action": "switch_refused", "projection": self.build_of})
            return StepResult(0, self.position, idle=True)
        main, generation = self.build_of, self.projection.generation
        assert generation is not None

        def switch(tx: Transaction) -> None:
            session.point_views(tx, self.projection.physical_tables(generation))
            session.switch_version(tx, main, self.name)

        session.fenced(self._lease(), switch)
        self.store.record_audit(AuditRecord(
            f"worker:{self.worker_id}", "switch", f"projection:{main}", None,
            f"done: generation {generation} (version {self.projection.version}) serves from position "
            f"{self.position}", {"generation": generation, "position": self.position}))
        log.warning("switched %s to generation %d at position %d", main, generation, self.position, extra={
            "action": "switched", "projection": main, "generation": generation, "position": self.position})
        self.lease = None
        return StepResult(0, self.position, idle=True, finished=True)

    def _verify_build(self) -> str | None:
        """The gate before a switch: reconciles the new generation (a sample, or all
        streams) and runs its global checks; returns why it fails, or None."""
        if not reconcilable(self.projection):
            return None
        reconciler = Reconciler(self._session(), self.projection)
        sample = self.projection.verify_sample
        streams = None if sample is None else reconciler.sample(sample)
        report = reconciler.run(streams, checks=True)
        if report.ok:
            return None
        failed = [c for c in report.checks if not c.ok]
        parts = []
        if report.mismatched_streams:
            first = report.mismatches[0]
            parts.append(f"{len(report.mismatched_streams)} of {report.checked} streams differ from their events "
                         f"(e.g. {first.stream_id}: {first.field} expected {first.expected!r}, got {first.actual!r})")
        parts.extend(f"check {c.name} failed: {c.detail}" for c in failed)
        return "; ".join(parts)[:2000]

    def drop_previous_when_due(self) -> None:
        """Drops the replaced generation's tables once ``retain_previous`` has passed."""
        session = self._session()
        state = session.versioning(self.name)
        if state is None or state.previous_generation is None or state.switched_at is None:
            return
        if (_now() - state.switched_at).total_seconds() < self.projection.retain_previous:
            return
        old = list(self.projection.physical_tables(state.previous_generation).values())

        def drop(tx: Transaction) -> None:
            session.drop_tables(tx, old)
            session.forget_previous(tx, self.name)

        session.fenced(self._lease(), drop)
        log.info("dropped the tables of generation %d", state.previous_generation, extra={
            "action": "previous_dropped", "projection": self.name, "tables": old})

    @property
    def breaker_state(self) -> str:
        """``closed``, ``open`` or ``half_open``."""
        return self._breaker_state

    @property
    def transient_streak(self) -> int:
        """Transient errors in a row (resets on success)."""
        return self._transient_streak

    def _session(self) -> StoreSession:
        if self.session is None:
            self.session = self.store.open_session()
        return self.session

    def reconnect(self) -> None:
        """Drops the session after a connection error; the lease is re-taken
        (with a new epoch) by the next :meth:`acquire`."""
        self.close_session()
        self.lease = None

    def release(self) -> None:
        """Gives the lease back (best effort) and closes the session."""
        if self.lease is not None and self.session is not None:
            try:
                self.session.release(self.lease)
                log.info("projection released", extra={
                    "action": "lease_released", "projection": self.name, "worker": self.worker_id})
            except Exception as exc:  # best effort: the lease expires on its own
                log.warning("could not release lease: %s", exc, extra={
                    "action": "lease_release_failed", "projection": self.name})
        self.lease = None
        self.close_session()

    def close_session(self) -> None:
        if self.session is not None:
            try:
                self.session.close()
            finally:
                self.session = None

    def _load_failures(self) -> None:
        blocking = self._session().blocking_failures(self.name)
        self._blocked = {f.stream_id: f.id for f in blocking if f.policy == OnError.PARK.value}
        self._halted = next((f for f in blocking if f.policy == OnError.HALT.value), None)

    # -- the step --------------------------------------------------------------------------

    def step(self) -> StepResult:
        """Does the next piece of work: failure maintenance when due, then one batch.

        Raises LeaseLost when the lease is gone, StoreUnavailable when the
        connection is lost (the caller reconnects), CircuitOpen never: an open
        breaker is reported as a wait.
        """
        if self.lease is None:
            raise LeaseLost(f"projection {self.name!r} is not held by this runner")
        now = time.monotonic()
        if now >= self._next_maintenance:
            self._next_maintenance = now + MAINTENANCE_INTERVAL_S
            control = self._session().control(self.name)
            self._paused = control.paused
            self._drain_at = control.request_position if control.request == "drain" else None
            if control.request is not None and not self._paused:
                if control.request == "repair":
                    self._repair(control)
                elif control.request in ("reset", "replay"):
                    self._rewind(control)
                # "rebuild" is the build runner's to carry out
            if self._next_reconcile is not None and now >= self._next_reconcile and not self._paused:
                self._next_reconcile = now + float(self.projection.reconcile_every or 0)
                self.reconcile_sample()
            if not self._paused and self._breaker_state != "open":
                self._maintain()
            if now >= self._next_verify:
                self._next_verify = now + VERIFY_INTERVAL_S
                self.verify()
                if self.projection.versioned and self.build_of is None:
                    self.drop_previous_when_due()
        if self._paused:
            return StepResult(0, self.position, wait=MAINTENANCE_INTERVAL_S, idle=True)
        if self._breaker_state == "open":
            remaining = self._breaker_opened + self.policy.breaker.cooldown - time.monotonic()
            if remaining > 0:
                return StepResult(0, self.position, wait=min(remaining, MAINTENANCE_INTERVAL_S), idle=True)
            self._set_breaker("half_open", self._transient_streak, "half-open: probing with one batch")
        if self._halted is not None:
            return StepResult(0, self.position, wait=MAINTENANCE_INTERVAL_S, idle=True)
        result = self._guarded(self._run_batch)
        if self.build_of is not None and result.idle and not result.wait:
            return self._try_switch()
        return result

    def _guarded(self, work: Callable[[], StepResult]) -> StepResult:
        """Runs work; turns a transient failure into back-off or an open breaker."""
        try:
            result = work()
        except (LeaseLost, StoreUnavailable):
            raise
        except Exception as exc:
            if classify(exc, self.policy.classifier) is Kind.PERMANENT:
                raise
            return self._on_transient(exc)
        if self._breaker_state != "closed" or self._transient_streak:
            was_open = self._breaker_state != "closed"
            self._set_breaker("closed", 0, None)
            if was_open:
                log.info("circuit closed", extra={"action": "breaker_closed", "projection": self.name})
        return result

    def _on_transient(self, exc: BaseException) -> StepResult:
        self._transient_streak += 1
        RETRIES.labels(self.name, "transient").inc()
        error_class, message = describe(exc)
        if self._breaker_state == "half_open" or self._transient_streak >= self.policy.retry.max_attempts:
            reason = f"{self._transient_streak} transient errors in a row; last: {error_class}: {message}"
            self._set_breaker("open", self._transient_streak, reason[:2000])
            self._breaker_opened = time.monotonic()
            log.error("circuit opened: %s", reason, extra={
                "action": "breaker_opened", "projection": self.name, "error_class": error_class})
            return StepResult(0, self.position, wait=min(self.policy.breaker.cooldown, MAINTENANCE_INTERVAL_S))
        delay = self.policy.retry.delay(self._transient_streak)
        log.warning("transient error, retrying in %.2f s: %s", delay, message, extra={
            "action": "transient_retry", "projection": self.name, "attempt": self._transient_streak,
            "error_class": error_class})
        self._set_breaker(self._breaker_state, self._transient_streak, None)
        return StepResult(0, self.position, wait=delay)

    def _set_breaker(self, state: str, failures: int, reason: str | None) -> None:
        self._breaker_state, self._transient_streak = state, failures
        # If the store is down too, the in-memory state still protects the dependency.
        with contextlib.suppress(TransientError):
            self._session().set_breaker(self.name, state, failures, reason)

    # -- batches ---------------------------------------------------------------------------

    def _run_batch(self) -> StepResult:
        started = time.perf_counter()
        result = self._run_batch_timed()
        if result.events:
            BATCH_SECONDS.labels(self.name).observe(time.perf_counter() - started)
            BATCH_EVENTS.labels(self.name).inc(result.events)
        return result

    def _run_batch_timed(self) -> StepResult:
        session = self._session()
        drain_at = self._drain_at
        if drain_at is not None and self.position >= drain_at:
            return StepResult(0, self.position, idle=True, wait=MAINTENANCE_INTERVAL_S)
        events = session.read_all(self.position, self.batch_size)
        if drain_at is not None:
            events = [e for e in events if e.position <= drain_at]
        if not events:
            return StepResult(0, self.position, idle=True)
        end = events[-1].position
        others: list[int] = []  # positions of other segments' events: covered by the checkpoint, not applied
        segment = self.projection.segment
        if segment is not None:
            index, count = segment
            mine = []
            for event in events:
                if segment_of(event.stream_id, count) == index:
                    mine.append(event)
                else:
                    others.append(event.position)
            events = mine
            if not events:  # none of this segment's streams: only the checkpoint moves
                self.position = session.apply_batch(self._lease(), self.position, end, len(others), _nothing,
                                                    pipeline=False, timeout=self.policy.batch_timeout)
                return StepResult(0, self.position)
        if self._suspect:
            # Failures are recent: run straight with savepoints instead of failing twice.
            return self._apply_isolated(events, end, others)
        try:
            self._apply_fast(events, end, len(others))
        except (LeaseLost, StoreUnavailable):
            raise
        except Exception as exc:
            if classify(exc, self.policy.classifier) is Kind.TRANSIENT:
                raise
            fast_failed = True
        else:
            fast_failed = False
        if fast_failed:
            # A permanent error somewhere in the batch: find it with one savepoint per event
            # (outside the except block, so recorded tracebacks do not chain this error).
            return self._apply_isolated(events, end, others)
        return StepResult(len(events), self.position)

    def _apply_fast(self, events: list[RecordedEvent], end: int, others: int = 0) -> None:
        handlers, catch_all, blocked = self._handlers, self._catch_all, self._blocked
        parked: Counter[int] = Counter()

        def apply(tx: Transaction) -> None:
            if not blocked:
                for event in events:
                    handler = handlers.get(event.type, catch_all)
                    if handler is not None:
                        handler(event, tx)
                return
            for event in events:
                failure_id = blocked.get(event.stream_id)
                if failure_id is not None:
                    parked[failure_id] += 1
                    continue
                handler = handlers.get(event.type, catch_all)
                if handler is not None:
                    handler(event, tx)
            self._session().add_parked(dict(parked))

        start = self.position
        self._session().apply_batch(
            self._lease(), start, end, len(events) + others, apply, timeout=self.policy.batch_timeout)
        self.position = end

    def _apply_isolated(self, events: list[RecordedEvent], end: int, others: list[int] | None = None) -> StepResult:
        """Re-runs a failed batch with one savepoint per event: the good events
        commit with the checkpoint, each bad one is recorded (and, under park,
        blocks its stream; under halt, ends the batch before it).

        Savepoints are pipelined first. If an SQL error (not a Python exception)
        aborts that run, it cannot be pinned to an event, so the batch is run once
        more with every statement waiting for its result."""
        try:
            failed = self._isolated_run(events, end, others or [], pipeline=True)
        except (LeaseLost, StoreUnavailable):
            raise
        except Exception as exc:
            if classify(exc, self.policy.classifier) is Kind.TRANSIENT:
                raise
            failed = None
        if failed is None:  # outside the except block: recorded tracebacks must not chain
            failed = self._isolated_run(events, end, others or [], pipeline=False)
        self._suspect = SUSPECT_BATCHES if failed else max(0, self._suspect - 1)
        return StepResult(len(events), self.position)

    def _isolated_run(self, events: list[RecordedEvent], end: int, others: list[int], pipeline: bool) -> int:
        """Applies a batch that failed, finding each failing event.

        Most poison events fail before their handler wrote anything (bad data
        is noticed first): those are recorded on the spot, with no savepoint at
        all. Only when a failing handler had already written is its segment
        rolled back to the savepoint taken at the segment's start, the events
        before it applied again, and the failure recorded. So a batch with
        failures costs about one more pass, not a savepoint per event."""
        session = self._session()
        handlers, catch_all = self._handlers, self._catch_all
        on_error = self.policy.on_error
        state = _IsolatedState(dict(self._blocked), Counter(), [], self.position, 0, False)
        start = self.position

        def process(tx: _CountingTransaction, first: int, end: int) -> None:
            for index in range(first, end):
                event = events[index]
                failure_id = state.blocked.get(event.stream_id)
                if failure_id is not None:
                    state.parked[failure_id] += 1
                else:
                    handler = handlers.get(event.type, catch_all)
                    if handler is not None:
                        before = tx.statements
                        try:
                            handler(event, tx)
                        except Exception as exc:
                            if classify(exc, self.policy.classifier) is Kind.TRANSIENT:
                                raise
                            if tx.statements != before:
                                raise _Rewind(index, exc) from exc
                            if self._fail(event, exc, state):
                                return
                state.last, state.count = event.position, state.count + 1

        def apply(raw: Transaction) -> tuple[int, int] | None:
            tx = _CountingTransaction(raw)
            first = 0
            while first < len(events) and not state.halted:
                saved = state.copy()
                try:
                    with session.savepoint():
                        process(tx, first, len(events))
                    break
                except _Rewind as rewind:
                    state.restore(saved)
                    with session.savepoint():
                        process(tx, first, rewind.index)  # succeeded before: must succeed again
                    if state.halted:
                        break
                    self._fail(events[rewind.index], rewind.error, state)
                    if not state.halted:
                        state.last, state.count = events[rewind.index].position, state.count + 1
                    first = rewind.index + 1
            session.add_parked(dict(state.parked))
            # A halt stops the checkpoint at the last event applied; otherwise it covers
            # the whole batch read (in a segment, other segments' events too).
            reached = state.last if state.halted else end
            return reached, state.count + sum(1 for position in others if position <= reached)

        self.position = session.apply_batch(
            self._lease(), start, end, len(events) + len(others), apply, pipeline=pipeline,
            timeout=self.policy.batch_timeout)
        self._blocked = state.blocked
        if state.failed and on_error is OnError.HALT:
            self._load_failures()
        return len(state.failed)

    def _fail(self, event: RecordedEvent, exc: BaseException, state: _IsolatedState) -> bool:
        """Records a failing event in an isolated run; True when the run must stop (halt)."""
        failure_id = self._record_failure(event, exc)
        state.failed.append(failure_id)
        if self.policy.on_error is OnError.HALT:
            state.halted = True
            return True
        if self.policy.on_error is OnError.PARK:
            state.blocked[event.stream_id] = failure_id
        return False

    def _commit(
        self, start: int, end: int, count: int, apply: Callable[[Transaction], tuple[int, int] | None]
    ) -> None:
        """Commits a run that may stop early; ``apply`` may return the (end, count) it reached."""
        self.position = self._session().apply_batch(
            self._lease(), start, end, count, apply, pipeline=False, timeout=self.policy.batch_timeout)

    def _record_failure(self, event: RecordedEvent, exc: BaseException) -> int:
        error_class, message = describe(exc)
        policy = self.policy.on_error
        if policy is OnError.SKIP:
            status, resolution, next_retry, blocking = FailureStatus.SKIPPED, Resolution.POLICY_SKIP, None, False
        else:
            status, resolution, blocking = FailureStatus.RETRYING, None, True
            next_retry = self.policy.schedule.next_retry(1, _now())
            if next_retry is None:
                status = FailureStatus.DEAD
        failure_id = self._session().insert_failure(NewFailure(
            projection=self.name, position=event.position, event_id=str(event.event_id),
            stream_id=event.stream_id, event_type=event.type, policy=policy.value,
            error_class=error_class, message=message[:10_000], traceback=_traceback(exc),
            status=status, resolution=resolution, next_retry_at=next_retry, blocking=blocking,
        ))
        # The error's message may quote the event's data: logged only with debug logging on;
        # operators read it with `stoic failures show` (admins only over HTTP).
        log.error("event failed: %s%s", error_class, _logged(message), extra={
            "action": "event_failed", "projection": self.name, "position": event.position,
            "stream_id": event.stream_id, "event_type": event.type, "policy": policy.value,
            "failure_id": failure_id})
        return failure_id

    def _rewind(self, control: ProjectionControl) -> None:
        """Carries out an operator's reset (clear the read model, back to 0) or
        replay (back to an earlier position) in one fenced transaction with the
        checkpoint move, so a crash leaves either the old state or the new one."""
        reset = control.request == "reset"
        target = 0 if reset else min(control.request_position or 0, self.position)
        session = self._session()

        def apply(tx: Transaction) -> None:
            if reset:
                self.projection.reset(tx)
                self.projection.setup(tx)
            session.finish_request(self.name, control.request_seq, target, reset)

        # events_processed counts the events the checkpoint covers: a replay uncovers
        # the ones after the target (a reset restarts the count in finish_request).
        uncovered = 0 if reset else -(self.position - target)
        self.position = session.apply_batch(
            self._lease(), self.position, target, uncovered, apply, pipeline=False, timeout=None)
        self.store.record_audit(AuditRecord(
            f"worker:{self.worker_id}", control.request or "rewind", f"projection:{self.name}", None,
            f"done: checkpoint moved back to {target}", {"position": target, "seq": control.request_seq}))
        self._suspect = 0
        self._breaker_state, self._transient_streak = "closed", 0
        self._load_failures()
        log.warning("projection %s to position %d", "reset" if reset else "replayed", target, extra={
            "action": control.request, "projection": self.name, "position": target})

    def _repair(self, control: ProjectionControl) -> None:
        """Rebuilds the requested streams on their own: ``forget`` their rows, then
        apply their applied events again, in one fenced transaction that does not
        move the checkpoint (so no other stream is touched and nothing is skipped)."""
        session = self._session()
        handlers, catch_all = self._handlers, self._catch_all

        def apply(tx: Transaction) -> None:
            for stream_id in control.request_streams:
                failures = session.stream_failures(self.name, stream_id)
                events = applied_events(session.read_stream_range(stream_id, 0, self.position), failures)
                self.projection.forget(stream_id, tx)
                for event in events:
                    handler = handlers.get(event.type, catch_all)
                    if handler is not None:
                        handler(event, tx)
            session.finish_request(self.name, control.request_seq, self.position, False)

        streams = list(control.request_streams)
        try:
            session.apply_batch(self._lease(), self.position, self.position, 0, apply, pipeline=False,
                                timeout=self.policy.batch_timeout)
        except (LeaseLost, StoreUnavailable):
            raise
        except Exception as exc:
            # A repair that cannot run must not be retried forever: drop it, say why.
            error_class, message = describe(exc)
            log.error("repair failed: %s%s", error_class, _logged(message), extra={
                "action": "repair_failed", "projection": self.name, "streams": streams[:20]})
            session.finish_request(self.name, control.request_seq, self.position, False)
            self.store.record_audit(AuditRecord(
                f"worker:{self.worker_id}", "repair", f"projection:{self.name}", None,
                f"failed: {error_class}: {message[:500]}", {"streams": streams[:1000]}))
            return
        self.store.record_audit(AuditRecord(
            f"worker:{self.worker_id}", "repair", f"projection:{self.name}", None, f"done: {len(streams)} streams",
            {"streams": streams[:1000], "position": self.position}))
        log.warning("repaired %d streams", len(streams), extra={
            "action": "repaired", "projection": self.name, "streams": streams[:20]})

    def reconcile_sample(self) -> list[str]:
        """The continuous check: re-folds a random sample of streams and compares
        them with the read model; records the drift (health, metrics) and, when
        the projection asks for it, requests a repair of the drifted streams."""
        reconciler = Reconciler(self._session(), self.projection)
        sample = reconciler.sample(self.projection.reconcile_sample)
        report = reconciler.run(sample, checks=False)
        drifted = list(report.mismatched_streams)
        self.store.record_drift(self.name, report.checked, drifted)
        if drifted:
            log.error("%d of %d sampled streams drifted from their events", len(drifted), report.checked, extra={
                "action": "drift_detected", "projection": self.name, "streams": drifted[:20]})
            pending = self._session().control(self.name).request is not None
            if self.projection.auto_repair and self.projection.repairable and not pending:
                self.store.request_rewind(self.name, "repair", self.position, f"worker:{self.worker_id}",
                                          "continuous reconciliation found drift", drifted)
        return drifted

    def _lease(self) -> Lease:
        if self.lease is None:
            raise LeaseLost(f"projection {self.name!r} is not held by this runner")
        return self.lease

    def verify(self) -> int:
        """Runs the late-arrival self-check; returns the events at or below the
        checkpoint that were never processed (it should always be 0)."""
        missing = self._session().check_late_arrivals(self.name)
        if missing:
            log.critical("late-arrival self-check failed: %d events were never processed", missing, extra={
                "action": "late_arrival", "projection": self.name, "missing": missing,
                "position": self.position})
        return missing

    # -- failure maintenance: background retries and releases --------------------------------

    def _maintain(self) -> None:
        """Retries due failures and releases the streams of failures a person
        skipped or resolved, in fenced transactions of up to RELEASES_PER_TX."""
        session = self._session()
        failures = session.blocking_failures(self.name)
        if not failures:
            self._blocked, self._halted = {}, None
            return
        now = _now()
        due: list[tuple[FailureRecord, bool]] = []
        for failure in failures:
            if failure.status in (FailureStatus.RESOLVED, FailureStatus.SKIPPED):
                due.append((failure, False))
            elif failure.status is FailureStatus.RETRYING and (
                failure.retry_requested or (failure.next_retry_at is not None and failure.next_retry_at <= now)
            ):
                due.append((failure, True))
        halts = [item for item in due if item[0].policy == OnError.HALT.value]
        parks = [item for item in due if item[0].policy != OnError.HALT.value]
        for item in halts[:1]:
            self._guarded(lambda item=item: self._release([item], halt=True))
        for i in range(0, len(parks), RELEASES_PER_TX):
            self._guarded(lambda chunk=parks[i:i + RELEASES_PER_TX]: self._release(chunk, halt=False))
        self._load_failures()

    def _release(self, items: list[tuple[FailureRecord, bool]], halt: bool) -> StepResult:
        """For each failure: applies the failed event (when retrying) and then its
        parked followers, in order, and closes the failure — all in one
        transaction, each failure under its own savepoint. Under halt (one
        failure), a successful retry or a skip moves the checkpoint past the event."""
        session = self._session()
        start = self.position
        work = []
        for failure, apply_failed in items:
            followers = [] if halt else session.read_stream_range(failure.stream_id, failure.position, start)
            retried = session.read_events([failure.position]) if apply_failed else []
            work.append((failure, apply_failed, retried, followers))
        outcomes: list[tuple[FailureRecord, bool, str | None, int]] = []

        def apply(tx: Transaction) -> tuple[int, int] | None:
            reached = (start, 0)
            for failure, apply_failed, retried, followers in work:
                status = session.lock_failure(failure.id)
                if status is None or (status is FailureStatus.RETRYING) != apply_failed:
                    # An operator acted since we looked (skip or resolve won the race):
                    # do nothing now; the next round sees the new status.
                    outcomes.append((failure, apply_failed, "changed", 0))
                    continue
                failed = self._retry_part(tx, failure, retried)
                if failed is None:
                    self._release_part(tx, failure, apply_failed, followers)
                    if halt:
                        reached = (failure.position, 1)
                outcomes.append((failure, apply_failed, failed, len(followers)))
            return reached

        self._commit(start, start, 0, apply)
        for failure, apply_failed, failed, followers in outcomes:
            if apply_failed and failed != "changed":
                RETRIES.labels(self.name, "failure").inc()
            if failed is not None:
                log.warning("retry failed", extra={
                    "action": "retry_failed", "projection": self.name, "failure_id": failure.id,
                    "status": failed})
            else:
                log.info("failure released", extra={
                    "action": "failure_released", "projection": self.name, "failure_id": failure.id,
                    "followers": followers, "retried": apply_failed})
        return StepResult(0, self.position)

    def _retry_part(self, tx: Transaction, failure: FailureRecord, retried: list[RecordedEvent]) -> str | None:
        """Applies a failed event again under a savepoint; on a permanent error
        counts the attempt and returns the failure's new status, else None."""
        session = self._session()
        for event in retried:
            handler = self._handlers.get(event.type, self._catch_all)
            try:
                with session.savepoint():
                    if handler is not None:
                        handler(event, tx)
            except Exception as exc:
                if classify(exc, self.policy.classifier) is Kind.TRANSIENT:
                    raise
                attempts = failure.attempts + 1
                next_retry = self.policy.schedule.next_retry(attempts, _now())
                status = FailureStatus.RETRYING if next_retry else FailureStatus.DEAD
                error_class, message = describe(exc)
                session.record_retry_failure(
                    failure.id, status, next_retry, error_class, message[:10_000], _traceback(exc))
                return status.value
        return None

    def _release_part(
        self, tx: Transaction, failure: FailureRecord, apply_failed: bool, followers: list[RecordedEvent]
    ) -> None:
        """Applies a failure's parked followers in order and closes the failure; a
        follower that fails becomes the stream's new blocking failure."""
        session = self._session()
        new_block: int | None = None
        still_parked = 0
        for follower in followers:
            if new_block is not None:
                still_parked += 1
                continue
            handler = self._handlers.get(follower.type, self._catch_all)
            if handler is None:
                continue
            try:
                with session.savepoint():
                    handler(follower, tx)
            except Exception as exc:
                if classify(exc, self.policy.classifier) is Kind.TRANSIENT:
                    raise
                new_block = self._record_failure(follower, exc)
        if new_block is not None and still_parked:
            session.add_parked({new_block: still_parked})
        resolution = Resolution.MANUAL_RETRY if failure.retry_requested else Resolution.AUTO_RETRY
        session.close_failure(failure.id, resolution if apply_failed else None, 0)
