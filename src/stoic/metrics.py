"""Prometheus metrics.

Two kinds, on one registry (:data:`REGISTRY`):

- **measured in this process** — batch durations, retries, appends: counters
  and histograms updated where the work happens (cheap: one lock per batch);
- **read from the store at scrape time** — lag, checkpoint, failures by
  status, breaker, health, worker heartbeats: the database is the truth
  shared by every worker, so any process (an API without a worker included)
  reports the same numbers.

The metric names are part of the public interface: the alert rules in
``deploy/prometheus/stoic-alerts.yml`` use them, and a test keeps both in step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stoic.health import Status
from stoic.store import FailureStatus

if TYPE_CHECKING:
    from stoic.operations import Operations

REGISTRY = CollectorRegistry(auto_describe=True)

BATCH_SECONDS = Histogram(
    "stoic_batch_duration_seconds", "Time to apply and commit one batch of a projection.",
    ["projection"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
BATCH_EVENTS = Counter(
    "stoic_batch_events", "Events applied by this process's batches.", ["projection"], registry=REGISTRY)
RETRIES = Counter(
    "stoic_retries", "Retries made by this process: 'transient' (in-process back-off of a batch) and "
    "'failure' (a background or requested retry of a recorded failure).", ["projection", "kind"],
    registry=REGISTRY)
APPENDS = Counter("stoic_store_appends", "Append calls committed by this process.", registry=REGISTRY)
APPENDED_EVENTS = Counter("stoic_store_appended_events", "Events appended by this process.", registry=REGISTRY)

_BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
_lock = threading.Lock()


class StoreCollector(Collector):
    """Reads the shared state from the store at every scrape."""

    def __init__(self, operations: Operations) -> None:
        self.operations = operations

    def describe(self) -> list[Metric]:
        return []  # collected on demand: nothing to read at registration

    def collect(self) -> Iterator[Metric]:
        status = self.operations.status()
        head = GaugeMetricFamily("stoic_store_head_position", "Position of the newest event in the store.")
        head.add_metric([], status.head)
        yield head
        lag = GaugeMetricFamily("stoic_projection_lag_events", "Events committed but not yet processed.",
                                labels=["projection"])
        lag_s = GaugeMetricFamily("stoic_projection_lag_seconds", "Age of the oldest unprocessed event.",
                                  labels=["projection"])
        position = GaugeMetricFamily("stoic_projection_position", "The projection's checkpoint.",
                                     labels=["projection"])
        processed = CounterMetricFamily("stoic_projection_events_processed",
                                        "Events processed by the projection (restarts at 0 on reset).",
                                        labels=["projection"])
        breaker = GaugeMetricFamily("stoic_projection_breaker_state",
                                    "Circuit breaker: 0 closed, 1 half-open, 2 open.", labels=["projection"])
        health = GaugeMetricFamily("stoic_projection_status", "1 for the projection's current health status.",
                                   labels=["projection", "status"])
        failures = GaugeMetricFamily("stoic_projection_failures", "Failure records by status.",
                                     labels=["projection", "status"])
        parked = GaugeMetricFamily("stoic_projection_parked_events", "Events parked behind open failures.",
                                   labels=["projection"])
        drift = GaugeMetricFamily("stoic_projection_drifted_streams",
                                  "Streams whose read model differed from their events at the last continuous check.",
                                  labels=["projection"])
        holder = GaugeMetricFamily("stoic_projection_holder_alive", "1 when a live worker holds the projection.",
                                   labels=["projection"])
        for h in status.projections:
            lag.add_metric([h.name], h.lag_events)
            lag_s.add_metric([h.name], h.lag_seconds)
            position.add_metric([h.name], h.position)
            processed.add_metric([h.name], h.events_processed)
            breaker.add_metric([h.name], _BREAKER_VALUES.get(h.breaker_state, 0))
            for value in Status:
                health.add_metric([h.name, value.value], 1.0 if h.status is value else 0.0)
            for failure_status in FailureStatus:
                failures.add_metric([h.name, failure_status.value], h.failures.get(failure_status.value, 0))
            parked.add_metric([h.name], h.parked_events)
            holder.add_metric([h.name], 1.0 if h.holder and h.holder_alive else 0.0)
            drift.add_metric([h.name], h.drifted_streams)
        yield from (lag, lag_s, position, processed, breaker, health, failures, parked, holder, drift)
        alive = GaugeMetricFamily("stoic_workers_alive", "Workers whose heartbeat has not expired.")
        alive.add_metric([], sum(w.alive for w in status.workers))
        yield alive
        age = GaugeMetricFamily("stoic_worker_heartbeat_age_seconds", "Seconds since each worker's last heartbeat.",
                                labels=["worker", "hostname"])
        for w in status.workers:
            age.add_metric([w.worker_id, w.hostname], max(0.0, (status.at - w.heartbeat_at).total_seconds()))
        yield age


def render(operations: Operations) -> bytes:
    """Returns the Prometheus text exposition of this process's metrics and the store's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessMetrics())
    registry.register(StoreCollector(operations))
    with _lock:  # Operations keeps throughput samples: one scrape at a time
        return generate_latest(registry)


class _ProcessMetrics(Collector):
    """Re-exposes :data:`REGISTRY` so one scrape holds both kinds."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
