"""The workload every benchmark shares: accounts and a balances projection.

10,000 streams ("accounts") of 10 events each (one ``AccountOpened`` and nine
``Deposited``), 100,000 events in all, and a projection that keeps one row per
account, written through ``tx`` with ``?`` placeholders (an ``INSERT ... ON
CONFLICT`` and an ``UPDATE``), as a user would write it.

Also here: fresh database URLs per run (a temporary SQLite file, or a new
PostgreSQL schema dropped afterwards), a fast loader, the check that the read
model equals a fold of the events, and small statistics helpers.

``stoic worker --app bench.workload:app`` runs the projection on its own (the
latency benchmark does that in another process).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import stoic
from stoic import App, NewEvent, Projection, Transaction, handles

ACCOUNTS = 10_000  #: streams of the full workload
EVENTS_PER_ACCOUNT = 10  #: 1 AccountOpened + 9 Deposited
PG_URL = os.environ.get("STOIC_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgres")
TABLE = "bench_balances"


CREATE_SQL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (account TEXT PRIMARY KEY, balance BIGINT NOT NULL, movements BIGINT NOT NULL)"
)
OPENED_SQL = f"INSERT INTO {TABLE} (account, balance, movements) VALUES (?, 0, 0) ON CONFLICT (account) DO NOTHING"
DEPOSITED_SQL = f"UPDATE {TABLE} SET balance = balance + ?, movements = movements + 1 WHERE account = ?"


class Balances(Projection):
    """One row per account: its balance and how many deposits it had."""

    name = "bench_balances"

    def setup(self, tx: Transaction) -> None:
        tx.execute(CREATE_SQL)

    def reset(self, tx: Transaction) -> None:
        tx.execute(f"DELETE FROM {TABLE}")

    @handles("AccountOpened")
    def opened(self, event: stoic.RecordedEvent, tx: Transaction) -> None:
        tx.execute(OPENED_SQL, (event.stream_id,))

    @handles("Deposited")
    def deposited(self, event: stoic.RecordedEvent, tx: Transaction) -> None:
        tx.execute(DEPOSITED_SQL, (event.data["amount"], event.stream_id))


app = App([Balances], name="bench")


# -- the events ----------------------------------------------------------------------


def account_id(index: int) -> str:
    return f"account-{index:06d}"


def amount(index: int, n: int) -> int:
    """The n-th deposit (1..9) of an account: deterministic, 1..100."""
    return (index * 7 + n * 13) % 100 + 1


def account_events(index: int, per_account: int = EVENTS_PER_ACCOUNT) -> list[NewEvent]:
    """One account's stream: opened, then ``per_account - 1`` deposits."""
    events = [NewEvent("AccountOpened", {"owner": f"owner {index}", "currency": "EUR"})]
    events += [NewEvent("Deposited", {"amount": amount(index, n)}) for n in range(1, per_account)]
    return events


def expected_total(accounts: int, per_account: int = EVENTS_PER_ACCOUNT) -> int:
    return sum(amount(i, n) for i in range(accounts) for n in range(1, per_account))


def load(store: stoic.Store, accounts: int, streams_per_commit: int = 100, start: int = 0) -> int:
    """Appends ``accounts`` full streams with append_many; returns the events written."""
    written = 0
    for first in range(start, start + accounts, streams_per_commit):
        last = min(first + streams_per_commit, start + accounts)
        items = [(account_id(i), account_events(i), stoic.NO_STREAM) for i in range(first, last)]
        written += sum(len(r.positions) for r in store.append_many(items))
    return written


def check_balances(store: stoic.Store, accounts: int) -> None:
    """Raises AssertionError unless the read model equals the fold of the workload."""
    rows, total, movements = store.query(f"SELECT count(*), sum(balance), sum(movements) FROM {TABLE}")[0]
    want = (accounts, expected_total(accounts), accounts * (EVENTS_PER_ACCOUNT - 1))
    got = (int(rows), int(total or 0), int(movements or 0))
    if got != want:
        raise AssertionError(f"read model is wrong: (rows, total, movements) = {got}, expected {want}")


# -- databases -------------------------------------------------------------------------


SQLITE_SYNCHRONOUS = "full"  #: the SQLite store's default; ``--sqlite-synchronous normal`` changes it


