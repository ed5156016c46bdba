"""The ``stoic`` command line: a thin shell over the core.

Every command calls one core operation and formats its result; errors reach
the user as one clear line and a non-zero exit code.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from stoic.errors import StoicError
from stoic.logs import configure_logging
from stoic.operations import Operations
from stoic.projection import load_app
from stoic.runner import CLAIM_INTERVAL_S, LEASE_TTL_S, Runner
from stoic.store import connect

app = typer.Typer(
    name="stoic",
    help="Stoic: event processing that never fails silently.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option("--db", envvar="STOIC_DATABASE_URL", help="Database URL (default sqlite:///stoic.db)."),
]


def _fail(exc: Exception, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}")
    return typer.Exit(code)


@app.command()
def worker(
    app_ref: Annotated[str, typer.Option("--app", help="The application, as module:attribute.")],
    db: DbOption = None,
    projection: Annotated[
        list[str] | None, typer.Option("--projection", "-p", help="Run only these projections.")
    ] = None,
    lease_ttl: Annotated[
        float, typer.Option(help="Seconds of silence after which a worker's projections are taken over.")
    ] = LEASE_TTL_S,
    claim_interval: Annotated[float, typer.Option(help="Seconds between looks for free projections.")] = (
        CLAIM_INTERVAL_S
    ),
    batch_size: Annotated[int | None, typer.Option(help="Events per transaction (default per projection).")] = None,
    log_format: Annotated[str, typer.Option(help="text or json.")] = "text",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run projections until SIGTERM/SIGINT: finish the batch in hand, release, exit 0."""
    try:
        configure_logging(log_format, log_level)
    except ValueError as exc:
        raise _fail(exc, code=2) from None
    try:
        application = load_app(app_ref)
        store = connect(db)
        runner = Runner(
            store, application, projections=projection, lease_ttl=lease_ttl,
            claim_interval=claim_interval, batch_size=batch_size,
        )
    except StoicError as exc:
        raise _fail(exc) from None

    def shutdown(signum: int, _frame: Any) -> None:
        logging.getLogger("stoic").info(
            "stopping", extra={"action": "shutdown_requested", "signal": signal.Signals(signum).name}
        )
        runner.stop()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    crashed: list[BaseException] = []

    def run() -> None:
        try:
            runner.run()
        except BaseException as exc:
            # A worker that dies must not exit 0: supervisors restart on failure only.
            logging.getLogger("stoic").critical("worker crashed: %s", exc, exc_info=True, extra={
                "action": "worker_crashed", "worker": runner.worker_id})
            crashed.append(exc)

    # The worker runs in a thread so that the main thread stays free to take signals.
    thread = threading.Thread(target=run, name="stoic-worker")
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    store.close()
    if crashed:
        raise _fail(crashed[0]) from None


@app.command()
def status(
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show each projection's health, lag, failures and holder, and the live workers."""
    try:
        store = connect(db)
        health = Operations(store).health()
        head = store.head()
        workers = store.workers()
    except StoicError as exc:
        raise _fail(exc) from None
    finally:
        if "store" in locals():
            store.close()
    if as_json:
        print(json.dumps({
            "head": head,
            "projections": [
                {"name": h.name, "status": h.status.value,
                 "causes": [{"code": c.code, "message": c.message} for c in h.causes],
                 "position": h.position, "lag": h.lag_events, "lag_seconds": round(h.lag_seconds, 3),
                 "events_processed": h.events_processed, "failures": h.failures,
                 "parked_streams": h.parked_streams, "holder": h.holder, "holder_alive": h.holder_alive,
                 "breaker": h.breaker_state,
                 "updated_at": h.last_processed_at.isoformat() if h.last_processed_at else None}
                for h in health
            ],
            "workers": [
                {"worker_id": w.worker_id, "hostname": w.hostname, "pid": w.pid, "alive": w.alive,
                 "heartbeat_at": w.heartbeat_at.isoformat()}
                for w in workers
            ],
        }, indent=2))
        return
    colours = {"healthy": "green", "degraded": "yellow", "stalled": "magenta", "critical": "red",
               "offline": "red", "paused": "blue", "rebuilding": "cyan"}
    table = Table(title=f"projections (head {head})")
    for column in ("projection", "status", "checkpoint", "lag", "processed", "failures", "holder", "why"):
        table.add_column(column)
    for h in health:
        holder = h.holder or "-"
        if h.holder and not h.holder_alive:
            holder += " (dead)"
        failures = ", ".join(f"{n} {s}" for s, n in sorted(h.failures.items())) or "-"
        lag = f"{h.lag_events} ({h.lag_seconds:.0f} s)" if h.lag_events else "0"
        colour = colours.get(h.status.value, "white")
        table.add_row(h.name, f"[{colour}]{h.status.value}[/]", str(h.position), lag,
                      str(h.events_processed), failures, holder, "; ".join(c.message for c in h.causes))
    console.print(table)
    console.print(f"workers alive: {sum(w.alive for w in workers)} of {len(workers)} registered")


@app.command()
def demo(
    db: Annotated[str, typer.Option("--db", help="Database URL for the demo.")] = "sqlite:///stoic-demo.db",
    accounts: Annotated[int, typer.Option(help="Accounts to open.")] = 2000,
    clients: Annotated[int, typer.Option(help="Concurrent appending clients.")] = 4,
    keep: Annotated[bool, typer.Option(help="Keep the existing demo database.")] = False,
) -> None:
    """Run the demo: concurrent clients append, a worker projects, the result is checked."""
    from stoic.demo import run_demo

    try:
        code = run_demo(db, accounts=accounts, clients=clients, fresh=not keep, console=console)
    except StoicError as exc:
        raise _fail(exc) from None
    raise typer.Exit(code)


def main() -> None:
    """Entry point of the ``stoic`` command."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
