"""Catch-up throughput of the balances projection, events/s.

Loads the workload (10,000 accounts, 100,000 events) into a fresh database,
then times ``stoic.Runner(store, app).run_until_caught_up()``: the whole call,
including worker registration, the lease and the projection's setup. The read
model is checked against the fold of the events afterwards.

``--baseline`` also times plain driver loops over the same events (read 500
events, decode the JSON, run the same SQL, move a checkpoint row, commit; on
PostgreSQL pipelined): one ``execute`` per event, and one ``executemany`` per
run of events using the same statement. They are the ceilings a framework on
that driver can approach with per-event handlers and with batched writes.

    python -m bench.catchup --backend both --accounts 10000 --repeat 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from typing import Any

import stoic
from bench import workload
from bench.workload import (
    ACCOUNTS,
    CREATE_SQL,
    DEPOSITED_SQL,
    EVENTS_PER_ACCOUNT,
    OPENED_SQL,
    Balances,
    add_common_arguments,
    app,
    apply_common_arguments,
    backends,
    check_balances,
    fmt_rate,
    fresh_store,
    load,
    measured,
    print_summary,
    summary,
)


def run_catchup(backend: str, accounts: int = ACCOUNTS, batch_size: int | None = None) -> dict[str, Any]:
    """Loads the workload into a fresh database and times the projection's catch-up."""
    with fresh_store(backend) as (_url, store):
        events = load(store, accounts)
        runner = stoic.Runner(store, app, batch_size=batch_size)
        started = time.perf_counter()
        positions = runner.run_until_caught_up()
        seconds = time.perf_counter() - started
        if positions[Balances.name] != events:
            raise AssertionError(f"caught up to {positions}, expected {events}")
        check_balances(store, accounts)
    return {
        "backend": backend,
        "events": events,
        "batch_size": batch_size or Balances.batch_size,
        "seconds": seconds,
        "events_per_s": events / seconds,
    }


def run_baseline(
    backend: str, accounts: int = ACCOUNTS, batch_size: int = 500, grouped: bool = False
) -> dict[str, Any]:
    """Times a plain driver loop doing the projection's work on the same events:
    one ``execute`` per event, or (``grouped``) one ``executemany`` per run of
    consecutive events that use the same statement (same order, same effect)."""
    with fresh_store(backend) as (_url, store):
        events = load(store, accounts)
        if backend == "sqlite":
            seconds = _baseline_sqlite(store, batch_size, grouped)
        else:
            seconds = _baseline_postgres(store, batch_size, grouped)
        check_balances(store, accounts)
    return {"backend": backend, "events": events, "seconds": seconds, "events_per_s": events / seconds}


# Only the columns the loop needs; the payload stays text and is decoded here.
_READ = "SELECT position, stream_id, type, data FROM stoic_events WHERE position > %s ORDER BY position LIMIT %s"


def _statements(rows: list[Any], opened: str, deposited: str) -> list[tuple[str, tuple[Any, ...]]]:
    return [
        (opened, (stream_id,)) if type_ == "AccountOpened" else (deposited, (json.loads(data)["amount"], stream_id))
        for _pos, stream_id, type_, data in rows
    ]


def _run(cursor: Any, statements: list[tuple[str, tuple[Any, ...]]], grouped: bool) -> None:
    if not grouped:
        for sql, params in statements:
            cursor.execute(sql, params)
        return
    for sql, run in itertools.groupby(statements, key=lambda s: s[0]):
        cursor.executemany(sql, [params for _sql, params in run])


def _baseline_sqlite(store: Any, batch_size: int, grouped: bool) -> float:
    import sqlite3

    conn = sqlite3.connect(store.path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {workload.SQLITE_SYNCHRONOUS}")
    conn.execute(CREATE_SQL)
    conn.execute("CREATE TABLE bench_checkpoint (name TEXT PRIMARY KEY, position INTEGER NOT NULL)")
    conn.execute("INSERT INTO bench_checkpoint VALUES ('b', 0)")
    read = _READ.replace("%s", "?")
    started = time.perf_counter()
    position = 0
    while True:
        rows = conn.execute(read, (position, batch_size)).fetchall()
        if not rows:
            break
        conn.execute("BEGIN IMMEDIATE")
        _run(conn, _statements(rows, OPENED_SQL, DEPOSITED_SQL), grouped)
        position = rows[-1][0]
        conn.execute("UPDATE bench_checkpoint SET position = ? WHERE name = 'b'", (position,))
        conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    return seconds


def _baseline_postgres(store: Any, batch_size: int, grouped: bool) -> float:
    import psycopg

    with psycopg.connect(store.conninfo, autocommit=True) as conn:
        conn.execute(CREATE_SQL)
        conn.execute("CREATE TABLE bench_checkpoint (name TEXT PRIMARY KEY, position BIGINT NOT NULL)")
        conn.execute("INSERT INTO bench_checkpoint VALUES ('b', 0)")
        opened, deposited = OPENED_SQL.replace("?", "%s"), DEPOSITED_SQL.replace("?", "%s")
        read = _READ.replace("data", "data::text")
        started = time.perf_counter()
        position = 0
        while True:
            rows = conn.execute(read, (position, batch_size), prepare=True).fetchall()
            if not rows:
                break
            # Pipelined, one reused cursor; psycopg prepares a statement on its 5th use.
            with conn.transaction(), conn.pipeline(), conn.cursor() as cursor:
                _run(cursor, _statements(rows, opened, deposited), grouped)
                position = rows[-1][0]
                cursor.execute("UPDATE bench_checkpoint SET position = %s WHERE name = 'b'", (position,))
        return time.perf_counter() - started


def bench(
    backend_names: list[str],
    accounts: int = ACCOUNTS,
    repeat: int = 2,
    *,
    batch_size: int | None = None,
    baseline: bool = False,
    wait: bool = True,
) -> list[dict[str, Any]]:
    """Runs the catch-up benchmark on each backend; returns one summary per case."""
    results = []
    for backend in backend_names:
        cases = [("stoic Runner", lambda b=backend: run_catchup(b, accounts, batch_size))]
        if baseline:
            cases.append(("plain loop, execute", lambda b=backend: run_baseline(b, accounts)))
            cases.append(("plain loop, executemany", lambda b=backend: run_baseline(b, accounts, grouped=True)))
        for label, run in cases:
            runs = measured(
                run,
                repeat,
                wait=wait,
                label=f"{backend:8} {label}",
                show=lambda r: f"{fmt_rate(r['events_per_s'])} events/s ({r['seconds']:.2f} s)",
            )
            results.append(summary("catch-up", backend, label, "events/s", "events_per_s", runs))
            print_summary(results[-1])
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.catchup", description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=ACCOUNTS, help="streams of 10 events (default 10,000)")
    parser.add_argument("--batch-size", type=int, default=None, help="events per transaction (default 500)")
    add_common_arguments(parser, repeat=2)
    parser.add_argument("--baseline", action="store_true", help="also time a plain driver loop")
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    events = args.accounts * EVENTS_PER_ACCOUNT
    print(f"catch-up throughput: balances projection over {events:,} events, {args.repeat} runs each")
    bench(
        backends(args.backend),
        args.accounts,
        args.repeat,
        batch_size=args.batch_size,
        baseline=args.baseline,
        wait=not args.no_wait,
    )


if __name__ == "__main__":
    main()
