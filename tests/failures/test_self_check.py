"""The late-arrival self-check (ProjectionRunner.verify): every event at or below
the checkpoint must have been processed — applied, parked, failed or skipped. It
returns 0 on a healthy projection whatever its failures; a hand-corrupted counter
makes it return the difference and turns health critical with ``late_arrival``."""

from __future__ import annotations

import os

import pytest
from tests.apps import FaultyLedger

import stoic
from stoic.health import Status
from stoic.projection_runner import ProjectionRunner

from ._support import Switch, append_each, cause, codes, details, ev, failures, health, poison

NAME = "checked"
WORKER = "self-check-worker"
BROKEN = Switch()


def fault(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
    if event.data.get("poison") and BROKEN.on:
        raise ValueError("poison")


@pytest.fixture
def runner(store: stoic.Store) -> ProjectionRunner:  # type: ignore[misc]
    store.register_worker(WORKER, "test-host", os.getpid(), 60.0)  # a live holder, for health
    r = ProjectionRunner(store, FaultyLedger(NAME, fault, retry_schedule=stoic.RetrySchedule(first_delay=3600)),
                         WORKER, batch_size=3)
    yield r
    r.release()


def drain(r: ProjectionRunner) -> None:
    assert r.acquire() if r.lease is None else True
    while not r.step().idle:
        pass


def test_zero_on_a_healthy_projection_with_parked_failed_and_released_events(
    store: stoic.Store, runner: ProjectionRunner
) -> None:
    append_each(store, [("A", ev(1)), ("A", poison(2)), ("B", ev(3)), ("A", ev(4)), ("A", ev(5)), ("C", ev(6))])
    drain(runner)
    assert runner.position == store.head()
    assert failures(store, NAME)[0].parked == 2
    assert runner.verify() == 0
    assert details(store, NAME).verified_missing == 0
    item = health(store, NAME)
    assert "late_arrival" not in codes(item) and item.status is Status.DEGRADED  # the parked stream only

    BROKEN.on = False
    stoic.Operations(store).retry(failures(store, NAME)[0].id, actor="ivy")
    runner.release()
    stoic.Runner(store, stoic.App([runner.projection])).run_until_caught_up()  # does the retry
    assert failures(store, NAME)[0].status is stoic.store.FailureStatus.RESOLVED
    assert runner.acquire()
    assert runner.verify() == 0  # a release processes parked events without counting them twice
    assert health(store, NAME).status is Status.HEALTHY


def test_a_corrupted_counter_is_reported_and_health_turns_critical(
    store: stoic.Store, runner: ProjectionRunner
) -> None:
    append_each(store, [(f"s{i % 3}", ev(i)) for i in range(10)])
    drain(runner)
    assert runner.verify() == 0

    store.query("UPDATE stoic_projections SET events_processed = events_processed - 3 WHERE name = ?", (NAME,))

    assert runner.verify() == 3
    assert details(store, NAME).verified_missing == 3
    item = health(store, NAME)
    assert item.status is Status.CRITICAL, item.causes
    assert codes(item) == {"late_arrival"}
    assert "found 3 events at or below the checkpoint that were never processed" in cause(item, "late_arrival")

    store.query("UPDATE stoic_projections SET events_processed = events_processed + 3 WHERE name = ?", (NAME,))
    assert runner.verify() == 0  # the next check clears it
    assert health(store, NAME).status is Status.HEALTHY
