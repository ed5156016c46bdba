"""GET /metrics: valid Prometheus text whose store figures are the store's (lag =
head - checkpoint, failures by status, breaker, workers' heartbeat age) and whose
process counters move by what this process did (batches, retries, appends)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.apps import FaultyLedger, LedgerProjection

import stoic
from stoic.failures import BreakerPolicy, RetryPolicy

from ._support import ADMIN, NAMES, World, make_client

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: Any) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_store_figures_are_the_stores(world: World) -> None:
    world.store.append("late", [stoic.NewEvent("Deposited", {"amount": 1})] * 3)
    world.store.register_worker("metrics-worker", "host-a", 99, 30.0)
    world.post("/admin/projections/tally/pause", {"reason": "m"})
    samples = scrape(world.client)
    health = {h["name"]: h for h in world.get("/health/projections").json()}
    details = {d.name: d for d in world.store.projection_details()}
    head = world.store.head()
    assert value(samples, "stoic_store_head_position") == head == 9
    for name in NAMES:
        assert value(samples, "stoic_projection_position", projection=name) == details[name].position == 6
        assert value(samples, "stoic_projection_lag_events", projection=name) == head - details[name].position
        assert value(samples, "stoic_projection_lag_seconds", projection=name) >= 0
        assert value(samples, "stoic_projection_events_processed_total", projection=name) == 6
        assert value(samples, "stoic_projection_breaker_state", projection=name) == 0
        assert value(samples, "stoic_projection_holder_alive", projection=name) == 0
        assert value(samples, "stoic_projection_drifted_streams", projection=name) == 0
        assert value(samples, "stoic_projection_parked_events", projection=name) == health[name]["parked_events"]
        for status in ("retrying", "dead", "resolved", "skipped"):
            assert value(samples, "stoic_projection_failures", projection=name, status=status) == (
                health[name]["failures"].get(status, 0)), (name, status)
        statuses = {labels[1][1]: v for (metric, labels), v in samples.items()
                    if metric == "stoic_projection_status" and dict(labels)["projection"] == name}
        assert statuses[health[name]["status"]] == 1 and sum(statuses.values()) == 1
    assert value(samples, "stoic_projection_failures", projection="faulty", status="retrying") == 2
    assert value(samples, "stoic_projection_failures", projection="fragile", status="dead") == 2
    assert value(samples, "stoic_projection_parked_events", projection="faulty") == 2
    assert value(samples, "stoic_projection_status", projection="tally", status="paused") == 1
    assert value(samples, "stoic_workers_alive") == 1
    age = value(samples, "stoic_worker_heartbeat_age_seconds", worker="metrics-worker", hostname="host-a")
    assert 0 <= age < 10


def unique(prefix: str) -> str:
    """Process counters live as long as the process: fresh labels keep tests apart."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("backend", ["sqlite-memory"])
def test_batches_are_counted_and_timed(store: stoic.Store) -> None:
    name = unique("timed")
    app = stoic.App([LedgerProjection(name)])
    with make_client(store, app) as client:
        before = scrape(client)
        assert ("stoic_batch_duration_seconds_count", (("projection", name),)) not in before
        store.append("s", [stoic.NewEvent("Deposited", {"amount": 1})] * 7)
        stoic.Runner(store, app).run_until_caught_up(timeout=30)
        after = scrape(client)
    assert value(after, "stoic_batch_duration_seconds_count", projection=name) == 1
    assert 0 < value(after, "stoic_batch_duration_seconds_sum", projection=name) < 30
    assert value(after, "stoic_batch_duration_seconds_bucket", projection=name, le="+Inf") == 1
    assert value(after, "stoic_batch_events_total", projection=name) == 7
    assert value(after, "stoic_projection_events_processed_total", projection=name) == 7
    assert value(after, "stoic_projection_lag_events", projection=name) == 0


@pytest.mark.parametrize("backend", ["sqlite-memory"])
def test_appends_are_counted(store: stoic.Store) -> None:
    with make_client(store, None) as client:
        before = scrape(client)
        store.append("a", [stoic.NewEvent("Deposited", {"amount": 1})] * 3)
        store.append("b", [stoic.NewEvent("Deposited", {"amount": 1})])
        store.append_many([("c", [stoic.NewEvent("Deposited", {"amount": 1})] * 2, stoic.ANY),
                           ("d", [stoic.NewEvent("Deposited", {"amount": 1})], stoic.ANY)])
        after = scrape(client)
    assert value(after, "stoic_store_appends_total") - value(before, "stoic_store_appends_total") == 3
    assert value(after, "stoic_store_appended_events_total") - value(before, "stoic_store_appended_events_total") == 7
    assert value(after, "stoic_store_head_position") == 7


@pytest.mark.parametrize("backend", ["sqlite-memory", "postgres"])
def test_retries_and_the_breaker(store: stoic.Store) -> None:
    flaky, broken, down = unique("flaky"), unique("broken"), unique("down")
    calls: dict[str, int] = {}

    def once_then_fine(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        calls[flaky] = calls.get(flaky, 0) + 1
        if calls[flaky] == 1:
            raise stoic.TransientError("timeout talking to the index")

    def poison(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        if event.data.get("poison") and not calls.get("fixed"):
            raise ValueError("bad")

    def always_down(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        raise stoic.TransientError("connection refused")

    fast = RetryPolicy(initial_delay=0.001, max_delay=0.001, max_attempts=3)
    app = stoic.App([
        FaultyLedger(flaky, once_then_fine, retry_policy=fast),
        FaultyLedger(broken, poison, retry_schedule=stoic.RetrySchedule(first_delay=3600)),
    ])
    breaker_app = stoic.App([FaultyLedger(down, always_down, retry_policy=fast,
                                          breaker_policy=BreakerPolicy(cooldown=600))])
    store.append("s", [stoic.NewEvent("Deposited", {"amount": 1, "poison": True})])
    with make_client(store, app) as client:
        stoic.Runner(store, app).run_until_caught_up(timeout=30)
        samples = scrape(client)
        assert value(samples, "stoic_retries_total", projection=flaky, kind="transient") == 1
        assert ("stoic_retries_total", (("kind", "failure"), ("projection", broken))) not in samples

        (failure,) = store.list_failures(broken, None, None, 10, 0)
        calls["fixed"] = 1
        assert client.post(f"/admin/failures/{failure.id}/retry", headers=ADMIN).status_code == 200
        stoic.Runner(store, app).run_until_caught_up(timeout=30)
        samples = scrape(client)
        assert value(samples, "stoic_retries_total", projection=broken, kind="failure") == 1
        assert value(samples, "stoic_projection_failures", projection=broken, status="resolved") == 1

    with make_client(store, breaker_app) as client:
        with pytest.raises(stoic.CircuitOpen):
            stoic.Runner(store, breaker_app).run_until_caught_up(timeout=30)
        samples = scrape(client)
        assert value(samples, "stoic_projection_breaker_state", projection=down) == 2
        assert value(samples, "stoic_retries_total", projection=down, kind="transient") == 3
        assert value(samples, "stoic_projection_lag_events", projection=down) == 1
