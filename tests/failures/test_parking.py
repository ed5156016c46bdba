"""Guarantee 4 under ``on_error="park"``: a poison event in stream A is recorded,
A's later events are parked behind it (counted, not applied) while stream B goes
on, health says degraded (retrying failure, parked stream); once the handler is
fixed, a retry — the background schedule's or an operator's — applies A's events
in their order, and the failure ends resolved with the matching resolution."""

from __future__ import annotations

import time

import pytest
from tests.apps import FaultyLedger, applied_order, check_applied, check_exactly_once, wait_until

import stoic
from stoic.health import Status
from stoic.store import FailureStatus, Resolution

from ._support import (
    Calls,
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
    wait_checkpoint,
    wait_failure,
    worker_backends,
)

NAME = "parking"
BROKEN = Switch()  # the bug: poison events fail while this is on


def make_app(schedule: stoic.RetrySchedule, calls: Calls) -> stoic.App:
    def fault(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        calls.add(event.position)
        if event.data.get("poison") and BROKEN.on:
            raise ValueError(f"cannot apply the event at position {event.position}")

    return stoic.App([FaultyLedger(NAME, fault, retry_schedule=schedule)])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["schedule", "operator"])
@worker_backends
def test_a_poison_event_parks_its_stream_until_fixed_and_retried(store: stoic.Store, how: str) -> None:
    schedule = (
        stoic.RetrySchedule(first_delay=0.2, multiplier=1, max_attempts=1000)
        if how == "schedule"
        else stoic.RetrySchedule(first_delay=3600, max_attempts=5)  # only an operator retries
    )
    calls = Calls()
    a1, b1, a2, b2, a3, b3, a4 = append_each(store, [
        ("A", ev(10)), ("B", ev(1)), ("A", poison(20)), ("B", ev(2)), ("A", ev(30)), ("B", ev(3)),
        ("A", ev(40, type="Withdrawn")),
    ])

    with WorkerThread(store, make_app(schedule, calls)):
        wait_checkpoint(store, NAME, a4)
        failure = only_failure(store, NAME)
        assert (failure.position, failure.stream_id, failure.event_type) == (a2, "A", "Deposited")
        assert failure.event_id == str(store.read_all(a2 - 1, 1)[0].event_id)
        assert failure.status is FailureStatus.RETRYING and failure.resolution is None
        assert failure.error_class == "ValueError" and str(a2) in failure.message
        assert "ValueError" in failure.traceback and failure.next_retry_at is not None
        assert failure.policy == "park" and failure.blocking
        assert failure.parked == 2  # a3, a4
        assert applied_order(store, NAME) == [a1, b1, b2, b3]  # B went on, A waits
        assert calls.at(a3) == [] and calls.at(a4) == [], "a parked event reached the handler"

        # Events arriving meanwhile: B's are applied, A's join the parked ones.
        b4, a5 = append_each(store, [("B", ev(4)), ("A", ev(50))])
        wait_until(lambda: only_failure(store, NAME).parked == 3 and b4 in applied_order(store, NAME),
                   10, "b4 applied and a5 parked")
        assert a5 not in applied_order(store, NAME)
        assert checkpoint(store, NAME) == store.head()  # parked events count as processed

        item = health(store, NAME)
        assert item.status is Status.DEGRADED, item
        assert codes(item) == {"retrying_failures", "parked_streams"}, item.causes
        assert "1 failure waiting for a retry" in cause(item, "retrying_failures")
        assert "1 stream parked" in cause(item, "parked_streams") and "3 events" in cause(item, "parked_streams")
        assert (item.parked_streams, item.parked_events, item.failures) == (1, 3, {"retrying": 1})

        if how == "schedule":
            # The background schedule keeps trying while the bug is there.
            wait_failure(store, NAME, attempts=2)
        else:
            time.sleep(0.6)  # more than a maintenance round (0.5 s): nothing retries by itself
            assert only_failure(store, NAME).attempts == 1
        assert applied_order(store, NAME) == [a1, b1, b2, b3, b4]

        BROKEN.on = False  # the fix is deployed
        if how == "operator":
            ops = stoic.Operations(store)
            asked = ops.retry(failure.id, actor="alice", reason="fix deployed")
            assert asked.retry_requested and asked.status is FailureStatus.RETRYING
        done = wait_failure(store, NAME, status=FailureStatus.RESOLVED)
        wait_until(lambda: len(applied_order(store, NAME)) == 9, 5, "every event applied")

        item = health(store, NAME)
        assert item.status is Status.HEALTHY, item.causes

    expected = Resolution.AUTO_RETRY if how == "schedule" else Resolution.MANUAL_RETRY
    assert done.resolution is expected
    assert not done.blocking and done.next_retry_at is None and done.parked == 3
    if how == "operator":
        assert (done.actor, done.note) == ("alice", "fix deployed")
    # A's events applied after the retry, in their order; nothing applied twice.
    assert applied_order(store, NAME) == [a1, b1, b2, b3, b4, a2, a3, a4, a5]
    check_applied(store, NAME)
    check_exactly_once(store, [NAME], upto=store.head())


