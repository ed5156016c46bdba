"""Graceful shutdown: SIGTERM or SIGINT to ``stoic worker`` in the middle of a
catch-up makes it finish the batch in hand, release its leases, remove its
worker row and exit 0 within a few seconds, leaving a checkpoint that agrees with
the ledger and the read model."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from tests.apps import Processes, append_bulk, check_exactly_once, checkpoints, projection_names, wait_until

import stoic

EVENTS = 20_000
NAMES = projection_names(2)
EXIT_BOUND_S = 5.0  #: how long the worker may take to exit after the signal, seconds


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.timeout(60)
def test_signal_mid_catch_up_exits_zero_and_releases(shared_url: str, tmp_path: Path, sig: signal.Signals) -> None:
    store = stoic.connect(shared_url)
    append_bulk(store, EVENTS, seed=2)
    with Processes(tmp_path) as procs:
        # A long lease ttl: leases found free afterwards were released, not expired.
        worker = procs.worker(shared_url, lease_ttl=30, claim_interval=0.2, batch_size=150)
        wait_until(
            lambda: all(checkpoints(store).get(n, 0) >= 300 for n in NAMES),
            30,
            "both projections to make progress",
        )
        holders = {s.name: s.holder for s in store.projections()}
        assert all(worker.owns(holders[n]) for n in NAMES), holders
        sent = time.monotonic()
        worker.send(sig)
        code = worker.wait(15)
        took = time.monotonic() - sent
    assert code == 0, worker.log_text()[-3000:]
    assert took < EXIT_BOUND_S, f"exit took {took:.2f} s"
    states = store.projections()
    assert [(s.name, s.holder) for s in states] == [(n, None) for n in NAMES], "leases not released"
    assert store.workers() == [], "worker row left behind"
    done = check_exactly_once(store, NAMES)
    # (On SQLite the two runner threads share one write lock and may progress unevenly.)
    assert all(done[n] > 0 for n in NAMES) and min(done.values()) < EVENTS, f"not mid catch-up: {done}"
    records = worker.records()
    actions = [r.get("action") for r in records]
    assert {"action": "shutdown_requested", "signal": sig.name}.items() <= next(
        r for r in records if r.get("action") == "shutdown_requested"
    ).items()
    assert actions.count("lease_released") == len(NAMES) and actions[-1] == "worker_stopped", actions[-10:]
    bad = [r for r in records if r.get("level") in ("error", "critical") or "raw" in r]
    assert not bad, bad[:5]
    store.close()
    print(f"\n{store.dialect} {sig.name}: exit 0 after {took:.2f} s, checkpoints {done}")


@pytest.mark.timeout(60)
def test_worker_that_crashes_exits_non_zero(shared_url: str, tmp_path: Path) -> None:
    """A worker whose loop dies (here: its registry table is gone) must not exit 0,
    or a supervisor that restarts on failure would leave it dead."""
    store = stoic.connect(shared_url)
    store.query("DROP TABLE stoic_workers")
    with Processes(tmp_path) as procs:
        worker = procs.worker(shared_url, lease_ttl=5, claim_interval=0.2)
        code = worker.wait(30)
    assert code not in (0, None), worker.log_text()[-2000:]
    assert any(r.get("action") == "worker_crashed" for r in worker.records()), worker.log_text()[-2000:]
    store.close()
