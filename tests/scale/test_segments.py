"""Segmented projections: one projection split by stream over K segments, each
with its own checkpoint and lease, run by different workers in parallel; and
changing K while workers run and clients append, without losing or repeating
an event. Real stores (SQLite file, PostgreSQL), real worker threads and
processes."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.apps import LedgerProjection, Processes, append_bulk, fold, wait_until

import stoic
from stoic.errors import ActionRefused, OperationTimeout
from stoic.projection import segment_of

backends = pytest.mark.parametrize("backend", ["sqlite-file", "postgres"])
ACTOR = "ops-test"


class Segmented(LedgerProjection):
    segments = 4

    def __init__(self, name: str = "seg", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)


def make_segmented_app() -> stoic.App:
    """The worker subprocesses' app: ``seg`` split over STOIC_TEST_SEGMENTS segments (default 4)."""
    import os

    count = int(os.environ.get("STOIC_TEST_SEGMENTS", "4"))
    projection = type("SegmentedN", (Segmented,), {"segments": count})()
    return stoic.App([projection], name="segmented")


def check_complete(store: stoic.Store, name: str = "seg") -> None:
    """Every event applied exactly once and the read model equals the fold."""
    events = list(store.iter_all(batch_size=10_000))
    repeated = store.query(f"SELECT position, applied FROM {name}_ledger WHERE applied <> 1 LIMIT 10")
    assert not repeated, f"applied more than once: {repeated}"
    applied = [int(p) for (p,) in store.query(f"SELECT position FROM {name}_ledger ORDER BY position")]
    missing = sorted(set(range(1, len(events) + 1)) - set(applied))[:10]
    assert applied == [e.position for e in events], f"{len(applied)} of {len(events)} applied; missing {missing}"
    model = {a: (int(b), int(n)) for a, b, n in store.query(f"SELECT account, balance, events FROM {name}_balance")}
    assert model == fold(events)


def segment_rows(store: stoic.Store, name: str = "seg") -> dict[str, stoic.store.ProjectionState]:
    return {s.name: s for s in store.projections() if s.name.startswith(f"{name}#") or s.name == name}


@given(st.text(min_size=1, max_size=50), st.integers(min_value=1, max_value=256))
@settings(max_examples=300)
def test_segment_of_is_stable_and_in_range(stream_id: str, count: int) -> None:
    index = segment_of(stream_id, count)
    assert 0 <= index < count
    assert segment_of(stream_id, count) == index


def test_segment_of_spreads_streams_evenly() -> None:
    counts = defaultdict(int)
    for i in range(10_000):
        counts[segment_of(f"account-{i}", 4)] += 1
    assert all(2_200 < n < 2_800 for n in counts.values()), counts


@backends
def test_each_segment_has_its_own_checkpoint_and_applies_only_its_streams(store: stoic.Store) -> None:
    order: dict[str, list[int]] = defaultdict(list)
    lock = threading.Lock()

    def record(event: stoic.RecordedEvent) -> None:
        with lock:
            order[event.stream_id].append(event.position)

    append_bulk(store, 3000, streams=97)
    stoic.Runner(store, stoic.App([Segmented(hook=record)])).run_until_caught_up()
    rows = segment_rows(store)
    assert sorted(rows) == ["seg#0", "seg#1", "seg#2", "seg#3"]
    assert {r.position for r in rows.values()} == {store.head()}
    assert {r.segments for r in rows.values()} == {4}
    # Each row counts the events its checkpoint covers (the late-arrival self-check relies on it).
    assert {r.events_processed for r in rows.values()} == {3000}
    for stream, positions in order.items():
        assert positions == sorted(positions), f"{stream} out of order"
    check_complete(store)


@backends
def test_two_workers_split_the_segments_and_apply_every_event_once(store: stoic.Store) -> None:
    append_bulk(store, 4000, streams=200)
    app = stoic.App([Segmented(slow_s=0.0005)])
    runners = [stoic.Runner(store, app, claim_interval=0.1, lease_ttl=3.0) for _ in range(2)]
    threads = [threading.Thread(target=r.run) for r in runners]
    for thread in threads:
        thread.start()
    try:
        def split() -> list[int]:
            holders = [s.holder for s in segment_rows(store).values()]
            return sorted(holders.count(r.worker_id) for r in runners)

        try:
            wait_until(lambda: split() == [2, 2], 20, "each worker to hold two segments")
        except AssertionError:
            print([(s.name, s.holder, s.holder_alive) for s in segment_rows(store).values()],
                  [r.worker_id for r in runners], [r.held for r in runners], store.workers())
            raise
        append_bulk(store, 1000, seed=1, streams=200)
        head = store.head()
        wait_until(lambda: all(s.position == head for s in segment_rows(store).values()), 60, "catch-up")
    finally:
        for runner in runners:
            runner.stop()
        for thread in threads:
            thread.join(20)
    check_complete(store)


