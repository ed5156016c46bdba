"""Segments and workers on PostgreSQL: scaling, failover after SIGKILL, a database restart.

Three benchmarks, each with real ``stoic worker`` subprocesses
(``--app bench.scale:make_app``) running ``ledger``, a projection doing the
per-event SQL of the chaos suite's LedgerProjection: an ``INSERT`` into a
per-event ledger (position primary key) and an upsert of the account's balance
row. ``STOIC_BENCH_SEGMENTS`` (K) splits it into segments, each its own
checkpoint and lease (``ledger#<i>``).

``matrix``: catch-up throughput with K segments x W worker processes. The
workers start on an empty schema and share the segments; every segment is then
paused, the events are loaded (bench/workload.py: 10,000 accounts x 10 events),
and the clock runs from the resume until every segment's checkpoint is the
head, so worker start-up and rebalancing are not in the figure (reported
apart). Meanwhile the CPU of the worker processes, of their PostgreSQL
backends and of PostgreSQL's background processes is read from ``/proc``, the
machine's from ``/proc/stat``, and ``pg_stat_activity`` is sampled every 0.1 s
for what those backends wait on.

``failover``: 3 workers share 8 segments (lease_ttl 2 s, claim_interval 0.3 s)
while an appender adds ~500 events/s; a worker holding segments is SIGKILLed
at a random moment, and the time until each of its segments' checkpoints
moves again under another worker is measured; a replacement worker is started
and the next kill waits until the split is even again.

``restart``: on a private, throwaway PostgreSQL cluster (initdb in a temporary
directory, its own port; the shared server is never touched), 2 appender
threads at a fixed offered rate and 2 workers; the cluster is stopped
(``pg_ctl stop -m fast``) for ~3 s mid-run and started again. Reported: events/s
appended and projected before, during and after, and the times to recovery.

    python -m bench.scale matrix --events 100000 --repeat 2
    python -m bench.scale failover --kills 20
    python -m bench.scale restart
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pwd
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import stoic
from bench.workload import (
    PG_URL,
    SampledCpuMeter,
    account_id,
    drop,
    fresh_url,
    load,
    percentile,
    wait_for_quiet,
)
from stoic import App, Projection, RecordedEvent, Transaction, handles_all

ROOT = Path(__file__).resolve().parent.parent
NAME = "ledger"
_HZ = os.sysconf("SC_CLK_TCK")


# -- the projection --------------------------------------------------------------------------


class Ledger(Projection):
    """Per event: a ledger row (position primary key) and an upsert of the stream's balance."""

    name = NAME

    def __init__(self) -> None:
        self._insert = f"INSERT INTO {NAME}_ledger (position, stream_id, type, amount) VALUES (?, ?, ?, ?)"
        self._upsert = (
            f"INSERT INTO {NAME}_balance (account, balance, events) VALUES (?, ?, 1) "
            f"ON CONFLICT (account) DO UPDATE SET balance = {NAME}_balance.balance + excluded.balance, "
            f"events = {NAME}_balance.events + 1"
        )

    def setup(self, tx: Transaction) -> None:
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {NAME}_ledger (position BIGINT PRIMARY KEY, stream_id TEXT NOT NULL, "
            "type TEXT NOT NULL, amount BIGINT NOT NULL)"
        )
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {NAME}_balance (account TEXT PRIMARY KEY, balance BIGINT NOT NULL, "
            "events BIGINT NOT NULL)"
        )

    def reset(self, tx: Transaction) -> None:
        tx.execute(f"DELETE FROM {NAME}_ledger")
        tx.execute(f"DELETE FROM {NAME}_balance")

    @handles_all
    def apply(self, event: RecordedEvent, tx: Transaction) -> None:
        amount = int(event.data.get("amount", 0))
        tx.execute(self._insert, (event.position, event.stream_id, event.type, amount))
        tx.execute(self._upsert, (event.stream_id, amount))


def make_app() -> App:
    """The workers' app: ``ledger`` in ``STOIC_BENCH_SEGMENTS`` segments (default 1)."""
    count = int(os.environ.get("STOIC_BENCH_SEGMENTS", "1"))
    return App([type("SegmentedLedger", (Ledger,), {"segments": count})()], name="bench-scale")


