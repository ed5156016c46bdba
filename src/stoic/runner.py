"""The Runner: runs an App's projections, in-process until caught up or as a
long-running worker that shares projections with other workers.

Invariants:

* one runner per projection: a projection is applied only under a lease; a
  worker's lease lives while its heartbeat does, so when a worker dies another
  takes its projections after ``lease_ttl`` seconds, and the fenced checkpoint
  (``position = start AND epoch = lease``) keeps a zombie from committing;
* one projection's failures, retries or open breaker never delay another: each
  runs in its own thread on its own connection.

The work on one projection (batches, failures, breaker) is in
:mod:`stoic.projection_runner`.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable

from stoic.errors import CircuitOpen, ConfigurationError, LeaseLost, StoicError, TransientError
from stoic.projection import App, Projection
from stoic.projection_runner import ProjectionRunner
from stoic.store import ProjectionState, Store

log = logging.getLogger("stoic.runner")

LEASE_TTL_S = 6.0  #: a worker silent this long loses its projections, seconds
CLAIM_INTERVAL_S = 1.0  #: how often a worker looks for projections to take, seconds
IDLE_WAIT_S = 0.5  #: longest wait for new events before re-checking stop/lease, seconds
RETRY_INITIAL_S = 0.05  #: first back-off after a failed batch, seconds
RETRY_MAX_S = 10.0  #: longest back-off between attempts at a failing batch, seconds


HANDBACK_COOLDOWN_S = 300.0  #: how long an orphan handed back (and not taken) is kept before offered again


def new_worker_id() -> str:
    """Returns a readable unique worker id: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def backoff_delay(attempt: int, initial: float = RETRY_INITIAL_S, cap: float = RETRY_MAX_S) -> float:
    """Exponential back-off with full jitter: uniform in [0, min(cap, initial * 2**attempt)]."""
    return random.uniform(0, min(cap, initial * 2 ** min(attempt, 30)))


