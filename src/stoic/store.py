"""The Store seam: what the core asks of a backend, in the domain's words.

The core (projections, runner, worker) talks only to these protocols; it knows
no SQL dialect and no driver. A backend (``stoic.stores.sqlite``,
``stoic.stores.postgres``) implements them; the contract tests in
``tests/contract`` define what "implements" means.

Two levels, as in a connection pool: a :class:`Store` is shared by the whole
process (appends, reads, worker registry); a :class:`StoreSession` is one
connection owned by one projection runner, because a projection's batch is a
transaction on that connection.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Protocol, TypeVar, runtime_checkable

from stoic.errors import ConfigurationError
from stoic.events import ANY, AppendResult, Expected, NewEvent, RecordedEvent

DEFAULT_URL = "sqlite:///stoic.db"
URL_ENV_VAR = "STOIC_DATABASE_URL"

AppendItem = tuple[str, Sequence[NewEvent], Expected]


@runtime_checkable
class Cursor(Protocol):
    """The part of a DB-API cursor a handler may use."""

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...

    @property
    def rowcount(self) -> int: ...


class Transaction(Protocol):
    """The handle a projection handler writes through.

    It is the same database transaction that moves the projection's
    checkpoint, so what a handler writes here is applied exactly once. SQL uses
    ``?`` placeholders on every backend; ``dialect`` tells the backend
    (``"sqlite"`` or ``"postgresql"``) for the rare statement that differs.
    """

    dialect: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...
    def executemany(self, sql: str, params_seq: Sequence[Sequence[Any]]) -> None: ...


BatchApply = Callable[["Transaction"], "tuple[int, int] | None"]


@dataclass(frozen=True, slots=True)
class Lease:
    """A projection held by a worker: ``epoch`` fences every checkpoint write,
    ``position`` is the checkpoint at the moment the lease was taken."""

    projection: str
    worker_id: str
    epoch: int
    position: int


@dataclass(frozen=True, slots=True)
class ProjectionState:
    """A projection's row in the store: checkpoint, counters and holder."""

    name: str
    position: int
    events_processed: int
    holder: str | None
    holder_alive: bool
    epoch: int
    updated_at: datetime | None
    segments: int | None = None  #: on a segment row (``<name>#<index>``): the projection's segment count


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A registered worker process and its last heartbeat."""

    worker_id: str
    hostname: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    expires_at: datetime
    alive: bool


class FailureStatus(str, Enum):
    """Where a failure record stands."""

    RETRYING = "retrying"  #: waiting for its next background retry
    DEAD = "dead"  #: retries exhausted; a person must act
    RESOLVED = "resolved"  #: the event was applied (retry) or fixed by hand (resolve)
    SKIPPED = "skipped"  #: the event will never be applied (by a person, or the skip policy)


OPEN_STATUSES = (FailureStatus.RETRYING, FailureStatus.DEAD)


class Resolution(str, Enum):
    """How a failure ended."""

    AUTO_RETRY = "auto_retry"  #: a background retry succeeded
    MANUAL_RETRY = "manual_retry"  #: a retry asked for by a person succeeded
    MANUAL_SKIP = "manual_skip"  #: a person skipped the event
    MANUAL_RESOLVE = "manual_resolve"  #: a person marked it resolved (fixed by hand)
    POLICY_SKIP = "policy_skip"  #: the projection's on_error="skip" policy skipped it
    RESET = "reset"  #: an operator reset the projection; its event is processed again
    REPLAY = "replay"  #: an operator replayed from before the event; it is processed again
    REBUILT = "rebuilt"  #: a new version of the read model replaced the one that failed


@dataclass(frozen=True, slots=True)
class NewFailure:
    """A failure to record: the event, the error, and what happens next."""

    projection: str
    position: int
    event_id: str
    stream_id: str
    event_type: str
    policy: str
    error_class: str
    message: str
    traceback: str
    status: FailureStatus
    resolution: Resolution | None
    next_retry_at: datetime | None
    blocking: bool


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """A recorded failure of one event in one projection, with its whole history."""

    id: int
    projection: str
    position: int
    event_id: str
    stream_id: str
    event_type: str
    policy: str
    error_class: str
    message: str
    traceback: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    next_retry_at: datetime | None
    status: FailureStatus
    resolution: Resolution | None
    actor: str | None
    note: str | None
    blocking: bool
    retry_requested: bool
    parked: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class BreakerState:
    """A projection's circuit breaker, as stored (visible to every worker)."""

    state: str  # closed | open | half_open
    failures: int
    opened_at: datetime | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One recorded admin action."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    reason: str | None
    outcome: str
    details: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class ProjectionDetails:
    """Everything the store knows about a projection: checkpoint, lease, breaker,
    pause and the last late-arrival self-check."""

    name: str
    position: int
    events_processed: int
    holder: str | None
    holder_alive: bool
    epoch: int
    updated_at: datetime | None
    held_since: datetime | None
    holder_heartbeat_at: datetime | None
    breaker_state: str
    breaker_failures: int
    breaker_opened_at: datetime | None
    breaker_reason: str | None
    paused_at: datetime | None
    paused_by: str | None
    paused_reason: str | None
    verified_at: datetime | None
    verified_missing: int
    request: str | None = None  #: a pending operator request: ``reset`` or ``replay``
    request_position: int | None = None
    requested_at: datetime | None = None
    requested_by: str | None = None
    request_reason: str | None = None
    idempotent: bool = False  #: declared safe to apply an event twice (replay allowed)
    resettable: bool = False  #: implements ``reset()`` (reset allowed)
    drift_checked_at: datetime | None = None  #: the last continuous reconciliation
    drift_checked: int = 0  #: streams it compared
    drift_count: int = 0  #: streams whose read model differed from their events
    drift_streams: tuple[str, ...] = ()  #: their ids (up to 100)
    version: int | None = None  #: versioned read models: the code version the serving generation has
    generation: int | None = None  #: the generation whose tables the views show (or a build writes)
    previous_generation: int | None = None  #: kept for a rollback until dropped
    switched_at: datetime | None = None
    build_note: str | None = None  #: why a build's switch was refused


