"""What every ``stoic`` command shares: the Typer app, options, exit codes and
the one way errors reach the user (a clear line on stderr, a non-zero code)."""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console

from stoic.errors import (
    ActionRefused,
    ConfigurationError,
    FailureNotFound,
    InvalidArgument,
    InvalidEvent,
    StoicError,
    TransientError,
    UnknownProjection,
)
from stoic.logs import configure_logging
from stoic.operations import Operations
from stoic.projection import App, load_app
from stoic.store import Store, connect

app = typer.Typer(
    name="stoic",
    help="Stoic: event processing that never fails silently.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

#: Exit codes, documented in docs/cli.md: scripts may branch on them.
EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_UNAVAILABLE = 1, 2, 3, 4, 5
_EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (UnknownProjection, EXIT_NOT_FOUND),
    (FailureNotFound, EXIT_NOT_FOUND),
    (InvalidArgument, EXIT_USAGE),
    (InvalidEvent, EXIT_USAGE),
    (ConfigurationError, EXIT_USAGE),
    (ActionRefused, EXIT_REFUSED),
    (TransientError, EXIT_UNAVAILABLE),
]

DbOption = Annotated[
    str | None,
    typer.Option("--db", envvar="STOIC_DATABASE_URL", help="Database URL (default sqlite:///stoic.db)."),
]
AppOption = Annotated[
    str | None,
    typer.Option("--app", envvar="STOIC_APP",
                 help="The application, as module:attribute (to know its projections)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ActorOption = Annotated[
    str | None,
    typer.Option("--actor", envvar="STOIC_ACTOR", help="Who acts, for the audit log (default user@host)."),
]
ReasonOption = Annotated[str | None, typer.Option("--reason", "-r", help="Why, for the audit log.")]


def fail(exc: BaseException) -> typer.Exit:
    """Prints one clear line and returns the exit to raise."""
    code = next((code for kind, code in _EXIT_CODES if isinstance(exc, kind)), EXIT_ERROR)
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
    return typer.Exit(code)


def default_actor(actor: str | None) -> str:
    return actor or f"{getpass.getuser()}@{socket.gethostname()}"


@contextlib.contextmanager
def operations(db: str | None, app_ref: str | None = None) -> Iterator[Operations]:
    """Opens the store (and the app when named) and turns Stoic errors into exits."""
    store: Store | None = None
    if not logging.getLogger().handlers:
        configure_logging("text", "error")  # a runner started here reports errors, not its routine
    try:
        application: App | None = load_app(app_ref) if app_ref else None
        store = connect(db, create=False) if _is_sqlite(db) else connect(db)
        yield Operations(store, app=application)
    except StoicError as exc:
        raise fail(exc) from None
    finally:
        if store is not None:
            store.close()


def _is_sqlite(db: str | None) -> bool:
    url = db if db is not None else os.environ.get("STOIC_DATABASE_URL")
    return url is None or url.startswith("sqlite")


def print_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    """Prints a view (or a list of views) as JSON: the same shape the HTTP API returns."""
    if isinstance(value, BaseModel):
        print(value.model_dump_json(indent=2))
    elif isinstance(value, dict):
        print(json.dumps(value, indent=2, default=str))
    else:
        print(json.dumps([item.model_dump(mode="json") for item in value], indent=2))
