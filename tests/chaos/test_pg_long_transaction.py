"""Long-running transactions on PostgreSQL, while appenders and workers run.

1. A slow append: one appender's transaction takes the append lock (the schema's
   ``pg_advisory_xact_lock``, docs/ordering.md), inserts its event and then stays open
   for a few seconds before it commits. Every other append waits behind the lock, so
   the head does not move and no event becomes visible past it; projections sit at
   the head with nothing to read. When it commits, its event has the next position,
   the waiting appends follow, and the projections skip nothing.
2. An unrelated long transaction holding an old snapshot does not hold anything back:
   appends go on and projections keep up (the cost that ordering by transaction id
   would pay, and this design does not).

At the end every acknowledged append is stored once at gap-free positions and every
event is applied exactly once to every projection.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.apps import (
    PG_ADMIN_URL,
    AppenderThread,
    Processes,
    append_bulk,
    backend_pids,
    calls_spanning,
    check_exactly_once,
    checkpoints,
    pg_admin,
    pg_schema,
    projection_names,
    wait_until,
)

import stoic
from stoic.stores.postgres.store import PostgresStore, Q

NAMES = projection_names(2)
HOLD_S = 3.0  #: how long the slow append keeps its transaction open, seconds
SNAPSHOT_S = 2.0  #: how long the unrelated transaction keeps its snapshot, seconds


class SlowCommitStore(PostgresStore):
    """A store whose appends run the same statements as PostgresStore's — append lock,
    insert, notify — and then keep the transaction open ``hold`` seconds before the
    commit (a slow client, a long commit, a GC pause at the wrong moment)."""

    def __init__(self, url: str, hold: float) -> None:
        super().__init__(url)
        self.hold = hold
        self.locked = threading.Event()

    def _execute_append(self, params: dict[str, str]) -> list[tuple[int, int, int]]:
        with self._connection() as conn, conn.transaction():
            conn.execute(Q["append_lock"], (self._append_key,))
            rows = conn.execute(Q["append"], params).fetchall()
            conn.execute(Q["notify"], (self.channel,))
            self.locked.set()
            time.sleep(self.hold)
        return rows  # type: ignore[return-value]


def waiting_on_advisory_lock(admin: Any) -> int:
    """How many of this process's backends wait for an advisory lock."""
    pids = backend_pids(admin, os.getpid())
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND wait_event_type = 'Lock' "
        "AND wait_event = 'advisory'", (pids,)).fetchone()
    return int(row[0])