def test_parked_events_wait_across_batches_and_other_streams_are_not_held(store: stoic.Store) -> None:
    """Small batches: the failure and its followers fall in different batches; the
    fast path (no savepoints) counts parked events too."""
    calls = Calls()
    plan = [("A", poison(7))] + [(s, ev(i)) for i in range(1, 13) for s in ("A", "B", "C")]
    positions = append_each(store, plan)
    app = make_app(stoic.RetrySchedule(first_delay=3600), calls)
    app.projection(NAME).batch_size = 4  # type: ignore[misc]

    assert stoic.Runner(store, app).run_until_caught_up() == {NAME: positions[-1]}

    failure = only_failure(store, NAME)
    a_positions = [p for (s, _), p in zip(plan, positions, strict=True) if s == "A"]
    assert failure.position == a_positions[0] and failure.parked == len(a_positions) - 1
    others = [p for (s, _), p in zip(plan, positions, strict=True) if s != "A"]
    assert applied_order(store, NAME) == others
    # A second run (a restarted worker) keeps the stream parked and parks new A events.
    store.append("A", [ev(100)])
    store.append("B", [ev(100)])
    stoic.Runner(store, app).run_until_caught_up()
    assert only_failure(store, NAME).parked == len(a_positions)
    assert applied_order(store, NAME) == [*others, store.head()]

    BROKEN.on = False
    stoic.Operations(store).retry(failure.id, actor="bob")
    stoic.Runner(store, app).run_until_caught_up()  # the first step does the retry
    assert only_failure(store, NAME).status is FailureStatus.RESOLVED
    assert applied_order(store, NAME)[len(others) + 1:] == [*a_positions, store.head() - 1]
    check_exactly_once(store, [NAME], upto=store.head())


def test_a_follower_that_fails_during_the_release_parks_the_rest_behind_it(store: stoic.Store) -> None:
    """Two poison events in one stream: the second is parked behind the first; when
    the first is fixed and retried, the second fails in its turn and the events after
    it stay parked — now behind the second failure, still in order."""
    calls = Calls()
    still_broken = {"second"}

    def fault(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        calls.add(event.position)
        bug = event.data.get("bug")
        if bug and (BROKEN.on or bug in still_broken):
            raise ValueError(f"bug {bug}")

    app = stoic.App([FaultyLedger(NAME, fault, retry_schedule=stoic.RetrySchedule(first_delay=3600))])
    a1, a2, b1, a3, a4, a5 = append_each(store, [
        ("A", ev(1)), ("A", ev(2, bug="first")), ("B", ev(3)), ("A", ev(4, bug="second")), ("A", ev(5)),
        ("A", ev(6))])
    stoic.Runner(store, app).run_until_caught_up()
    first = only_failure(store, NAME)
    assert (first.position, first.parked) == (a2, 3)

    BROKEN.on = False  # only the first bug is fixed
    ops = stoic.Operations(store)
    ops.retry(first.id, actor="lee")
    stoic.Runner(store, app).run_until_caught_up()
    done, second = sorted(store.list_failures(NAME), key=lambda f: f.id)
    assert (done.status, done.resolution, done.blocking) == (FailureStatus.RESOLVED, Resolution.MANUAL_RETRY, False)
    assert (second.position, second.status, second.blocking) == (a3, FailureStatus.RETRYING, True)
    assert second.parked == 2  # a4, a5 now wait behind the second failure
    assert applied_order(store, NAME) == [a1, b1, a2]

    still_broken.clear()
    ops.retry(second.id, actor="lee")
    stoic.Runner(store, app).run_until_caught_up()
    assert applied_order(store, NAME) == [a1, b1, a2, a3, a4, a5]
    check_exactly_once(store, [NAME], upto=a5)


def test_a_transient_error_during_a_retry_does_not_count_as_an_attempt(store: stoic.Store) -> None:
    calls = Calls()
    flaky = {"left": 2}

    def fault(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        calls.add(event.position)
        if event.data.get("poison"):
            if BROKEN.on:
                raise ValueError("poison")
            if flaky["left"]:
                flaky["left"] -= 1
                raise TimeoutError("the dependency is slow right now")

    app = stoic.App([FaultyLedger(NAME, fault, retry_schedule=stoic.RetrySchedule(first_delay=3600),
                                  retry_policy=stoic.RetryPolicy(initial_delay=0.01, max_attempts=5))])
    a1, a2 = append_each(store, [("A", poison(1)), ("A", ev(2))])
    stoic.Runner(store, app).run_until_caught_up()
    failure = only_failure(store, NAME)
    BROKEN.on = False
    stoic.Operations(store).retry(failure.id, actor="lee")
    runs = 0
    while only_failure(store, NAME).status is FailureStatus.RETRYING and runs < 5:
        stoic.Runner(store, app).run_until_caught_up()  # each pass: one maintenance round
        runs += 1
    done = only_failure(store, NAME)
    assert (done.status, done.attempts, done.resolution) == (FailureStatus.RESOLVED, 1, Resolution.MANUAL_RETRY)
    assert runs == 3 and len(calls.at(a1)) == 2 + 3  # fast path + isolated run, then three retries
    check_exactly_once(store, [NAME], upto=a2)
