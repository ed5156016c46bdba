"""Guarantee 2, no repeated effect: SIGKILL a ``stoic worker`` at random moments of a
50,000-event catch-up, again and again, then let it finish.

The kills land during start-up (before or while leases are taken) and in the
middle of batches (batches are small, so most of the time a transaction is open).
At the end every projection's ledger holds each event exactly once and its read
model equals the fold of the events.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from tests.apps import Processes, append_bulk, check_exactly_once, checkpoints, projection_names, wait_until

import stoic

EVENTS = 50_000
KILLS = 12
LEASE_TTL = 1.0  # seconds; a restarted worker waits this long for the dead one's leases
# Two projections (two runner threads) on SQLite; one on PostgreSQL, whose catch-up
# with per-statement pipelining is slower (~3k events/s here) and must fit the budget.
PROJECTIONS = {"sqlite": 2, "postgresql": 1}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_during_catch_up_never_loses_or_repeats(shared_url: str, tmp_path: Path) -> None:
    started = time.monotonic()
    rng = random.Random(20240601)
    store = stoic.connect(shared_url)
    count = PROJECTIONS[store.dialect]
    names = projection_names(count)
    options = {
        "lease_ttl": LEASE_TTL,
        "claim_interval": 0.2,
        "batch_size": 97 if count == 2 else 199,
        "env": {"STOIC_TEST_PROJECTIONS": str(count)},
    }
    append_bulk(store, EVENTS, seed=1)
    assert store.head() == EVENTS
    appended = time.monotonic()
    kills: list[tuple[str, float, dict[str, int]]] = []
    # No run may move a projection more than this, so every kill is mid catch-up and
    # the last run still has real work.
    max_progress = EVENTS // (KILLS + 4)

    def progress() -> int:
        cps = checkpoints(store)
        return sum(cps.get(n, 0) for n in names)

    with Processes(tmp_path) as procs:
        for i in range(KILLS):
            before = progress()
            worker = procs.worker(shared_url, **options)  # type: ignore[arg-type]
            spawned = time.monotonic()
            if i % 4 == 1:
                # Early: during interpreter start-up, store connection, claim or set-up.
                time.sleep(rng.uniform(0.0, 0.8))
                kind = "early"
            else:
                target = rng.randint(50, max_progress)
                wait_until(
                    lambda t=target, b=before: progress() - b >= t,  # type: ignore[misc]
                    30,
                    f"run {i} to apply {target} events",
                    interval=0.003,
                )
                time.sleep(rng.uniform(0, 0.02))  # land at an arbitrary point of a batch
                kind = "mid"
            assert worker.running, f"worker exited by itself: {worker.log_text()[-2000:]}"
            worker.proc.send_signal(signal.SIGKILL)
            assert worker.wait(10) == -signal.SIGKILL
            cps = checkpoints(store)
            kills.append((kind, time.monotonic() - spawned, cps))
            assert all(cps.get(n, 0) < EVENTS for n in names), "caught up before the kill"
            # The ledger and read model must already be consistent with the checkpoint.
            if i in (0, 7):
                check_exactly_once(store, [n for n in names if n in cps])

        killing_done = time.monotonic()
        final = procs.worker(shared_url, **options)  # type: ignore[arg-type]
        wait_until(
            lambda: all(checkpoints(store).get(n) == EVENTS for n in names),
            60,
            "the last worker to catch up",
            interval=0.05,
        )
        final.send(signal.SIGTERM)
        assert final.wait(15) == 0, final.log_text()[-3000:]

    check_exactly_once(store, names, upto=EVENTS)
    store.close()
    mid = sum(1 for k in kills if k[0] == "mid")
    assert len(kills) >= 10 and mid >= 8
    print(
        f"\n{store.dialect}: {len(kills)} SIGKILLs ({mid} mid-batch) during a {EVENTS}-event catch-up; "
        f"checkpoints at each kill: {[k[2].get(names[0], 0) for k in kills]}; "
        f"append {appended - started:.1f} s, kill/restart phase {killing_done - appended:.1f} s, "
        f"final run {time.monotonic() - killing_done:.1f} s (incl. checks)"
    )
