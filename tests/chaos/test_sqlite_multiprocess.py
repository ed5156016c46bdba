"""Several processes on one SQLite file: three ``stoic worker`` processes share three
projections while two appender processes write to their own streams with exact
expected versions; midway one worker is SIGKILLed and the others take over its
projection. No error escapes (appenders exit 0 with no ConcurrencyError or lock
error; the surviving workers log no error and exit 0 on SIGTERM) and every event
is applied exactly once to every projection."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.apps import Processes, Sampler, check_exactly_once, checkpoints, projection_names, wait_until

import stoic

NAMES = projection_names(3)
PER_APPENDER = 2500


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_three_workers_two_appenders_one_sqlite_file(make_url, tmp_path: Path) -> None:
    url = make_url("sqlite-file")
    store = stoic.connect(url)
    env = {"STOIC_TEST_PROJECTIONS": "3"}
    with Processes(tmp_path) as procs, Sampler(store, interval=0.05) as sampler:
        workers = [procs.worker(url, lease_ttl=3, claim_interval=0.2, batch_size=50, env=env) for _ in range(3)]

        def spread() -> bool:
            holders = [s.holder for s in store.projections()]
            return len(holders) == 3 and all(sum(map(w.owns, holders)) == 1 for w in workers)

        wait_until(spread, 30, "each worker to hold one projection")
        started = time.monotonic()
        appenders = [
            procs.python(
                "-m",
                "tests.apps",
                "append",
                "--db",
                url,
                "--prefix",
                f"app{k}",
                "--count",
                str(PER_APPENDER),
                "--streams",
                "15",
                "--seed",
                str(k),
                "--max-delay-ms",
                "1",
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for k in range(2)
        ]
        time.sleep(1.5)
        victim = workers[0]
        victim_projection = next(s.name for s in store.projections() if victim.owns(s.holder))
        victim.kill()
        survivors = workers[1:]
        outputs = [p.communicate(timeout=90) for p in appenders]
        append_seconds = time.monotonic() - started
        for proc, (out, err) in zip(appenders, outputs, strict=True):
            assert proc.returncode == 0, (out[-2000:], err[-2000:])
            assert not err.strip(), err[-2000:]
        summaries = [json.loads(out) for out, _ in outputs]
        head = store.head()
        assert head == 2 * PER_APPENDER
        wait_until(lambda: all(c == head for c in checkpoints(store).values()), 60, "the workers to catch up")
        caught_up = time.monotonic() - started
        holder = {s.name: s.holder for s in store.projections()}[victim_projection]
        assert any(w.owns(holder) for w in survivors), holder
        for w in survivors:
            w.send(signal.SIGTERM)
        codes = [w.wait(15) for w in survivors]

    assert codes == [0, 0], [w.log_text()[-2000:] for w in survivors]
    assert not sampler.errors, sampler.errors[:3]
    for summary in summaries:
        assert summary["errors"] == []
    written = sorted(p for s in summaries for p in s["positions"])
    assert written == list(range(1, head + 1)), "an acknowledged append is missing, or extra"
    for summary in summaries:
        for stream, version in summary["versions"].items():
            assert [e.version for e in store.read_stream(stream)] == list(range(1, version + 1))
    check_exactly_once(store, NAMES, upto=head)
    warnings: dict[str, int] = {}
    for w in survivors:
        for r in w.records():
            assert "raw" not in r and r.get("level") not in ("error", "critical"), r
            if r.get("level") == "warning":
                warnings[r.get("action", "?")] = warnings.get(r.get("action", "?"), 0) + 1
    appliers = {n: {int(p) for (p,) in store.query(f"SELECT DISTINCT pid FROM {n}_ledger")} for n in NAMES}
    assert victim.pid in appliers[victim_projection] and len(appliers[victim_projection]) == 2, appliers
    store.close()
    print(
        f"\n{head} events by 2 appender processes in {append_seconds:.1f} s, applied by 3 worker "
        f"processes (caught up {caught_up:.1f} s after start); warnings {warnings}; "
        f"applier pids per projection {appliers} (SIGKILLed: {victim.pid}, held {victim_projection})"
    )
