"""Transient errors are retried in process with back-off and never become failure
records; a dependency that stays down opens the circuit breaker, which is stored
(every worker and every new connection sees it), rests for its cool-down without
calling the handler, probes with one half-open batch, and closes on recovery."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from tests.apps import FaultyLedger, applied_order, check_exactly_once, wait_until

import stoic
from stoic.health import Status

from ._support import (
    Calls,
    Switch,
    WorkerThread,
    append_each,
    cause,
    checkpoint,
    codes,
    details,
    ev,
    failures,
    health,
    only_failure,
)

NAME = "flaky"
RETRY = stoic.RetryPolicy(initial_delay=0.01, max_attempts=3)
DOWN = Switch()  # the dependency is down while this is on


class QuotaExceeded(Exception):
    """A user-defined error that only a Classifier makes transient."""


def failing_times(n: int, exc: Callable[[], BaseException], calls: Calls, at: int) -> Callable[..., None]:
    """A fault that raises ``exc()`` the first ``n`` times the event at ``at`` is applied."""

    def fault(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        if event.position == at:
            calls.add(event.position)
            if len(calls.at(at)) <= n:
                raise exc()

    return fault


KINDS: dict[str, tuple[Callable[[], BaseException], str]] = {
    "TimeoutError": (lambda: TimeoutError("read timed out"), "builtin"),
    "TransientError": (lambda: stoic.TransientError("try again later"), "builtin"),
    "QuotaExceeded via the app's classifier": (lambda: QuotaExceeded("429"), "app"),
    "QuotaExceeded via the projection's classifier": (lambda: QuotaExceeded("429"), "projection"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_transient_error_is_retried_in_process_and_never_recorded(store: stoic.Store, kind: str) -> None:
    make, where = KINDS[kind]
    failures_before_success = RETRY.max_attempts - 1
    positions = append_each(store, [("A", ev(i)) for i in range(1, 4)] + [("B", ev(9)), ("A", ev(4))])
    calls = Calls()
    classifier = stoic.Classifier(transient=(QuotaExceeded,))
    projection = FaultyLedger(
        NAME, failing_times(failures_before_success, make, calls, positions[1]), retry_policy=RETRY,
        classifier=classifier if where == "projection" else None)
    app = stoic.App([projection], classifier=classifier if where == "app" else None)

    assert stoic.Runner(store, app).run_until_caught_up() == {NAME: positions[-1]}

    assert len(calls.at(positions[1])) == failures_before_success + 1
    assert failures(store, NAME) == []
    assert applied_order(store, NAME) == positions  # each once, in global order
    check_exactly_once(store, [NAME], upto=positions[-1])
    assert (details(store, NAME).breaker_state, details(store, NAME).breaker_failures) == ("closed", 0)


def test_without_a_classifier_the_same_error_is_permanent(store: stoic.Store) -> None:
    """The contrast: QuotaExceeded is not transient by itself, so it is recorded."""
    positions = append_each(store, [("A", ev(1)), ("A", ev(2))])
    calls = Calls()
    fault = failing_times(100, lambda: QuotaExceeded("429"), calls, positions[0])
    app = stoic.App([FaultyLedger(NAME, fault, retry_policy=RETRY)])
    stoic.Runner(store, app).run_until_caught_up()
    failure = only_failure(store, NAME)
    assert failure.error_class.endswith("QuotaExceeded") and failure.parked == 1
    assert len(calls.at(positions[0])) == 2  # the fast path, then the isolated re-run


def test_a_projection_classifier_is_asked_before_the_apps(store: stoic.Store) -> None:
    positions = append_each(store, [("A", ev(1))])
    calls = Calls()
    projection = FaultyLedger(
        NAME, failing_times(100, lambda: QuotaExceeded("429"), calls, positions[0]), retry_policy=RETRY,
        classifier=stoic.Classifier(permanent=(QuotaExceeded,)))
    app = stoic.App([projection], classifier=stoic.Classifier(transient=(QuotaExceeded,)))
    stoic.Runner(store, app).run_until_caught_up()
    assert only_failure(store, NAME).error_class.endswith("QuotaExceeded")
    # Permanent: no in-process retries, only the batch's one isolated re-run.
    assert len(calls.at(positions[0])) == 2


def down_dependency(calls: Calls) -> Callable[..., None]:
    def fault(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        calls.add(event.position)
        if DOWN.on:
            raise ConnectionError("payments API: connection refused")

    return fault


@pytest.mark.timeout(60)
def test_a_dependency_that_stays_down_opens_the_breaker_until_a_probe_succeeds(shared_url: str) -> None:
    cooldown = 0.5
    store = stoic.connect(shared_url)
    calls = Calls()
    positions = append_each(store, [("A", ev(i)) for i in range(1, 6)])

    def app() -> stoic.App:
        return stoic.App([FaultyLedger(NAME, down_dependency(calls), retry_policy=RETRY,
                                       breaker_policy=stoic.BreakerPolicy(cooldown=cooldown))])

    # Opens after max_attempts transient errors in a row.
    with pytest.raises(stoic.CircuitOpen, match="3 transient errors in a row"):
        stoic.Runner(store, app()).run_until_caught_up()
    opened = time.monotonic()
    assert len(calls) == RETRY.max_attempts
    row = details(store, NAME)
    assert (row.breaker_state, row.breaker_failures, row.position) == ("open", 3, 0)
    assert row.breaker_opened_at is not None
    assert "3 transient errors in a row; last: ConnectionError: payments API: connection refused" in (
        row.breaker_reason or "")
    assert failures(store, NAME) == []

    # Stored: a new connection sees it, and a new Runner respects it without calling the handler.
    other = stoic.connect(shared_url)
    try:
        assert details(other, NAME).breaker_state == "open"
        with pytest.raises(stoic.CircuitOpen):
            stoic.Runner(other, app()).run_until_caught_up()
        assert len(calls) == RETRY.max_attempts
        sentence = cause(health(other, NAME), "breaker_open")
        assert "after 3 transient errors in a row" in sentence and "connection refused" in sentence
    finally:
        other.close()

    # A worker (a new Runner): no call during the cool-down, then one half-open probe.
    with WorkerThread(store, app()):
        item = wait_until(lambda: (h := health(store, NAME)).holder_alive and h, 5, "the worker to hold it")
        assert item.status is Status.CRITICAL and "breaker_open" in codes(item), item.causes
        wait_until(lambda: len(calls) >= 4, 10, "the first probe")
        first_probe = calls.items[3][0]
        assert first_probe - opened >= cooldown * 0.9, "probed during the cool-down"
        wait_until(lambda: len(calls) >= 5, 10, "the second probe")
        second_probe = calls.items[4][0]
        assert second_probe - first_probe >= cooldown * 0.9, "a failed probe did not re-open the breaker"
        assert [p for _, p in calls.items] == [positions[0]] * 5  # one event per probe batch
        wait_until(lambda: details(store, NAME).breaker_failures == 5, 5, "the failed probe to re-open it")
        assert details(store, NAME).breaker_state == "open"

        DOWN.on = False  # the dependency recovers
        wait_until(lambda: checkpoint(store, NAME) == positions[-1], 10, "catch-up after recovery")
        # The breaker closes right after the probe batch commits.
        row = wait_until(lambda: (d := details(store, NAME)).breaker_state == "closed" and d, 5, "closed")
        assert (row.breaker_state, row.breaker_failures, row.breaker_opened_at) == ("closed", 0, None)
        assert "breaker_open" not in codes(health(store, NAME))
    assert failures(store, NAME) == []
    check_exactly_once(store, [NAME], upto=positions[-1])
    store.close()


def test_the_probe_runs_half_open(shared_url: str) -> None:
    """During the probe batch the stored breaker says half_open (health: degraded)."""
    store = stoic.connect(shared_url)
    seen: list[tuple[str, Status, set[str]]] = []
    calls = Calls()
    append_each(store, [("A", ev(1))])

    def fault(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        calls.add(event.position)
        if len(calls) > RETRY.max_attempts:  # the probe: look at the stored state from outside
            item = health(store, NAME)
            seen.append((details(store, NAME).breaker_state, item.status, codes(item)))
            return
        raise TimeoutError("down")

    app = stoic.App([FaultyLedger(NAME, fault, retry_policy=RETRY,
                                  breaker_policy=stoic.BreakerPolicy(cooldown=0.3))])
    with pytest.raises(stoic.CircuitOpen):
        stoic.Runner(store, app).run_until_caught_up()
    time.sleep(0.35)
    assert stoic.Runner(store, app).run_until_caught_up() == {NAME: 1}
    assert seen == [("half_open", Status.DEGRADED, {"breaker_half_open"})]  # one probe batch, half-open
    assert details(store, NAME).breaker_state == "closed"
    store.close()