@backends
def test_resegmenting_while_workers_run_and_clients_append_loses_and_repeats_nothing(store: stoic.Store) -> None:
    class Two(Segmented):
        segments = 2

    append_bulk(store, 2000, streams=150)
    app = stoic.App([Two(slow_s=0.0002)])
    runner = stoic.Runner(store, app, claim_interval=0.1)
    worker = threading.Thread(target=runner.run)
    worker.start()
    stop = threading.Event()

    def append() -> None:
        seed = 10
        while not stop.is_set():
            append_bulk(store, 50, seed=seed, streams=150, chunk=50)
            seed += 1
            time.sleep(0.01)

    appender = threading.Thread(target=append)
    appender.start()
    try:
        wait_until(lambda: len(segment_rows(store)) == 2, 20, "the worker to start both segments")
        progress: list[tuple[int, int]] = []
        barrier = stoic.Operations(store, app=app).resegment("seg", 4, ACTOR, "more throughput", timeout=60,
                                                              progress=lambda d, t: progress.append((d, t)))
        assert progress[-1] == (2, 2)
        rows = segment_rows(store)
        assert sorted(rows) == ["seg#0", "seg#1", "seg#2", "seg#3"]
        assert all(r.segments == 4 for r in rows.values())
        wait_until(lambda: len(runner.held) == 4, 20, "the worker to take the four new segments")
        time.sleep(0.5)
        stop.set()
        appender.join(20)
        head = store.head()
        assert head > barrier
        wait_until(lambda: all(s.position == head for s in segment_rows(store).values()), 60, "catch-up")
    finally:
        stop.set()
        appender.join(20)
        runner.stop()
        worker.join(20)
    check_complete(store)
    audit = [(a.action, a.outcome) for a in stoic.Operations(store).audit() if a.action == "resegment"]
    assert audit[0] == ("resegment", f"ok: 2 -> 4 segments at position {barrier}")


@backends
def test_resegment_back_to_one_and_failures_follow_their_stream(store: stoic.Store) -> None:
    class Picky(Segmented):
        """Refuses events marked bad (a parked stream)."""

        def apply(self, event: stoic.RecordedEvent, tx: Any) -> None:
            if event.data.get("bad"):
                raise ValueError("bad event")
            super().apply(event, tx)

    append_bulk(store, 500, streams=40)
    store.append("acct-poison", [stoic.NewEvent("Deposited", {"amount": 1, "bad": True})])
    store.append("acct-poison", [stoic.NewEvent("Deposited", {"amount": 2})])
    app = stoic.App([Picky()])
    stoic.Runner(store, app).run_until_caught_up()
    owner = f"seg#{segment_of('acct-poison', 4)}"
    [failure] = stoic.Operations(store, app=app).failures(owner)
    stoic.Operations(store, app=app).resegment("seg", 1, ACTOR, "back to one", timeout=5)
    assert list(segment_rows(store)) == ["seg"]
    [moved] = stoic.Operations(store, app=app).failures("seg")
    assert (moved.id, moved.blocking, moved.stream_id) == (failure.id, True, "acct-poison")
    # Still parked after the move: the follower waits; skipping releases it in order.
    stoic.Operations(store, app=app).skip(moved.id, ACTOR, "bad data")
    stoic.Runner(store, app).run_until_caught_up()
    assert store.query("SELECT balance FROM seg_balance WHERE account = 'acct-poison'") == [(2,)]


@backends
def test_resegment_refusals_and_timeout_change_nothing(store: stoic.Store) -> None:
    append_bulk(store, 100, streams=10)
    app = stoic.App([Segmented()])
    stoic.Runner(store, app).run_until_caught_up()
    ops = stoic.Operations(store, app=app)
    with pytest.raises(ActionRefused, match="already has 4 segments"):
        ops.resegment("seg", 4, ACTOR, "noop")
    with pytest.raises(stoic.InvalidArgument):
        ops.resegment("seg", 0, ACTOR, "zero")
    append_bulk(store, 10, seed=3, streams=10)  # no worker runs: the segments cannot reach the barrier
    with pytest.raises(OperationTimeout, match="nothing was changed"):
        ops.resegment("seg", 2, ACTOR, "no worker", timeout=0.5)
    rows = segment_rows(store)
    assert sorted(rows) == ["seg#0", "seg#1", "seg#2", "seg#3"]
    assert all(d.request is None for d in store.projection_details() if d.name.startswith("seg#"))
    stoic.Runner(store, app).run_until_caught_up()
    check_complete(store)


