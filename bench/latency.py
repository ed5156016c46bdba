"""Live latency across processes: append commit -> read-model row updated.

A ``stoic worker --app bench.workload:app`` runs in its own process. This
process appends one ``Deposited`` event at a time and polls the account's row
in the read model until the deposit shows, then waits a few milliseconds (so
the worker goes back to waiting for events) and appends the next one.

Two figures per sample, both in milliseconds:

* ``commit->row``: from the moment ``append`` returned (committed) until the
  row showed the deposit: the live latency of the projection pipeline;
* ``append->row``: from the call to ``append`` until the row showed it, which
  adds the commit itself.

Then the benchmark leaves the worker idle for a few seconds and measures its CPU
use from ``/proc/<pid>/stat`` (all its threads), to show that waiting for
events does not burn a core.

    python -m bench.latency --backend both --samples 1000 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

import stoic
from bench.workload import (
    TABLE,
    Balances,
    account_id,
    add_common_arguments,
    apply_common_arguments,
    backends,
    drop,
    fresh_url,
    load,
    measured,
    percentile,
    print_summary,
    summary,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARMUP = 20  #: samples taken and thrown away first
GAP_S = (0.002, 0.005)  #: pause between samples, seconds (uniform)
POLL_S = 0.0001  #: pause between two reads of the row, seconds
IDLE_S = 5.0  #: how long the worker's idle CPU is measured, seconds


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_worker(url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    command = [
        sys.executable,
        "-m",
        "stoic",
        "worker",
        "--db",
        url,
        "--app",
        "bench.workload:app",
        "--claim-interval",
        "0.2",
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(command, cwd=ROOT, env=env)


def wait_caught_up(store: stoic.Store, worker: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    head = store.head()
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with code {worker.returncode}")
        state = {p.name: p for p in store.projections()}.get(Balances.name)
        if state is not None and state.holder_alive and state.position >= head:
            return
        time.sleep(0.05)
    raise TimeoutError("the worker did not catch up in time")


def run_latency(
    backend: str, samples: int = 1000, accounts: int = 100, idle_seconds: float = IDLE_S, poll: float = POLL_S
) -> dict[str, Any]:
    """Measures live latency against a worker in another process, and its idle CPU."""
    url = fresh_url(backend)
    store = stoic.connect(url)
    worker = None
    try:
        load(store, accounts)
        worker = start_worker(url)
        wait_caught_up(store, worker)
        movements = dict.fromkeys(range(accounts), 9)
        read_row = f"SELECT movements FROM {TABLE} WHERE account = ?"
        rng = random.Random(1)
        commit_to_row: list[float] = []
        append_to_row: list[float] = []
        for n in range(WARMUP + samples):
            index = n % accounts
            account = account_id(index)
            movements[index] += 1
            want = movements[index]
            event = [stoic.NewEvent("Deposited", {"amount": 1})]
            t0 = time.perf_counter()
            store.append(account, event)
            t1 = time.perf_counter()
            while store.query(read_row, (account,))[0][0] != want:
                if poll:
                    time.sleep(poll)
            t2 = time.perf_counter()
            if n >= WARMUP:
                commit_to_row.append((t2 - t1) * 1000)
                append_to_row.append((t2 - t0) * 1000)
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with code {worker.returncode}")
            time.sleep(rng.uniform(*GAP_S))
        # Idle: no appends, nobody polling; only the worker's own waiting and heartbeats.
        before, started = cpu_seconds(worker.pid), time.monotonic()
        time.sleep(idle_seconds)
        idle_cpu = (cpu_seconds(worker.pid) - before) / (time.monotonic() - started)
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        store.close()
        drop(url)
    if worker.returncode != 0:
        raise RuntimeError(f"the worker exited with code {worker.returncode} after SIGTERM")
    commit_to_row.sort()
    append_to_row.sort()
    return {
        "backend": backend,
        "samples": samples,
        "p50_ms": percentile(commit_to_row, 50),
        "p99_ms": percentile(commit_to_row, 99),
        "max_ms": commit_to_row[-1],
        "append_p50_ms": percentile(append_to_row, 50),
        "append_p99_ms": percentile(append_to_row, 99),
        "idle_cpu_pct": idle_cpu * 100,
    }


def bench(
    backend_names: list[str],
    samples: int = 1000,
    repeat: int = 2,
    *,
    idle_seconds: float = IDLE_S,
    poll: float = POLL_S,
    wait: bool = True,
) -> list[dict[str, Any]]:
    """Runs the latency benchmark on each backend; returns summaries of p50, p99 and idle CPU."""
    results = []
    for backend in backend_names:
        runs = measured(
            lambda b=backend: run_latency(b, samples, idle_seconds=idle_seconds, poll=poll),
            repeat,
            wait=wait,
            label=f"{backend:8} latency",
            show=lambda r: (
                f"commit->row p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                f"max {r['max_ms']:.2f} ms; append->row p50 {r['append_p50_ms']:.2f} ms, "
                f"p99 {r['append_p99_ms']:.2f} ms; worker idle CPU {r['idle_cpu_pct']:.1f}% of a core"
            ),
        )
        for case, key, unit in (
            ("live latency p50 (commit->row)", "p50_ms", "ms"),
            ("live latency p99 (commit->row)", "p99_ms", "ms"),
            ("live latency p99 (append call->row)", "append_p99_ms", "ms"),
            ("worker CPU while idle", "idle_cpu_pct", "% of a core"),
        ):
            results.append(summary("latency", backend, case, unit, key, runs))
            print_summary(results[-1], digits=2 if unit == "ms" else 1)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=IDLE_S)
    parser.add_argument("--poll", type=float, default=POLL_S, help="seconds between reads of the row")
    add_common_arguments(parser, repeat=2)
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    print(f"live latency across processes: {args.samples} samples, worker idle CPU over {args.idle_seconds} s")
    bench(
        backends(args.backend),
        args.samples,
        args.repeat,
        idle_seconds=args.idle_seconds,
        poll=args.poll,
        wait=not args.no_wait,
    )


if __name__ == "__main__":
    main()