@pytest.mark.postgres
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc to find our backends")
@pytest.mark.timeout(90)
def test_open_append_transaction_blocks_appends_and_nothing_is_skipped(make_url, tmp_path: Path) -> None:
    url = make_url("postgres")
    store = stoic.connect(url)
    append_bulk(store, 2000, seed=51, streams=40)
    appenders = [AppenderThread(url, f"app{k}", seed=k) for k in range(3)]
    slow = SlowCommitStore(url, HOLD_S)
    outcome: dict[str, Any] = {}

    def slow_append() -> None:
        try:
            outcome["result"] = slow.append("slow-stream", [stoic.NewEvent("Deposited", {"amount": 7})],
                                            expected_version=stoic.NO_STREAM)
        except BaseException as exc:  # asserted on below
            outcome["error"] = exc

    with Processes(tmp_path) as procs, pg_admin() as admin:
        workers = [procs.worker(url, lease_ttl=3, claim_interval=0.2, batch_size=100,
                                env={"STOIC_TEST_PROJECTIONS": str(len(NAMES))}) for _ in range(2)]
        wait_until(lambda: all(checkpoints(store).get(n) == 2000 for n in NAMES), 30, "the first catch-up")
        for a in appenders:
            a.start()
        wait_until(lambda: store.head() >= 2300, 20, "the appenders to be running")

        # -- 1. the slow append holds the append lock ------------------------------
        slow_thread = threading.Thread(target=slow_append, name="slow-append", daemon=True)
        slow_thread.start()
        assert slow.locked.wait(10), outcome
        locked_at = time.monotonic()
        head_at_lock = store.head()
        waiting, lags, heads = 0, [], set()
        while time.monotonic() - locked_at < HOLD_S - 0.5:
            heads.add(store.head())
            assert store.read_all(after=head_at_lock) == [], "an event became visible past the open append"
            waiting = max(waiting, waiting_on_advisory_lock(admin))
            lags.append({h.name: h.lag_events for h in stoic.Operations(store).health()})
            time.sleep(0.1)
        assert heads == {head_at_lock}, f"the head moved while the append lock was held: {sorted(heads)}"
        assert waiting >= 1, "no append waited on the append lock"
        # The projections have applied everything visible and wait for more.
        settled = checkpoints(store)
        assert all(settled[n] == head_at_lock for n in NAMES), (settled, head_at_lock)
        slow_thread.join(HOLD_S + 10)
        assert "error" not in outcome, outcome
        slow_position = outcome["result"].positions[0]
        assert slow_position == head_at_lock + 1, "the slow append did not get the next position"
        wait_until(lambda: store.head() > slow_position + 20, 10, "the waiting appends to go on")

        # -- 2. an unrelated transaction keeps an old snapshot --------------------------
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, options=f"-c search_path={pg_schema(url)}") as reader:
            reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            snapshot_count = reader.execute("SELECT count(*) FROM stoic_events").fetchone()[0]
            snap_head = store.head()
            time.sleep(SNAPSHOT_S)
            during = store.head()
            # Projections keep up under the old snapshot: within a second of the head.
            target = during
            wait_until(lambda: all(checkpoints(store)[n] >= target for n in NAMES), 5,
                       "the projections to keep up while an old snapshot is open")
            assert reader.execute("SELECT count(*) FROM stoic_events").fetchone()[0] == snapshot_count
            reader.execute("COMMIT")
        snapshot_appended = during - snap_head
        assert snapshot_appended > 50, f"appends stalled under an old snapshot: {snapshot_appended} in {SNAPSHOT_S} s"

        for a in appenders:
            a.finish()
        head = store.head()
        wait_until(lambda: all(checkpoints(store).get(n) == head for n in NAMES), 30, "the final catch-up")
        for w in workers:
            w.send(signal.SIGTERM)
        codes = [w.wait(15) for w in workers]
    slow.close()

    assert codes == [0, 0], [w.log_text()[-2000:] for w in workers]
    # Every appender was inside a call while the lock was held: it waited for the slow
    # commit, and its events came after the slow one.
    blocked = calls_spanning(appenders, locked_at + HOLD_S / 2)
    assert len(blocked) == len(appenders), f"not every appender waited on the lock: {blocked}"
    assert all(min(positions) > slow_position for _, _, positions in blocked)
    waited = sorted(round(end - max(start, locked_at), 2) for start, end, _ in blocked)
    assert waited[0] >= HOLD_S - 0.5, f"appends did not wait for the lock: {waited} s"
    # Every acknowledged append is stored once, and positions are 1..head without gaps.
    acknowledged = sorted(p for a in appenders for p in a.positions)
    assert len(acknowledged) == len(set(acknowledged))
    assert set(acknowledged) | set(range(1, 2001)) | {slow_position} == set(range(1, head + 1))
    for a in appenders:
        a.check_streams(store)
    check_exactly_once(store, NAMES, upto=head)
    assert store.list_failures() == []
    for w in workers:
        bad = [r for r in w.records() if r.get("level") in ("error", "critical") or "raw" in r]
        assert not bad, bad[:5]
    store.close()
    print(f"\nslow append held the lock {HOLD_S} s at head {head_at_lock}: head frozen, {waiting} backends "
          f"waiting on the advisory lock, appenders waited {waited} s, lag during "
          f"{lags[-1]}; slow event got position {slow_position}. Old snapshot {SNAPSHOT_S} s: "
          f"{snapshot_appended} events appended meanwhile; final head {head}")
