"""Live mode: with a ``stoic worker`` idle at the head, an append made by another
process is applied within a bounded time (LISTEN/NOTIFY on PostgreSQL, polling of
``PRAGMA data_version`` on SQLite); and on PostgreSQL the worker keeps applying new
events after its LISTEN connection is killed (polling fallback, then reconnect),
and after every one of its connections is killed in the middle of a catch-up.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from tests.apps import (
    Processes,
    append_bulk,
    check_exactly_once,
    checkpoints,
    pg_admin,
    pg_schema,
    wait_until,
)

import stoic
from stoic import NewEvent

NAME = "ledger_a"
ONE = {"STOIC_TEST_PROJECTIONS": "1"}
APPLIED_BOUND_S = 2.0  #: an append must be applied within this, seconds (whatever the path)
PUSH_MEDIAN_S = 0.25  #: median latency showing a push (NOTIFY / data_version), not the 0.5 s idle re-read


def applied_at(store: stoic.Store, position: int, timeout: float) -> float:
    """Waits until the projection's checkpoint reaches ``position``; returns time.time() then."""
    wait_until(
        lambda: checkpoints(store).get(NAME, 0) >= position,
        timeout,
        f"position {position} to be applied",
        interval=0.002,
    )
    return time.time()


def listen_backends(admin: Any, schema: str) -> list[int]:
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN %%' AND query LIKE %s",
        (f"%{schema}%",),
    ).fetchall()
    return [int(r[0]) for r in rows]


@pytest.mark.timeout(60)
def test_append_by_another_process_is_applied_promptly(shared_url: str, tmp_path: Path) -> None:
    store = stoic.connect(shared_url)
    append_bulk(store, 50, seed=10, streams=5)
    with Processes(tmp_path) as procs:
        worker = procs.worker(shared_url, lease_ttl=5, claim_interval=0.2, env=ONE)
        wait_until(lambda: checkpoints(store).get(NAME) == 50, 20, "the worker to catch up")
        time.sleep(0.6)  # idle: waiting for appends, not re-reading
        live = procs.python(
            "-m",
            "tests.apps",
            "live",
            "--db",
            shared_url,
            "--count",
            "8",
            "--interval",
            "0.15",
            stdout=subprocess.PIPE,
        )
        latencies = []
        assert live.stdout is not None
        for line in live.stdout:
            record = json.loads(line)
            latencies.append(applied_at(store, record["position"], APPLIED_BOUND_S) - record["t"])
        assert live.wait(20) == 0
        worker.send(signal.SIGTERM)
        assert worker.wait(15) == 0
    assert len(latencies) == 8
    assert max(latencies) < APPLIED_BOUND_S
    assert statistics.median(latencies) < PUSH_MEDIAN_S, latencies
    check_exactly_once(store, [NAME], upto=58)
    store.close()
    print(f"\n{store.dialect}: append (other process) -> applied, ms: {sorted(round(x * 1000, 1) for x in latencies)}")


@pytest.mark.postgres
@pytest.mark.timeout(60)
def test_listen_connection_killed_worker_still_applies(make_url, tmp_path: Path) -> None:
    url = make_url("postgres")
    schema = pg_schema(url)
    store = stoic.connect(url)
    append_bulk(store, 20, seed=11, streams=5)
    with Processes(tmp_path) as procs, pg_admin() as admin:
        worker = procs.worker(url, lease_ttl=5, claim_interval=0.2, env=ONE)
        wait_until(lambda: checkpoints(store).get(NAME) == 20, 20, "the worker to catch up")
        old = wait_until(lambda: listen_backends(admin, schema), 10, "the worker's LISTEN connection")
        assert len(old) == 1, old
        time.sleep(0.3)

        def append_and_time(amount: int) -> float:
            position = store.append("after-kill", [NewEvent("Deposited", {"amount": amount})]).positions[0]
            sent = time.time()
            return applied_at(store, position, APPLIED_BOUND_S) - sent

        killed = admin.execute("SELECT pg_terminate_backend(%s)", (old[0],)).fetchone()[0]
        assert killed
        during = append_and_time(1)  # listener down or reconnecting: polling must cover it
        new = wait_until(
            lambda: [p for p in listen_backends(admin, schema) if p not in old],
            10,
            "the listener to reconnect",
        )
        time.sleep(0.6)
        after = [append_and_time(2 + i) for i in range(5)]
        worker.send(signal.SIGTERM)
        assert worker.wait(15) == 0, worker.log_text()[-2000:]
    assert during < APPLIED_BOUND_S and max(after) < APPLIED_BOUND_S
    assert statistics.median(after) < PUSH_MEDIAN_S, after
    check_exactly_once(store, [NAME], upto=26)
    store.close()
    print(
        f"\nLISTEN backend {old[0]} killed: next append applied after {during * 1000:.0f} ms; "
        f"listener back as backend {new[0]}; then applied after {[round(x * 1000, 1) for x in after]} ms"
    )


def backend_pids_of(admin: Any, pid: int) -> list[int]:
    """The PostgreSQL backends serving one local process, matched by its sockets' ports."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s)", (ports,)).fetchall()
    return [int(r[0]) for r in rows]


@pytest.mark.postgres
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc to find a worker's sockets")
@pytest.mark.timeout(90)
def test_every_connection_killed_mid_catch_up(make_url, tmp_path: Path) -> None:
    """pg_terminate_backend on all of a worker's connections (batch sessions, pool,
    listener), three times during a catch-up: the worker reconnects, re-takes its
    leases and applies every event exactly once."""
    url = make_url("postgres")
    store = stoic.connect(url)
    events = 20_000
    append_bulk(store, events, seed=12)
    names = ["ledger_a", "ledger_b"]
    with Processes(tmp_path) as procs, pg_admin() as admin:
        worker = procs.worker(url, lease_ttl=5, claim_interval=0.2, batch_size=100)
        progress = 0
        for round_ in range(3):
            wait_until(
                lambda p=progress: min(checkpoints(store).get(n, 0) for n in names) > p + 500,
                30,
                f"progress before kill {round_}",
            )
            pids = backend_pids_of(admin, worker.pid)
            # The two batch sessions at least; the pool's connection may still be reopening
            # after the previous round's kill (psycopg_pool refills in the background).
            assert len(pids) >= 2, pids
            for pid in pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            progress = min(checkpoints(store).values())
            assert progress < events
        wait_until(lambda: all(checkpoints(store).get(n) == events for n in names), 60, "the catch-up")
        assert worker.running
        worker.send(signal.SIGTERM)
        assert worker.wait(15) == 0, worker.log_text()[-3000:]
    check_exactly_once(store, names, upto=events)
    records = worker.records()
    reconnects = sum(1 for r in records if r.get("action") == "reconnect")
    assert reconnects >= 3
    bad = [r for r in records if r.get("level") == "critical" or "raw" in r]
    assert not bad, bad[:5]
    epochs = {s.name: s.epoch for s in store.projections()}
    assert all(e >= 4 for e in epochs.values()), epochs  # one new lease per kill
    store.close()
    print(f"\nkilled all worker connections 3 times: {reconnects} reconnects, epochs {epochs}")
