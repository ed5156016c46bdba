"""PostgreSQL event store: the distributed engine.

Invariant (global order without gaps): an append takes a transaction-level
advisory lock and holds it until its commit is visible; positions are computed
as ``max(position) + n`` inside that lock. So no transaction can commit a
position lower than one already visible, and ``read_all(after=p)`` never skips
an event. The whole append (lock, insert, notify, commit) is one pipelined
round trip, so the lock is held for the server's work only. docs/ordering.md
explains the trade-off against ordering by transaction id.

All of Stoic's tables live in one schema (``?schema=NAME`` in the URL, default
``public``), selected by the connections' ``search_path``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from stoic.errors import (
    ConfigurationError,
    DuplicateEventId,
    LeaseLost,
    LockNotAvailable,
    OperationTimeout,
    SchemaError,
    StoicError,
    StoreUnavailable,
)
from stoic.events import (
    MAX_EVENT_BYTES,
    AppendResult,
    RecordedEvent,
    validate_stream_id,
)
from stoic.store import (
    AuditEntry,
    AuditRecord,
    BatchApply,
    BreakerState,
    FailureChange,
    FailureCount,
    FailureRecord,
    FailureStatus,
    Lease,
    NewFailure,
    ProjectionControl,
    ProjectionDetails,
    ProjectionState,
    Resolution,
    Transaction,
    WorkerInfo,
)
from stoic.stores._common import (
    PreparedAppend,
    SessionSegments,
    SessionVersioning,
    StoreBase,
    Watchdog,
    _positive_int,
    check_read_args,
    expected_as_int,
    first_mismatch,
    load_migrations,
    load_queries,
    split_statements,
    stored_results,
)

Q = load_queries("stoic.stores.postgres")
MIGRATIONS = load_migrations("stoic.stores.postgres")

POOL_SIZE = 10  #: connections shared by appends and reads of one process
CONNECT_TIMEOUT_S = 5.0  #: how long to wait for a connection, seconds
POLL_INTERVAL_S = 0.5  #: how often runners poll while LISTEN is down, seconds
IDLE_IN_TRANSACTION_TIMEOUT_S = 30.0  #: the server ends a transaction idle this long (a frozen zombie), seconds
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_STOIC_OPTIONS = ("schema", "max_event_bytes", "pool_size")


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Maps psycopg errors to Stoic's error tree, most specific first.

    Integrity errors and errors of user SQL pass through unchanged: they are
    the caller's to interpret (and permanent to the failure classifier).
    """
    try:
        yield
    except StoicError:
        raise
    except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected,
            psycopg.errors.SerializationFailure) as exc:
        raise LockNotAvailable(f"PostgreSQL: {exc}".strip()) from exc
    except psycopg.errors.QueryCanceled as exc:
        raise OperationTimeout(f"PostgreSQL cancelled a statement: {exc}".strip()) from exc
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise StoreUnavailable(f"PostgreSQL unavailable: {exc}".strip()) from exc
    except PoolTimeout as exc:
        raise StoreUnavailable(f"PostgreSQL unavailable: no connection in time: {exc}") from exc


def parse_postgres_url(url: str) -> tuple[str, dict[str, str]]:
    """Splits Stoic's own options (``schema``, ``max_event_bytes``, ``pool_size``)
    from a postgresql URL; returns the driver's conninfo and those options."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    options = {k: v for k, v in query if k in _STOIC_OPTIONS}
    rest = [(k, v) for k, v in query if k not in _STOIC_OPTIONS]
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), parts.fragment))
    return conninfo, options


_QMARK = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|\?|%)""")
_translated: dict[str, str] = {}


