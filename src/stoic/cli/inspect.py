"""Read-only commands: ``stoic status``, ``stoic failures list|show``, ``stoic audit``."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from stoic.cli.common import AppOption, DbOption, JsonOption, app, console, operations, print_json
from stoic.health import ProjectionHealth
from stoic.store import FailureRecord, FailureStatus
from stoic.views import AuditView, FailureDetail, SystemStatusView

COLOURS = {"healthy": "green", "degraded": "yellow", "stalled": "magenta", "critical": "red",
           "offline": "red", "paused": "blue", "rebuilding": "cyan"}

failures_app = typer.Typer(help="List and show failures.", no_args_is_help=True)
app.add_typer(failures_app, name="failures")


@app.command()
def status(
    db: DbOption = None,
    app_ref: AppOption = None,
    as_json: JsonOption = False,
    sample: Annotated[float, typer.Option(
        help="Seconds between two readings, to show throughput (0: one reading, no throughput).")] = 1.0,
) -> None:
    """Show each projection's status, lag, throughput, failures and holder, and the workers."""
    with operations(db, app_ref) as ops:
        if sample > 0:
            ops.health()  # first reading: throughput is the difference to the second
            time.sleep(sample)
        system = ops.status()
    if as_json:
        print_json(SystemStatusView.of(system))
        return
    table = Table(title=f"projections (head {system.head})")
    for column in ("projection", "status", "checkpoint", "lag", "events/s", "failures", "holder", "why"):
        table.add_column(column)
    for h in system.projections:
        table.add_row(h.name, _status_cell(h), str(h.position), _lag_cell(h),
                      "-" if h.throughput is None else f"{h.throughput:,.0f}",
                      ", ".join(f"{n} {s}" for s, n in sorted(h.failures.items()) if n) or "-",
                      _holder_cell(h), "; ".join(c.message for c in h.causes))
    console.print(table)
    alive = sum(w.alive for w in system.workers)
    console.print(f"workers alive: {alive} of {len(system.workers)} registered")


def _status_cell(h: ProjectionHealth) -> str:
    return f"[{COLOURS.get(h.status.value, 'white')}]{h.status.value}[/]"


def _lag_cell(h: ProjectionHealth) -> str:
    return f"{h.lag_events:,} ({h.lag_seconds:.0f} s)" if h.lag_events else "0"


def _holder_cell(h: ProjectionHealth) -> str:
    if h.holder is None:
        return "-"
    return h.holder if h.holder_alive else f"{h.holder} (dead)"


@failures_app.command("list")
def list_failures(
    db: DbOption = None,
    app_ref: AppOption = None,
    projection: Annotated[str | None, typer.Option("--projection", "-p", help="Only this projection.")] = None,
    status: Annotated[FailureStatus | None, typer.Option(help="Only failures in this status.")] = None,
    stream: Annotated[str | None, typer.Option(help="Only failures of this stream.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonOption = False,
) -> None:
    """List failures, newest first."""
    with operations(db, app_ref) as ops:
        found = ops.failures(projection, status, stream, limit, offset)
    if as_json:
        print_json([FailureDetail.of(f) for f in found])
        return
    table = Table(title=f"failures ({len(found)} shown)")
    for column in ("id", "projection", "status", "position", "stream", "event", "error", "attempts", "next retry"):
        table.add_column(column)
    for f in found:
        table.add_row(str(f.id), f.projection, _failure_status(f), str(f.position), f.stream_id, f.event_type,
                      f"{f.error_class}: {f.message[:80]}", str(f.attempts),
                      f.next_retry_at.isoformat(timespec="seconds") if f.next_retry_at else "-")
    console.print(table)


def _failure_status(f: FailureRecord) -> str:
    colour = {"retrying": "yellow", "dead": "red", "resolved": "green", "skipped": "blue"}[f.status.value]
    return f"[{colour}]{f.status.value}[/]"


@failures_app.command("show")
def show_failure(
    failure_id: Annotated[int, typer.Argument(min=1, help="The failure's id.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one failure with its message and traceback."""
    with operations(db) as ops:
        f = ops.failure(failure_id)
    if as_json:
        print_json(FailureDetail.of(f))
        return
    console.print(f"[bold]failure {f.id}[/] of [bold]{f.projection}[/]: {_failure_status(f)}"
                  f"{f' ({f.resolution.value} by {f.actor})' if f.resolution else ''}")
    for label, value in (
        ("event", f"{f.event_type} at position {f.position} (stream {f.stream_id}, id {f.event_id})"),
        ("policy", f.policy), ("attempts", f"{f.attempts}, first {f.first_failed_at:%Y-%m-%d %H:%M:%S}, "
                                           f"last {f.last_failed_at:%Y-%m-%d %H:%M:%S}"),
        ("next retry", f.next_retry_at.isoformat(timespec="seconds") if f.next_retry_at else "-"),
        ("parked", f"{f.parked} events" + (" (blocking its stream)" if f.blocking else "")),
        ("note", f.note or "-"), ("error", f"{f.error_class}: {f.message}"),
    ):
        console.print(f"  {label:<11}{value}", highlight=False, markup=False)
    console.print(f.traceback, highlight=False, markup=False)


@app.command()
def audit(
    db: DbOption = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    action: Annotated[str | None, typer.Option(help="Only this action (retry, skip, reset, ...).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Show recorded admin actions, newest first: who, what, when, why, outcome."""
    with operations(db) as ops:
        entries = ops.audit(limit, offset, action)
    if as_json:
        print_json([AuditView.of(a) for a in entries])
        return
    table = Table(title="audit log")
    for column in ("id", "at", "actor", "action", "target", "reason", "outcome"):
        table.add_column(column)
    for a in entries:
        table.add_row(str(a.id), a.at.isoformat(timespec="seconds"), a.actor, a.action, a.target, a.reason or "-",
                      a.outcome)
    console.print(table)
