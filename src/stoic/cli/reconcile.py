"""``stoic reconcile`` and ``stoic rebuild-stream``: prove a read model matches
its events, and rebuild streams that do not."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from stoic.cli.act import ProjectionArg, TimeoutOption, WaitOption, follow
from stoic.cli.common import (
    EXIT_ERROR,
    ActorOption,
    AppOption,
    DbOption,
    JsonOption,
    ReasonOption,
    app,
    console,
    default_actor,
    operations,
    print_json,
)
from stoic.views import ReconcileView, RewindView


@app.command()
def reconcile(
    projection: ProjectionArg,
    app_ref: AppOption = None,
    db: DbOption = None,
    stream: Annotated[str | None, typer.Option(help="Check only this stream.")] = None,
    repair: Annotated[bool, typer.Option(help="Rebuild the mismatched streams (the holder does it).")] = False,
    reason: ReasonOption = None,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compare the read model with the fold of its events; exit 1 when they differ.

    Needs --app: the projection's expected_state()/actual_state() say what to compare.
    """
    with operations(db, app_ref) as ops:
        report = ops.reconcile(projection, default_actor(actor), stream_id=stream, repair=repair, reason=reason)
    if as_json:
        print_json(ReconcileView.of(report))
    else:
        colour = "green" if report.ok else "red"
        console.print(f"[{colour}]{report.matched} of {report.checked} streams match[/] "
                      f"(checkpoint {report.position}, {report.duration:.2f} s)", highlight=False)
        if report.parked:
            console.print(f"{len(report.parked)} parked streams compared up to their open failure", highlight=False)
        if report.mismatches:
            table = Table(title=f"mismatches ({len(report.mismatched_streams)} streams)")
            for column in ("stream", "field", "expected", "actual"):
                table.add_column(column)
            for m in report.mismatches[:200]:
                table.add_row(m.stream_id, m.field, repr(m.expected), repr(m.actual))
            console.print(table)
        for check in report.checks:
            mark = "[green]ok[/]" if check.ok else "[red]FAILED[/]"
            console.print(f"check {check.name}: {mark} {check.detail}", highlight=False)
        if report.repair_requested:
            console.print(f"repair of {len(report.mismatched_streams)} streams requested", highlight=False)
    if not report.ok and not report.repair_requested:
        raise typer.Exit(EXIT_ERROR)


@app.command("rebuild-stream")
def rebuild_stream(
    projection: ProjectionArg,
    streams: Annotated[list[str], typer.Argument(help="The streams to rebuild.")],
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why, for the audit log (required).")],
    app_ref: AppOption = None,
    db: DbOption = None,
    actor: ActorOption = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rebuild streams on their own: remove their rows, apply their events again."""
    with operations(db, app_ref) as ops:
        request = ops.rebuild_streams(projection, streams, default_actor(actor), reason)
        if as_json:
            print_json(RewindView.of(request))
        else:
            console.print(f"rebuild of {len(request.streams)} streams of {projection} requested", highlight=False)
        if wait:
            follow(ops, request, app_ref, timeout, quiet=as_json)