def qmark_to_pyformat(query: str) -> str:
    """Rewrites ``?`` placeholders to psycopg's ``%s`` (and every ``%`` to ``%%``),
    leaving a ``?`` in quoted strings and comments alone, so handlers write one SQL for
    both backends. Cached: handlers repeat the same few statements."""
    cached = _translated.get(query)
    if cached is None:

        def swap(match: re.Match[str]) -> str:
            token = match.group(0)
            if token == "?":
                return "%s"
            # psycopg parses every '%' once parameters are passed, even inside
            # quoted strings and comments, so each one is doubled.
            return token.replace("%", "%%")

        cached = _translated[query] = _QMARK.sub(swap, query)
    return cached


class PipelinedCursor:
    """The cursor a handler gets. In a pipelined batch, reading ``rowcount`` (or
    fetching) waits for that statement's result, so ``UPDATE …; if
    cur.rowcount == 0: INSERT …`` works as on SQLite; statements whose result
    nobody reads stay pipelined."""

    __slots__ = ("__weakref__", "_cursor", "_pipeline")

    def __init__(self, cursor: psycopg.Cursor[Any], pipeline: psycopg.Pipeline | None) -> None:
        self._cursor = cursor
        self._pipeline = pipeline

    @property
    def rowcount(self) -> int:
        if self._pipeline is not None and self._cursor.pgresult is None:
            self._pipeline.sync()
        return self._cursor.rowcount

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    def fetchmany(self, size: int = 0) -> list[Any]:
        return self._cursor.fetchmany(size)

    def __iter__(self) -> Any:
        # Fetch everything first: iterating a psycopg cursor lazily while the loop
        # body sends more pipelined statements never ends.
        return iter(self._cursor.fetchall())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class PostgresTransaction:
    """The handle a handler writes through: the batch's connection, pipelined
    when ``pipeline`` is given.

    Creating a psycopg cursor costs as much as sending a statement, so one
    cursor is reused while the handler keeps no reference to the previous
    statement's cursor (the usual ``tx.execute(...)`` written as a statement);
    when it does keep one, the next statement gets a fresh cursor, so the kept
    result stays readable.
    """

    __slots__ = ("_cursor", "_last", "connection", "dialect", "pipeline")

    def __init__(self, connection: psycopg.Connection[Any], pipeline: psycopg.Pipeline | None = None) -> None:
        self.connection = connection
        self.pipeline = pipeline
        self.dialect = "postgresql"
        self._cursor: psycopg.Cursor[Any] | None = None
        self._last: weakref.ref[PipelinedCursor] | None = None

    def execute(self, query: str, params: Sequence[Any] = ()) -> PipelinedCursor:
        cursor = self._cursor
        last = self._last
        if cursor is None or (last is not None and last() is not None):
            cursor = self._cursor = self.connection.cursor()
        if params:
            cursor.execute(qmark_to_pyformat(query), params)  # type: ignore[arg-type]
        else:
            cursor.execute(query)  # type: ignore[arg-type]
        result = PipelinedCursor(cursor, self.pipeline)
        self._last = weakref.ref(result)
        return result

    def executemany(self, query: str, params_seq: Sequence[Sequence[Any]]) -> None:
        with self.connection.cursor() as cur:
            cur.executemany(qmark_to_pyformat(query), params_seq)  # type: ignore[arg-type]


def failure_from_row(row: Sequence[Any]) -> FailureRecord:
    """Builds a FailureRecord from a stoic_failures row (event_id as text)."""
    values = list(row)
    values[14] = FailureStatus(values[14])
    values[15] = None if values[15] is None else Resolution(values[15])
    return FailureRecord(*values)