@dataclass(frozen=True, slots=True)
class Versioning:
    """Which generation of a versioned read model a projection row serves (or builds)."""

    version: int | None  #: the projection code's ``version`` the generation was built with
    generation: int | None  #: the generation whose tables (``<table>_g<generation>``) it writes
    previous_version: int | None  #: the generation the last switch replaced (for a rollback)
    previous_generation: int | None
    previous_position: int | None
    switched_at: datetime | None
    build_note: str | None  #: why the last switch was refused
    position: int
    events_processed: int


@dataclass(frozen=True, slots=True)
class ProjectionControl:
    """What operators asked of a projection, read by its holder at every maintenance."""

    paused: bool
    request: str | None = None  #: ``reset`` or ``replay``, carried out by the holder
    request_position: int | None = None  #: where the checkpoint goes back to
    request_seq: int = 0  #: identifies the request, so a newer one is never cleared by mistake
    request_streams: tuple[str, ...] = ()  #: the streams a ``repair`` rebuilds


@dataclass(frozen=True, slots=True)
class FailureCount:
    """How many failures a projection has in one status, how many of them block
    a stream, and how many events are parked behind those."""

    projection: str
    status: FailureStatus
    count: int
    blocking: int
    parked: int
    halted_at: int | None = None  #: position a halt-policy failure stopped the projection at


@dataclass(frozen=True, slots=True)
class FailureChange:
    """An operator's change to a failure, applied only from ``allowed`` statuses."""

    allowed: tuple[FailureStatus, ...]
    status: FailureStatus
    resolution: Resolution | None
    actor: str
    note: str | None
    retry_requested: bool = False
    retry_now: bool = False
    reset_attempts: bool = False


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """An admin action to record."""

    actor: str
    action: str
    target: str
    reason: str | None
    outcome: str
    details: dict[str, Any] | None = None


T = TypeVar("T")