class Runner:
    """Runs an App's projections against a store.

    ``run_until_caught_up()`` processes in the calling thread until every
    projection reaches the head, then returns (tests, scripts, small jobs).
    ``run()`` is the long-running worker: it registers itself, heartbeats,
    takes a fair share of the projections, runs each in its own thread, and on
    :meth:`stop` finishes the batches in hand and releases its leases.
    """

    def __init__(
        self,
        store: Store,
        app: App,
        *,
        worker_id: str | None = None,
        projections: Iterable[str] | None = None,
        lease_ttl: float = LEASE_TTL_S,
        claim_interval: float = CLAIM_INTERVAL_S,
        batch_size: int | None = None,
    ) -> None:
        if lease_ttl <= 0 or claim_interval <= 0:
            raise ConfigurationError("lease_ttl and claim_interval must be positive")
        self.store = store
        self.app = app
        self.worker_id = worker_id or new_worker_id()
        selected = list(projections) if projections is not None else None
        self._chosen = [app.projection(name) for name in selected] if selected is not None else app.projections
        self._warned: set[str] = set()
        self.projections = self._units(())  # as the code says; refreshed from the store's rows when run
        self.lease_ttl = lease_ttl
        self.claim_interval = claim_interval
        self.batch_size = batch_size
        self._stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._threads: dict[str, threading.Thread] = {}
        self._release: dict[str, threading.Event] = {}
        self._orphans: set[str] = set()  # taken over the fair share because nobody else did
        self._free_since: dict[str, float] = {}  # projection -> when this worker first saw it free
        self._offered: dict[str, float] = {}  # orphan -> when it was last handed back

    def _units(self, states: Iterable[ProjectionState]) -> list[Projection]:
        """What this worker may run, each under its own checkpoint and lease: a
        versioned projection's build unit (``<name>@build``, idle until its version
        changes or an operator asks; builds run first), each segment of a
        segmented projection (``<name>#<index>``, as many as its rows say), and
        every other projection itself."""
        stored: dict[str, int] = {}
        plain: set[str] = set()
        for state in states:
            base, sep, _ = state.name.rpartition("#")
            if sep and state.segments:
                stored[base] = max(stored.get(base, 0), state.segments)
            elif state.position > 0:
                plain.add(state.name)
        for name in plain:
            stored.setdefault(name, 1)  # processed unsegmented so far: the rows are the truth
        units = [p.builder() for p in self._chosen if p.versioned]
        for projection in self._chosen:
            count = stored.get(projection.name, projection.segments)
            if count != projection.segments and projection.name not in self._warned:
                self._warned.add(projection.name)
                log.warning("%s runs %d segments; the code asks for %d: run `stoic resegment %s --to %d`",
                            projection.name, count, projection.segments, projection.name, projection.segments,
                            extra={"action": "segments_differ", "projection": projection.name})
            if count > 1:
                units.extend(projection.for_segment(index, count) for index in range(count))
            else:
                units.append(projection)
        return units

    # -- worker identity --------------------------------------------------------------

    def _register(self, stop: threading.Event) -> None:
        self.store.register_worker(self.worker_id, socket.gethostname(), os.getpid(), self.lease_ttl)
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat_loop, args=(stop,), name=f"stoic-heartbeat-{self.worker_id}", daemon=True
        )
        self._heartbeat_thread.start()

    def _heartbeat_loop(self, stop: threading.Event) -> None:
        interval = self.lease_ttl / 3
        while not stop.wait(interval):
            try:
                if not self.store.heartbeat(self.worker_id, self.lease_ttl):
                    self.store.register_worker(
                        self.worker_id, socket.gethostname(), os.getpid(), self.lease_ttl
                    )
            except StoicError as exc:
                log.warning("heartbeat failed: %s", exc, extra={
                    "action": "heartbeat_failed", "worker": self.worker_id})

    def _unregister(self) -> None:
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join()
            self._heartbeat_thread = None
        try:
            self.store.unregister_worker(self.worker_id)
        except StoicError as exc:
            log.warning("could not unregister worker: %s", exc, extra={
                "action": "unregister_failed", "worker": self.worker_id})

    # -- in-process catch-up ---------------------------------------------------------

    def _runner(self, projection: Projection) -> ProjectionRunner:
        return ProjectionRunner(
            self.store, projection, self.worker_id, self.batch_size,
            policy=projection.failure_policy(self.app.classifier),
        )

    def run_until_caught_up(self, timeout: float | None = None) -> dict[str, int]:
        """Processes every projection until it reaches the head, then returns
        ``{name: checkpoint}``.

        Failing events are handled as in the worker: recorded, parked or halted
        by the projection's policy (see ``store`` failures). Transient errors are
        retried with back-off; raises CircuitOpen if a projection's breaker
        opens, LeaseLost if another live worker holds a projection past
        ``timeout``, and StoreUnavailable if the store stays unreachable.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._stop.clear()
        stop_heartbeat = threading.Event()
        self._register(stop_heartbeat)
        positions: dict[str, int] = {}
        try:
            self.projections = self._units(self.store.projections())
            for projection in self.projections:
                runner = self._runner(projection)
                try:
                    self._acquire_blocking(runner, deadline)
                    if runner.inactive:
                        continue  # nothing to build, or another version serves
                    positions[runner.name] = self._drain(runner, deadline)
                finally:
                    runner.release()
        finally:
            stop_heartbeat.set()
            self._unregister()
        return positions

    def _acquire_blocking(self, runner: ProjectionRunner, deadline: float | None) -> None:
        attempt = 0
        while True:
            try:
                if runner.acquire() or runner.inactive:
                    return
            except TransientError:
                runner.reconnect()
                if attempt >= 8:
                    raise
            if deadline is not None and time.monotonic() > deadline:
                raise LeaseLost(
                    f"projection {runner.name!r} is held by another live worker", projection=runner.name
                )
            time.sleep(backoff_delay(attempt, initial=0.05, cap=1.0))
            attempt += 1

    def _drain(self, runner: ProjectionRunner, deadline: float | None) -> int:
        connection_failures = 0
        while not self._stop.is_set():  # stop() ends a catch-up after the batch in hand
            try:
                result = runner.step()
                connection_failures = 0
            except LeaseLost:
                raise
            except TransientError as exc:
                connection_failures += 1
                if connection_failures > 8 or (deadline is not None and time.monotonic() > deadline):
                    raise
                log.warning("store error, reconnecting: %s", exc, extra={
                    "action": "reconnect", "projection": runner.name})
                time.sleep(backoff_delay(connection_failures))
                runner.reconnect()
                self._acquire_blocking(runner, deadline)
                continue
            if runner.breaker_state == "open":
                raise CircuitOpen(
                    f"projection {runner.name!r}: circuit breaker opened after "
                    f"{runner.transient_streak} transient errors in a row", projection=runner.name)
            if result.idle or result.finished:
                return runner.position
            if result.wait:
                if deadline is not None and time.monotonic() + result.wait > deadline:
                    raise TransientError(f"projection {runner.name!r} did not catch up in time")
                self._stop.wait(result.wait)
        return runner.position

    # -- the long-running worker -------------------------------------------------------

    def run(self) -> None:
        """Runs as a worker until :meth:`stop`: takes a fair share of the
        projections, runs each in a thread, rebalances as workers come and go."""
        self._stop.clear()
        self._register(self._stop)
        log.info("worker started", extra={"action": "worker_started", "worker": self.worker_id,
                                          "projections": [p.name for p in self.projections]})
        try:
            while not self._stop.is_set():
                try:
                    self._rebalance()
                except StoicError as exc:
                    log.warning("rebalance failed: %s", exc, extra={
                        "action": "rebalance_failed", "worker": self.worker_id})
                self._stop.wait(self.claim_interval)
        finally:
            self._stop.set()
            for thread in list(self._threads.values()):
                thread.join()
            self._unregister()
            log.info("worker stopped", extra={"action": "worker_stopped", "worker": self.worker_id})

    def stop(self) -> None:
        """Asks the worker to finish the batches in hand, release and return."""
        self._stop.set()

    @property
    def held(self) -> list[str]:
        """Names of the projections this worker is running now."""
        return [name for name, thread in self._threads.items() if thread.is_alive()]

    def _rebalance(self) -> None:
        states = {s.name: s for s in self.store.projections()}
        self.projections = self._units(states.values())
        for name in [n for n, t in self._threads.items() if not t.is_alive()]:
            del self._threads[name]
            self._release.pop(name, None)
            self._orphans.discard(name)
        alive = [w.worker_id for w in self.store.workers() if w.alive]
        target = math.ceil(len(self.projections) / (len(alive) or 1))
        held = [name for name in self.held if name not in self._orphans]
        if len(held) > target:
            # Hand the surplus back, newest first; another worker takes it.
            for name in held[target:]:
                self._release[name].set()
            return
        now = time.monotonic()
        if len(self.held) > target and self._orphans & set(self.held):
            # An orphan kept over the fair share goes back when another worker has room
            # (e.g. it started after this one took everything); if nobody takes it, it
            # is an orphan again two rounds later, and is not offered again for a while.
            load = Counter(s.holder for s in states.values() if s.holder and s.holder_alive)
            if any(load.get(worker, 0) < target for worker in alive if worker != self.worker_id):
                for name in sorted(self._orphans & set(self.held)):
                    if now - self._offered.get(name, -HANDBACK_COOLDOWN_S) >= HANDBACK_COOLDOWN_S:
                        self._offered[name] = now
                        self._release[name].set()
                        return
        free = {
            p.name for p in self.projections
            if p.name not in self._threads and not (
                (state := states.get(p.name)) is not None
                and state.holder not in (None, self.worker_id) and state.holder_alive)
        }
        for name in list(self._free_since):
            if name not in free:
                del self._free_since[name]
        for name in free:
            self._free_since.setdefault(name, now)
        # Start from a worker-specific offset so that workers do not all race for
        # the same projection.
        order = sorted(self.projections, key=lambda p: hash((p.name, self.worker_id)))
        for projection in order:
            if self._stop.is_set() or projection.name not in free:
                continue
            # Over the fair share, still take a projection that nobody took for two
            # rounds: workers may run different subsets, and none may be left behind.
            orphaned = now - self._free_since[projection.name] >= 2 * self.claim_interval
            if len(self.held) - len(self._orphans & set(self.held)) < target:
                self._start_thread(projection)
            elif orphaned:
                # Kept, not handed back: no worker that runs it has taken it.
                self._orphans.add(projection.name)
                self._start_thread(projection)

    def _start_thread(self, projection: Projection) -> None:
        release = threading.Event()
        acquired = threading.Event()
        thread = threading.Thread(
            target=self._run_projection,
            args=(projection, release, acquired),
            name=f"stoic-{projection.name}",
            daemon=True,
        )
        self._threads[projection.name] = thread
        self._release[projection.name] = release
        # Forget when it was last seen free: once handed back it must look free for
        # two fresh rounds before this worker may keep it as an orphan.
        self._free_since.pop(projection.name, None)
        thread.start()
        acquired.wait(self.claim_interval)

    def _run_projection(
        self, projection: Projection, release: threading.Event, acquired: threading.Event
    ) -> None:
        runner = self._runner(projection)
        failures = 0
        try:
            while not self._stop.is_set() and not release.is_set():
                try:
                    if runner.lease is None:
                        if not runner.acquire():
                            return  # someone else holds it; the coordinator will look again
                        acquired.set()
                    result = runner.step()
                    failures = 0
                    if result.finished:
                        return
                    if result.wait:
                        self._stop.wait(result.wait)
                    elif result.idle:
                        self.store.wait_for_append(runner.position, IDLE_WAIT_S)
                except LeaseLost as exc:
                    log.warning("lease lost: %s", exc, extra={
                        "action": "lease_lost", "projection": runner.name, "worker": self.worker_id})
                    runner.lease = None
                    return
                except TransientError as exc:
                    failures += 1
                    log.warning("store error, reconnecting: %s", exc, extra={
                        "action": "reconnect", "projection": runner.name, "attempt": failures})
                    runner.reconnect()
                    self._stop.wait(backoff_delay(failures))
                except Exception as exc:
                    # Not a handler error (those are recorded as failures): a bug or an
                    # unexpected store error. Back off and try again; never skip.
                    failures += 1
                    log.error("runner error: %s", exc, exc_info=True, extra={
                        "action": "runner_error", "projection": runner.name,
                        "position": runner.position, "attempt": failures})
                    self._stop.wait(backoff_delay(failures, initial=0.5, cap=RETRY_MAX_S))
        finally:
            acquired.set()
            runner.release()