def _lock_key(*parts: str) -> int:
    """A stable signed 64-bit advisory-lock key for a purpose within a schema."""
    digest = hashlib.blake2b(":".join(("stoic", *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresStore(StoreBase):
    """The event store on a PostgreSQL database.

    Parameters
    ----------
    url:
        ``postgresql://user@host:port/db``; Stoic's query options are
        ``schema`` (default ``public``), ``max_event_bytes`` and ``pool_size``;
        the others go to the driver.
    """

    Q = Q
    expected_schema_version = len(MIGRATIONS)  #: the schema this version of Stoic migrates to
    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        max_event_bytes: int | None = None,
        pool_size: int | None = None,
        poll_interval: float = POLL_INTERVAL_S,
    ) -> None:
        self.url = url
        conninfo, options = parse_postgres_url(url)
        self.schema = schema or options.get("schema", "public")
        if not _SCHEMA_NAME.match(self.schema):
            raise ConfigurationError(f"invalid schema name {self.schema!r}", schema=self.schema)
        self.max_event_bytes = _positive_int("max_event_bytes", max_event_bytes or options.get(
            "max_event_bytes", MAX_EVENT_BYTES))
        self.poll_interval = poll_interval
        self.conninfo = make_conninfo(
            conninfo,
            options=f"-c search_path={self.schema} "
            f"-c idle_in_transaction_session_timeout={int(IDLE_IN_TRANSACTION_TIMEOUT_S * 1000)}",
            application_name="stoic",
            connect_timeout=int(CONNECT_TIMEOUT_S),
        )
        self.channel = f"stoic_events.{self.schema}"
        self._append_key = _lock_key(self.schema, "append")
        self._head_cond = threading.Condition()
        self._known_head = 0
        self._listening = False
        self._listener: threading.Thread | None = None
        self._closed = False
        self._migrate()
        self._pool = ConnectionPool(
            self.conninfo,
            min_size=1,
            max_size=_positive_int("pool_size", pool_size or options.get("pool_size", POOL_SIZE)),
            open=True,
            name=f"stoic-{self.schema}",
            timeout=CONNECT_TIMEOUT_S,
            kwargs={"autocommit": True},
        )

    # -- connections -------------------------------------------------------------

    def connect(self, autocommit: bool = True) -> psycopg.Connection[Any]:
        """Opens a new dedicated connection with the store's settings."""
        with translate_errors():
            return psycopg.connect(self.conninfo, autocommit=autocommit)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        with translate_errors(), self._pool.connection() as conn:
            yield conn

    def _read(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        for attempt in (1, 2):
            try:
                with self._connection() as conn:
                    return conn.execute(query, params or None, prepare=True).fetchall()  # type: ignore[arg-type]
            except StoreUnavailable:
                # A pooled connection may have died with a server restart; a read is
                # safe to try once more on a fresh one.
                if attempt == 2:
                    raise
                self._pool.check()
        raise AssertionError("unreachable")

    def _migrate(self) -> None:
        with self.connect(autocommit=False) as conn, translate_errors():
            conn.execute(Q["migrate_lock"], (_lock_key(self.schema, "migrate"),))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS stoic_schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
            )
            current = conn.execute(Q["schema_version"]).fetchone()[0]  # type: ignore[index]
            if current > len(MIGRATIONS):
                raise SchemaError(
                    f"database schema version {current} is newer than this Stoic "
                    f"(knows {len(MIGRATIONS)}); upgrade Stoic",
                    current=current,
                )
            for migration in MIGRATIONS[current:]:
                for statement in split_statements(migration.sql):
                    conn.execute(statement)  # type: ignore[call-overload]
                conn.execute(Q["record_migration"], (migration.version, migration.name))
            conn.commit()

    def schema_version(self) -> int:
        """Returns the highest migration applied to this schema."""
        return int(self._read(Q["schema_version"])[0][0])

    # -- appending ----------------------------------------------------------------

    def _append(self, prepared: list[PreparedAppend]) -> list[AppendResult]:
        streams = json.dumps([[item.stream_id, expected_as_int(item.expected)] for item in prepared])
        parts = []
        for ordinal, item in enumerate(prepared, 1):
            for n, e in enumerate(item.events, 1):
                parts.append(
                    f'[{ordinal},{n},"{e.event_id}",{json.dumps(e.type)},{e.data},{e.metadata or "null"}]'
                )
        params = {"streams": streams, "events": "[" + ",".join(parts) + "]"}
        total = len(parts)
        for attempt in (1, 2):
            try:
                rows = self._execute_append(params)
                break
            except StoreUnavailable:
                # The commit may or may not have happened. Retrying is safe: the same
                # event ids make a repeated append return the stored result.
                if attempt == 2:
                    raise
                self._pool.check()
            except psycopg.errors.UniqueViolation as exc:
                replay = self._stored_results(prepared)
                if replay is not None:
                    return replay
                raise DuplicateEventId(f"an event id of this append is already stored: {exc}") from exc
        versions = {prepared[ordinal - 1].stream_id: version for kind, ordinal, version in rows if kind == 0}
        first_position, inserted = next((o, v) for kind, o, v in rows if kind == 1)
        if not total and (mismatch := first_mismatch(prepared, versions)) is not None:
            raise mismatch  # an empty append still checks the expected version, as on SQLite
        if inserted != total:
            replay = self._stored_results(prepared) if total else None
            if replay is not None:
                return replay
            raise first_mismatch(prepared, versions) or AssertionError("append inserted nothing")
        results, position = [], first_position
        for item in prepared:
            count = len(item.events)
            positions = tuple(range(position, position + count))
            results.append(AppendResult(item.stream_id, versions[item.stream_id] + count, positions))
            position += count
        if total:
            self._announce(position - 1)
        return results

    def _execute_append(self, params: dict[str, str]) -> list[tuple[int, int, int]]:
        with self._connection() as conn:
            # One round trip: begin, lock, insert, notify and commit are pipelined.
            with conn.pipeline(), conn.transaction():
                conn.execute(Q["append_lock"], (self._append_key,), prepare=True)
                cur = conn.execute(Q["append"], params, prepare=True)
                conn.execute(Q["notify"], (self.channel,), prepare=True)
            return cur.fetchall()

    def _stored_results(self, prepared: list[PreparedAppend]) -> list[AppendResult] | None:
        ids = [e.event_id for item in prepared for e in item.events]
        rows = self._read(Q["events_by_id"], (ids,))
        versions = {item.stream_id: self.stream_version(item.stream_id) for item in prepared}
        return stored_results(prepared, {row[0]: tuple(row) for row in rows}, versions)  # type: ignore[misc]

    # -- reading ------------------------------------------------------------------

    def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        """Returns a stream's events from a version on."""
        validate_stream_id(stream_id, where="read_stream")
        check_read_args(from_version, limit if limit is not None else 1)
        rows = self._read(Q["read_stream"], (stream_id, from_version, limit))
        return [RecordedEvent(*row) for row in rows]

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Runs one statement (``?`` placeholders) and returns its rows."""
        with self._connection() as conn:
            if params:
                cur = conn.execute(qmark_to_pyformat(sql), params)  # type: ignore[arg-type]
            else:
                cur = conn.execute(sql)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    # -- waiting for appends: LISTEN/NOTIFY with a polling fallback ------------------

    def wait_for_append(self, after: int, timeout: float) -> bool:
        """Blocks until a NOTIFY says the head is past ``after``. While the
        listener is down it sleeps ``poll_interval`` and returns True, so the
        caller polls instead."""
        if self._listener is None:
            self._start_listener()
            return True
        deadline = time.monotonic() + timeout
        with self._head_cond:
            while self._known_head <= after:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return False
                if not self._listening:
                    self._head_cond.wait(min(remaining, self.poll_interval))
                    return True
                self._head_cond.wait(remaining)
        return True

    def _start_listener(self) -> None:
        ready = threading.Event()
        with self._head_cond:
            if self._listener is not None:
                return
            self._listener = threading.Thread(
                target=self._listen, args=(ready,), name="stoic-pg-listener", daemon=True
            )
            self._listener.start()
        # Events committed before LISTEN took effect are found by the caller's next read.
        ready.wait(CONNECT_TIMEOUT_S)

    def _listen(self, ready: threading.Event) -> None:
        delay = 0.1
        while not self._closed:
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self._listening, delay = True, 0.1
                    ready.set()
                    self._announce(0)  # wake waiters: they may have missed commits meanwhile
                    while not self._closed:
                        for notify in conn.notifies(timeout=1.0):
                            self._announce(int(notify.payload or 0))
            except (psycopg.Error, ValueError):
                self._listening = False
                ready.set()
                self._announce(0)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._listening = False

    # -- projections and workers ------------------------------------------------------

    def open_session(self) -> PostgresSession:
        """Opens a dedicated connection for one projection runner."""
        return PostgresSession(self)

    def _write(self, query: str, params: Sequence[Any]) -> int:
        with self._connection() as conn:
            return conn.execute(query, params, prepare=True).rowcount  # type: ignore[arg-type]

    def register_worker(self, worker_id: str, hostname: str, pid: int, ttl: float) -> None:
        """Records a worker as alive for ``ttl`` seconds."""
        self._write(Q["register_worker"], (worker_id, hostname, pid, ttl))

    def heartbeat(self, worker_id: str, ttl: float) -> bool:
        """Extends a worker's life; False if its row is gone."""
        return self._write(Q["heartbeat"], (ttl, worker_id)) == 1

    def unregister_worker(self, worker_id: str) -> None:
        """Removes a worker and frees the projections it held."""
        with self._connection() as conn, conn.transaction():
            conn.execute(Q["release_worker_projections"], (worker_id,))
            conn.execute(Q["unregister_worker"], (worker_id,))

    def workers(self) -> list[WorkerInfo]:
        """Returns every registered worker, alive or not."""
        return [WorkerInfo(*row) for row in self._read(Q["workers"])]

    def projections(self) -> list[ProjectionState]:
        """Returns the state of every known projection."""
        return [ProjectionState(*row) for row in self._read(Q["projections"])]

    # -- failures, audit and operator state ------------------------------------------

    def list_failures(
        self, projection: str | None = None, status: FailureStatus | None = None,
        stream_id: str | None = None, limit: int = 100, offset: int = 0,
    ) -> list[FailureRecord]:
        """Returns failures, newest first, filtered by projection, status and stream."""
        check_read_args(offset, limit)
        rows = self._read(Q["list_failures"], {
            "projection": projection, "status": status.value if status else None,
            "stream_id": stream_id, "limit": limit, "offset": offset})
        return [failure_from_row(r) for r in rows]

    def get_failure(self, failure_id: int) -> FailureRecord | None:
        """Returns one failure, or None."""
        rows = self._read(Q["failure"], (failure_id,))
        return failure_from_row(rows[0]) if rows else None

    def change_failure(
        self, failure_id: int, change: FailureChange, audit: AuditRecord
    ) -> FailureRecord | None:
        """Applies an operator's change if allowed, with its audit entry, in one transaction."""
        with self._connection() as conn, conn.transaction():
            row = conn.execute(Q["transition_failure"], {
                "id": failure_id, "status": change.status.value,
                "resolution": change.resolution.value if change.resolution else None,
                "actor": change.actor, "note": change.note,
                "retry_requested": change.retry_requested, "retry_now": change.retry_now,
                "reset_attempts": change.reset_attempts,
                "allowed": [a.value for a in change.allowed],
            }).fetchone()
            outcome = audit.outcome if row is not None else "refused"
            self._insert_audit(conn, AuditRecord(
                audit.actor, audit.action, audit.target, audit.reason, outcome, audit.details))
        return failure_from_row(row) if row is not None else None

    @staticmethod
    def _insert_audit(conn: psycopg.Connection[Any], entry: AuditRecord) -> None:
        conn.execute(Q["insert_audit"], (
            entry.actor, entry.action, entry.target, entry.reason, entry.outcome,
            json.dumps(entry.details) if entry.details is not None else None))

    def failure_counts(self) -> list[FailureCount]:
        """Returns failure counts by projection and status."""
        return [
            FailureCount(p, FailureStatus(st), int(n), int(b), int(k), h)
            for p, st, n, b, k, h in self._read(Q["failure_counts"])
        ]

    def record_audit(self, entry: AuditRecord) -> None:
        """Records an admin action."""
        with self._connection() as conn:
            self._insert_audit(conn, entry)

    def audit_log(self, limit: int = 100, offset: int = 0, action: str | None = None) -> list[AuditEntry]:
        """Returns admin actions, newest first."""
        check_read_args(offset, limit)
        rows = self._read(Q["audit_log"], {"limit": limit, "offset": offset, "action": action})
        return [AuditEntry(*row) for row in rows]

    def set_paused(self, name: str, paused: bool, actor: str | None, reason: str | None) -> bool:
        """Pauses or resumes a projection; False if it is unknown."""
        return self._write(Q["set_paused"], (
            paused, actor if paused else None, reason if paused else None, name)) == 1

    def request_rewind(
        self, name: str, request: str, position: int, actor: str, reason: str | None,
        streams: Sequence[str] | None = None,
    ) -> int | None:
        """Records a reset or replay for the holder to carry out; None if unknown."""
        with self._connection() as conn:
            row = conn.execute(Q["request_rewind"], {
                "request": request, "position": position, "actor": actor, "reason": reason, "name": name,
                "streams": Jsonb(list(streams)) if streams is not None else None,
            }).fetchone()
        return None if row is None else int(row[0])

    def projection_details(self) -> list[ProjectionDetails]:
        """Returns everything known about every projection."""
        return [ProjectionDetails(*row[:28], tuple(row[28] or ()), *row[29:])
                for row in self._read(Q["projection_details"])]

    def oldest_unprocessed(self, position: int) -> datetime | None:
        """When the first event after ``position`` was recorded (None: none yet)."""
        rows = self._read(Q["oldest_unprocessed"], (position,))
        return rows[0][0] if rows else None

    def count_upto(self, position: int) -> int:
        """How many events are stored at or below ``position``."""
        return int(self._read(Q["count_upto"], (position,))[0][0])

    def record_verification(self, name: str, missing: int) -> None:
        """Stores the result of a projection's late-arrival self-check."""
        self._write(Q["record_verification"], (missing, name))

    def record_drift(self, name: str, checked: int, drifted: Sequence[str]) -> None:
        """Stores the result of a continuous reconciliation (up to 100 stream ids)."""
        self._write(Q["record_drift"], (checked, len(drifted), Jsonb(list(drifted)[:100]), name))

    def now(self) -> datetime:
        """The database server's clock."""
        return self._read(Q["now"])[0][0]  # type: ignore[no-any-return]

    def close(self) -> None:
        """Closes the pool and stops the listener."""
        self._closed = True
        with self._head_cond:
            self._head_cond.notify_all()
        self._pool.close()
        if self._listener is not None:
            self._listener.join(timeout=3)

    def __repr__(self) -> str:
        return f"PostgresStore(schema={self.schema!r})"


class PostgresSession(SessionVersioning, SessionSegments):
    """One projection runner's connection: autocommit, with explicit batch transactions."""

    Q = Q

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        with translate_errors(), self.conn.transaction():
            yield

    def _handle(self) -> Transaction:
        return PostgresTransaction(self.conn)

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.conn = store.connect(autocommit=True)

    def ensure_projection(
        self, name: str, idempotent: bool = False, resettable: bool = False, segments: int | None = None
    ) -> None:
        with translate_errors():
            self.conn.execute(Q["ensure_projection"], (name, idempotent, resettable, segments))

    def run_setup(self, name: str, setup: Callable[[Transaction], None]) -> None:
        with translate_errors(), self.conn.transaction():
            self.conn.execute(Q["setup_lock"], (_lock_key(self.store.schema, "setup", name),))
            setup(PostgresTransaction(self.conn))

    def claim(self, name: str, worker_id: str) -> Lease | None:
        with translate_errors():
            row = self.conn.execute(Q["claim_projection"], {"worker": worker_id, "name": name}).fetchone()
        return None if row is None else Lease(name, worker_id, row[0], row[1])

    def release(self, lease: Lease) -> None:
        with translate_errors():
            self.conn.execute(Q["release_projection"], (lease.projection, lease.worker_id, lease.epoch))

    def read_all(self, after: int, limit: int) -> list[RecordedEvent]:
        with translate_errors():
            rows = self.conn.execute(Q["read_all"], (after, limit), prepare=True).fetchall()
        return [RecordedEvent(*row) for row in rows]

    def apply_batch(
        self, lease: Lease, start: int, end: int, count: int, apply: BatchApply,
        *, pipeline: bool = True, timeout: float | None = None,
    ) -> int:
        params = {"end": end, "count": count, "name": lease.projection, "start": start,
                  "worker": lease.worker_id, "epoch": lease.epoch}
        with translate_errors(), self._watchdog(timeout) as watchdog:
            with self.conn.transaction():
                if timeout is not None:
                    self.conn.execute(Q["statement_timeout"], (f"{int(timeout * 1000)}ms",), prepare=True)
                if not pipeline:
                    # The strict path: each statement waits for its result, so that an
                    # SQL error is raised inside the savepoint of the event that caused it.
                    reached = apply(PostgresTransaction(self.conn))
                    if reached is not None:
                        params["end"], params["count"] = reached
                    cur = self.conn.execute(Q["advance_checkpoint"], params, prepare=True)
                else:
                    # Handler writes (and savepoints) are pipelined: no round trip each.
                    with self.conn.pipeline() as pipe:
                        reached = apply(PostgresTransaction(self.conn, pipe))
                        if reached is not None:
                            params["end"], params["count"] = reached
                        cur = self.conn.execute(Q["advance_checkpoint"], params, prepare=True)
                watchdog.check()
                if cur.rowcount != 1:
                    raise LeaseLost(
                        f"projection {lease.projection!r}: checkpoint is no longer at {start} under "
                        f"epoch {lease.epoch}; batch rolled back",
                        projection=lease.projection,
                    )
        return int(params["end"])

    @contextlib.contextmanager
    def _watchdog(self, timeout: float | None) -> Iterator[Watchdog]:
        """The batch's watchdog. Once it has fired, its cancel request may reach the
        server after the batch ended (e.g. when statement_timeout stopped the batch
        first) and cancel this connection's next statement — even the ROLLBACK,
        leaving the connection in a failed transaction — so the connection is replaced."""
        watchdog = Watchdog(self.conn.cancel_safe, timeout)
        try:
            with watchdog:
                yield watchdog
        finally:
            if watchdog.fired:
                old, self.conn = self.conn, self.store.connect(autocommit=True)
                with contextlib.suppress(psycopg.Error):
                    old.close()

    def checkpoint(self, name: str) -> int:
        with translate_errors():
            row = self.conn.execute(Q["checkpoint"], (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def _fetch(self, query: str, params: Sequence[Any] | dict[str, Any]) -> list[Any]:
        with translate_errors():
            return self.conn.execute(query, params, prepare=True).fetchall()  # type: ignore[arg-type]

    # -- inside a batch transaction ------------------------------------------------------

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        with self.conn.transaction():
            yield

    def insert_failure(self, failure: NewFailure) -> int:
        row = self.conn.execute(Q["insert_failure"], {
            "projection": failure.projection, "position": failure.position,
            "event_id": failure.event_id, "stream_id": failure.stream_id,
            "event_type": failure.event_type, "policy": failure.policy,
            "error_class": failure.error_class, "message": failure.message,
            "traceback": failure.traceback, "next_retry_at": failure.next_retry_at,
            "status": failure.status.value,
            "resolution": failure.resolution.value if failure.resolution else None,
            "blocking": failure.blocking,
        }).fetchone()
        return int(row[0])  # type: ignore[index]

    def record_retry_failure(
        self, failure_id: int, status: FailureStatus, next_retry_at: datetime | None,
        error_class: str, message: str, traceback: str,
    ) -> None:
        self.conn.execute(Q["record_retry_failure"], {
            "id": failure_id, "status": status.value, "next_retry_at": next_retry_at,
            "error_class": error_class, "message": message, "traceback": traceback,
        })

    def close_failure(self, failure_id: int, resolution: Resolution | None, parked: int) -> None:
        self.conn.execute(Q["close_failure"], {
            "id": failure_id, "parked": parked, "resolution": resolution.value if resolution else None,
        })

    def lock_failure(self, failure_id: int) -> FailureStatus | None:
        row = self.conn.execute(Q["lock_failure"], (failure_id,)).fetchone()
        return None if row is None else FailureStatus(row[0])

    def add_parked(self, counts: dict[int, int]) -> None:
        for failure_id, n in counts.items():
            if n:
                self.conn.execute(Q["add_parked"], (n, failure_id), prepare=True)

    def fence(self, lease: Lease) -> None:
        row = self.conn.execute(Q["fence"], (lease.projection, lease.worker_id, lease.epoch)).fetchone()
        if row is None:
            raise LeaseLost(
                f"projection {lease.projection!r} is no longer held under epoch {lease.epoch}",
                projection=lease.projection,
            )

    # -- outside a batch ------------------------------------------------------------------

    def blocking_failures(self, name: str) -> list[FailureRecord]:
        return [failure_from_row(r) for r in self._fetch(Q["blocking_failures"], (name,))]

    def read_events(self, positions: list[int]) -> list[RecordedEvent]:
        return [RecordedEvent(*r) for r in self._fetch(Q["read_at"], (positions,))]

    def read_stream_range(self, stream_id: str, after: int, upto: int) -> list[RecordedEvent]:
        return [RecordedEvent(*r) for r in self._fetch(Q["read_stream_range"], (stream_id, after, upto))]

    @contextlib.contextmanager
    def read_snapshot(self) -> Iterator[Transaction]:
        with translate_errors(), self.conn.transaction():
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield PostgresTransaction(self.conn)

    @staticmethod
    def _types_param(types: Sequence[str]) -> Any:
        return list(types)

    _failure = staticmethod(failure_from_row)

    def breaker(self, name: str) -> BreakerState:
        rows = self._fetch(Q["breaker"], (name,))
        if not rows:
            return BreakerState("closed", 0, None, None)
        return BreakerState(*rows[0])

    def set_breaker(self, name: str, state: str, failures: int, reason: str | None) -> None:
        with translate_errors():
            self.conn.execute(Q["set_breaker"], {
                "state": state, "failures": failures, "reason": reason, "name": name})

    def control(self, name: str) -> ProjectionControl:
        rows = self._fetch(Q["control"], (name,))
        if not rows:
            return ProjectionControl(paused=False)
        paused, request, position, seq, streams = rows[0]
        return ProjectionControl(bool(paused), request, position, int(seq), tuple(streams or ()))

    def finish_request(self, name: str, seq: int, position: int, reset: bool) -> None:
        resolution = (Resolution.RESET if reset else Resolution.REPLAY).value
        self.conn.execute(Q["finish_request"], {"reset": reset, "name": name, "seq": seq})
        self.conn.execute(Q["close_rewound_failures"], {
            "resolution": resolution, "name": name, "position": position})

    def check_late_arrivals(self, name: str) -> int:
        rows = self._fetch(Q["check_late_arrivals"], (name,))
        missing = int(rows[0][0]) if rows else 0
        with translate_errors():
            self.conn.execute(Q["record_verification"], (missing, name))
        return missing

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.conn.close()
