"""The demo: concurrent clients append to account streams while a worker keeps
a balances read model, then the read model is checked against a fold of the
events. ``stoic demo`` runs it; ``stoic worker --app stoic.demo:app`` runs its
projections on their own.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import defaultdict
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from stoic.errors import ConcurrencyError
from stoic.events import NO_STREAM, NewEvent
from stoic.projection import App, Projection, handles
from stoic.runner import Runner
from stoic.store import Store, Transaction, connect
from stoic.stores.sqlite.store import parse_sqlite_url


class AccountBalances(Projection):
    """One row per account: its balance and how many movements it had."""

    name = "account_balances"

    def setup(self, tx: Transaction) -> None:
        tx.execute(
            "CREATE TABLE IF NOT EXISTS demo_balances ("
            "account TEXT PRIMARY KEY, balance BIGINT NOT NULL, movements BIGINT NOT NULL)"
        )

    def reset(self, tx: Transaction) -> None:
        tx.execute("DELETE FROM demo_balances")

    @handles("AccountOpened")
    def opened(self, event: Any, tx: Transaction) -> None:
        tx.execute("INSERT INTO demo_balances VALUES (?, 0, 0)", (event.stream_id,))

    @handles("Deposited", "Withdrawn")
    def moved(self, event: Any, tx: Transaction) -> None:
        amount = event.data["amount"] * (1 if event.type == "Deposited" else -1)
        tx.execute(
            "UPDATE demo_balances SET balance = balance + ?, movements = movements + 1 WHERE account = ?",
            (amount, event.stream_id),
        )


class DailyActivity(Projection):
    """Counts events by type: a second projection, run by the same worker."""

    name = "event_counts"

    def setup(self, tx: Transaction) -> None:
        tx.execute("CREATE TABLE IF NOT EXISTS demo_event_counts (type TEXT PRIMARY KEY, n BIGINT NOT NULL)")

    def reset(self, tx: Transaction) -> None:
        tx.execute("DELETE FROM demo_event_counts")

    @handles("*")
    def any_event(self, event: Any, tx: Transaction) -> None:
        tx.execute(
            "INSERT INTO demo_event_counts VALUES (?, 1) ON CONFLICT (type) DO UPDATE SET n = demo_event_counts.n + 1",
            (event.type,),
        )


app = App([AccountBalances, DailyActivity], name="demo")


def _client(store: Store, accounts: list[str], seed: int, stats: dict[str, int], lock: threading.Lock) -> None:
    """Opens its accounts, then deposits, withdraws and transfers with optimistic concurrency."""
    rng = random.Random(seed)
    for account in accounts:
        store.append(account, [NewEvent("AccountOpened", {"owner": account})], expected_version=NO_STREAM)
    versions = dict.fromkeys(accounts, 1)
    balances = dict.fromkeys(accounts, 0)
    appended = len(accounts)
    for _ in range(len(accounts) * 4):
        account = rng.choice(accounts)
        if rng.random() < 0.2 and len(accounts) > 1:
            # A transfer touches two streams: append_many writes both or neither.
            target = rng.choice([a for a in accounts if a != account])
            amount = rng.randint(1, 50)
            if balances[account] < amount:
                continue
            try:
                store.append_many([
                    (account, [NewEvent("Withdrawn", {"amount": amount, "to": target})], versions[account]),
                    (target, [NewEvent("Deposited", {"amount": amount, "from": account})], versions[target]),
                ])
            except ConcurrencyError:
                continue
            versions[account] += 1
            versions[target] += 1
            balances[account] -= amount
            balances[target] += amount
            appended += 2
        else:
            amount = rng.randint(1, 100)
            store.append(account, [NewEvent("Deposited", {"amount": amount})], expected_version=versions[account])
            versions[account] += 1
            balances[account] += amount
            appended += 1
        if appended % 200 == 0:
            with lock:
                stats["appended"] += 200
                appended -= 200
    with lock:
        stats["appended"] += appended


def _fold_balances(store: Store) -> dict[str, int]:
    balances: dict[str, int] = defaultdict(int)
    for event in store.iter_all():
        if event.type == "AccountOpened":
            balances[event.stream_id] += 0
        elif event.type == "Deposited":
            balances[event.stream_id] += event.data["amount"]
        elif event.type == "Withdrawn":
            balances[event.stream_id] -= event.data["amount"]
    return dict(balances)


def _read_balances(store: Store) -> dict[str, int]:
    return {account: int(balance) for account, balance in store.query("SELECT account, balance FROM demo_balances")}


def _remove_sqlite_files(url: str) -> None:
    path, _ = parse_sqlite_url(url)
    if path == ":memory:":
        return
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


def _progress_table(stats: dict[str, int], store: Store, started: float) -> Table:
    head = store.head()
    table = Table(title="stoic demo", min_width=60)
    table.add_column("what")
    table.add_column("value", justify="right")
    elapsed = time.monotonic() - started
    table.add_row("events appended", f"{stats['appended']:,}")
    table.add_row("append rate", f"{stats['appended'] / max(elapsed, 1e-9):,.0f} events/s")
    for p in store.projections():
        table.add_row(f"{p.name} checkpoint", f"{p.position:,} (lag {head - p.position:,})")
    return table


def run_demo(url: str, *, accounts: int, clients: int, fresh: bool, console: Console) -> int:
    """Runs the demo end to end; returns 0 when the read model matches the events."""
    if fresh and url.startswith("sqlite"):
        _remove_sqlite_files(url)
    store = connect(url)
    console.print(f"[bold]Stoic demo[/] on [cyan]{url}[/]: {clients} clients, {accounts:,} accounts\n")
    runner = Runner(store, app, claim_interval=0.2)
    worker = threading.Thread(target=runner.run, name="demo-worker", daemon=True)
    worker.start()

    stats = {"appended": 0}
    lock = threading.Lock()
    names = [f"account-{i:05d}" for i in range(accounts)]
    threads = [
        threading.Thread(target=_client, args=(store, names[i::clients], i, stats, lock))
        for i in range(clients)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    with Live(_progress_table(stats, store, started), console=console, refresh_per_second=4) as live:
        while any(t.is_alive() for t in threads):
            time.sleep(0.25)
            live.update(_progress_table(stats, store, started))
        append_seconds = time.monotonic() - started
        head = store.head()
        while min((p.position for p in store.projections()), default=0) < head:
            time.sleep(0.05)
            live.update(_progress_table(stats, store, started))
        live.update(_progress_table(stats, store, started))
    caught_up_seconds = time.monotonic() - started

    latencies = []
    for i in range(20):
        account = names[i % len(names)]
        sent = time.perf_counter()
        position = store.append(account, [NewEvent("Deposited", {"amount": 1})]).positions[0]
        while min(p.position for p in store.projections()) < position:
            time.sleep(0.0002)
        latencies.append((time.perf_counter() - sent) * 1000)

    runner.stop()
    worker.join()
    expected = _fold_balances(store)
    actual = _read_balances(store)
    ok = expected == actual
    console.print(
        f"\nappended [bold]{head:,}[/] events in {append_seconds:.2f} s "
        f"({head / append_seconds:,.0f} events/s, {clients} concurrent clients with optimistic concurrency)"
    )
    console.print(f"projections caught up {caught_up_seconds - append_seconds:.2f} s after the last append")
    latencies.sort()
    console.print(f"live latency append -> read model updated: median {latencies[len(latencies) // 2]:.1f} ms")
    if ok:
        console.print(
            f"[bold green]check passed:[/] all {len(actual):,} balances equal the fold of the events "
            f"(total {sum(actual.values()):,})"
        )
    else:
        wrong = [a for a in expected if expected[a] != actual.get(a)]
        console.print(f"[bold red]check FAILED:[/] {len(wrong)} balances differ, e.g. {wrong[:5]}")
    console.print("\nTry next:")
    console.print(f"  .venv/bin/stoic status --db {url}")
    console.print(f"  .venv/bin/stoic worker --db {url} --app stoic.demo:app   (Ctrl-C stops it cleanly)")
    store.close()
    return 0 if ok else 1