class StoreSession(Protocol):
    """One connection, owned by one projection runner (one thread)."""

    def ensure_projection(
        self, name: str, idempotent: bool = False, resettable: bool = False, segments: int | None = None
    ) -> None:
        """Creates the projection's checkpoint row at position 0 if it is missing."""

    def run_setup(self, name: str, setup: Callable[[Transaction], None]) -> None:
        """Runs a projection's ``setup(tx)`` in its own transaction, one process at a time."""

    def claim(self, name: str, worker_id: str) -> Lease | None:
        """Takes the projection if nobody live holds it; returns the lease or None."""

    def release(self, lease: Lease) -> None:
        """Gives the projection back, if this lease still holds it."""

    def read_all(self, after: int, limit: int) -> list[RecordedEvent]:
        """Reads committed events after a position, in global order."""

    def apply_batch(
        self, lease: Lease, start: int, end: int, count: int, apply: BatchApply,
        *, pipeline: bool = True, timeout: float | None = None,
    ) -> int:
        """Runs ``apply(tx)`` and moves the checkpoint from ``start`` to ``end`` in one
        transaction, fenced by the lease; raises LeaseLost (and commits nothing) if the
        checkpoint is no longer at ``start`` or the lease epoch has moved on. If
        ``apply`` returns ``(end, count)`` those are used instead (a run that stopped
        early). Returns the committed checkpoint.

        ``pipeline=False`` makes every statement wait for its result (so that an
        SQL error surfaces in the handler that caused it) where the backend would
        otherwise pipeline; ``timeout`` (seconds) cancels the batch and raises
        OperationTimeout when it runs too long."""

    def checkpoint(self, name: str) -> int:
        """Returns the projection's committed checkpoint position."""

    # Inside apply_batch's ``apply`` callback only: these write in the batch's transaction.

    def savepoint(self) -> contextlib.AbstractContextManager[None]:
        """Runs a block under a savepoint: an exception rolls back only the block."""

    def insert_failure(self, failure: NewFailure) -> int:
        """Records a failure; returns its id."""

    def record_retry_failure(
        self, failure_id: int, status: FailureStatus, next_retry_at: datetime | None,
        error_class: str, message: str, traceback: str,
    ) -> None:
        """Counts one more failed attempt of a failure, with the new error."""

    def close_failure(self, failure_id: int, resolution: Resolution | None, parked: int) -> None:
        """Unblocks a failure after its event and parked followers were dealt with;
        sets status resolved with ``resolution`` if it was still open."""

    def lock_failure(self, failure_id: int) -> FailureStatus | None:
        """Locks a failure for this transaction and returns its status now."""

    def add_parked(self, counts: dict[int, int]) -> None:
        """Adds to the parked-event counters of blocking failures (by id)."""

    def fence(self, lease: Lease) -> None:
        """Raises LeaseLost unless the lease still holds the projection."""

    # Outside a batch (each call is its own transaction).

    def blocking_failures(self, name: str) -> list[FailureRecord]:
        """Returns the projection's failures that still block a stream (or the projection)."""

    def read_events(self, positions: list[int]) -> list[RecordedEvent]:
        """Returns the events at these positions, in position order."""

    def read_stream_range(self, stream_id: str, after: int, upto: int) -> list[RecordedEvent]:
        """Returns a stream's events with after < position <= upto, in order."""

    def breaker(self, name: str) -> BreakerState:
        """Returns the projection's stored circuit breaker."""

    def set_breaker(self, name: str, state: str, failures: int, reason: str | None) -> None:
        """Stores the projection's circuit breaker (opened_at set when it opens)."""

    def control(self, name: str) -> ProjectionControl:
        """Returns the pause flag and any pending reset/replay/repair request."""

    def versioning(self, name: str) -> Versioning | None:
        """The row's versioned read-model state; None if the row does not exist."""

    def fenced(self, lease: Lease, work: Callable[[Transaction], T]) -> T:
        """Runs ``work`` in a write transaction that holds only while ``lease`` does."""

    def administer(self, work: Callable[[Transaction], T]) -> T:
        """Runs ``work`` in a write transaction without a lease: for operator changes
        that fence the holder out themselves (epoch + 1)."""

    def point_views(self, tx: Transaction, views: dict[str, str]) -> None:
        """Inside a transaction: makes each view (logical name) show the table given;
        a plain table of that name is renamed ``<name>_g0`` first."""

    def drop_tables(self, tx: Transaction, tables: Sequence[str]) -> None:
        """Inside a transaction: drops the tables if they exist."""

    def set_version(self, tx: Transaction, name: str, version: int, generation: int) -> None:
        """Inside a transaction: records the version and generation a row serves."""

    def restart_build(self, tx: Transaction, name: str, version: int, generation: int) -> None:
        """Inside a transaction: starts a build row over (position 0, no failures)."""

    def switch_version(self, tx: Transaction, main: str, build: str) -> None:
        """Inside a transaction: the main row takes the build's generation and
        checkpoint (keeping the old for a rollback), adopts its failures, fences
        out the main row's holder; the build row is deleted."""

    def rollback_version(self, tx: Transaction, name: str) -> bool:
        """Inside a transaction: back to the previous generation; False if none."""

    def abandon_build(self, tx: Transaction, build: str) -> None:
        """Inside a transaction: the build row starts over at its next acquire (holder fenced out)."""

    def forget_previous(self, tx: Transaction, name: str) -> None:
        """Inside a transaction: the previous generation is gone (its tables dropped)."""

    def record_build_note(self, name: str, note: str | None) -> None:
        """Inside a (fenced) transaction: records why a build's switch was refused."""

    def segment_count(self, base: str) -> int | None:
        """How many segments a segmented projection's rows split it into (None: no rows)."""

    def segment_rows(self, base: str) -> list[tuple[str, int, str | None, int | None, int]]:
        """A segmented projection's rows: (name, position, request, request position, segments)."""

    def cancel_request(self, name: str) -> None:
        """Drops a row's pending request."""

    def resegment(self, tx: Transaction, base: str, old: Sequence[str], count: int, position: int) -> None:
        """Inside a transaction: replaces the segment rows ``old`` with ``count`` new
        ones at ``position``; each failure moves to the row now owning its stream."""

    def read_snapshot(self) -> contextlib.AbstractContextManager[Transaction]:
        """A read-only transaction that sees one consistent state (checkpoint,
        events, failures and read model together), for reconciliation."""

    def stream_ids(self, upto: int, after: str, types: Sequence[str] | None, limit: int) -> list[str]:
        """Streams with events at or below ``upto`` (of ``types``; None = any),
        in id order after ``after``, at most ``limit``."""

    def stream_at(self, position: int) -> tuple[str, str] | None:
        """The (stream id, type) of the event at a position, None if there is none."""

    def stream_failures(self, name: str, stream_id: str) -> list[FailureRecord]:
        """Every failure (any status) of a projection on one stream."""

    def finish_request(self, name: str, seq: int, position: int, reset: bool) -> None:
        """Inside a rewind's transaction: clears request ``seq`` and unblocks the
        failures after ``position`` (their events are processed again)."""

    def check_late_arrivals(self, name: str) -> int:
        """The late-arrival self-check: counts committed events at or below the
        checkpoint that the projection never processed (0 when all is well) and
        stores the result for health."""

    def close(self) -> None: ...


