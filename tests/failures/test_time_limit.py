"""The batch time limit: a batch that runs past ``batch_timeout`` is cancelled
(PostgreSQL: statement_timeout and a cancel; SQLite: an interrupt) or, stuck in
pure Python, failed as soon as it returns; it is rolled back and treated as a
transient error — no failure record, the checkpoint stays before it — and applies
once the handler is fast again."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from tests.apps import FaultyLedger, applied_order, check_exactly_once

import stoic

from ._support import Calls, Switch, append_each, checkpoint, details, ev, failures, worker_backends

NAME = "timed"
SLOW = Switch()
LIMIT = 0.2  # seconds
RETRY = stoic.RetryPolicy(initial_delay=0.01, max_attempts=3)
SLOW_SQLITE = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000000) SELECT count(*) FROM c"
)


def make_fault(where: str, calls: Calls) -> stoic.projection.Handler:
    def fault(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        if not (event.data.get("slow") and SLOW.on):
            return
        calls.add(event.position)
        if where == "python":
            time.sleep(LIMIT + 0.1)  # cannot be interrupted: failed when it returns
        elif tx.dialect == "postgresql":
            tx.execute("SELECT pg_sleep(2)")
        else:
            tx.execute(SLOW_SQLITE).fetchone()  # several seconds of CPU unless interrupted

    return fault


@pytest.mark.timeout(60)
def test_a_slow_statement_is_cancelled_the_batch_rolled_back_and_retried_as_transient(store: stoic.Store) -> None:
    over_the_limit(store, "database")


@pytest.mark.timeout(60)
@worker_backends
def test_a_handler_stuck_in_python_fails_its_batch_when_it_returns(store: stoic.Store) -> None:
    over_the_limit(store, "python")


def over_the_limit(store: stoic.Store, where: str) -> None:
    calls = Calls()
    a1, a2, b1, a3 = append_each(store, [("A", ev(1)), ("A", ev(2)), ("B", ev(3, slow=True)), ("A", ev(4))])
    app = stoic.App([FaultyLedger(
        NAME, make_fault(where, calls), batch_size=2, batch_timeout=LIMIT, retry_policy=RETRY,
        breaker_policy=stoic.BreakerPolicy(cooldown=0.2))])

    started = time.monotonic()
    with pytest.raises(stoic.CircuitOpen):  # stays slow: max_attempts time-outs in a row
        stoic.Runner(store, app).run_until_caught_up()
    elapsed = time.monotonic() - started

    assert len(calls.at(b1)) == RETRY.max_attempts
    if where == "database":
        assert elapsed < RETRY.max_attempts * 1.0, f"the slow statements were not cancelled ({elapsed:.1f} s)"
    assert failures(store, NAME) == []  # transient: never a failure record
    assert checkpoint(store, NAME) == a2  # the first batch committed; the slow one rolled back
    assert applied_order(store, NAME) == [a1, a2]
    reason = details(store, NAME).breaker_reason or ""
    assert "OperationTimeout" in reason, reason

    SLOW.on = False  # the handler is fast again
    time.sleep(0.25)  # the cool-down
    assert stoic.Runner(store, app).run_until_caught_up() == {NAME: a3}
    assert applied_order(store, NAME) == [a1, a2, b1, a3]
    check_exactly_once(store, [NAME], upto=a3)


def test_a_slow_batch_that_recovers_within_max_attempts_opens_nothing(store: stoic.Store) -> None:
    calls = Calls()
    positions = append_each(store, [("A", ev(1, slow=True)), ("A", ev(2))])

    slow = make_fault("database", calls)

    def once_slow(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        if calls.at(event.position):
            SLOW.on = False  # slow the first time only
        slow(event, tx)

    app = stoic.App([FaultyLedger(NAME, once_slow, batch_timeout=LIMIT, retry_policy=RETRY)])
    assert stoic.Runner(store, app).run_until_caught_up() == {NAME: positions[-1]}
    assert len(calls) == 1 and failures(store, NAME) == []
    assert details(store, NAME).breaker_state == "closed"
    check_exactly_once(store, [NAME], upto=positions[-1])


def test_a_late_cancel_never_hits_the_sessions_next_statement(make_url: object) -> None:
    """Regression (PostgreSQL): statement_timeout and the watchdog both stop a slow
    batch at its limit; the watchdog's cancel request could arrive after the batch had
    rolled back and cancel the session's next statement — or its ROLLBACK, leaving
    the connection in a failed transaction so that every later batch failed. A session
    whose watchdog fired now continues on a fresh connection."""
    store = stoic.connect(make_url("postgres"))  # type: ignore[operator]
    session = store.open_session()
    try:
        session.ensure_projection("p")
        lease = session.claim("p", "w")
        assert lease is not None

        def sleep(seconds: float) -> Callable[[stoic.Transaction], None]:
            def apply(tx: stoic.Transaction) -> None:
                tx.execute(f"SELECT pg_sleep({seconds})")

            return apply

        for _ in range(6):
            with pytest.raises(stoic.OperationTimeout):
                session.apply_batch(lease, 0, 0, 0, sleep(1), timeout=0.1)
            # A statement that is running when a late cancel would arrive.
            session.apply_batch(lease, 0, 0, 0, sleep(0.05), timeout=5)
            assert session.checkpoint("p") == 0
    finally:
        session.close()
        store.close()