def fresh_url(backend: str, directory: str | None = None) -> str:
    """Returns a URL naming an empty database: a new SQLite file or PostgreSQL schema."""
    if backend == "sqlite":
        directory = directory or tempfile.mkdtemp(prefix="stoic-bench-")
        return f"sqlite:///{os.path.join(directory, 'bench.db')}?synchronous={SQLITE_SYNCHRONOUS}"
    if backend == "postgres":
        separator = "&" if "?" in PG_URL else "?"
        return f"{PG_URL}{separator}schema=bench_{uuid.uuid4().hex[:10]}"
    raise ValueError(f"unknown backend {backend!r}")


def drop(url: str) -> None:
    """Removes what :func:`fresh_url` created."""
    if url.startswith("sqlite"):
        path = url.split("sqlite:///", 1)[1].split("?", 1)[0]
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        return
    import psycopg
    from psycopg import sql

    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def fresh_store(backend: str) -> Iterator[tuple[str, stoic.Store]]:
    """Yields ``(url, store)`` on an empty database, closed and removed afterwards."""
    url = fresh_url(backend)
    store = stoic.connect(url)
    try:
        yield url, store
    finally:
        store.close()
        drop(url)


def backends(choice: str) -> list[str]:
    return list(BACKENDS) if choice == "both" else [choice]


def add_common_arguments(parser: argparse.ArgumentParser, repeat: int = 2) -> None:
    """The options every benchmark command takes."""
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=repeat, help=f"undisturbed runs of each case ({repeat})")
    parser.add_argument(
        "--sqlite-synchronous",
        choices=["full", "normal"],
        default="full",
        help="the SQLite store's synchronous setting (default full, the store's default)",
    )
    parser.add_argument("--no-wait", action="store_true", help="do not wait for other processes to go quiet")


def apply_common_arguments(args: argparse.Namespace) -> None:
    global SQLITE_SYNCHRONOUS
    SQLITE_SYNCHRONOUS = args.sqlite_synchronous


# -- a noisy machine ----------------------------------------------------------------------
#
# On a 2-core machine, anything else running (a test suite, a build) halves a
# benchmark's figures. Each run therefore measures the CPU that *other* processes
# used meanwhile: every user process that is neither this one, nor one of its
# descendants, nor PostgreSQL (whose backends serve this benchmark). Kernel
# threads (I/O, journaling) are left out too: our own fsyncs wake them. A run that
# others disturbed is flagged and, within a budget, repeated; the report says so.
# Processes that start and end inside the span are missed, so the figure is a floor.

