"""A failure whose background retries run out becomes dead (and stays visible:
health critical); revive brings it back to retrying with its whole schedule; a
retry after the fix resolves it."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from tests.apps import FaultyLedger, applied_order, check_exactly_once, wait_until

import stoic
from stoic.health import Status
from stoic.store import FailureStatus, Resolution

from ._support import (
    Switch,
    WorkerThread,
    append_each,
    cause,
    codes,
    ev,
    health,
    only_failure,
    poison,
    wait_failure,
    worker_backends,
)

NAME = "mortal"
BROKEN = Switch()
SCHEDULE = stoic.RetrySchedule(first_delay=0.1, max_attempts=3)


def fault(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
    if event.data.get("poison") and BROKEN.on:
        raise stoic.PermanentError(f"malformed event at position {event.position}")


@pytest.mark.timeout(60)
@worker_backends
def test_dead_after_max_attempts_then_revived_then_retried(store: stoic.Store) -> None:
    app = stoic.App([FaultyLedger(NAME, fault, retry_schedule=SCHEDULE)])
    a1, a2, b1, a3 = append_each(store, [("A", ev(1)), ("A", poison(2)), ("B", ev(3)), ("A", ev(4))])
    ops = stoic.Operations(store)

    with WorkerThread(store, app):
        dead = wait_failure(store, NAME, status=FailureStatus.DEAD)
        assert (dead.attempts, dead.next_retry_at, dead.resolution) == (3, None, None)
        assert dead.blocking and dead.parked == 1  # still parks its stream
        assert dead.error_class == "stoic.errors.PermanentError"
        wait_until(lambda: (h := health(store, NAME)).holder_alive and h, 5, "a live holder")
        item = health(store, NAME)
        assert item.status is Status.CRITICAL, item.causes
        assert codes(item) == {"dead_failures", "parked_streams"}, item.causes
        assert "1 failure dead after all retries" in cause(item, "dead_failures")
        assert item.failures == {"dead": 1}
        time.sleep(0.7)  # more than a maintenance round: dead means no more background retries
        assert only_failure(store, NAME).attempts == dead.attempts
    assert applied_order(store, NAME) == [a1, b1]

    # Revive: retrying again, attempts reset, due now.
    revived = ops.revive(dead.id, actor="dana", reason="one more round")
    assert (revived.status, revived.attempts, revived.retry_requested) == (FailureStatus.RETRYING, 0, True)
    assert revived.next_retry_at is not None and revived.next_retry_at <= store.now() + timedelta(seconds=1)
    assert (revived.actor, revived.note) == ("dana", "one more round")

    # Still broken: the whole schedule runs again (in-process passes when each retry is due),
    # and it dies again.
    attempts = []
    while (current := only_failure(store, NAME)).status is FailureStatus.RETRYING and len(attempts) < 5:
        assert current.next_retry_at is not None
        time.sleep(max(0.0, (current.next_retry_at - store.now()).total_seconds()) + 0.01)
        stoic.Runner(store, app).run_until_caught_up()  # its first step retries what is due
        attempts.append(only_failure(store, NAME).attempts)
    assert attempts == [1, 2, 3]
    again = only_failure(store, NAME)
    assert (again.status, again.next_retry_at, again.resolution) == (FailureStatus.DEAD, None, None)

    # Fixed: a retry of the dead failure resolves it and releases the stream.
    BROKEN.on = False
    ops.retry(dead.id, actor="dana", reason="fix deployed")
    stoic.Runner(store, app).run_until_caught_up()
    done = only_failure(store, NAME)
    assert (done.status, done.resolution, done.blocking, done.attempts) == (
        FailureStatus.RESOLVED, Resolution.MANUAL_RETRY, False, 3)
    assert applied_order(store, NAME) == [a1, b1, a2, a3]
    check_exactly_once(store, [NAME], upto=a3)


def test_a_schedule_of_one_attempt_is_dead_at_once(store: stoic.Store) -> None:
    app = stoic.App([FaultyLedger(NAME, fault, retry_schedule=stoic.RetrySchedule(max_attempts=1))])
    append_each(store, [("A", poison(1)), ("A", ev(2))])
    stoic.Runner(store, app).run_until_caught_up()
    failure = only_failure(store, NAME)
    assert (failure.status, failure.attempts, failure.next_retry_at) == (FailureStatus.DEAD, 1, None)
    assert failure.blocking and failure.parked == 1


def test_the_long_tail_of_a_long_schedule_keeps_retrying(store: stoic.Store) -> None:
    """Regression: with RetrySchedule(4 s x 2, max_attempts=100) the retry after attempt
    37 computed a date past year 9999 and raised OverflowError in the runner, so the
    projection's maintenance — and with it every batch — failed over and over."""
    app = stoic.App([FaultyLedger(NAME, fault, retry_schedule=stoic.RetrySchedule(max_attempts=100))])
    append_each(store, [("A", poison(1)), ("A", ev(2)), ("B", ev(3))])
    stoic.Runner(store, app).run_until_caught_up()
    failure = only_failure(store, NAME)
    store.query("UPDATE stoic_failures SET attempts = 40 WHERE id = ?", (failure.id,))  # long ago...
    ops = stoic.Operations(store)

    ops.retry(failure.id, actor="kim")
    stoic.Runner(store, app).run_until_caught_up()
    later = only_failure(store, NAME)
    assert (later.status, later.attempts) == (FailureStatus.RETRYING, 41)
    assert later.next_retry_at is not None and later.next_retry_at > store.now() + timedelta(days=300)

    BROKEN.on = False
    ops.retry(failure.id, actor="kim")
    stoic.Runner(store, app).run_until_caught_up()
    assert only_failure(store, NAME).status is FailureStatus.RESOLVED
    check_exactly_once(store, [NAME], upto=3)
