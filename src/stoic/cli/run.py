"""Long-running commands: ``stoic worker``, ``stoic serve`` (worker + HTTP API
+ dashboard in one process) and ``stoic demo``."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Annotated, Any

import typer
import uvicorn

from stoic.cli.common import EXIT_USAGE, DbOption, app, console, err_console, fail
from stoic.errors import ConfigurationError, StoicError
from stoic.logs import configure_logging
from stoic.projection import load_app
from stoic.runner import CLAIM_INTERVAL_S, LEASE_TTL_S, Runner
from stoic.store import connect

log = logging.getLogger("stoic")

AppRequired = Annotated[str, typer.Option("--app", envvar="STOIC_APP", help="The application, as module:attribute.")]
ProjectionsOption = Annotated[
    list[str] | None, typer.Option("--projection", "-p", help="Run only these projections.")]
LeaseOption = Annotated[
    float, typer.Option(help="Seconds of silence after which a worker's projections are taken over.")]
ClaimOption = Annotated[float, typer.Option(help="Seconds between looks for free projections.")]
BatchOption = Annotated[int | None, typer.Option(help="Events per transaction (default per projection).")]
LogFormatOption = Annotated[str, typer.Option(help="text or json (one JSON object per line).")]
LogLevelOption = Annotated[str, typer.Option(help="debug, info, warning or error.")]


def _logging(log_format: str, log_level: str) -> None:
    try:
        configure_logging(log_format, log_level)
    except ValueError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE) from None


class WorkerThread:
    """Runs a Runner in a thread, so the main thread stays free for signals or the
    HTTP server; remembers a crash so the process does not exit 0."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.crashed: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="stoic-worker")

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as exc:
            # A worker that dies must not exit 0: supervisors restart on failure only.
            log.critical("worker crashed: %s", exc, exc_info=True, extra={
                "action": "worker_crashed", "worker": self.runner.worker_id})
            self.crashed.append(exc)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.runner.stop()
        while self.thread.is_alive():
            self.thread.join(0.2)


@app.command()
def worker(
    app_ref: AppRequired,
    db: DbOption = None,
    projection: ProjectionsOption = None,
    lease_ttl: LeaseOption = LEASE_TTL_S,
    claim_interval: ClaimOption = CLAIM_INTERVAL_S,
    batch_size: BatchOption = None,
    log_format: LogFormatOption = "text",
    log_level: LogLevelOption = "info",
) -> None:
    """Run projections until SIGTERM/SIGINT: finish the batch in hand, release, exit 0."""
    _logging(log_format, log_level)
    try:
        application = load_app(app_ref)
        store = connect(db)
        runner = Runner(store, application, projections=projection, lease_ttl=lease_ttl,
                        claim_interval=claim_interval, batch_size=batch_size)
    except StoicError as exc:
        raise fail(exc) from None

    def shutdown(signum: int, _frame: Any) -> None:
        log.info("stopping", extra={"action": "shutdown_requested", "signal": signal.Signals(signum).name})
        runner.stop()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    work = WorkerThread(runner)
    work.start()
    while work.thread.is_alive():
        work.thread.join(0.2)
    store.close()
    if work.crashed:
        raise fail(work.crashed[0]) from None


