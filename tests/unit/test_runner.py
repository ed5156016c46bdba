"""stoic.runner: back-off with full jitter, worker ids, Runner arguments."""

from __future__ import annotations

import os
import random
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

import stoic
from stoic.runner import RETRY_INITIAL_S, RETRY_MAX_S, backoff_delay, new_worker_id


@given(
    attempt=st.integers(0, 10_000),
    initial=st.floats(0.0001, 10.0),
    cap=st.floats(0.0001, 100.0),
)
def test_backoff_stays_within_its_bounds(attempt: int, initial: float, cap: float) -> None:
    delay = backoff_delay(attempt, initial=initial, cap=cap)
    assert 0.0 <= delay <= min(cap, initial * 2 ** min(attempt, 30))
    assert delay <= cap


@given(attempt=st.integers(0, 10_000))
def test_default_backoff_never_exceeds_the_maximum(attempt: int) -> None:
    assert 0.0 <= backoff_delay(attempt) <= min(RETRY_MAX_S, RETRY_INITIAL_S * 2 ** min(attempt, 64))


def test_backoff_grows_exponentially_and_is_jittered() -> None:
    state = random.getstate()
    try:
        random.seed(20240517)
        for attempt, bound in [(0, 0.1), (1, 0.2), (3, 0.8), (20, 5.0)]:
            samples = [backoff_delay(attempt, initial=0.1, cap=5.0) for _ in range(2000)]
            assert max(samples) <= bound
            assert max(samples) > 0.95 * bound  # the whole range is used ...
            assert min(samples) < 0.05 * bound  # ... from (almost) zero: full jitter
            assert 0.4 * bound < sum(samples) / len(samples) < 0.6 * bound
    finally:
        random.setstate(state)


def test_worker_ids_name_the_host_and_process_and_are_unique() -> None:
    ids = {new_worker_id() for _ in range(100)}
    assert len(ids) == 100
    for worker_id in ids:
        assert worker_id.startswith(f"{socket.gethostname()}-{os.getpid()}-")


class Counter(stoic.Projection):
    name = "counter"

    @stoic.handles_all
    def any_event(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None: ...


@pytest.mark.parametrize(("lease_ttl", "claim_interval"), [(0, 1.0), (-1, 1.0), (6.0, 0), (6.0, -0.5)])
def test_runner_refuses_non_positive_intervals(lease_ttl: float, claim_interval: float) -> None:
    with pytest.raises(stoic.ConfigurationError):
        stoic.Runner(None, stoic.App([Counter]), lease_ttl=lease_ttl, claim_interval=claim_interval)  # type: ignore[arg-type]


def test_runner_selects_projections_by_name() -> None:
    class Other(Counter):
        name = "other"

    runner = stoic.Runner(None, stoic.App([Counter, Other]), projections=["other"], worker_id="w-1")  # type: ignore[arg-type]
    assert [p.name for p in runner.projections] == ["other"]
    assert runner.worker_id == "w-1"
