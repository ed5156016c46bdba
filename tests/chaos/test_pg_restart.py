"""The database goes away in the middle of a catch-up: two ``stoic worker`` processes
share the projections of a private PostgreSQL cluster (never the shared server),
which is stopped twice while they work — once cleanly (``pg_ctl stop -m fast``:
sessions ended, shut-down checkpoint) and once as a crash (``-m immediate``:
crash recovery at the next start) — and kept down for a few seconds each time.

While it is down, ``stoic status`` fails with a clear one-line error and a non-zero
exit, and the workers log that they are reconnecting, with back-off (no hot loop).
They never exit: when the server is back they reconnect, re-take their leases and
finish, and every event is applied exactly once to every projection.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from tests.apps import (
    Processes,
    append_bulk,
    check_exactly_once,
    checkpoints,
    projection_names,
    stoic_command,
    subprocess_env,
    wait_until,
)

import stoic

EVENTS = 20_000
NAMES = projection_names(2)
DOWN_S = 3.0  #: how long the server stays down each time, seconds
OUTAGES = ("fast", "immediate")
RECOVERY_BOUND_S = 15.0  #: after the restart, every projection must move again within this, seconds
MAX_RECONNECTS_PER_OUTAGE = 60  #: per worker: more would be a hot loop, not a back-off


def status(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*stoic_command(), "status", "--json", "--db", url], capture_output=True, text=True,
                          timeout=30, env=subprocess_env())


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_server_restart_mid_catch_up(private_pg: Any, tmp_path: Path) -> None:
    url = private_pg.url(f"t_{uuid.uuid4().hex[:12]}")
    store = stoic.connect(url)
    append_bulk(store, EVENTS, seed=31)
    store.close()  # reopened after the outages: this test's own pool is not under test
    options: dict[str, Any] = {
        "lease_ttl": 2.0,
        "claim_interval": 0.2,
        "batch_size": 200,
        "env": {"STOIC_TEST_PROJECTIONS": str(len(NAMES))},
    }
    outages: list[dict[str, Any]] = []
    with Processes(tmp_path) as procs:
        workers = [procs.worker(url, **options) for _ in range(2)]
        probe = stoic.connect(url)
        try:
            for number, mode in enumerate(OUTAGES, 1):
                # At a quarter, then half, of the total work (events x projections).
                target = EVENTS * len(NAMES) * number // (2 * len(OUTAGES))
                wait_until(lambda t=target, p=probe: sum(checkpoints(p).values()) >= t,  # type: ignore[misc]
                           40, f"progress to {target} before outage {number}", interval=0.05)
                before = checkpoints(probe)
                assert min(before.values()) < EVENTS, f"caught up before the outage: {before}"
                probe.close()
                down_at = time.monotonic()
                private_pg.stop(mode)
                # Down: the status command fails clearly, and nobody exits.
                result = status(url)
                assert result.returncode != 0, result.stdout[-2000:]
                assert "PostgreSQL unavailable" in result.stderr and "Connection refused" in result.stderr, (
                    result.stderr[-2000:])
                time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_at)))
                assert all(w.running for w in workers), [w.log_text()[-2000:] for w in workers]
                private_pg.start()
                up_at = time.monotonic()
                probe = stoic.connect(url)

                def moved(b: dict[str, int] = before, p: stoic.Store = probe) -> dict[str, int] | None:
                    cps = checkpoints(p)
                    # Every projection that was mid catch-up moves again (within the
                    # runners' longest back-off, RETRY_MAX_S = 10 s, plus a claim).
                    return cps if all(cps[n] > b[n] for n in NAMES if b[n] < EVENTS) else None

                resumed = wait_until(
                    moved,
                    RECOVERY_BOUND_S,
                    f"progress after restart {number}",
                    interval=0.05,
                )
                outages.append({"mode": mode, "down_s": round(up_at - down_at, 2),
                                "resumed_after_s": round(time.monotonic() - up_at, 2), "at": before,
                                "first_progress": resumed, "status_error": result.stderr.strip()[-300:]})
            wait_until(lambda: all(checkpoints(probe).get(n) == EVENTS for n in NAMES), 60, "the catch-up",
                       interval=0.1)
            # Up again: the status command works, and health shows every projection
            # healthy at the head, with no failure recorded and the breaker closed.
            result = status(url)
            assert result.returncode == 0, result.stderr[-2000:]
            health = [(h.name, h.status.value, h.lag_events, h.failures, h.breaker_state)
                      for h in stoic.Operations(probe).health()]
            assert health == [(n, "healthy", 0, {}, "closed") for n in NAMES], health
        finally:
            probe.close()
            if not private_pg.running:  # a failed assertion while it was down
                private_pg.start()
        assert all(w.running for w in workers), [w.log_text()[-2000:] for w in workers]
        for w in workers:
            w.send(signal.SIGTERM)
        codes = [w.wait(20) for w in workers]

    assert codes == [0, 0], [w.log_text()[-3000:] for w in workers]
    store = stoic.connect(url)
    check_exactly_once(store, NAMES, upto=EVENTS)
    assert store.list_failures() == [], "a lost connection was recorded as an event failure"
    actions: list[Counter[str]] = []
    for w in workers:
        records = w.records()
        counts = Counter(str(r.get("action")) for r in records)
        actions.append(counts)
        bad = [r for r in records if r.get("level") == "critical" or "raw" in r]
        assert not bad, bad[:5]
        assert counts["worker_crashed"] == 0
        # It noticed (projection threads, heartbeat or coordinator) and backed off.
        noticed = counts["reconnect"] + counts["heartbeat_failed"] + counts["rebalance_failed"]
        assert noticed >= len(OUTAGES), counts
        assert counts["reconnect"] <= MAX_RECONNECTS_PER_OUTAGE * len(OUTAGES), counts
    # Each projection lost its session and was re-taken (a new lease, so a new epoch) at
    # least once; a runner still backing off from the first outage may span the second.
    epochs = {s.name: s.epoch for s in store.projections()}
    assert all(e >= 2 for e in epochs.values()), epochs
    store.close()
    print(f"\noutages: {outages}\nepochs {epochs}\nworker log actions: {[dict(a) for a in actions]}")