@app.command()
def serve(
    app_ref: AppRequired,
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    admin_token: Annotated[str | None, typer.Option(
        envvar="STOIC_ADMIN_TOKEN", help="Bearer token for the admin endpoints (at least 16 characters).")] = None,
    protect_reads: Annotated[bool, typer.Option(help="Put health and metrics behind the admin token too.")] = False,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Serve the API only; run no projections.")] = False,
    insecure_loopback_admin: Annotated[bool, typer.Option(
        help="Without a token, accept admin requests from this machine only (demos).")] = False,
    projection: ProjectionsOption = None,
    lease_ttl: LeaseOption = LEASE_TTL_S,
    claim_interval: ClaimOption = CLAIM_INTERVAL_S,
    log_format: LogFormatOption = "text",
    log_level: LogLevelOption = "info",
) -> None:
    """Run the HTTP API and dashboard, and (unless --no-worker) a worker, in one process."""
    _logging(log_format, log_level)
    try:
        server, work, store = build_server(
            app_ref, db, host, port, admin_token, protect_reads, no_worker, insecure_loopback_admin,
            projection, lease_ttl, claim_interval)
    except (StoicError, ValueError) as exc:
        raise fail(exc if isinstance(exc, StoicError) else ConfigurationError(str(exc))) from None
    # Our handlers, not uvicorn's: uvicorn re-raises the signal after shutting
    # down, which would kill the process before the worker releases its leases.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, server.handle_exit)
    if work is not None:
        work.start()
        # A worker that dies takes the process down with it, so a supervisor restarts both.
        threading.Thread(target=_exit_when_done, args=(work, server), name="stoic-watch", daemon=True).start()
    console.print(f"Stoic API and dashboard on http://{host}:{port}/ "
                  f"({'API only' if work is None else 'with a worker'})", highlight=False)
    try:
        server.run()  # returns after a graceful shutdown on SIGINT/SIGTERM
    finally:
        if work is not None:
            work.stop()
        store.close()
    if work is not None and work.crashed:
        raise fail(work.crashed[0]) from None


def _exit_when_done(work: WorkerThread, server: Any) -> None:
    work.thread.join()
    if work.crashed:
        server.should_exit = True


def _check_port(host: str, port: int) -> None:
    """Fails clearly (before anything starts) when the address cannot be bound."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def build_server(
    app_ref: str, db: str | None, host: str, port: int, admin_token: str | None, protect_reads: bool,
    no_worker: bool, insecure_loopback_admin: bool, projection: list[str] | None = None,
    lease_ttl: float = LEASE_TTL_S, claim_interval: float = CLAIM_INTERVAL_S,
) -> tuple[Any, WorkerThread | None, Any]:
    """Builds the uvicorn server (and the worker) ``stoic serve`` and the demo run."""
    _check_port(host, port)
    from stoic.api import ApiSettings, create_app
    from stoic.api.auth import LOOPBACK

    if insecure_loopback_admin and admin_token is None:
        if host not in LOOPBACK:
            raise ConfigurationError("--insecure-loopback-admin needs --host 127.0.0.1: without a token, admin "
                                     "requests may only come from this machine")
        err_console.print("[bold yellow]WARNING: no admin token: admin actions are open to anyone on this machine "
                          "(demo mode). Set STOIC_ADMIN_TOKEN in production.[/]")
    elif admin_token is None:
        err_console.print("[yellow]no admin token configured (STOIC_ADMIN_TOKEN): admin endpoints are disabled[/]")
    settings = ApiSettings(admin_token=admin_token, protect_reads=protect_reads,
                           allow_loopback_admin=insecure_loopback_admin and admin_token is None)
    application = load_app(app_ref)
    store = connect(db)
    work = None
    if not no_worker:
        work = WorkerThread(Runner(store, application, projections=projection, lease_ttl=lease_ttl,
                                   claim_interval=claim_interval))
    api = create_app(store, application, settings)
    config = uvicorn.Config(api, host=host, port=port, log_config=None, access_log=False, lifespan="off")
    return _Server(config), work, store


class _Server(uvicorn.Server):
    """uvicorn's server with signal handling left to ``stoic serve``."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@app.command()
def demo(
    db: Annotated[str, typer.Option("--db", help="Database URL for the demo.")] = "sqlite:///stoic-demo.db",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the API and dashboard.")] = 8000,
    accounts: Annotated[int, typer.Option(min=2, help="Accounts to open.")] = 200,
    clients: Annotated[int, typer.Option(min=1, max=64, help="Concurrent clients.")] = 4,
    duration: Annotated[float, typer.Option(help="Stop after this many seconds (0: run until Ctrl-C).")] = 0.0,
    keep: Annotated[bool, typer.Option(help="Keep the existing demo database.")] = False,
) -> None:
    """Run the billing demo: clients, a worker, the API and the dashboard on http://127.0.0.1:8000."""
    from stoic.demo import run_demo

    _logging("text", "error")
    try:
        code = run_demo(db, port=port, accounts=accounts, clients=clients, duration=duration, fresh=not keep,
                        console=console)
    except StoicError as exc:
        raise fail(exc) from None
    raise typer.Exit(code)
