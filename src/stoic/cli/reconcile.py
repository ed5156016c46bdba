"""``stoic reconcile`` and ``stoic rebuild-stream``: prove a read model matches
its events, and rebuild streams that do not."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from stoic.cli.act import HereRunner, ProjectionArg, RateColumn, TimeoutOption, WaitOption, follow
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
    err_console,
    fail,
    operations,
    print_json,
)
from stoic.errors import ActionRefused, OperationTimeout
from stoic.operations import Operations
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


RequiredReason = Annotated[str, typer.Option("--reason", "-r", help="Why, for the audit log (required).")]


@app.command()
def rebuild(
    projection: ProjectionArg,
    reason: RequiredReason,
    app_ref: AppOption = None,
    db: DbOption = None,
    actor: ActorOption = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = None,
) -> None:
    """Build a new generation of a versioned read model beside the serving one.

    Reads stay on the serving generation until the new one has caught up and
    passed verification; then both switch atomically. A deploy with a higher
    ``version`` starts the same build on its own.
    """
    with operations(db, app_ref) as ops:
        ops.rebuild(projection, default_actor(actor), reason)
        console.print(f"rebuild of {projection} requested: a worker builds the new generation", highlight=False)
        if wait:
            follow_build(ops, projection, timeout)


@app.command()
def rollback(projection: ProjectionArg, reason: RequiredReason, app_ref: AppOption = None, db: DbOption = None,
             actor: ActorOption = None) -> None:
    """Serve the generation the last switch replaced again (while its tables exist)."""
    with operations(db, app_ref) as ops:
        generation = ops.rollback(projection, default_actor(actor), reason)
    console.print(f"{projection}: generation {generation} serves again", highlight=False)


@app.command("drop-previous")
def drop_previous(projection: ProjectionArg, app_ref: AppOption = None, db: DbOption = None,
                  reason: ReasonOption = None, actor: ActorOption = None) -> None:
    """Drop the tables of the generation the last switch replaced (no rollback after this)."""
    with operations(db, app_ref) as ops:
        generation = ops.drop_previous(projection, default_actor(actor), reason)
    console.print(f"{projection}: dropped the tables of generation {generation}", highlight=False)


def follow_build(ops: Operations, projection: str, timeout: float | None) -> None:
    """A progress bar over the build row until the switch (or the timeout)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    build = f"{projection}@build"
    here: HereRunner | None = None
    if not any(w.alive for w in ops.store.workers()):
        if ops.app is None:
            err_console.print("[yellow]no live worker:[/] the build starts when a worker runs (or pass --app to "
                              "run it here)", highlight=False)
            return
        here = HereRunner(ops, projection)
    try:
        _follow_build(ops, projection, build, here, deadline, timeout)
    finally:
        if here is not None:
            here.stop()
    console.print(f"{projection}: the new generation serves", highlight=False)


def _follow_build(ops: Operations, projection: str, build: str, here: HereRunner | None, deadline: float | None,
                  timeout: float | None) -> None:
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                  TimeRemainingColumn(), console=err_console) as progress:
        task = progress.add_task(f"rebuild {projection}", total=max(1, ops.store.head()))
        while True:
            rows = {d.name: d for d in ops.store.projection_details()}
            head = ops.store.head()
            if build in rows:
                progress.update(task, completed=rows[build].position, total=max(1, head))
                if rows[build].build_note:
                    raise fail(ActionRefused(f"the switch was refused: {rows[build].build_note}"))
            elif projection in rows and rows[projection].request != "rebuild":
                progress.update(task, completed=head, total=max(1, head))
                break
            if here is not None and here.errors:
                raise fail(here.errors[0])
            if deadline is not None and time.monotonic() > deadline:
                raise fail(OperationTimeout(f"gave up following after {timeout} s; the build "
                                            + ("stops here" if here else "goes on in the worker")))
            time.sleep(0.3)


@app.command()
def resegment(
    projection: ProjectionArg,
    to: Annotated[int, typer.Option("--to", min=1, max=256, help="The new number of segments.")],
    reason: RequiredReason,
    app_ref: AppOption = None,
    db: DbOption = None,
    actor: ActorOption = None,
    timeout: Annotated[float, typer.Option(help="Give up (changing nothing) after this many seconds.")] = 300.0,
) -> None:
    """Change how many segments a projection is split into, losing and repeating nothing.

    Every segment first processes up to a barrier (the head now) and waits there;
    then the rows are swapped in one transaction. Workers must be running the
    projection (or pass --app: the segments are brought to the barrier here).
    """
    with operations(db, app_ref) as ops:
        here = None if any(w.alive for w in ops.store.workers()) or ops.app is None else HereRunner(ops, projection)
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          console=err_console) as progress:
                task = progress.add_task(f"draining {projection}", total=None)

                def show(done: int, total: int) -> None:
                    progress.update(task, completed=done, total=total)

                barrier = ops.resegment(projection, to, default_actor(actor), reason, timeout=timeout, progress=show)
        finally:
            if here is not None:
                here.stop()
    console.print(f"{projection}: {to} segment{'s' if to != 1 else ''} from position {barrier}", highlight=False)