DISTURBED_CORES = 0.25  #: a run during which others used more than this many cores is disturbed
_HZ = os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[str, int, int]]:
    """{pid: (command, parent pid, user + system jiffies)} of every live process."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = text.rsplit(")", 1)[1].split()
            found[int(entry)] = (name, int(fields[1]), int(fields[11]) + int(fields[12]))
    return found


def _foreign(procs: dict[int, tuple[str, int, int]]) -> dict[int, int]:
    """Jiffies of the processes that are not ours, not PostgreSQL and not kernel threads."""
    me = os.getpid()
    foreign: dict[int, int] = {}
    for pid, (name, ppid, jiffies) in procs.items():
        if pid == 2 or ppid == 2 or name == "postgres" or name.startswith("postgres:"):
            continue
        ancestor, hops = pid, 0
        while ancestor > 1 and ancestor != me and hops < 50:
            ancestor, hops = procs.get(ancestor, ("", 0, 0))[1], hops + 1
        if ancestor != me:
            foreign[pid] = jiffies
    return foreign


class CpuMeter:
    """Measures over a span how many cores other processes kept busy."""

    def __init__(self) -> None:
        self.wall = time.monotonic()
        self.start = _foreign(_processes())

    def read(self) -> dict[str, float]:
        seconds = max(time.monotonic() - self.wall, 1e-6)
        end = _foreign(_processes())
        used = sum(j - self.start.get(pid, 0) for pid, j in end.items())
        return {"others_cores": max(0, used) / _HZ / seconds}


class SampledCpuMeter:
    """Like :class:`CpuMeter`, for long spans: a thread reads /proc every ``interval``
    seconds and adds up each process's CPU between readings, so a process that ends
    inside the span still counts (up to its last reading). ``read()`` stops it."""

    def __init__(self, interval: float = 0.5) -> None:
        self.wall = time.monotonic()
        self.interval = interval
        self.last = _foreign(_processes())
        self.used = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        now = _foreign(_processes())
        self.used += sum(j - self.last.get(pid, 0) for pid, j in now.items() if j >= self.last.get(pid, 0))
        self.last.update(now)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def read(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample()
        seconds = max(time.monotonic() - self.wall, 1e-6)
        return {"others_cores": max(0, self.used) / _HZ / seconds}


QUIET_WAIT_S = float(os.environ.get("STOIC_BENCH_QUIET_WAIT", "120"))  #: longest wait for quiet, seconds


def wait_for_quiet(threshold: float = 0.15, max_wait: float | None = None) -> float:
    """Waits until other processes use under ``threshold`` cores for 1 s twice
    in a row, or ``max_wait`` seconds pass; returns the last figure."""
    deadline = time.monotonic() + (QUIET_WAIT_S if max_wait is None else max_wait)
    quiet_in_a_row, others = 0, 0.0
    while time.monotonic() < deadline:
        meter = CpuMeter()
        time.sleep(1.0)
        others = meter.read()["others_cores"]
        quiet_in_a_row = quiet_in_a_row + 1 if others < threshold else 0
        if quiet_in_a_row >= 2:
            break
    return others


def measured(
    run: Callable[[], dict[str, Any]],
    repeat: int,
    *,
    wait: bool = True,
    extra_attempts: int | None = None,
    label: str = "",
    show: Callable[[dict[str, Any]], str] | None = None,
) -> list[dict[str, Any]]:
    """Calls ``run`` until ``repeat`` undisturbed runs are done (or the extra
    attempts, by default ``repeat``, are spent); each result gets
    ``others_cores`` and ``disturbed``. Returns the undisturbed runs, or every run
    when there are not enough of them. Prints one line per run."""
    extra = repeat if extra_attempts is None else extra_attempts
    results: list[dict[str, Any]] = []
    attempts = 0
    while sum(not r["disturbed"] for r in results) < repeat and attempts < repeat + extra:
        attempts += 1
        if wait:
            wait_for_quiet()
        meter = CpuMeter()
        result = run()
        result.update(meter.read())
        result["disturbed"] = result["others_cores"] > DISTURBED_CORES
        results.append(result)
        flag = "  DISTURBED, repeated" if result["disturbed"] else ""
        detail = show(result) if show else ""
        print(
            f"  {label} run {attempts}: {detail} [others {result['others_cores']:.2f} cores]{flag}",
            flush=True,
        )
    clean = [r for r in results if not r["disturbed"]]
    return clean if len(clean) >= repeat else results


# -- reporting ---------------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated runs."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summary(bench: str, backend: str, case: str, unit: str, key: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure of a benchmark over its runs: median, min, max of ``key``."""
    values = [r[key] for r in runs]
    return {
        "bench": bench,
        "backend": backend,
        "case": case,
        "unit": unit,
        "values": values,
        **spread(values),
        "disturbed": any(r["disturbed"] for r in runs),
        "runs": runs,
    }


def print_summary(s: dict[str, Any], digits: int = 0) -> None:
    f = f"{{:,.{digits}f}}"
    note = " (runs disturbed by other processes)" if s["disturbed"] else ""
    print(
        f"  {s['backend']:8} {s['case']}: median {f.format(s['median'])} {s['unit']} "
        f"(min {f.format(s['min'])}, max {f.format(s['max'])}, {len(s['values'])} runs){note}",
        flush=True,
    )


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by the nearest-rank method."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(p / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {"cores": os.cpu_count(), "python": platform.python_version()}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        info["cpu"] = next(line for line in f if line.startswith("model name")).split(":", 1)[1].strip()
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        info["ram_gib"] = round(kib / 1024 / 1024, 1)
    import sqlite3

    info["sqlite"] = sqlite3.sqlite_version
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            for setting in (
                "server_version",
                "synchronous_commit",
                "fsync",
                "shared_buffers",
                "wal_level",
                "full_page_writes",
            ):
                info[f"pg_{setting}"] = conn.execute(f"SHOW {setting}").fetchone()[0]  # type: ignore[index]
    with contextlib.suppress(Exception):
        info["load_avg"] = os.getloadavg()
    with contextlib.suppress(Exception):
        info["git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    return info
