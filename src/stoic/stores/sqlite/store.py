"""SQLite event store: WAL mode, ``synchronous=FULL`` by default, one writer.

Invariant: every write transaction starts with ``BEGIN IMMEDIATE``, so writers
are serialised by SQLite's write lock and a position is assigned (max + 1)
by the only transaction that can commit next. Positions therefore follow commit
order with no gaps, and a reader can never skip an event.

An in-memory database (``sqlite://:memory:``) is one connection shared by all
threads behind a lock, because each ``:memory:`` connection is its own database.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

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
    first_mismatch,
    has_client_ids,
    load_migrations,
    load_queries,
    split_statements,
    stored_results,
    version_matches,
)

Q = load_queries("stoic.stores.sqlite")
MIGRATIONS = load_migrations("stoic.stores.sqlite")

BUSY_TIMEOUT_S = 10.0  #: how long a writer waits for SQLite's write lock, seconds
BUSY_SLICE_MS = 20  #: SQLite's own busy handler waits this long before we ask again, milliseconds
POLL_INTERVAL_S = 0.001  #: how often a waiting runner checks for commits by other processes, seconds
DEAD_WORKER_GRACE_S = 3600.0  #: expired worker rows are deleted after this long, seconds


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Maps sqlite3 errors to Stoic's error tree, most specific first."""
    try:
        yield
    except StoicError:
        raise
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_ERROR:
            raise  # an error in the SQL itself (no such table, syntax): the caller's, permanent
        message = str(exc)
        lowered = message.lower()
        if "interrupted" in lowered:
            raise OperationTimeout(f"SQLite statement interrupted (time limit): {message}") from exc
        if "locked" in lowered or "busy" in lowered:
            raise LockNotAvailable(f"SQLite: {message}") from exc
        if "readonly" in lowered or "read-only" in lowered:
            raise StoreUnavailable(f"SQLite database is read-only: {message}") from exc
        if "full" in lowered:
            raise StoreUnavailable(f"SQLite: disk is full: {message}") from exc
        raise StoreUnavailable(f"SQLite: {message}") from exc
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
            raise
        raise StoreUnavailable(f"SQLite: {exc}") from exc


def parse_sqlite_url(url: str) -> tuple[str, dict[str, str]]:
    """Returns the file path (or ``:memory:``) and query options of a sqlite URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigurationError(f"not a sqlite URL: {url!r}", url=url)
    options = dict(parse_qsl(parts.query))
    if parts.netloc == ":memory:" or parts.path in ("/:memory:", ":memory:"):
        return ":memory:", options
    if parts.netloc:
        raise ConfigurationError(
            f"sqlite URL {url!r} has a host; use sqlite:///relative/path or sqlite:////absolute/path",
            url=url,
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise ConfigurationError(f"sqlite URL {url!r} names no file", url=url)
    return path, options


class SQLiteTransaction:
    """The handle a handler writes through: the batch's own connection."""

    __slots__ = ("connection", "dialect", "execute", "executemany")

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.execute = connection.execute
        self.executemany = connection.executemany
        self.dialect = "sqlite"


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC)


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def failure_from_row(row: Sequence[Any]) -> FailureRecord:
    """Builds a FailureRecord from a ``SELECT * FROM stoic_failures`` row."""
    values = list(row)
    for i in (11, 12, 13, 21):
        values[i] = _ts(values[i])
    values[14] = FailureStatus(values[14])
    values[15] = None if values[15] is None else Resolution(values[15])
    values[18], values[19] = bool(values[18]), bool(values[19])
    return FailureRecord(*values)


