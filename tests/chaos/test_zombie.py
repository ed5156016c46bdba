"""Fencing with a real zombie: SIGSTOP a ``stoic worker`` in the middle of its
catch-up (its batch's transaction is open most of the time: each event sleeps 1 ms),
keep it frozen past its lease ttl while a second worker is running, then SIGCONT.

PostgreSQL: the second worker takes the projection while the first is frozen; the
first, thawed, cannot commit (LeaseLost, logged as ``lease_lost``), rolls back and
steps back. SQLite: a zombie frozen inside a batch holds the one write lock, so nobody can
take over until it commits, and who wins the lock after the thaw (the zombie's
heartbeat or the rival's claim) is up to SQLite's busy polling; so on SQLite the
test asserts only what must hold on both: exactly-once, applier runs within
leases, a clean end, no errors. (SQLite's busy handler polls with sleeps of up to
100 ms, so a process that commits batch after batch starves the writes of other
processes: a second worker started during a slow catch-up may not even register
within the 10 s busy timeout. That is why the rival is started while the first
worker idles.)
"""

from __future__ import annotations

import itertools
import signal
import time
from pathlib import Path

import pytest
from tests.apps import Processes, append_bulk, check_exactly_once, checkpoints, process_state, wait_until

import stoic

NAME = "ledger_a"
LEASE_TTL = 1.0  # seconds
# On SQLite the thawed zombie may keep its lease and finish at 1 ms per event: fewer events.
EVENTS = {"postgresql": 10_000, "sqlite": 4000}


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_frozen_worker_cannot_commit_after_takeover(shared_url: str, tmp_path: Path) -> None:
    store = stoic.connect(shared_url)
    pg = store.dialect == "postgresql"
    events = EVENTS[store.dialect]
    append_bulk(store, 200, seed=7, streams=30)
    options = {"lease_ttl": LEASE_TTL, "claim_interval": 0.25, "batch_size": 100}
    slow = {"STOIC_TEST_PROJECTIONS": "1", "STOIC_TEST_SLOW_MS": "1"}  # the zombie: 0.1 s per batch

    def holder() -> str | None:
        return {s.name: s.holder for s in store.projections()}.get(NAME)

    with Processes(tmp_path) as procs:
        zombie = procs.worker(shared_url, env=slow, **options)  # type: ignore[arg-type]
        wait_until(lambda: checkpoints(store).get(NAME) == 200, 20, "the first worker to catch up")
        # The rival registers while the first worker idles: on SQLite a worker that is
        # catching up starves other processes' writes (see the module docstring).
        rival = procs.worker(shared_url, env={"STOIC_TEST_PROJECTIONS": "1"}, **options)  # type: ignore[arg-type]
        wait_until(lambda: any(w.pid == rival.pid for w in store.workers()), 20, "the second worker to register")
        append_bulk(store, events - 200, seed=8, streams=30)
        wait_until(lambda: checkpoints(store)[NAME] >= 500, 20, "the first worker to be catching up")
        if pg:
            assert zombie.owns(holder())
        zombie.send(signal.SIGSTOP)
        stopped = time.monotonic()
        frozen_at = checkpoints(store)[NAME]
        takeover = None
        try:
            if pg:
                assert frozen_at < events
                wait_until(lambda: rival.owns(holder()), LEASE_TTL + 3, "the takeover while frozen")
                takeover = time.monotonic() - stopped
                time.sleep(0.5)  # the rival is running, or waiting on the zombie's row locks
            else:
                time.sleep(LEASE_TTL + 1.5)
        finally:
            zombie.send(signal.SIGCONT)
        if pg:
            wait_until(lambda: rival.owns(holder()), 20, "the second worker to hold the projection")
        wait_until(lambda: checkpoints(store)[NAME] == events, 60, "the catch-up to finish")
        for worker in (zombie, rival):
            worker.send(signal.SIGTERM)
        codes = [zombie.wait(15), rival.wait(15)]

    assert codes == [0, 0], (zombie.log_text()[-2000:], rival.log_text()[-2000:])
    check_exactly_once(store, [NAME], upto=events)
    for worker in (zombie, rival):
        bad = [r for r in worker.records() if r.get("level") in ("error", "critical") or "raw" in r]
        assert not bad, bad[:5]
    # Each lease covers one contiguous range of positions: the appliers, in position
    # order, change at most once per lease (a zombie committing after a takeover would
    # interleave with the new holder).
    pids = [int(p) for (p,) in store.query(f"SELECT pid FROM {NAME}_ledger ORDER BY position")]
    runs = [pid for pid, _ in itertools.groupby(pids)]
    epoch = {s.name: s.epoch for s in store.projections()}[NAME]
    assert len(runs) <= epoch, (runs, epoch)
    zombie_actions = [r.get("action") for r in zombie.records()]
    if pg:
        assert takeover is not None and takeover < LEASE_TTL + 1.0, takeover
        assert "lease_lost" in zombie_actions, zombie_actions
        assert runs == [zombie.pid, rival.pid], runs
    store.close()
    print(
        f"\n{store.dialect}: frozen at checkpoint {frozen_at}; takeover while frozen after "
        f"{'-' if takeover is None else f'{takeover:.2f} s'}; zombie logged lease_lost: "
        f"{'lease_lost' in zombie_actions}; appliers in position order {runs}, epoch {epoch}"
    )


