"""One projection's trouble does not delay another run by the same worker: each
projection has its own thread and connection, so while the broken ones back off,
rest in an open breaker's cool-down, hang on a dependency or park poison events,
``healthy`` keeps up with live appends (latency measured from before the append to
healthy's checkpoint).

SQLite has one writer: a handler that hangs *inside* its batch (a slow call to a
dependency) holds the write lock for that attempt, so appends and other projections
wait up to that long — but never for the back-off or the breaker's cool-down."""

from __future__ import annotations

import statistics
import time

import pytest
from tests.apps import FaultyLedger, check_exactly_once, wait_until

import stoic

from ._support import Calls, WorkerThread, checkpoint, details, ev, failures, worker_backends

SLOW_RETRY = stoic.RetryPolicy(initial_delay=0.3, multiplier=2, max_attempts=3)
LONG_COOLDOWN = stoic.BreakerPolicy(cooldown=30)
HANG = 0.3  # seconds a hanging dependency holds a handler (inside its batch)
TROUBLES = ("breaker", "hang", "poison")


def broken_projection(trouble: str, calls: Calls) -> FaultyLedger:
    def fault(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        calls.add(event.position)
        if trouble == "breaker":
            raise ConnectionError("dependency down")
        if trouble == "hang":
            time.sleep(HANG)
            raise TimeoutError(f"dependency timed out after {HANG} s")
        if trouble == "poison" and event.stream_id.startswith("acct-"):
            raise ValueError("poison")

    return FaultyLedger(trouble, fault, retry_policy=SLOW_RETRY, breaker_policy=LONG_COOLDOWN,
                        retry_schedule=stoic.RetrySchedule(first_delay=0.05, multiplier=1, max_attempts=10_000))


@pytest.mark.timeout(60)
@worker_backends
def test_broken_projections_do_not_delay_another(store: stoic.Store) -> None:
    calls = {trouble: Calls() for trouble in TROUBLES}
    app = stoic.App([*(broken_projection(t, calls[t]) for t in TROUBLES), FaultyLedger("healthy")])
    for i in range(20):
        store.append(f"acct-{i}", [ev(i)])
    latencies: list[float] = []

    def measure(count: int) -> None:
        for i in range(count):
            started = time.monotonic()
            position = store.append(f"live-{len(latencies)}", [ev(i)]).positions[0]
            wait_until(lambda p=position: checkpoint(store, "healthy") >= p, 5,  # type: ignore[misc]
                       f"healthy to apply {position}", interval=0.002)
            latencies.append(time.monotonic() - started)
            time.sleep(0.02)

    with WorkerThread(store, app) as worker:
        wait_until(lambda: len(worker.runner.held) == 4, 5, "the worker to run every projection")
        wait_until(lambda: checkpoint(store, "healthy") == store.head(), 5, "healthy to catch up")
        wait_until(lambda: all(calls.values()), 5, "the broken projections to be trying")
        measure(12)  # while they retry: back off, hang, record failures
        wait_until(lambda: all(details(store, t).breaker_state == "open" for t in ("breaker", "hang")), 10,
                   "the breakers to open")
        wait_until(lambda: len(failures(store, "poison")) == 20, 10, "the poison failures")
        tried = {t: len(calls[t]) for t in ("breaker", "hang")}
        measure(12)  # while they rest in their cool-down
        assert {t: len(calls[t]) for t in ("breaker", "hang")} == tried, "called during the cool-down"
        assert checkpoint(store, "breaker") == checkpoint(store, "hang") == 0

    worst, median = max(latencies), statistics.median(latencies)
    print(f"\n{store.dialect}: healthy's latency median {median * 1000:.0f} ms, worst {worst * 1000:.0f} ms")
    assert median < 0.1, latencies
    # On SQLite the hanging handler holds the one write lock for one attempt at a time.
    assert worst < (HANG + 0.2 if store.dialect == "sqlite" else 0.2), latencies
    check_exactly_once(store, ["healthy"], upto=store.head())