def unit_names(segments: int) -> list[str]:
    return [NAME] if segments == 1 else [f"{NAME}#{i}" for i in range(segments)]


def check_ledger(store: stoic.Store) -> None:
    """Every event applied exactly once (the position key refuses a second insert)."""
    head = store.head()
    rows, low, high = store.query(f"SELECT count(*), min(position), max(position) FROM {NAME}_ledger")[0]
    if (int(rows), int(low or 1), int(high or 0)) != (head, 1, head):
        raise AssertionError(f"ledger has {rows} rows ({low}..{high}), head is {head}")
    events = int(store.query(f"SELECT COALESCE(SUM(events), 0) FROM {NAME}_balance")[0][0])
    if events != head:
        raise AssertionError(f"balances count {events} events, head is {head}")


# -- worker processes ----------------------------------------------------------------------------


class Worker:
    """A ``stoic worker --app bench.scale:make_app`` subprocess."""

    def __init__(
        self, url: str, segments: int, log_dir: str, *, lease_ttl: float = 2.0, claim_interval: float = 0.3
    ) -> None:
        env = dict(os.environ, STOIC_BENCH_SEGMENTS=str(segments))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        script = Path(sys.executable).with_name("stoic")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "stoic"]
        command += [
            "worker",
            "--db",
            url,
            "--app",
            "bench.scale:make_app",
            "--lease-ttl",
            str(lease_ttl),
            "--claim-interval",
            str(claim_interval),
            "--log-level",
            "warning",
        ]
        self.log_path = os.path.join(log_dir, f"worker-{time.monotonic_ns()}.log")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        self.pid = self.proc.pid

    def owns(self, holder: str | None) -> bool:
        """Whether a holder id (host-pid-suffix) is this process's worker."""
        return holder is not None and holder.rsplit("-", 2)[-2] == str(self.pid)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def workers_running(url: str, count: int, segments: int, **kwargs: Any) -> Iterator[list[Worker]]:
    log_dir = tempfile.mkdtemp(prefix="stoic-bench-workers-")
    started = [Worker(url, segments, log_dir, **kwargs) for _ in range(count)]
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()
        shutil.rmtree(log_dir, ignore_errors=True)


def rows(store: stoic.Store, segments: int) -> dict[str, stoic.store.ProjectionState]:
    names = set(unit_names(segments))
    return {s.name: s for s in store.projections() if s.name in names}


def split(store: stoic.Store, segments: int) -> list[int]:
    """How many units each live holder has, sorted."""
    holders = Counter(s.holder for s in rows(store, segments).values() if s.holder and s.holder_alive)
    return sorted(holders.values())


