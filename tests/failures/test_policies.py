"""The three ``on_error`` policies for a permanent failure: ``park`` is in
test_parking.py; here ``halt`` (the projection stops right before the failing
event, health critical "halted", nothing after it is applied, a fixed retry then
applies everything in global order) and ``skip`` (recorded as skipped by policy,
the stream goes on)."""

from __future__ import annotations

import time

import pytest
from tests.apps import FaultyLedger, applied_order, check_applied, check_exactly_once, wait_until

import stoic
from stoic.health import Status
from stoic.store import FailureStatus, Resolution

from ._support import (
    Switch,
    WorkerThread,
    append_each,
    cause,
    checkpoint,
    codes,
    ev,
    health,
    only_failure,
    poison,
    wait_failure,
    worker_backends,
)

NAME = "policies"
BROKEN = Switch()


def fault(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
    if event.data.get("poison") and BROKEN.on:
        raise KeyError(f"no account for the event at position {event.position}")


def app(on_error: str, schedule: stoic.RetrySchedule | None = None, batch_size: int = 500) -> stoic.App:
    return stoic.App([FaultyLedger(
        NAME, fault, on_error=on_error, batch_size=batch_size,
        retry_schedule=schedule or stoic.RetrySchedule(first_delay=3600))])


@pytest.mark.timeout(60)
@worker_backends
def test_halt_stops_right_before_the_failing_event_until_it_is_retried(store: stoic.Store) -> None:
    batch_size = 500  # the failing event mid-batch; batch boundaries: the test below
    a1, b1, a2, b2, c1 = append_each(store, [
        ("A", ev(1)), ("B", ev(2)), ("A", poison(3)), ("B", ev(4)), ("C", ev(5))])

    # In process: run_until_caught_up stops at the failure and says where.
    assert stoic.Runner(store, app("halt", batch_size=batch_size)).run_until_caught_up() == {NAME: b1}
    failure = only_failure(store, NAME)
    assert (failure.position, failure.policy, failure.status) == (a2, "halt", FailureStatus.RETRYING)
    assert failure.blocking and failure.error_class == "KeyError"
    assert applied_order(store, NAME) == [a1, b1]

    with WorkerThread(store, app("halt", batch_size=batch_size)) as worker:
        wait_until(lambda: NAME in worker.runner.held, 5, "the worker to hold the projection")
        b3, c2 = append_each(store, [("B", ev(6)), ("C", ev(7))])
        time.sleep(0.8)  # the worker had time to apply them if it were going to
        assert checkpoint(store, NAME) == b1, "the checkpoint moved past a halted failure"
        assert applied_order(store, NAME) == [a1, b1]  # other streams wait too: strict global order
        item = health(store, NAME)
        assert item.status is Status.CRITICAL and "halted" in codes(item), item.causes
        assert f"halted at position {a2}" in cause(item, "halted")
        assert item.lag_events == store.head() - b1

        BROKEN.on = False
        stoic.Operations(store).retry(failure.id, actor="carol", reason="fix deployed")
        wait_until(lambda: checkpoint(store, NAME) == c2, 10, "the halted projection to catch up")

    done = only_failure(store, NAME)
    assert (done.status, done.resolution, done.blocking) == (FailureStatus.RESOLVED, Resolution.MANUAL_RETRY, False)
    assert applied_order(store, NAME) == [a1, b1, a2, b2, c1, b3, c2]  # global order
    check_exactly_once(store, [NAME], upto=c2)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_halt_at_any_place_in_a_batch_then_retried_in_global_order(store: stoic.Store, batch_size: int) -> None:
    """The failing event first, second or last in its batch (a2 is position 3)."""
    a1, b1, a2, b2, c1, a3 = append_each(store, [
        ("A", ev(1)), ("B", ev(2)), ("A", poison(3)), ("B", ev(4)), ("C", ev(5)), ("A", ev(6))])
    halting = app("halt", batch_size=batch_size)
    for _ in range(2):  # a restarted runner stays halted too
        assert stoic.Runner(store, halting).run_until_caught_up() == {NAME: b1}
    assert applied_order(store, NAME) == [a1, b1]
    BROKEN.on = False
    stoic.Operations(store).retry(only_failure(store, NAME).id, actor="carol")
    assert stoic.Runner(store, halting).run_until_caught_up() == {NAME: a3}
    assert applied_order(store, NAME) == [a1, b1, a2, b2, c1, a3]
    check_exactly_once(store, [NAME], upto=a3)


def test_halt_is_retried_by_the_background_schedule_too(store: stoic.Store) -> None:
    positions = append_each(store, [("A", ev(1)), ("A", poison(2)), ("B", ev(3))])
    halting = app("halt", stoic.RetrySchedule(first_delay=0.05, max_attempts=100))
    assert stoic.Runner(store, halting).run_until_caught_up() == {NAME: positions[0]}
    BROKEN.on = False
    time.sleep(0.1)  # the retry is due
    assert stoic.Runner(store, halting).run_until_caught_up() == {NAME: positions[-1]}
    assert wait_failure(store, NAME).resolution is Resolution.AUTO_RETRY
    assert applied_order(store, NAME) == positions
    check_exactly_once(store, [NAME], upto=positions[-1])


def test_skip_records_the_failure_as_skipped_and_goes_on(store: stoic.Store) -> None:
    a1, b1, a2, a3, b2, a4 = append_each(store, [
        ("A", ev(1)), ("B", ev(2)), ("A", poison(30)), ("A", ev(4)), ("B", ev(5)), ("A", ev(6))])

    assert stoic.Runner(store, app("skip")).run_until_caught_up() == {NAME: a4}

    failure = only_failure(store, NAME)
    assert (failure.position, failure.stream_id, failure.policy) == (a2, "A", "skip")
    assert (failure.status, failure.resolution) == (FailureStatus.SKIPPED, Resolution.POLICY_SKIP)
    assert not failure.blocking and failure.next_retry_at is None and failure.parked == 0
    assert failure.error_class == "KeyError" and failure.traceback
    # Later events of the same stream ARE applied; the failing one is not.
    assert applied_order(store, NAME) == [a1, b1, a3, b2, a4]
    check_applied(store, NAME, not_applied=[a2])
    assert codes(health(store, NAME)) == {"no_holder"}  # a policy skip needs nobody
    # Skipped is final: it is never retried, even after a fix.
    BROKEN.on = False
    stoic.Runner(store, app("skip")).run_until_caught_up()
    assert only_failure(store, NAME).status is FailureStatus.SKIPPED
    assert a2 not in applied_order(store, NAME)