@pytest.mark.postgres
@pytest.mark.timeout(60)
def test_zombie_frozen_inside_a_batch_commits_nothing(make_url, tmp_path: Path) -> None:
    """The zombie freezes itself (SIGSTOP from its own handler) in the middle of a batch
    whose writes are on the server, uncommitted. Its lease expires, the rival takes the
    projection and waits on the zombie's row locks; after SIGCONT the zombie finishes
    applying the batch, its fenced checkpoint move fails (``lease_lost``), the whole batch
    rolls back, and the zombie steps back: it stays up, holds nothing, exits 0. Every
    event of the in-flight batch is applied by the rival, exactly once."""
    url = make_url("postgres")
    store = stoic.connect(url)
    events, batch, freeze_at = 3000, 100, 1550
    batch_start = (freeze_at - 1) // batch * batch  # the checkpoint the in-flight batch starts from
    append_bulk(store, events, seed=14, streams=30)
    flag = tmp_path / "frozen"
    options = {"lease_ttl": LEASE_TTL, "claim_interval": 0.25, "batch_size": batch,
               "app": "tests.apps:make_freeze_app"}

    def holder() -> str | None:
        return {s.name: s.holder for s in store.projections()}.get(NAME)

    with Processes(tmp_path) as procs:
        zombie = procs.worker(url, env={"STOIC_TEST_FREEZE_AT": str(freeze_at),
                                        "STOIC_TEST_FREEZE_FLAG": str(flag)}, **options)  # type: ignore[arg-type]
        wait_until(lambda: zombie.owns(holder()), 20, "the zombie to take the projection")
        rival = procs.worker(url, **options)  # type: ignore[arg-type]
        wait_until(lambda: any(w.pid == rival.pid for w in store.workers()), 20, "the rival to register")
        wait_until(lambda: flag.exists() and process_state(zombie.pid) == "T", 30, "the zombie to freeze itself")
        frozen = time.monotonic()
        try:
            # Frozen mid-batch: the batch's rows are on the server but not committed.
            assert checkpoints(store)[NAME] == batch_start
            assert store.query(f"SELECT count(*) FROM {NAME}_ledger WHERE position > ?", (batch_start,)) == [(0,)]
            wait_until(lambda: rival.owns(holder()), LEASE_TTL + 3, "the takeover while the zombie is frozen")
            takeover = time.monotonic() - frozen
            time.sleep(0.5)
            # The rival re-applies from the checkpoint and waits on the zombie's row locks.
            assert checkpoints(store)[NAME] == batch_start
            assert process_state(zombie.pid) == "T"
        finally:
            zombie.send(signal.SIGCONT)
        wait_until(lambda: checkpoints(store)[NAME] == events, 30, "the rival to finish the catch-up")
        wait_until(lambda: any(r.get("action") == "lease_lost" for r in zombie.records()), 10,
                   "the zombie to log lease_lost")
        time.sleep(3 * 0.25)  # a few claim rounds: the zombie must not take the projection back
        assert rival.owns(holder()) and zombie.running
        for worker in (zombie, rival):
            worker.send(signal.SIGTERM)
        codes = [zombie.wait(15), rival.wait(15)]

    assert codes == [0, 0], (zombie.log_text()[-2000:], rival.log_text()[-2000:])
    check_exactly_once(store, [NAME], upto=events)
    rows = store.query(f"SELECT position, pid FROM {NAME}_ledger ORDER BY position")
    appliers = [(pid, [p for p, _ in group]) for pid, group in itertools.groupby(rows, key=lambda r: int(r[1]))]
    # The zombie committed exactly the batches before the frozen one; the rival everything after.
    assert [(pid, ps[0], ps[-1]) for pid, ps in appliers] == [
        (zombie.pid, 1, batch_start), (rival.pid, batch_start + 1, events)], [(p, s[0], s[-1]) for p, s in appliers]
    lost = [r for r in zombie.records() if r.get("action") == "lease_lost"]
    assert len(lost) == 1 and lost[0].get("projection") == NAME, lost
    for worker in (zombie, rival):
        bad = [r for r in worker.records() if r.get("level") in ("error", "critical") or "raw" in r]
        assert not bad, bad[:5]
    assert store.list_failures() == []
    store.close()
    print(f"\nzombie froze itself at position {freeze_at} (batch from {batch_start}); rival took over after "
          f"{takeover:.2f} s and waited on the zombie's row locks; zombie logged lease_lost: {lost[0]['message']}")