@backends
def test_a_segmented_projection_reconciles(store: stoic.Store) -> None:
    class Checked(Segmented):
        def expected_state(self, stream_id: str, events: list[Any]) -> dict[str, Any] | None:
            model = fold(events).get(stream_id)
            return None if model is None else {"balance": model[0], "events": model[1]}

        def actual_state(self, stream_id: str, tx: Any) -> dict[str, Any] | None:
            row = tx.execute("SELECT balance, events FROM seg_balance WHERE account = ?", (stream_id,)).fetchone()
            return None if row is None else {"balance": int(row[0]), "events": int(row[1])}

    append_bulk(store, 800, streams=30)
    app = stoic.App([Checked()])
    stoic.Runner(store, app).run_until_caught_up()
    report = stoic.Operations(store, app=app).reconcile("seg", ACTOR)
    assert (report.ok, report.checked) == (True, 30)
    store.query("UPDATE seg_balance SET balance = balance + 1 WHERE account = 'acct-7'")
    assert stoic.Operations(store, app=app).reconcile("seg", ACTOR).mismatched_streams == ("acct-7",)


def test_three_worker_processes_share_eight_segments_and_survive_a_sigkill(tmp_path: Path, make_url: Any) -> None:
    from tests.conftest import require_postgres

    require_postgres()
    url = make_url("postgres")
    store = stoic.connect(url)
    append_bulk(store, 20_000, streams=500)
    env = {"STOIC_TEST_SEGMENTS": "8"}
    with Processes(tmp_path) as procs:
        workers = [procs.worker(url, app="tests.scale.test_segments:make_segmented_app", lease_ttl=2.0,
                                claim_interval=0.2, env=env) for _ in range(3)]
        def split() -> list[int]:
            holders = [s.holder for s in segment_rows(store).values() if s.holder_alive]
            return sorted(holders.count(h) for h in set(holders))

        # Eight segments over three workers: 3 + 3 + 2, each segment held by one worker.
        wait_until(lambda: split() == [2, 3, 3], 60, "three workers to share the segments evenly")
        victim = next(w for w in workers if any(w.owns(s.holder) for s in segment_rows(store).values()))
        victim.kill()
        head = store.head()
        wait_until(lambda: all(s.position == head for s in segment_rows(store).values()), 90, "catch-up after kill")
    check_complete(store)
    store.close()


@backends
def test_after_a_resegment_the_self_check_finds_nothing_missing(store: stoic.Store) -> None:
    append_bulk(store, 600, streams=30)
    app = stoic.App([Segmented()])
    stoic.Runner(store, app).run_until_caught_up()
    runner = stoic.Runner(store, app, claim_interval=0.05)
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        wait_until(lambda: sum(1 for s in segment_rows(store).values() if s.holder) == 4, 20, "the worker")
        stoic.Operations(store, app=app).resegment("seg", 2, ACTOR, "fewer", timeout=30)
    finally:
        runner.stop()
        thread.join(20)
    session = store.open_session()
    try:
        assert [session.check_late_arrivals(f"seg#{i}") for i in range(2)] == [0, 0]
    finally:
        session.close()


@backends
def test_continuous_reconciliation_on_a_segment_checks_only_its_own_streams(store: stoic.Store) -> None:
    class Sampled(Segmented):
        reconcile_every = 0.1
        reconcile_sample = 40

        def expected_state(self, stream_id: str, events: list[Any]) -> dict[str, Any] | None:
            model = fold(events).get(stream_id)
            return None if model is None else {"balance": model[0]}

        def actual_state(self, stream_id: str, tx: Any) -> dict[str, Any] | None:
            row = tx.execute("SELECT balance FROM seg_balance WHERE account = ?", (stream_id,)).fetchone()
            return None if row is None else {"balance": int(row[0])}

    append_bulk(store, 800, streams=40)
    app = stoic.App([Sampled()])
    stoic.Runner(store, app).run_until_caught_up()
    paused = f"seg#{segment_of('acct-1', 4)}"
    stoic.Operations(store, app=app).pause(paused, ACTOR, "hold one segment back")
    append_bulk(store, 400, seed=5, streams=40)  # only the paused segment stays behind
    runner = stoic.Runner(store, app, claim_interval=0.05)
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        others = [f"seg#{i}" for i in range(4) if f"seg#{i}" != paused]
        wait_until(lambda: all(d.drift_checked_at for d in store.projection_details() if d.name in others), 20,
                   "the other segments to run a check")
        time.sleep(0.5)
        drift = {d.name: d.drift_count for d in store.projection_details() if d.name.startswith("seg#")}
        assert all(drift[name] == 0 for name in others), drift  # no false drift from the paused segment
    finally:
        runner.stop()
        thread.join(20)
