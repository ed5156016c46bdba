"""Admin commands: act on failures (retry, revive, skip, resolve, retry-all) and
on projections (pause, resume, replay, reset). Each one calls the same
:class:`stoic.Operations` method as the HTTP API, so it is audited the same way.
"""

from __future__ import annotations

import threading
import time
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from stoic.cli.common import (
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
from stoic.errors import OperationTimeout, StoicError
from stoic.operations import Operations, RewindRequest
from stoic.runner import Runner
from stoic.store import FailureRecord
from stoic.views import FailureDetail, RewindView

FailureArg = Annotated[int, typer.Argument(min=1, help="The failure's id (see `stoic failures list`).")]
ProjectionArg = Annotated[str, typer.Argument(help="The projection's name.")]
RequiredReason = Annotated[str, typer.Option("--reason", "-r", help="Why, for the audit log (required).")]


def _done(record: FailureRecord, verb: str, as_json: bool) -> None:
    if as_json:
        print_json(FailureDetail.of(record))
    else:
        console.print(f"failure {record.id} ({record.projection}, position {record.position}) {verb}: "
                      f"now {record.status.value}", highlight=False)


@app.command()
def retry(failure_id: FailureArg, db: DbOption = None, reason: ReasonOption = None, actor: ActorOption = None,
          as_json: JsonOption = False) -> None:
    """Retry a retrying or dead failure now (the projection's holder does it)."""
    with operations(db) as ops:
        _done(ops.retry(failure_id, default_actor(actor), reason), "queued for retry", as_json)


@app.command()
def revive(failure_id: FailureArg, db: DbOption = None, reason: ReasonOption = None, actor: ActorOption = None,
           as_json: JsonOption = False) -> None:
    """Give a dead failure its whole retry schedule again."""
    with operations(db) as ops:
        _done(ops.revive(failure_id, default_actor(actor), reason), "revived", as_json)


@app.command()
def skip(failure_id: FailureArg, reason: RequiredReason, db: DbOption = None, actor: ActorOption = None,
         as_json: JsonOption = False) -> None:
    """Give up on the event for good; the events parked behind it are applied."""
    with operations(db) as ops:
        _done(ops.skip(failure_id, default_actor(actor), reason), "skipped", as_json)


@app.command()
def resolve(failure_id: FailureArg, reason: RequiredReason, db: DbOption = None, actor: ActorOption = None,
            as_json: JsonOption = False) -> None:
    """Mark the failure fixed by hand; the events parked behind it are applied."""
    with operations(db) as ops:
        _done(ops.resolve(failure_id, default_actor(actor), reason), "resolved", as_json)


@app.command("retry-all")
def retry_all(projection: ProjectionArg, db: DbOption = None, app_ref: AppOption = None,
              reason: ReasonOption = None, actor: ActorOption = None, as_json: JsonOption = False) -> None:
    """Retry every retrying or dead failure of a projection now."""
    with operations(db, app_ref) as ops:
        changed = ops.retry_all(projection, default_actor(actor), reason)
    if as_json:
        print_json({"projection": projection, "retried": len(changed), "failure_ids": [f.id for f in changed]})
    else:
        console.print(f"{len(changed)} failure{'' if len(changed) == 1 else 's'} of {projection} queued for retry",
                      highlight=False)


@app.command()
def pause(projection: ProjectionArg, db: DbOption = None, app_ref: AppOption = None, reason: ReasonOption = None,
          actor: ActorOption = None) -> None:
    """Pause a projection: its holder stops after the batch in hand."""
    with operations(db, app_ref) as ops:
        ops.pause(projection, default_actor(actor), reason)
    console.print(f"{projection} paused", highlight=False)


@app.command()
def resume(projection: ProjectionArg, db: DbOption = None, app_ref: AppOption = None, reason: ReasonOption = None,
           actor: ActorOption = None) -> None:
    """Resume a paused projection."""
    with operations(db, app_ref) as ops:
        ops.resume(projection, default_actor(actor), reason)
    console.print(f"{projection} resumed", highlight=False)


WaitOption = Annotated[bool, typer.Option(
    "--wait/--no-wait", help="Follow the work with a progress bar until the projection has caught up.")]
TimeoutOption = Annotated[float | None, typer.Option(help="Give up following after this many seconds.")]


@app.command()
def reset(projection: ProjectionArg, reason: RequiredReason, db: DbOption = None, app_ref: AppOption = None,
          actor: ActorOption = None, wait: WaitOption = True, timeout: TimeoutOption = None,
          as_json: JsonOption = False) -> None:
    """Clear a projection's read model and rebuild it from the first event.

    The projection's holder does it in one transaction with the checkpoint; with
    --app and no live worker holding the projection, this command runs it itself.
    """
    with operations(db, app_ref) as ops:
        request = ops.reset(projection, default_actor(actor), reason)
        _report(ops, request, app_ref, wait, timeout, as_json)


@app.command()
def replay(projection: ProjectionArg, reason: RequiredReason,
           from_position: Annotated[int, typer.Option("--from", min=0, help="Apply again the events after this.")],
           db: DbOption = None, app_ref: AppOption = None, actor: ActorOption = None, wait: WaitOption = True,
           timeout: TimeoutOption = None, as_json: JsonOption = False) -> None:
    """Move an idempotent projection's checkpoint back and apply the events again."""
    with operations(db, app_ref) as ops:
        request = ops.replay(projection, from_position, default_actor(actor), reason)
        _report(ops, request, app_ref, wait, timeout, as_json)


def _report(ops: Operations, request: RewindRequest, app_ref: str | None, wait: bool, timeout: float | None,
            as_json: bool) -> None:
    if as_json:
        print_json(RewindView.of(request))
    else:
        console.print(f"{request.action} of {request.projection} requested (request {request.seq}): "
                      f"{max(0, request.head - request.position):,} events to process", highlight=False)
    if wait:
        follow(ops, request, app_ref, timeout, quiet=as_json)


class RateColumn(ProgressColumn):
    """Events per second, from Rich's own speed estimate."""

    def render(self, task: Task) -> Text:
        return Text("-" if task.speed is None else f"{task.speed:,.0f} ev/s", style="progress.data.speed")


def follow(ops: Operations, request: RewindRequest, app_ref: str | None, timeout: float | None,
           quiet: bool = False) -> None:
    """Shows the rewind's progress (events done / total, rate, ETA) until the
    projection is back at the head it had when asked; runs it here when nobody
    holds the projection and the app is known."""
    name = request.projection
    here: HereRunner | None = None
    if not ops.checkpoint(name).holder_alive:
        if ops.app is None:
            err_console.print(f"[yellow]no live worker holds {name}:[/] the {request.action} runs when a worker "
                              "takes it (or pass --app to run it here)", highlight=False)
            return
        here = HereRunner(ops, name)
    try:
        _follow(ops, request, here, timeout, quiet)
    finally:
        if here is not None:
            here.stop()


def _follow(ops: Operations, request: RewindRequest, here: HereRunner | None, timeout: float | None,
            quiet: bool) -> None:
    name = request.projection
    total = 0 if request.action == "repair" else max(0, request.head - request.position)
    deadline = None if timeout is None else time.monotonic() + timeout
    started = time.monotonic()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                  TimeRemainingColumn(), console=err_console, disable=quiet, transient=False) as progress:
        task = progress.add_task(f"{request.action} {name}", total=total or 1)
        while True:
            checkpoint = ops.checkpoint(name)
            carried_out = checkpoint.request is None
            done = max(0, checkpoint.position - request.position) if carried_out else 0
            progress.update(task, completed=min(done, total) if total else int(carried_out))
            if carried_out and (request.action == "repair" or checkpoint.position >= request.head):
                break
            if here is not None and here.errors:
                raise fail(here.errors[0])
            if deadline is not None and time.monotonic() > deadline:
                where = "stops here (run it again, or let a worker finish it)" if here else "goes on in the worker"
                raise fail(OperationTimeout(
                    f"gave up following after {timeout} s at {checkpoint.position} of {request.head}; the "
                    f"{request.action} {where}"))
            time.sleep(0.2)
    elapsed = time.monotonic() - started
    if not quiet:
        console.print(f"{request.action} of {name} done: {total:,} events in {elapsed:.1f} s"
                      + (f" ({total / elapsed:,.0f} events/s)" if elapsed > 0 and total else ""), highlight=False)


class HereRunner:
    """One projection run to the head in a background thread of this command (no
    worker holds it); :meth:`stop` finishes the batch in hand before the store closes."""

    def __init__(self, ops: Operations, name: str) -> None:
        assert ops.app is not None
        self.errors: list[BaseException] = []
        self.runner = Runner(ops.store, ops.app, projections=[name])
        self.thread = threading.Thread(target=self._run, name=f"stoic-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.runner.run_until_caught_up()
        except StoicError as exc:
            self.errors.append(exc)

    def stop(self) -> None:
        self.runner.stop()
        self.thread.join()
