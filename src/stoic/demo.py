"""``stoic demo``: the billing reference domain running for real, on a fresh
SQLite file, with nothing else installed.

Concurrent clients open accounts, move money and transfer it (some commands
are refused by invariants, some transfers are compensated); a worker keeps the
read models (balances — versioned and reconcilable —, history, daily totals)
and a notifier that calls a flaky simulated service (random failures become
failure records that are retried; an outage opens the circuit breaker). The
HTTP API and the dashboard serve at http://127.0.0.1:8000 meanwhile. At the
end the balances are reconciled against the events, the accounting equation is
checked, and the exit code says whether they hold.
"""

from __future__ import annotations

import os
import threading
import time

import uvicorn
from rich.console import Console

from stoic.api import ApiSettings, create_app
from stoic.api.auth import LOOPBACK
from stoic.errors import ConfigurationError
from stoic.examples.billing.app import make_app
from stoic.examples.billing.projections import SimulatedService
from stoic.examples.billing.workload import SteadyTraffic, run_workload
from stoic.operations import Operations
from stoic.runner import Runner
from stoic.store import Store, connect
from stoic.stores.sqlite.store import parse_sqlite_url

APP_REF = "stoic.examples.billing.app:app"  #: what the printed CLI commands pass as --app
OUTAGE_S = 8.0  #: how long the simulated service is down after the first burst


def remove_sqlite_files(url: str) -> None:
    """Deletes a SQLite database and its -wal/-shm files (a fresh demo)."""
    path, _ = parse_sqlite_url(url)
    if path == ":memory:":
        return
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


class _Server:
    """uvicorn in a background thread (the main thread keeps Ctrl-C)."""

    def __init__(self, store: Store, ops: Operations, host: str, port: int) -> None:
        api = create_app(store, ops.app, ApiSettings(allow_loopback_admin=True), operations=ops)
        self.server = uvicorn.Server(uvicorn.Config(api, host=host, port=port, log_config=None,
                                                    access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, name="stoic-demo-api", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ConfigurationError(
                    f"the API could not listen on {self.server.config.host}:{self.server.config.port} "
                    "(is the port taken? try --port)")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def run_demo(url: str, *, host: str = "127.0.0.1", port: int = 8000, accounts: int = 200, clients: int = 4,
             duration: float = 0.0, fresh: bool = True, console: Console | None = None) -> int:
    """Runs the demo until Ctrl-C (or ``duration`` seconds); returns 0 when the
    balances reconcile with the events and the accounting equation holds."""
    console = console or Console()
    if host not in LOOPBACK:
        raise ConfigurationError("the demo opens admin actions without a token: it only listens on 127.0.0.1")
    if fresh and url.startswith("sqlite"):
        remove_sqlite_files(url)
    store = connect(url)
    service = SimulatedService(failure_rate=0.02, seed=7)
    app = make_app(service=service)
    ops = Operations(store, app=app)
    runner = Runner(store, app, claim_interval=0.2)
    worker = threading.Thread(target=runner.run, name="stoic-demo-worker", daemon=True)
    server = _Server(store, ops, host, port)
    traffic: SteadyTraffic | None = None
    try:
        server.start()
        worker.start()
        _banner(console, url, host, port)
        started = time.monotonic()
        burst = run_workload(store, accounts=accounts, operations=accounts * 10, clients=clients, seed=1)
        seconds = time.monotonic() - started
        console.print(
            f"[bold]{clients} clients[/] opened {burst.opened} accounts and ran {accounts * 10:,} operations in "
            f"{seconds:.1f} s: {burst.deposits} deposits, {burst.withdrawals} withdrawals, "
            f"{burst.transfers_completed} transfers completed, {burst.transfers_compensated} compensated, "
            f"{sum(burst.refused.values())} commands refused by invariants, {burst.retries} concurrency retries; "
            f"head {store.head():,}", highlight=False)
        service.outage(OUTAGE_S)
        console.print(f"[yellow]the notification service is down for {OUTAGE_S:.0f} s[/]: watch billing_notifier's "
                      "circuit breaker open, then close when it is back", highlight=False)
        traffic = SteadyTraffic(store, burst.accounts)
        traffic.start()
        _tour(console, url, host, port, duration)
        _wait(duration)
    except KeyboardInterrupt:
        console.print("\nstopping…")
    finally:
        if traffic is not None:
            traffic.stop()
    try:
        return _verify(console, store, ops, runner)
    finally:
        runner.stop()
        worker.join(30)
        server.stop()
        store.close()


def _wait(duration: float) -> None:
    if duration > 0:
        time.sleep(duration)
        return
    while True:
        time.sleep(3600)


def _banner(console: Console, url: str, host: str, port: int) -> None:
    console.print(f"[bold]Stoic demo[/]: the billing domain on [cyan]{url}[/]")
    console.print(f"[bold red]WARNING:[/] admin actions are open to anyone on this machine without a token "
                  f"(demo mode, http://{host}:{port}). Production needs STOIC_ADMIN_TOKEN.", highlight=False)


def _tour(console: Console, url: str, host: str, port: int, duration: float) -> None:
    db = f"--db {url}"
    console.print(f"""
[bold]Look at[/]
  the dashboard     http://{host}:{port}/            projections, lag, failures; retry/skip/resolve buttons
  the API           http://{host}:{port}/docs        every endpoint, tried from the browser
  metrics           http://{host}:{port}/metrics     what Prometheus scrapes (alerts: deploy/prometheus)

[bold]Try, in another terminal[/]
  .venv/bin/stoic status {db}
  .venv/bin/stoic failures list {db}
  .venv/bin/stoic reconcile billing_balances {db} --app {APP_REF}
  .venv/bin/stoic rebuild billing_balances --reason "try it" {db} --app {APP_REF}
  .venv/bin/stoic audit {db}
""", highlight=False)
    console.print("Running until Ctrl-C…" if duration <= 0 else f"Running for {duration:.0f} s…")


def _verify(console: Console, store: Store, ops: Operations, runner: Runner, timeout: float = 60.0) -> int:
    """Lets the worker catch up, then reconciles the balances with the events."""
    deadline = time.monotonic() + timeout
    head = store.head()
    while time.monotonic() < deadline:
        checkpoints = {d.name: d.position for d in store.projection_details()}
        if checkpoints.get("billing_balances", 0) >= head:
            break
        time.sleep(0.1)
    report = ops.reconcile("billing_balances", "demo", reason="end-of-demo check")
    failures = {h.name: h.failures for h in ops.health()}
    console.print(f"\n{head:,} events; failures by projection: "
                  f"{ {name: f for name, f in failures.items() if f} or 'none'}", highlight=False)
    if report.ok:
        equation = next((c for c in report.checks if c.name == "accounting equation"), None)
        console.print(f"[bold green]check passed:[/] {report.matched} of {report.checked} account balances equal the "
                      f"fold of their events; accounting equation holds ({equation.detail if equation else '-'})",
                      highlight=False)
        return 0
    console.print(f"[bold red]check FAILED:[/] {len(report.mismatched_streams)} balances differ "
                  f"(e.g. {report.mismatches[:3]}); checks: {[(c.name, c.ok) for c in report.checks]}",
                  highlight=False)
    return 1