class Store(Protocol):
    """An event store: append-only streams with a gap-free global order."""

    url: str
    dialect: str

    def append(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: Expected = ANY
    ) -> AppendResult:
        """Appends events to one stream atomically, checking its version first."""

    def append_many(self, items: Sequence[AppendItem]) -> list[AppendResult]:
        """Appends to several streams in one transaction: all or nothing."""

    def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        """Returns a stream's events from a version on, in version order."""

    def read_all(self, after: int = 0, limit: int = 500) -> list[RecordedEvent]:
        """Returns committed events after a global position, in the order to apply them."""

    def iter_all(self, after: int = 0, batch_size: int = 1000) -> Iterator[RecordedEvent]:
        """Iterates over every committed event after a position, batch by batch."""

    def head(self) -> int:
        """Returns the last committed global position (0 when the store is empty)."""

    def stream_version(self, stream_id: str) -> int:
        """Returns a stream's current version (0 when it does not exist)."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Runs one statement (``?`` placeholders) in its own transaction and returns
        its rows: for reading read models from scripts and tests."""

    def wait_for_append(self, after: int, timeout: float) -> bool:
        """Blocks until an event after ``after`` may be committed, or the timeout
        passes; returns False on timeout. May wake spuriously."""

    def open_session(self) -> StoreSession:
        """Opens a dedicated connection for one projection runner."""

    def register_worker(self, worker_id: str, hostname: str, pid: int, ttl: float) -> None:
        """Records a worker as alive for ``ttl`` seconds."""

    def heartbeat(self, worker_id: str, ttl: float) -> bool:
        """Extends a worker's life by ``ttl`` seconds; False if its row is gone."""

    def unregister_worker(self, worker_id: str) -> None:
        """Removes a worker and frees every projection it held."""

    def workers(self) -> list[WorkerInfo]:
        """Returns every registered worker, alive or not."""

    def projections(self) -> list[ProjectionState]:
        """Returns the state of every known projection."""

    # Failures, audit and operator state (each call is its own transaction).

    def list_failures(
        self, projection: str | None = None, status: FailureStatus | None = None,
        stream_id: str | None = None, limit: int = 100, offset: int = 0,
    ) -> list[FailureRecord]:
        """Returns failures, newest first, filtered by projection, status and stream."""

    def get_failure(self, failure_id: int) -> FailureRecord | None:
        """Returns one failure, or None."""

    def change_failure(
        self, failure_id: int, change: FailureChange, audit: AuditRecord
    ) -> FailureRecord | None:
        """Applies an operator's change if the failure's status allows it, and
        records the audit entry, in one transaction; None when refused or unknown."""

    def failure_counts(self) -> list[FailureCount]:
        """Returns failure counts by projection and status."""

    def record_audit(self, entry: AuditRecord) -> None:
        """Records an admin action."""

    def audit_log(self, limit: int = 100, offset: int = 0, action: str | None = None) -> list[AuditEntry]:
        """Returns admin actions, newest first."""

    def set_paused(self, name: str, paused: bool, actor: str | None, reason: str | None) -> bool:
        """Pauses or resumes a projection; False if it is unknown."""

    def request_rewind(
        self, name: str, request: str, position: int, actor: str, reason: str | None,
        streams: Sequence[str] | None = None,
    ) -> int | None:
        """Records a reset, replay or repair (of ``streams``) for the holder to
        carry out; returns the request's sequence number, None if the projection
        is unknown."""

    def projection_details(self) -> list[ProjectionDetails]:
        """Returns everything known about every projection."""

    def oldest_unprocessed(self, position: int) -> datetime | None:
        """When the first event after ``position`` was recorded (None: none yet)."""

    def count_upto(self, position: int) -> int:
        """How many events are stored at or below ``position``."""

    def record_verification(self, name: str, missing: int) -> None:
        """Stores the result of a projection's late-arrival self-check."""

    def record_drift(self, name: str, checked: int, drifted: Sequence[str]) -> None:
        """Stores the result of a continuous reconciliation."""

    def now(self) -> datetime:
        """The store's clock (the database server's, on PostgreSQL)."""

    def schema_version(self) -> int:
        """The schema version the database is at (read from the database)."""

    @property
    def expected_schema_version(self) -> int:
        """The schema version this version of Stoic migrates to."""

    def close(self) -> None: ...


def connect(url: str | None = None, **options: Any) -> Store:
    """Opens the store a URL names: ``sqlite:///path`` (the default is
    ``sqlite:///stoic.db``, or ``$STOIC_DATABASE_URL``) or ``postgresql://...``.

    Creates and migrates the schema if needed. Options override URL query
    parameters (for example ``max_event_bytes``).
    """
    url = url or os.environ.get(URL_ENV_VAR) or DEFAULT_URL
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from stoic.stores.sqlite import SQLiteStore

        return SQLiteStore(url, **options)
    if scheme in ("postgresql", "postgres"):
        from stoic.stores.postgres import PostgresStore

        return PostgresStore(url, **options)
    raise ConfigurationError(
        f"unsupported database URL {url!r}: use sqlite:///path or postgresql://user@host/db",
        url=url,
    )