def even_split(units: int, workers: int) -> list[int]:
    busy = min(units, workers)
    return sorted(units // busy + (1 if i < units % busy else 0) for i in range(busy))


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- CPU and wait events ---------------------------------------------------------------------------


def _jiffies(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _machine() -> dict[str, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
    return {"user": user + nice, "system": system + irq + softirq, "idle": idle, "iowait": iowait, "steal": steal}


def client_ports(pid: int) -> list[int]:
    """Local TCP ports of a process's sockets (its connections' client ports)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


_AUX = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum",
    "logical replication",
    "archiver",
    "stats collector",
    "startup",
    "wal sender",
)


class Probe:
    """Samples, in a thread, the CPU of the worker processes, of the PostgreSQL backends
    serving them (found by their client ports) and of PostgreSQL's background processes,
    and what those backends wait on (pg_stat_activity every ``interval`` s)."""

    def __init__(self, admin_url: str, pids: Callable[[], list[int]], interval: float = 0.1) -> None:
        import psycopg

        self.conn = psycopg.connect(admin_url, autocommit=True, application_name="stoic-bench-probe")
        self.pids = pids
        self.interval = interval
        self.waits: Counter[str] = Counter()
        self.samples = 0
        self.backends: dict[int, int] = {}  # backend pid -> jiffies when first seen
        self.backend_last: dict[int, int] = {}
        self.aux: dict[int, int] = {}
        self.aux_last: dict[int, int] = {}
        self.worker_first: dict[int, int] = {}
        self.worker_last: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)

    def __enter__(self) -> Probe:
        self.wall = time.monotonic()
        self.machine_start = _machine()
        self.others = SampledCpuMeter()
        self.self_start = _jiffies(os.getpid()) or 0
        self._map(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._read_cpu()
        self.seconds = time.monotonic() - self.wall
        self.machine_end = _machine()
        self.others_cores = self.others.read()["others_cores"]
        self.self_cores = ((_jiffies(os.getpid()) or 0) - self.self_start) / _HZ / self.seconds
        self.conn.close()

    def _map(self, first: bool = False) -> None:
        """Finds the backends serving the processes (by client port). A backend found
        after the start began inside the span: all of its CPU counts."""
        ports = [port for pid in self.pids() for port in client_ports(pid)]
        if ports:
            found = self.conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s)", (ports,)
            ).fetchall()
            for (pid,) in found:
                if pid not in self.backends and pid != self.conn.info.backend_pid:
                    self.backends[pid] = (_jiffies(pid) or 0) if first else 0
        if first:
            for entry in os.listdir("/proc"):
                cmd = _cmdline(int(entry)) if entry.isdigit() else ""
                if cmd.startswith("postgres:") and any(name in cmd for name in _AUX):
                    self.aux[int(entry)] = _jiffies(int(entry)) or 0
        for pid in self.pids():
            if pid not in self.worker_first:
                self.worker_first[pid] = (_jiffies(pid) or 0) if first else 0

    def _read_cpu(self) -> None:
        for pid in self.backends:
            value = _jiffies(pid)
            if value is not None:
                self.backend_last[pid] = value
        for pid in self.aux:
            value = _jiffies(pid)
            if value is not None:
                self.aux_last[pid] = value
        for pid in self.worker_first:
            value = _jiffies(pid)
            if value is not None:
                self.worker_last[pid] = value

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._map()
            self._read_cpu()
            pids = list(self.backends)
            if not pids:
                continue
            for state, kind, event in self.conn.execute(
                "SELECT state, wait_event_type, wait_event FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            ).fetchall():
                if state == "active" and kind is None:
                    key = "running (CPU)"
                elif event == "ClientRead":
                    key = f"waiting for the client ({state})"
                else:
                    key = f"{state}: {kind}:{event}"
                self.waits[key] += 1
            self.samples += 1

    def report(self) -> dict[str, Any]:
        def cores(first: dict[int, int], last: dict[int, int]) -> float:
            return sum(last.get(p, v) - v for p, v in first.items()) / _HZ / self.seconds

        total = {k: self.machine_end[k] - self.machine_start[k] for k in self.machine_end}
        ticks = sum(total.values()) or 1
        ncpu = os.cpu_count() or 1
        backend_samples = sum(self.waits.values()) or 1
        return {
            "worker_cores": cores(self.worker_first, self.worker_last),
            "backend_cores": cores(self.backends, self.backend_last),
            "pg_aux_cores": cores(self.aux, self.aux_last),
            "machine_busy_cores": (total["user"] + total["system"]) / ticks * ncpu,
            "iowait_cores": total["iowait"] / ticks * ncpu,
            "steal_cores": total["steal"] / ticks * ncpu,
            "others_cores": self.others_cores,
            "bench_cores": self.self_cores,
            "waits": {k: v / backend_samples for k, v in self.waits.most_common()},
            "backends": len(self.backends),
        }


# -- 1. the matrix ---------------------------------------------------------------------------------


def run_matrix_cell(segments: int, workers: int, accounts: int) -> dict[str, Any]:
    url = fresh_url("postgres")
    store = stoic.connect(url)
    ops = stoic.Operations(store)
    try:
        t_spawn = time.monotonic()
        with workers_running(url, workers, segments, lease_ttl=6.0, claim_interval=0.3) as procs:
            want = even_split(segments, workers)
            wait_until(
                lambda: len(rows(store, segments)) == segments and split(store, segments) == want,
                60,
                f"{workers} workers to share {segments} segments as {want}",
            )
            settled = time.monotonic() - t_spawn
            for name in unit_names(segments):
                ops.pause(name, "bench-scale", "load the events first")
            events = load(store, accounts, streams_per_commit=200)
            store.query("ANALYZE stoic_events")
            head = store.head()
            time.sleep(0.6)  # every holder has seen the pause
            with Probe(PG_URL, lambda: [w.pid for w in procs]) as probe:
                t_resume = time.monotonic()
                for name in unit_names(segments):
                    ops.resume(name, "bench-scale", "go")
                first = None
                while True:
                    states = rows(store, segments).values()
                    if first is None and any(s.position > 0 for s in states):
                        first = time.monotonic()
                    if all(s.position >= head for s in states):
                        break
                    if any(w.proc.poll() is not None for w in procs):
                        raise RuntimeError("a worker exited")
                    time.sleep(0.05)
                done = time.monotonic()
            holders = split(store, segments)
        check_ledger(store)
    finally:
        store.close()
        drop(url)
    seconds = done - t_resume
    return {
        "segments": segments,
        "workers": workers,
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds,
        "from_first_commit_eps": events / (done - (first or t_resume)),
        "settle_s": settled,
        "split": holders,
        **probe.report(),
    }


def matrix(args: argparse.Namespace) -> None:
    seg_list = [int(x) for x in args.segments.split(",")]
    worker_list = [int(x) for x in args.workers.split(",")]
    accounts = args.events // 10
    print(
        f"segments x workers: catch-up of {accounts * 10:,} events, ledger projection (2 statements per event), "
        f"{args.repeat} undisturbed run(s) per cell; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for segments in seg_list:
        for workers in worker_list:
            runs: list[dict[str, Any]] = []
            attempts = 0
            while sum(not r["disturbed"] for r in runs) < args.repeat and attempts < 2 * args.repeat:
                attempts += 1
                if not args.no_wait:
                    wait_for_quiet()
                load_avg = os.getloadavg()[0]
                r = run_matrix_cell(segments, workers, accounts)
                r["load_avg"] = load_avg
                r["disturbed"] = r["others_cores"] > 0.25
                runs.append(r)
                waits = ", ".join(f"{k} {v:.0%}" for k, v in list(r["waits"].items())[:4])
                print(
                    f"  K={segments} W={workers} run {attempts}: {r['events_per_s']:,.0f} ev/s "
                    f"({r['seconds']:.1f} s; from first commit {r['from_first_commit_eps']:,.0f}); "
                    f"CPU workers {r['worker_cores']:.2f}, backends {r['backend_cores']:.2f} "
                    f"({r['backends']}), pg aux {r['pg_aux_cores']:.2f}, this process {r['bench_cores']:.2f}, "
                    f"machine {r['machine_busy_cores']:.2f} "
                    f"busy + {r['iowait_cores']:.2f} iowait + {r['steal_cores']:.2f} steal; "
                    f"waits: {waits}; split {r['split']}, settled in {r['settle_s']:.1f} s; "
                    f"load {load_avg:.2f} [others {r['others_cores']:.2f} cores]"
                    f"{'  DISTURBED' if r['disturbed'] else ''}",
                    flush=True,
                )
            clean = [r for r in runs if not r["disturbed"]]
            results[(segments, workers)] = clean if len(clean) >= args.repeat else runs
    print("\nevents/s, median (min-max); rows: segments, columns: worker processes")
    print("K \\ W  " + "".join(f"{w:>26}" for w in worker_list))
    for segments in seg_list:
        cells = []
        for workers in worker_list:
            values = [r["events_per_s"] for r in results[(segments, workers)]]
            flag = "*" if any(r["disturbed"] for r in results[(segments, workers)]) else ""
            cells.append(f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f}){flag}")
        print(f"{segments:<7}" + "".join(f"{c:>26}" for c in cells))
    print("(* includes disturbed runs)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{k[0]}x{k[1]}": v for k, v in results.items()}, f, indent=1, default=str)


# -- 1b. what a segment costs: every segment reads every event ----------------------------------------


def overhead(args: argparse.Namespace) -> None:
    """In one process, ``run_until_caught_up`` runs the K segments one after the other:
    the time is the total work K workers would share. Each segment reads all events and
    applies its own, so the reading is done K times."""
    accounts = args.events // 10
    print(
        f"segment overhead: in-process catch-up of {accounts * 10:,} events with K segments run one after "
        f"the other; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    for segments in [int(x) for x in args.segments.split(",")]:
        values = []
        for attempt in range(1, 2 * args.repeat + 1):
            if not args.no_wait:
                wait_for_quiet()
            url = fresh_url("postgres")
            store = stoic.connect(url)
            try:
                events = load(store, accounts, streams_per_commit=200)
                store.query("ANALYZE stoic_events")
                app = App([type("SegmentedLedger", (Ledger,), {"segments": segments})()], name="overhead")
                runner = stoic.Runner(store, app)
                with Probe(PG_URL, lambda: [os.getpid()]) as probe:
                    started = time.perf_counter()
                    runner.run_until_caught_up()
                    seconds = time.perf_counter() - started
                check_ledger(store)
            finally:
                store.close()
                drop(url)
            r = probe.report()
            disturbed = r["others_cores"] > 0.25
            if not disturbed:
                values.append(events / seconds)
            print(
                f"  K={segments} run {attempt}: {events / seconds:,.0f} ev/s ({seconds:.1f} s); CPU this process "
                f"{r['bench_cores']:.2f}, backends {r['backend_cores']:.2f}; per event: client "
                f"{r['bench_cores'] * seconds / events * 1e6:.0f} us, backends "
                f"{r['backend_cores'] * seconds / events * 1e6:.0f} us [others {r['others_cores']:.2f} cores]"
                f"{'  DISTURBED' if disturbed else ''}",
                flush=True,
            )
            if len(values) >= args.repeat:
                break
        if values:
            print(f"  K={segments}: median {statistics.median(values):,.0f} ev/s ({len(values)} undisturbed runs)")


# -- 2. failover after SIGKILL ------------------------------------------------------------------------


class Appender(threading.Thread):
    """Appends ``per_call`` Deposited events to random accounts every ``interval`` s (one
    append_many), on its own store; records (monotonic time done, events) or the error."""

    def __init__(self, url: str, accounts: int, interval: float = 0.02, per_call: int = 10, seed: int = 1) -> None:
        super().__init__(name=f"appender-{seed}", daemon=True)
        self.store = stoic.connect(url)
        self.accounts, self.interval, self.per_call = accounts, interval, per_call
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.done: list[tuple[float, int]] = []
        self.failed: list[tuple[float, str]] = []
        self.longest = 0.0  #: the longest append call, seconds

    def run(self) -> None:
        next_at = time.monotonic()
        try:
            while not self.stop.is_set():
                picks = self.rng.sample(range(self.accounts), self.per_call)
                items = [
                    (account_id(i), [stoic.NewEvent("Deposited", {"amount": self.rng.randint(1, 100)})], stoic.ANY)
                    for i in picks
                ]
                started = time.monotonic()
                try:
                    self.store.append_many(items)
                    self.done.append((time.monotonic(), len(items)))
                    self.longest = max(self.longest, time.monotonic() - started)
                except stoic.StoicError as exc:
                    self.longest = max(self.longest, time.monotonic() - started)
                    self.failed.append((time.monotonic(), f"{type(exc).__name__}: {str(exc)[:200]}"))
                next_at += self.interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    self.stop.wait(delay)
                else:
                    next_at = time.monotonic()  # behind schedule (an outage): do not make up
        finally:
            self.store.close()

    def finish(self) -> None:
        self.stop.set()
        if self.ident is not None:
            self.join(30)


def failover(args: argparse.Namespace) -> None:
    segments, count = args.units, 3
    print(
        f"failover: {count} workers, {segments} segments, lease_ttl {args.lease_ttl} s, claim_interval "
        f"{args.claim_interval} s, appender ~{int(10 / 0.02)} events/s, {args.kills} SIGKILLs; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    if not args.no_wait:
        wait_for_quiet()
    url = fresh_url("postgres")
    store = stoic.connect(url)
    accounts = 10_000
    load(store, accounts, streams_per_commit=200)
    store.query("ANALYZE stoic_events")
    log_dir = tempfile.mkdtemp(prefix="stoic-bench-failover-")
    kw = {"lease_ttl": args.lease_ttl, "claim_interval": args.claim_interval}
    procs = [Worker(url, segments, log_dir, **kw) for _ in range(count)]
    appender = Appender(url, accounts)
    rng = random.Random(5)
    per_unit: list[float] = []
    per_kill: list[float] = []
    detect: list[float] = []
    meter = SampledCpuMeter()
    loads = []
    try:
        want = even_split(segments, count)

        def settled() -> bool:
            states = rows(store, segments)
            head = store.head()
            return (
                len(states) == segments
                and split(store, segments) == want
                and all(head - s.position < 2_000 for s in states.values())
            )

        wait_until(settled, 120, "the workers to share the segments and catch up")
        appender.start()
        for kill in range(args.kills):
            wait_until(settled, 120, "an even split after the replacement joined")
            time.sleep(rng.uniform(0.5, 1.5))
            states = rows(store, segments)
            victims = [w for w in procs if w.proc.poll() is None and any(w.owns(s.holder) for s in states.values())]
            victim = rng.choice(victims)
            held = {n: s.position for n, s in states.items() if victim.owns(s.holder)}
            loads.append(os.getloadavg()[0])
            t_kill = time.monotonic()
            victim.kill()
            moved: dict[str, float] = {}
            freed: dict[str, float] = {}
            deadline = t_kill + 60
            while len(moved) < len(held) and time.monotonic() < deadline:
                now_states = rows(store, segments)
                now = time.monotonic()
                for name in held:
                    s = now_states[name]
                    if victim.owns(s.holder):
                        held[name] = max(held[name], s.position)  # a commit in flight at the kill
                        if not s.holder_alive:
                            freed.setdefault(name, now)
                        continue
                    freed.setdefault(name, now)
                    if name not in moved and s.position > held[name]:
                        moved[name] = now - t_kill
                time.sleep(0.02)
            if len(moved) < len(held):
                raise TimeoutError(f"kill {kill + 1}: {sorted(set(held) - set(moved))} did not move in 60 s")
            per_unit.extend(moved.values())
            per_kill.append(max(moved.values()))
            detect.append(min(freed.values()) - t_kill)
            print(
                f"  kill {kill + 1:2}: {len(held)} segments; lease seen expired after {detect[-1]:.2f} s, "
                f"advancing elsewhere after {min(moved.values()):.2f}-{max(moved.values()):.2f} s "
                f"[load {loads[-1]:.2f}]",
                flush=True,
            )
            procs.remove(victim)
            procs.append(Worker(url, segments, log_dir, **kw))
        appender.finish()
        others = meter.read()["others_cores"]
        head = store.head()
        wait_until(lambda: all(s.position >= head for s in rows(store, segments).values()), 120, "final catch-up")
    finally:
        appender.finish()
        for worker in procs:
            worker.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
    errors = appender.failed
    check_ledger(store)
    store.close()
    drop(url)
    per_unit.sort()
    per_kill.sort()
    detect.sort()
    print(
        f"\n{args.kills} kills, {len(per_unit)} segments taken over; every event applied exactly once; "
        f"appender errors: {len(errors)}; others used {others:.2f} cores on average; load average "
        f"{min(loads):.2f}-{max(loads):.2f}"
    )
    for label, values in (
        ("per segment: kill -> advancing under another worker", per_unit),
        ("per kill: kill -> all its segments advancing", per_kill),
        ("per kill: kill -> first lease seen expired", detect),
    ):
        print(
            f"  {label}: p50 {percentile(values, 50):.2f} s, p99 {percentile(values, 99):.2f} s, "
            f"min {values[0]:.2f}, max {values[-1]:.2f} (n={len(values)})"
        )


# -- 3. a database restart --------------------------------------------------------------------------


def _pg_bindir() -> str:
    candidates = [os.environ.get("PG_BINDIR", "")]
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        candidates.append(
            subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        )
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    for directory in candidates:
        if directory and os.path.exists(os.path.join(directory, "initdb")):
            return directory
    raise SystemExit("PostgreSQL server binaries (initdb, pg_ctl) not found; set PG_BINDIR")


class PrivateCluster:
    """A throwaway PostgreSQL cluster (the recipe of tests/chaos/conftest.py): initdb in a
    temporary directory, its own port, trust auth; as root it runs as the postgres user."""

    def __init__(self) -> None:
        self.bindir = _pg_bindir()
        self.root = tempfile.mkdtemp(prefix="stoic-bench-pg-")
        self.data = os.path.join(self.root, "data")
        self.logfile = os.path.join(self.root, "server.log")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = "
                f"'{self.root}'\nmax_connections = 100\nshared_buffers = 128MB\nfsync = on\n"
            )
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, os.path.join(self.bindir, tool), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            cwd=self.root,
        )

    def url(self, schema: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?schema={schema}"

    def start(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-l", self.logfile, "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def restart(args: argparse.Namespace) -> None:
    segments, count = args.units, 2
    rate = args.rate
    print(
        f"database restart: private cluster, 2 appenders offering {rate:,} events/s in all, {count} workers, "
        f"{segments} segments, lease_ttl {args.lease_ttl} s, claim_interval {args.claim_interval} s; "
        f"outage {args.outage} s after {args.before} s; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    if not args.no_wait:
        wait_for_quiet()
    import logging

    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)  # its reconnect attempts, printed otherwise
    cluster = PrivateCluster()
    url = cluster.url("bench_restart")
    store = stoic.connect(url)
    log_dir = tempfile.mkdtemp(prefix="stoic-bench-restart-")
    procs: list[Worker] = []
    appenders: list[Appender] = []
    samples: list[tuple[float, int, int]] = []  # (time, head, min checkpoint)
    sample_errors = 0
    try:
        accounts = 10_000
        load(store, accounts, streams_per_commit=200)
        kw = {"lease_ttl": args.lease_ttl, "claim_interval": args.claim_interval}
        procs = [Worker(url, segments, log_dir, **kw) for _ in range(count)]
        head = store.head()
        wait_until(
            lambda: (
                len(rows(store, segments)) == segments
                and all(s.position >= head for s in rows(store, segments).values())
            ),
            120,
            "initial catch-up",
        )
        per_call = 10
        interval = per_call * 2 / rate
        appenders = [Appender(url, accounts, interval=interval, per_call=per_call, seed=s) for s in (1, 2)]
        meter = SampledCpuMeter()
        t0 = time.monotonic()
        for appender in appenders:
            appender.start()
        stopped_at = up_at = 0.0
        stop_requested = t0 + args.before
        end = None
        while end is None or time.monotonic() < end:
            now = time.monotonic()
            if not stopped_at and now >= stop_requested:
                cluster.stop("fast")
                stopped_at = time.monotonic()
                time.sleep(args.outage)
                cluster.start()
                up_at = time.monotonic()
                end = up_at + args.after
                continue
            try:
                states = rows(store, segments)
                if len(states) == segments:
                    samples.append((now, store.head(), min(s.position for s in states.values())))
            except stoic.StoicError:
                sample_errors += 1
            time.sleep(0.1)
        for appender in appenders:
            appender.finish()
        others = meter.read()["others_cores"]
        head = store.head()
        wait_until(lambda: all(s.position >= head for s in rows(store, segments).values()), 120, "final catch-up")
        alive = [w.proc.poll() is None for w in procs]
        check_ledger(store)
    finally:
        for appender in appenders:
            appender.finish()
        for worker in procs:
            worker.stop()
        store.close()
        cluster.destroy()
        shutil.rmtree(log_dir, ignore_errors=True)

    done = sorted(t for a in appenders for t, _ in a.done)
    appended = sorted((t, n) for a in appenders for t, n in a.done)
    failed = sorted(t for a in appenders for t, _ in a.failed)

    def appended_rate(start: float, stop: float) -> float:
        return sum(n for t, n in appended if start <= t < stop) / max(stop - start, 1e-9)

    def projected_rate(start: float, stop: float) -> float:
        inside = [s for s in samples if start <= s[0] <= stop]
        if len(inside) < 2:
            return 0.0
        return (inside[-1][2] - inside[0][2]) / (inside[-1][0] - inside[0][0])

    warm = t0 + 2.0
    before_lag = [h - m for t, h, m in samples if warm <= t < stopped_at]
    lag_limit = max(before_lag) if before_lag else 0
    first_append = next((t for t in done if t > up_at), float("nan"))
    first_progress = next(
        (t for t, _h, m in samples if t > up_at and m > max((m2 for t2, _h2, m2 in samples if t2 <= up_at), default=0)),
        float("nan"),
    )
    recovered = next((t for t, h, m in samples if t > first_append and h - m <= lag_limit), float("nan"))
    print(
        f"  appended {len(done)} calls ({sum(n for _, n in appended):,} events), {len(failed)} calls failed "
        f"(first failure {min(failed) - stopped_at if failed else float('nan'):+.2f} s from the stop, last "
        f"{max(failed) - up_at if failed else float('nan'):+.2f} s from the start); worker processes alive at "
        f"the end: {alive}; every event applied exactly once; others used {others:.2f} cores"
    )
    print(
        f"  pg_ctl stop -m fast took {stopped_at - stop_requested:.2f} s; the server was down "
        f"{up_at - stopped_at:.2f} s (stop returned -> start returned)"
    )
    print("  events/s       appended   projected")
    for label, start, stop in (
        ("before", warm, stopped_at),
        ("during", stopped_at, up_at),
        ("after 0-5 s", up_at, up_at + 5),
        ("after 5-15 s", up_at + 5, up_at + 15),
    ):
        print(f"  {label:12} {appended_rate(start, stop):10,.0f} {projected_rate(start, stop):11,.0f}")
    print(
        f"  after the server was up: first append {first_append - up_at:.2f} s, first checkpoint move "
        f"{first_progress - up_at:.2f} s, lag back to the pre-outage maximum ({lag_limit:,} events) "
        f"{recovered - up_at:.2f} s"
    )
    print("  timeline (1 s bins from the stop): appended / projected events/s")
    for second in range(-3, int(args.after)):
        start = up_at + second if second >= 0 else stopped_at + second
        print(
            f"    {'up' if second >= 0 else 'stop'}{second:+d}s: {appended_rate(start, start + 1):8,.0f} "
            f"{projected_rate(start, start + 1):8,.0f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("matrix", help="catch-up throughput with K segments x W worker processes")
    m.add_argument("--events", type=int, default=100_000)
    m.add_argument("--segments", default="1,2,4", help="segment counts (default 1,2,4)")
    m.add_argument("--workers", default="1,2,4", help="worker process counts (default 1,2,4)")
    m.add_argument("--repeat", type=int, default=2)
    m.add_argument("--json", metavar="FILE")
    o = sub.add_parser("overhead", help="in-process catch-up with K segments: the cost of reading every event K times")
    o.add_argument("--events", type=int, default=100_000)
    o.add_argument("--segments", default="1,2,4,8")
    o.add_argument("--repeat", type=int, default=2)
    f = sub.add_parser("failover", help="SIGKILL a worker: time until its segments advance elsewhere")
    f.add_argument("--kills", type=int, default=20)
    f.add_argument("--units", type=int, default=8, help="segments (default 8)")
    f.add_argument("--lease-ttl", type=float, default=2.0)
    f.add_argument("--claim-interval", type=float, default=0.3)
    r = sub.add_parser("restart", help="stop a private PostgreSQL cluster for a few seconds mid-run")
    r.add_argument("--units", type=int, default=4, help="segments (default 4)")
    r.add_argument("--rate", type=int, default=1_000, help="events/s offered by the appenders (default 1,000)")
    r.add_argument("--outage", type=float, default=3.0, help="seconds the server stays down (default 3)")
    r.add_argument("--before", type=float, default=12.0)
    r.add_argument("--after", type=float, default=20.0)
    r.add_argument("--lease-ttl", type=float, default=6.0)
    r.add_argument("--claim-interval", type=float, default=1.0)
    for p in (m, o, f, r):
        p.add_argument("--no-wait", action="store_true", help="do not wait for other processes to go quiet")
    args = parser.parse_args(argv)
    {"matrix": matrix, "overhead": overhead, "failover": failover, "restart": restart}[args.command](args)


if __name__ == "__main__":
    main()