class SQLiteStore(StoreBase):
    """The event store on one SQLite file (or in memory).

    Parameters
    ----------
    url:
        ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite://:memory:``;
        query options ``synchronous=full|normal`` and ``max_event_bytes=N``.
    synchronous:
        ``"full"`` (default: an append that returned survives power loss) or
        ``"normal"`` (faster; the last commits may be lost on power loss, never
        corrupted). See docs/guarantees.md.
    """

    Q = Q
    expected_schema_version = len(MIGRATIONS)  #: the schema this version of Stoic migrates to
    dialect = "sqlite"

    def __init__(
        self,
        url: str,
        *,
        max_event_bytes: int | None = None,
        synchronous: str | None = None,
        busy_timeout: float = BUSY_TIMEOUT_S,
        poll_interval: float = POLL_INTERVAL_S,
        create: bool = True,
    ) -> None:
        self.url = url
        self.path, options = parse_sqlite_url(url)
        self.max_event_bytes = _positive_int("max_event_bytes", max_event_bytes or options.get(
            "max_event_bytes", MAX_EVENT_BYTES))
        self.synchronous = (synchronous or options.get("synchronous", "full")).upper()
        if self.synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ConfigurationError(
                f"synchronous must be full, normal or extra, got {self.synchronous.lower()!r}"
            )
        self.busy_timeout = busy_timeout
        try:
            self.poll_interval = float(options.get("poll_interval", poll_interval))
        except ValueError:
            raise ConfigurationError(f"poll_interval must be a number of seconds in {url!r}") from None
        self.memory = self.path == ":memory:"
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._shared: sqlite3.Connection | None = None
        # One connection for :memory:, so every user of it must take this lock.
        self._memory_lock = threading.RLock()
        self._head_cond = threading.Condition()
        self._known_head = 0
        self._poller: threading.Thread | None = None
        self._closed = False
        if not self.memory:
            directory = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(directory):
                raise ConfigurationError(f"directory {directory!r} of the SQLite file does not exist")
            if not create and not os.path.exists(self.path):
                # Operator commands must not create an empty database from a mistyped path.
                raise ConfigurationError(f"no SQLite database at {os.path.abspath(self.path)!r}", url=url)
        self._migrate()

    # -- connections -------------------------------------------------------------

    def _new_connection(self) -> sqlite3.Connection:
        with translate_errors():
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self.busy_timeout,
                cached_statements=256,
            )
            if not self.memory:
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            # SQLite's busy handler backs off to 100 ms sleeps, so a writer that commits
            # back to back starves the others. Wait in short slices and ask again
            # (see write_transaction) instead.
            conn.execute(f"PRAGMA busy_timeout = {min(BUSY_SLICE_MS, int(self.busy_timeout * 1000))}")
            conn.execute("PRAGMA cache_size = -65536")
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        """Returns this thread's connection (the shared one for :memory:)."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        if self.memory:
            if self._shared is None:
                self._shared = self._new_connection()
            return self._shared
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._new_connection()
        return conn

    def guard(self) -> contextlib.AbstractContextManager[Any]:
        """Serialises use of the shared in-memory connection; a no-op for files."""
        return self._memory_lock if self.memory else contextlib.nullcontext()

    @contextlib.contextmanager
    def write_transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
        try:
            with self.guard(), translate_errors():
                self._begin_immediate(conn)
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except StoreUnavailable:
            self._forget_connection(conn)
            raise

    def _forget_connection(self, conn: sqlite3.Connection) -> None:
        """Drops this thread's connection after a store error (read-only file, I/O error,
        full disk), so that the next call opens a fresh one: SQLite opens a file it may
        not write read-only, and such a connection stays read-only after the file is
        writable again. (Runner sessions are replaced by their runner.)"""
        if self.memory or getattr(self._local, "conn", None) is not conn:
            return
        self._local.conn = None
        with self._connections_lock:
            if conn in self._connections:
                self._connections.remove(conn)
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        """Takes the write lock, asking again every slice until ``busy_timeout``."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                message = str(exc).lower()
                if ("locked" not in message and "busy" not in message) or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0, 0.001))

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self.guard(), translate_errors():
            return self._conn().execute(sql, params).fetchall()

    def _migrate(self) -> None:
        conn = self._conn()
        with self.guard(), translate_errors():
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'stoic_schema_migrations'").fetchone()
            if exists and conn.execute(Q["schema_version"]).fetchone()[0] == len(MIGRATIONS):
                return  # current: no write lock needed (operator commands must not wait for writers)
        with self.write_transaction(conn):
            conn.execute(
                "CREATE TABLE IF NOT EXISTS stoic_schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            current = conn.execute(Q["schema_version"]).fetchone()[0]
            if current > len(MIGRATIONS):
                raise SchemaError(
                    f"database schema version {current} is newer than this Stoic "
                    f"(knows {len(MIGRATIONS)}); upgrade Stoic",
                    current=current,
                )
            for migration in MIGRATIONS[current:]:
                for statement in split_statements(migration.sql):
                    conn.execute(statement)
                conn.execute(Q["record_migration"], (migration.version, migration.name, time.time()))

    def schema_version(self) -> int:
        """Returns the highest migration applied to this database."""
        return int(self._read(Q["schema_version"])[0][0])

    # -- appending ----------------------------------------------------------------

    def _append(self, prepared: list[PreparedAppend]) -> list[AppendResult]:
        conn = self._conn()
        mismatch = None
        try:
            with self.write_transaction(conn):
                head = conn.execute(Q["head"]).fetchone()[0]
                now = time.time()
                rows: list[tuple[Any, ...]] = []
                results: list[AppendResult] = []
                for item in prepared:
                    current = conn.execute(Q["stream_version"], (item.stream_id,)).fetchone()[0]
                    if not version_matches(item.expected, current):
                        mismatch = first_mismatch([item], {item.stream_id: current})
                        raise mismatch  # type: ignore[misc]
                    positions = range(head + 1, head + 1 + len(item.events))
                    for offset, event in enumerate(item.events):
                        rows.append(
                            (head + 1 + offset, item.stream_id, current + 1 + offset,
                             event.event_id, event.type, event.data, event.metadata, now)
                        )
                    head += len(item.events)
                    results.append(AppendResult(item.stream_id, current + len(item.events), tuple(positions)))
                conn.executemany(Q["insert_event"], rows)
        except sqlite3.IntegrityError as exc:
            replay = self._stored_results(prepared)
            if replay is not None:
                return replay
            raise DuplicateEventId(f"an event id of this append is already stored: {exc}") from exc
        except StoicError as exc:
            if exc is mismatch and has_client_ids(prepared):
                replay = self._stored_results(prepared)
                if replay is not None:
                    return replay
            raise
        self._announce(head)
        return results

    def _stored_results(self, prepared: list[PreparedAppend]) -> list[AppendResult] | None:
        ids = [e.event_id for item in prepared for e in item.events]
        rows = self._read(Q["events_by_id"], (json.dumps(ids),))
        versions = {item.stream_id: self.stream_version(item.stream_id) for item in prepared}
        return stored_results(prepared, {row[0]: tuple(row) for row in rows}, versions)  # type: ignore[misc]

    # -- reading ------------------------------------------------------------------

    def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        """Returns a stream's events from a version on."""
        validate_stream_id(stream_id, where="read_stream")
        check_read_args(from_version, limit if limit is not None else 1)
        rows = self._read(Q["read_stream"], (stream_id, from_version, -1 if limit is None else limit))
        return [RecordedEvent(*row) for row in rows]

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Runs one statement (``?`` placeholders) and returns its rows."""
        with self.guard(), translate_errors():
            conn = self._conn()
            rows = conn.execute(sql, params).fetchall()
            if conn.in_transaction:
                conn.execute("COMMIT")
            return rows

    # -- waiting for appends ----------------------------------------------------

    def wait_for_append(self, after: int, timeout: float) -> bool:
        """Blocks until the head may be past ``after``: at once for appends in this
        process, within ``poll_interval`` for appends by other processes."""
        if self._poller is None:
            self._start_poller()
            return True
        deadline = time.monotonic() + timeout
        with self._head_cond:
            while self._known_head <= after:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return False
                self._head_cond.wait(remaining)
        return True

    def _start_poller(self) -> None:
        with self._head_cond:
            if self._poller is not None:
                return
            self._poller = threading.Thread(target=self._poll, name="stoic-sqlite-poller", daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        """Watches for commits by other connections (PRAGMA data_version is cheap)."""
        conn = None if self.memory else self._new_connection()
        last_version = None
        while not self._closed:
            try:
                if conn is not None:
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                    if version != last_version:
                        last_version = version
                        self._announce(conn.execute(Q["head"]).fetchone()[0])
            except sqlite3.Error:
                pass  # the next round tries again; waiters time out meanwhile
            time.sleep(self.poll_interval if conn is not None else 0.5)

    # -- projections and workers ------------------------------------------------------

    def open_session(self) -> SQLiteSession:
        """Opens a dedicated connection for one projection runner."""
        return SQLiteSession(self)

    def register_worker(self, worker_id: str, hostname: str, pid: int, ttl: float) -> None:
        """Records a worker as alive for ``ttl`` seconds."""
        now = time.time()
        conn = self._conn()
        with self.write_transaction(conn):
            conn.execute(Q["forget_dead_workers"], (now - DEAD_WORKER_GRACE_S,))
            conn.execute(Q["register_worker"], (worker_id, hostname, pid, now, now, now + ttl))

    def heartbeat(self, worker_id: str, ttl: float) -> bool:
        """Extends a worker's life; False if its row is gone."""
        now = time.time()
        conn = self._conn()
        with self.write_transaction(conn):
            return conn.execute(Q["heartbeat"], (now, now + ttl, worker_id)).rowcount == 1

    def unregister_worker(self, worker_id: str) -> None:
        """Removes a worker and frees the projections it held."""
        conn = self._conn()
        with self.write_transaction(conn):
            conn.execute(Q["release_worker_projections"], (worker_id,))
            conn.execute(Q["unregister_worker"], (worker_id,))

    def workers(self) -> list[WorkerInfo]:
        """Returns every registered worker, alive or not."""
        now = time.time()
        return [
            WorkerInfo(w, h, p, _ts(s), _ts(hb), _ts(e), e > now)  # type: ignore[arg-type]
            for (w, h, p, s, hb, e) in self._read(Q["workers"])
        ]

    def projections(self) -> list[ProjectionState]:
        """Returns the state of every known projection."""
        return [
            ProjectionState(n, p, c, h, bool(a), e, _ts(u), s)
            for (n, p, c, h, a, e, u, s) in self._read(Q["projections"], (time.time(),))
        ]

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
        conn = self._conn()
        now = time.time()
        with self.write_transaction(conn):
            row = conn.execute(Q["transition_failure"], {
                "id": failure_id, "status": change.status.value,
                "resolution": change.resolution.value if change.resolution else None,
                "actor": change.actor, "note": change.note,
                "retry_requested": int(change.retry_requested), "retry_now": int(change.retry_now),
                "reset_attempts": int(change.reset_attempts), "now": now,
                "allowed": json.dumps([a.value for a in change.allowed]),
            }).fetchone()
            outcome = audit.outcome if row is not None else "refused"
            self._insert_audit(conn, AuditRecord(
                audit.actor, audit.action, audit.target, audit.reason, outcome, audit.details), now)
        return failure_from_row(row) if row is not None else None

    @staticmethod
    def _insert_audit(conn: sqlite3.Connection, entry: AuditRecord, now: float) -> None:
        conn.execute(Q["insert_audit"], (
            now, entry.actor, entry.action, entry.target, entry.reason, entry.outcome,
            json.dumps(entry.details) if entry.details is not None else None))

    def failure_counts(self) -> list[FailureCount]:
        """Returns failure counts by projection and status."""
        return [
            FailureCount(p, FailureStatus(st), int(n), int(b or 0), int(k or 0), h)
            for p, st, n, b, k, h in self._read(Q["failure_counts"])
        ]

    def record_audit(self, entry: AuditRecord) -> None:
        """Records an admin action."""
        conn = self._conn()
        with self.write_transaction(conn):
            self._insert_audit(conn, entry, time.time())

    def audit_log(self, limit: int = 100, offset: int = 0, action: str | None = None) -> list[AuditEntry]:
        """Returns admin actions, newest first."""
        check_read_args(offset, limit)
        rows = self._read(Q["audit_log"], {"limit": limit, "offset": offset, "action": action})
        return [
            AuditEntry(i, _ts(at), actor, act, target, reason, outcome,  # type: ignore[arg-type]
                       json.loads(details) if details else None)
            for i, at, actor, act, target, reason, outcome, details in rows
        ]

    def set_paused(self, name: str, paused: bool, actor: str | None, reason: str | None) -> bool:
        """Pauses or resumes a projection; False if it is unknown."""
        conn = self._conn()
        with self.write_transaction(conn):
            return conn.execute(Q["set_paused"], (
                time.time() if paused else None, actor if paused else None,
                reason if paused else None, name)).rowcount == 1

    def request_rewind(
        self, name: str, request: str, position: int, actor: str, reason: str | None,
        streams: Sequence[str] | None = None,
    ) -> int | None:
        """Records a reset or replay for the holder to carry out; None if unknown."""
        conn = self._conn()
        with self.write_transaction(conn):
            row = conn.execute(Q["request_rewind"], {
                "request": request, "position": position, "now": time.time(), "actor": actor,
                "streams": json.dumps(list(streams)) if streams is not None else None,
                "reason": reason, "name": name,
            }).fetchone()
        return None if row is None else int(row[0])

    def projection_details(self) -> list[ProjectionDetails]:
        """Returns everything known about every projection."""
        details = []
        for row in self._read(Q["projection_details"], {"now": time.time()}):
            values = list(row)
            values[4] = bool(values[4])
            for i in (6, 7, 8, 11, 13, 16, 20):
                values[i] = _ts(values[i])
            values[23], values[24] = bool(values[23]), bool(values[24])
            values[25] = _ts(values[25])
            values[28] = tuple(json.loads(values[28])) if values[28] else ()
            values[32] = _ts(values[32])
            details.append(ProjectionDetails(*values))
        return details

    def oldest_unprocessed(self, position: int) -> datetime | None:
        """When the first event after ``position`` was recorded (None: none yet)."""
        rows = self._read(Q["oldest_unprocessed"], (position,))
        return _ts(rows[0][0]) if rows else None

    def count_upto(self, position: int) -> int:
        """How many events are stored at or below ``position``."""
        return int(self._read(Q["count_upto"], (position,))[0][0])

    def record_verification(self, name: str, missing: int) -> None:
        """Stores the result of a projection's late-arrival self-check."""
        conn = self._conn()
        with self.write_transaction(conn):
            conn.execute(Q["record_verification"], (time.time(), missing, name))

    def record_drift(self, name: str, checked: int, drifted: Sequence[str]) -> None:
        """Stores the result of a continuous reconciliation (up to 100 stream ids)."""
        conn = self._conn()
        with self.write_transaction(conn):
            conn.execute(Q["record_drift"], (time.time(), checked, len(drifted), json.dumps(list(drifted)[:100]), name))

    def now(self) -> datetime:
        """The store's clock."""
        return datetime.now(tz=UTC)

    def close(self) -> None:
        """Closes every connection this store opened."""
        self._closed = True
        with self._head_cond:
            self._head_cond.notify_all()
        if self._poller is not None:
            self._poller.join(timeout=2)
        with self._connections_lock:
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.url!r})"


