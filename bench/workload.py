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

import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import stoic
from stoic import App, NewEvent, Projection, Transaction, handles

ACCOUNTS = 10_000  #: streams of the full workload
EVENTS_PER_ACCOUNT = 10  #: 1 AccountOpened + 9 Deposited
PG_URL = os.environ.get("STOIC_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgres")
TABLE = "bench_balances"


class Balances(Projection):
    """One row per account: its balance and how many deposits it had."""

    name = "bench_balances"

    def setup(self, tx: Transaction) -> None:
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} ("
            "account TEXT PRIMARY KEY, balance BIGINT NOT NULL, movements BIGINT NOT NULL)"
        )

    def reset(self, tx: Transaction) -> None:
        tx.execute(f"DELETE FROM {TABLE}")

    @handles("AccountOpened")
    def opened(self, event: stoic.RecordedEvent, tx: Transaction) -> None:
        tx.execute(
            f"INSERT INTO {TABLE} (account, balance, movements) VALUES (?, 0, 0) "
            "ON CONFLICT (account) DO NOTHING",
            (event.stream_id,),
        )

    @handles("Deposited")
    def deposited(self, event: stoic.RecordedEvent, tx: Transaction) -> None:
        tx.execute(
            f"UPDATE {TABLE} SET balance = balance + ?, movements = movements + 1 WHERE account = ?",
            (event.data["amount"], event.stream_id),
        )


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


def fresh_url(backend: str, directory: str | None = None) -> str:
    """Returns a URL naming an empty database: a new SQLite file or PostgreSQL schema."""
    if backend == "sqlite":
        directory = directory or tempfile.mkdtemp(prefix="stoic-bench-")
        return f"sqlite:///{os.path.join(directory, 'bench.db')}"
    if backend == "postgres":
        separator = "&" if "?" in PG_URL else "?"
        return f"{PG_URL}{separator}schema=bench_{uuid.uuid4().hex[:10]}"
    raise ValueError(f"unknown backend {backend!r}")


def drop(url: str) -> None:
    """Removes what :func:`fresh_url` created."""
    if url.startswith("sqlite"):
        path = url.split("sqlite:///", 1)[1]
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


# -- reporting ---------------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated runs."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


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
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["ram_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    import sqlite3

    info["sqlite"] = sqlite3.sqlite_version
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            for setting in ("server_version", "synchronous_commit", "fsync", "shared_buffers",
                            "wal_level", "full_page_writes"):
                info[f"pg_{setting}"] = conn.execute(f"SHOW {setting}").fetchone()[0]  # type: ignore[index]
    with contextlib.suppress(Exception):
        info["load_avg"] = os.getloadavg()
    with contextlib.suppress(Exception):
        info["git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    return info
