"""Guarantee 3 at scale: three ``stoic worker`` processes share eight projections on
PostgreSQL while events keep arriving; a worker holding projections is SIGKILLed,
four times, and a replacement is started after each kill.

After every kill, each projection the dead worker held is taken over by the surviving
workers within the configured bound: ``lease_ttl`` (the dead worker's registration expires;
heartbeats every ``lease_ttl / 3``) plus ``claim_interval`` (the next look of the
others) plus a little slack for a loaded machine. A sampler records every holder; at
the end every projection's ledger holds each event exactly once, each projection's
events were applied in contiguous runs, one per lease, and the read models equal the
fold of the events.
"""

from __future__ import annotations

import itertools
import random
import signal
import time
from pathlib import Path

import pytest
from tests.apps import (
    AppenderThread,
    Processes,
    Sampler,
    WorkerProcess,
    append_bulk,
    check_exactly_once,
    checkpoints,
    projection_names,
    wait_until,
)

import stoic

NAMES = projection_names(8)
EVENTS = 2000  #: appended before the workers start; more arrive during the kills
KILLS = 4
LEASE_TTL = 2.0  # seconds
CLAIM_INTERVAL = 0.3  # seconds
SLACK = 1.5  # seconds: process scheduling on a loaded 2-core machine, the acquire itself
TAKEOVER_BOUND = LEASE_TTL + CLAIM_INTERVAL + SLACK


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_holders_of_eight_projections_among_three_workers(make_url, tmp_path: Path) -> None:
    rng = random.Random(20260403)
    url = make_url("postgres")
    store = stoic.connect(url)
    append_bulk(store, EVENTS, seed=71, streams=60)
    options = {"lease_ttl": LEASE_TTL, "claim_interval": CLAIM_INTERVAL, "batch_size": 50,
               "env": {"STOIC_TEST_PROJECTIONS": str(len(NAMES))}}
    appender = AppenderThread(url, "live", seed=72, streams=50, max_events=4, pause=(0.02, 0.02))  # ~100/s
    takeovers: list[dict[str, object]] = []
    dead: list[tuple[WorkerProcess, float]] = []  # (victim, when its projections were all taken)
    started = time.monotonic()

    def holders() -> dict[str, str | None]:
        return {s.name: s.holder for s in store.projections()}

    with Processes(tmp_path) as procs, Sampler(store, interval=0.05) as sampler:
        live: list[WorkerProcess] = [procs.worker(url, **options) for _ in range(3)]  # type: ignore[arg-type]
        appender.start()

        def registered(workers: list[WorkerProcess]) -> bool:
            alive = {w.pid for w in store.workers() if w.alive}
            return all(w.pid in alive for w in workers)

        def all_held() -> bool:
            hs = list(holders().values())
            return len(hs) == len(NAMES) and all(any(w.owns(h) for w in live) for h in hs)

        for kill in range(KILLS):
            wait_until(lambda: registered(live) and all_held(), 30, f"every projection held (kill {kill})")
            hs = holders()
            # A holder: one of the workers holding the most projections, at random.
            most = max(sum(map(w.owns, hs.values())) for w in live)
            victim = rng.choice([w for w in live if sum(map(w.owns, hs.values())) == most])
            held = sorted(n for n, h in hs.items() if victim.owns(h))
            assert appender.is_alive(), appender.error
            victim.proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            assert victim.wait(10) == -signal.SIGKILL
            live.remove(victim)

            def taken(names: list[str] = held) -> bool:
                hs = holders()
                return all(any(w.owns(hs[n]) for w in live) for n in names)

            wait_until(taken, TAKEOVER_BOUND + 10, f"the survivors to take {held} (kill {kill})", interval=0.02)
            observed = time.monotonic() - killed
            dead.append((victim, time.monotonic()))
            takeovers.append({"at_s": round(killed - started, 1), "held": len(held), "took_s": round(observed, 2)})
            # The replacement starts once the takeover is measured: it does not race the survivors.
            live.append(procs.worker(url, **options))  # type: ignore[arg-type]

        wait_until(lambda: registered(live) and all_held(), 30, "the last replacement to start")
        time.sleep(1.0)  # the replacement takes its share while events still arrive
        appender.finish()
        head = store.head()
        stopped = time.monotonic()
        wait_until(lambda: all(checkpoints(store).get(n) == head for n in NAMES), 60, "the catch-up",
                   interval=0.1)
        caught_up = time.monotonic()
        for w in live:
            w.send(signal.SIGTERM)
        codes = [w.wait(20) for w in live]

    assert codes == [0, 0, 0], [w.log_text()[-2000:] for w in live]
    assert not sampler.errors, sampler.errors[:3]
    slowest = max(float(t["took_s"]) for t in takeovers)  # type: ignore[arg-type]
    assert slowest < TAKEOVER_BOUND, f"takeover took {slowest} s (bound {TAKEOVER_BOUND} s): {takeovers}"
    # Once taken over, a dead worker never holds anything again (as the sampler saw it).
    for victim, taken_at in dead:
        assert not [(t, s.name) for t, states in sampler.samples if t >= taken_at
                    for s in states.values() if victim.owns(s.holder)], f"dead worker {victim.pid} came back"
    assert sorted(appender.positions) == list(range(EVENTS + 1, head + 1))
    appender.check_streams(store)
    check_exactly_once(store, NAMES, upto=head)
    assert store.list_failures() == []
    epochs = {s.name: s.epoch for s in store.projections()}
    runs = {}
    for name in NAMES:
        pids = [int(p) for (p,) in store.query(f"SELECT pid FROM {name}_ledger ORDER BY position")]
        runs[name] = [pid for pid, _ in itertools.groupby(pids)]
        # Each lease covers one contiguous range of positions: more runs than leases would
        # mean two workers' batches interleaved.
        assert len(runs[name]) <= epochs[name], f"{name}: {len(runs[name])} runs of appliers, {epochs[name]} leases"
    for w in live:
        bad = [r for r in w.records() if r.get("level") in ("error", "critical") or "raw" in r]
        assert not bad, bad[:5]
    store.close()
    print(f"\n{KILLS} SIGKILLs among 3 workers x {len(NAMES)} projections, {head} events; takeovers {takeovers} "
          f"(bound {TAKEOVER_BOUND} s); appends stopped at {stopped - started:.1f} s, caught up "
          f"{caught_up - stopped:.1f} s later; appliers per projection {[len(r) for r in runs.values()]}; "
          f"epochs {epochs}")