class SQLiteSession(SessionVersioning, SessionSegments):
    """One projection runner's connection to a SQLite store."""

    Q = Q

    def _write(self) -> contextlib.AbstractContextManager[Any]:
        return self.store.write_transaction(self.conn)

    def _handle(self) -> Transaction:
        return SQLiteTransaction(self.conn)

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.conn = store._conn() if store.memory else store._new_connection()

    def ensure_projection(
        self, name: str, idempotent: bool = False, resettable: bool = False, segments: int | None = None
    ) -> None:
        with self.store.write_transaction(self.conn):
            self.conn.execute(Q["ensure_projection"], (name, time.time(), int(idempotent), int(resettable), segments))

    def run_setup(self, name: str, setup: Callable[[Transaction], None]) -> None:
        with self.store.write_transaction(self.conn):
            setup(SQLiteTransaction(self.conn))

    def claim(self, name: str, worker_id: str) -> Lease | None:
        with self.store.write_transaction(self.conn):
            row = self.conn.execute(
                Q["claim_projection"], {"worker": worker_id, "now": time.time(), "name": name}
            ).fetchone()
        return None if row is None else Lease(name, worker_id, row[0], row[1])

    def release(self, lease: Lease) -> None:
        with self.store.write_transaction(self.conn):
            self.conn.execute(Q["release_projection"], (lease.projection, lease.worker_id, lease.epoch))

    def read_all(self, after: int, limit: int) -> list[RecordedEvent]:
        with self.store.guard(), translate_errors():
            rows = self.conn.execute(Q["read_all"], (after, limit)).fetchall()
        return [RecordedEvent(*row) for row in rows]

    def apply_batch(
        self, lease: Lease, start: int, end: int, count: int, apply: BatchApply,
        *, pipeline: bool = True, timeout: float | None = None,
    ) -> int:
        with Watchdog(self.conn.interrupt, timeout) as watchdog, self.store.write_transaction(self.conn):
            reached = apply(SQLiteTransaction(self.conn))
            if reached is not None:
                end, count = reached
            watchdog.check()
            moved = self.conn.execute(
                Q["advance_checkpoint"],
                {"end": end, "count": count, "now": time.time(), "name": lease.projection,
                 "start": start, "worker": lease.worker_id, "epoch": lease.epoch},
            ).rowcount
            if moved != 1:
                raise LeaseLost(
                    f"projection {lease.projection!r}: checkpoint is no longer at {start} under "
                    f"epoch {lease.epoch}; batch rolled back",
                    projection=lease.projection,
                )
            # A committed batch proves the worker alive: on SQLite the heartbeat
            # thread may be queued behind other writers, so renew the lease here too.
            self.conn.execute(Q["batch_heartbeat"], (time.time(), lease.worker_id))
        return end

    def checkpoint(self, name: str) -> int:
        with self.store.guard(), translate_errors():
            row = self.conn.execute(Q["checkpoint"], (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def _fetch(self, query: str, params: Sequence[Any] | dict[str, Any]) -> list[Any]:
        with self.store.guard(), translate_errors():
            return self.conn.execute(query, params).fetchall()

    # -- inside a batch transaction ------------------------------------------------------

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        self.conn.execute("SAVEPOINT stoic_event")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK TO stoic_event")
            self.conn.execute("RELEASE stoic_event")
            raise
        self.conn.execute("RELEASE stoic_event")

    def insert_failure(self, failure: NewFailure) -> int:
        now = time.time()
        row = self.conn.execute(Q["insert_failure"], {
            "projection": failure.projection, "position": failure.position,
            "event_id": failure.event_id, "stream_id": failure.stream_id,
            "event_type": failure.event_type, "policy": failure.policy,
            "error_class": failure.error_class, "message": failure.message,
            "traceback": failure.traceback, "now": now,
            "next_retry_at": _epoch(failure.next_retry_at), "status": failure.status.value,
            "resolution": failure.resolution.value if failure.resolution else None,
            "blocking": int(failure.blocking),
        }).fetchone()
        return int(row[0])

    def record_retry_failure(
        self, failure_id: int, status: FailureStatus, next_retry_at: datetime | None,
        error_class: str, message: str, traceback: str,
    ) -> None:
        self.conn.execute(Q["record_retry_failure"], {
            "id": failure_id, "now": time.time(), "status": status.value,
            "next_retry_at": _epoch(next_retry_at), "error_class": error_class,
            "message": message, "traceback": traceback,
        })

    def close_failure(self, failure_id: int, resolution: Resolution | None, parked: int) -> None:
        self.conn.execute(Q["close_failure"], {
            "id": failure_id, "now": time.time(), "parked": parked,
            "resolution": resolution.value if resolution else None,
        })

    def lock_failure(self, failure_id: int) -> FailureStatus | None:
        row = self.conn.execute(Q["lock_failure"], (failure_id,)).fetchone()
        return None if row is None else FailureStatus(row[0])

    def add_parked(self, counts: dict[int, int]) -> None:
        now = time.time()
        self.conn.executemany(Q["add_parked"], [(n, now, fid) for fid, n in counts.items() if n])

    def fence(self, lease: Lease) -> None:
        moved = self.conn.execute(Q["fence"], (lease.projection, lease.worker_id, lease.epoch)).rowcount
        if moved != 1:
            raise LeaseLost(
                f"projection {lease.projection!r} is no longer held under epoch {lease.epoch}",
                projection=lease.projection,
            )

    # -- outside a batch ------------------------------------------------------------------

    def blocking_failures(self, name: str) -> list[FailureRecord]:
        return [failure_from_row(r) for r in self._fetch(Q["blocking_failures"], (name,))]

    def read_events(self, positions: list[int]) -> list[RecordedEvent]:
        return [RecordedEvent(*r) for r in self._fetch(Q["read_at"], (json.dumps(positions),))]

    @contextlib.contextmanager
    def read_snapshot(self) -> Iterator[Transaction]:
        with self.store.guard(), translate_errors():
            self.conn.execute("BEGIN")
            try:
                yield SQLiteTransaction(self.conn)
            finally:
                self.conn.execute("ROLLBACK")

    @staticmethod
    def _types_param(types: Sequence[str]) -> Any:
        return json.dumps(list(types))

    _failure = staticmethod(failure_from_row)

    def read_stream_range(self, stream_id: str, after: int, upto: int) -> list[RecordedEvent]:
        return [RecordedEvent(*r) for r in self._fetch(Q["read_stream_range"], (stream_id, after, upto))]

    def breaker(self, name: str) -> BreakerState:
        rows = self._fetch(Q["breaker"], (name,))
        if not rows:
            return BreakerState("closed", 0, None, None)
        state, failures, opened_at, reason = rows[0]
        return BreakerState(state, failures, _ts(opened_at), reason)

    def set_breaker(self, name: str, state: str, failures: int, reason: str | None) -> None:
        with self.store.write_transaction(self.conn):
            self.conn.execute(Q["set_breaker"], {
                "state": state, "failures": failures, "reason": reason, "now": time.time(), "name": name})

    def control(self, name: str) -> ProjectionControl:
        rows = self._fetch(Q["control"], (name,))
        if not rows:
            return ProjectionControl(paused=False)
        paused, request, position, seq, streams = rows[0]
        return ProjectionControl(bool(paused), request, position, int(seq),
                                 tuple(json.loads(streams)) if streams else ())

    def finish_request(self, name: str, seq: int, position: int, reset: bool) -> None:
        resolution = (Resolution.RESET if reset else Resolution.REPLAY).value
        self.conn.execute(Q["finish_request"], {"reset": int(reset), "name": name, "seq": seq})
        self.conn.execute(Q["close_rewound_failures"], {
            "resolution": resolution, "name": name, "position": position, "now": time.time()})

    def check_late_arrivals(self, name: str) -> int:
        rows = self._fetch(Q["check_late_arrivals"], (name,))
        missing = int(rows[0][0]) if rows else 0
        with self.store.write_transaction(self.conn):
            self.conn.execute(Q["record_verification"], (time.time(), missing, name))
        return missing

    def close(self) -> None:
        if not self.store.memory:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()

