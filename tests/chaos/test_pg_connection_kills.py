"""Connections killed during a catch-up: two ``stoic worker`` processes share four
projections on PostgreSQL; at random moments the test terminates
(``pg_terminate_backend``) a random subset of one worker's connections — batch
sessions, pool connections (heartbeat, rebalance), the LISTEN connection — again and
again. Only the workers' own backends are chosen (matched by their sockets), so
other users of the shared server are not touched.

The workers reconnect, re-take their leases (fenced by a new epoch) and go on; no
worker exits, no lost connection is recorded as an event failure, and every event is
applied exactly once to every projection.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from tests.apps import (
    Processes,
    append_bulk,
    backend_pids,
    check_exactly_once,
    checkpoints,
    pg_admin,
    projection_names,
    wait_until,
)

import stoic

EVENTS = 15_000
NAMES = projection_names(4)
KILLS = 8


@pytest.mark.postgres
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc to find a worker's sockets")
@pytest.mark.timeout(90)
def test_connections_killed_at_random_during_catch_up(make_url, tmp_path: Path) -> None:
    rng = random.Random(20260402)
    url = make_url("postgres")
    store = stoic.connect(url)
    append_bulk(store, EVENTS, seed=41)
    options = {"lease_ttl": 2.0, "claim_interval": 0.2, "batch_size": 100,
               "env": {"STOIC_TEST_PROJECTIONS": str(len(NAMES))}}
    kills: list[tuple[int, int, int, dict[str, int]]] = []  # (worker index, killed, of, checkpoints)
    with Processes(tmp_path) as procs, pg_admin() as admin:
        workers = [procs.worker(url, **options) for _ in range(2)]  # type: ignore[arg-type]
        wait_until(lambda: sum(checkpoints(store).values()) >= 1000, 30, "the catch-up to start")
        while len(kills) < KILLS:
            time.sleep(rng.uniform(0.2, 0.9))
            index = rng.randrange(len(workers))
            pids = backend_pids(admin, workers[index].pid)
            if not pids:
                continue  # between connections (it is reconnecting): try again
            victims = rng.sample(pids, rng.randint(1, len(pids)))
            for pid in victims:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            cps = checkpoints(store)
            kills.append((index, len(victims), len(pids), cps))
            assert min(cps.get(n, 0) for n in NAMES) < EVENTS, f"caught up before kill {len(kills)}: {cps}"
        wait_until(lambda: all(checkpoints(store).get(n) == EVENTS for n in NAMES), 60, "the catch-up",
                   interval=0.05)
        assert all(w.running for w in workers), [w.log_text()[-2000:] for w in workers]
        for w in workers:
            w.send(signal.SIGTERM)
        codes = [w.wait(15) for w in workers]

    assert codes == [0, 0], [w.log_text()[-3000:] for w in workers]
    check_exactly_once(store, NAMES, upto=EVENTS)
    assert store.list_failures() == [], "a lost connection was recorded as an event failure"
    actions = Counter()
    for w in workers:
        for r in w.records():
            actions[str(r.get("action"))] += 1
            assert r.get("level") != "critical" and "raw" not in r, r
    # A killed batch session shows as a reconnect and a new lease of that projection.
    assert actions["reconnect"] >= 1, actions
    epochs = {s.name: s.epoch for s in store.projections()}
    assert sum(epochs.values()) > len(NAMES) + 1, epochs
    store.close()
    print(f"\n{len(kills)} kills (worker, killed, of its backends): {[k[:3] for k in kills]}; "
          f"epochs {epochs}; actions {dict(actions)}")
