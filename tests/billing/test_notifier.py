"""The flaky notifier: random service errors become failure records that
Operations lists, park their account's later events, and are retried in the
background until every movement is notified once the service recovers; an
outage is transient and opens the circuit breaker, which closes again after
the cool-down."""

from __future__ import annotations

import time

import pytest

import stoic
from stoic.examples.billing.app import make_app
from stoic.examples.billing.domain import MONEY_EVENTS
from stoic.examples.billing.projections import FlakyNotifier, SimulatedService
from stoic.examples.billing.workload import run_workload
from stoic.health import Status
from stoic.store import FailureStatus

NAME = FlakyNotifier.name
FAST_RETRY = stoic.RetryPolicy(initial_delay=0.01, multiplier=2.0, max_delay=0.05, max_attempts=3)
FAST_SCHEDULE = stoic.RetrySchedule(first_delay=0.1, multiplier=1.5, max_attempts=20)


def notified(store: stoic.Store) -> list[int]:
    return sorted(int(p) for (p,) in store.query("SELECT position FROM billing_notifications"))


def movements(store: stoic.Store) -> list[stoic.RecordedEvent]:
    return [e for e in store.iter_all() if e.type in MONEY_EVENTS]


def test_service_errors_are_recorded_retried_and_every_movement_is_notified_once_it_recovers(
    store: stoic.Store,
) -> None:
    service = SimulatedService(failure_rate=0.3, seed=11)
    app = make_app(service=service, retry_policy=FAST_RETRY, retry_schedule=FAST_SCHEDULE, batch_size=50)
    run_workload(store, accounts=8, operations=60, clients=2, seed=3)
    ops = stoic.Operations(store, projections=[p.name for p in app.projections])
    runner = stoic.Runner(store, app)

    assert runner.run_until_caught_up()[NAME] == store.head()  # the checkpoint moved on past the failures
    failing = ops.failures(projection=NAME)
    assert failing and {f.status for f in failing} == {FailureStatus.RETRYING}
    assert {f.error_class.rsplit(".", 1)[-1] for f in failing} == {"ServiceError"}
    assert all(f.event_type in MONEY_EVENTS and f.next_retry_at is not None for f in failing)
    assert len(notified(store)) < len(movements(store))  # failed and parked events are not applied yet
    # (no worker holds it between runs, so its status is "offline"; the causes say the rest)
    causes = {c.code: c.status for c in {h.name: h for h in ops.health()}[NAME].causes}
    assert causes["retrying_failures"] is Status.DEGRADED

    service.recover()
    deadline = time.monotonic() + 20
    while ops.failures(projection=NAME, status="retrying"):
        assert time.monotonic() < deadline, ops.failures(projection=NAME, status="retrying")
        time.sleep(0.1)
        runner.run_until_caught_up()  # the background retries run on their schedule

    assert notified(store) == [e.position for e in movements(store)]  # every movement, once
    assert {f.status for f in ops.failures(projection=NAME)} == {FailureStatus.RESOLVED}
    assert set(service.delivered) == {str(e.event_id) for e in movements(store)}
    assert service.errors >= len(failing)


def test_an_outage_opens_the_circuit_breaker_and_recovery_closes_it(store: stoic.Store) -> None:
    service = SimulatedService(seed=5)
    breaker = stoic.BreakerPolicy(cooldown=0.3)
    app = make_app(service=service, retry_policy=FAST_RETRY, breaker_policy=breaker)
    run_workload(store, accounts=4, operations=20, clients=2, seed=5)
    ops = stoic.Operations(store, projections=[p.name for p in app.projections])
    runner = stoic.Runner(store, app)

    service.outage(60)
    with pytest.raises(stoic.CircuitOpen):
        runner.run_until_caught_up()
    assert service.unavailable == FAST_RETRY.max_attempts  # retried with back-off, then stopped calling
    assert ops.failures(projection=NAME) == []  # transient: never a failure record
    causes = {c.code: c.status for c in {h.name: h for h in ops.health()}[NAME].causes}
    assert causes["breaker_open"] is Status.CRITICAL
    assert notified(store) == []

    service.outage(0)
    time.sleep(breaker.cooldown + 0.05)
    runner.run_until_caught_up()  # the half-open probe succeeds and the breaker closes
    assert notified(store) == [e.position for e in movements(store)]
    assert {c.code for c in {h.name: h for h in ops.health()}[NAME].causes} <= {"no_holder"}


def test_a_service_that_keeps_failing_leaves_dead_failures_an_operator_retries(store: stoic.Store) -> None:
    service = SimulatedService(failure_rate=1.0)
    app = make_app(service=service, retry_policy=FAST_RETRY,
                   retry_schedule=stoic.RetrySchedule(first_delay=0.05, multiplier=1.0, max_attempts=2))
    run_workload(store, accounts=3, operations=12, clients=1, seed=9)
    ops = stoic.Operations(store, projections=[p.name for p in app.projections])
    runner = stoic.Runner(store, app)
    runner.run_until_caught_up()
    deadline = time.monotonic() + 10
    while ops.failures(projection=NAME, status="retrying"):
        assert time.monotonic() < deadline
        time.sleep(0.06)
        runner.run_until_caught_up()
    dead = ops.failures(projection=NAME, status="dead")
    # the first movement of each account that had one; its later ones are parked behind it
    assert len(dead) == len({e.stream_id for e in movements(store)})
    assert all(f.attempts == 2 for f in dead)
    assert notified(store) == []

    service.recover()
    assert len(ops.retry_all(NAME, actor="test", reason="service fixed")) == len(dead)
    runner.run_until_caught_up()
    assert notified(store) == [e.position for e in movements(store)]
    assert {(f.status, f.resolution) for f in ops.failures(projection=NAME)} == {
        (FailureStatus.RESOLVED, stoic.store.Resolution.MANUAL_RETRY)}
