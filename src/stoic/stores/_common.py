"""What both backends share: SQL files, migrations, append preparation and the
idempotent-append rule. Nothing here talks to a driver."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Self

from stoic.errors import (
    ConcurrencyError,
    ConfigurationError,
    DuplicateEventId,
    InvalidArgument,
    InvalidEvent,
    OperationTimeout,
    StoicError,
)
from stoic.events import (
    ANY,
    MAX_INT64,
    NO_STREAM,
    AppendResult,
    EncodedEvent,
    Expected,
    NewEvent,
    RecordedEvent,
    encode_events,
    validate_expected,
    validate_stream_id,
)
from stoic.metrics import APPENDED_EVENTS, APPENDS
from stoic.projection import segment_of
from stoic.store import AppendItem, FailureRecord, Lease, T, Transaction, Versioning

_NAME_LINE = re.compile(r"^--\s*name:\s*(\w+)\s*$")


def load_queries(package: str) -> dict[str, str]:
    """Parses a backend's ``queries.sql`` into ``{name: sql}``.

    Each block starts with ``-- name: NAME`` followed by a one-line ``--``
    description; the SQL runs until the next name line.
    """
    text = resources.files(package).joinpath("queries.sql").read_text()
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        match = _NAME_LINE.match(line)
        if match:
            if name:
                queries[name] = _finish(lines)
            name, lines = match.group(1), []
        elif name and not (line.startswith("--") and not lines):
            lines.append(line)
    if name:
        queries[name] = _finish(lines)
    return queries


def _finish(lines: list[str]) -> str:
    return "\n".join(lines).strip().rstrip(";")


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema migration file."""

    version: int
    name: str
    sql: str


def load_migrations(package: str) -> list[Migration]:
    """Returns a backend's migrations (``migrations/NNNN_name.sql``) in order."""
    folder = resources.files(package).joinpath("migrations")
    migrations = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            migrations.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    migrations.sort(key=lambda m: m.version)
    if [m.version for m in migrations] != list(range(1, len(migrations) + 1)):
        raise RuntimeError(f"migrations of {package} are not numbered 1..N")
    return migrations


def split_statements(sql: str) -> list[str]:
    """Splits a migration file on semicolons at line ends (our files put one there)."""
    statements, current = [], []
    for line in sql.splitlines():
        if line.strip().startswith("--") and not current:
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip())
            current = []
    tail = "\n".join(current).strip()
    if tail:
        statements.append(tail)
    return [s for s in statements if s]


@dataclass(frozen=True, slots=True)
class PreparedAppend:
    """One stream's share of an append, validated and encoded."""

    stream_id: str
    expected: Expected
    events: list[EncodedEvent]


def prepare_append(items: Sequence[Any], max_event_bytes: int) -> list[PreparedAppend]:
    """Validates every stream and event of an append before anything is written."""
    if not isinstance(items, list | tuple):
        raise InvalidEvent("append_many: items must be a list of (stream_id, events, expected_version)")
    prepared: list[PreparedAppend] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, tuple | list) or len(item) != 3:
            raise InvalidEvent(
                f"append_many: item {index} must be (stream_id, events, expected_version), got {item!r}"
            )
        stream_id, events, expected = item
        stream_id = validate_stream_id(stream_id, where=f"append_many item {index}")
        if stream_id in seen:
            raise InvalidEvent(
                f"append_many: stream {stream_id!r} appears twice; put all its events in one item",
                stream_id=stream_id,
            )
        seen.add(stream_id)
        expected = validate_expected(expected, where=f"stream {stream_id!r}")
        prepared.append(PreparedAppend(stream_id, expected, encode_events(stream_id, events, max_event_bytes)))
    return prepared


def expected_as_int(expected: Expected) -> int:
    """Encodes an expected version for SQL: -1 for ANY, 0 for NO_STREAM."""
    if expected is ANY:
        return -1
    if expected is NO_STREAM:
        return 0
    return int(expected)  # type: ignore[arg-type]


def version_matches(expected: Expected, actual: int) -> bool:
    return expected is ANY or expected_as_int(expected) == actual


def describe_expected(expected: Expected) -> object:
    return "NO_STREAM" if expected is NO_STREAM else "ANY" if expected is ANY else expected


def first_mismatch(
    prepared: Sequence[PreparedAppend], versions: dict[str, int]
) -> ConcurrencyError | None:
    """Returns the error for the first stream whose version is not the expected one."""
    for item in prepared:
        actual = versions.get(item.stream_id, 0)
        if not version_matches(item.expected, actual):
            return ConcurrencyError(item.stream_id, describe_expected(item.expected), actual)
    return None


StoredRow = tuple[str, str, int, int]  # event_id, stream_id, version, position


def stored_results(
    prepared: Sequence[PreparedAppend], stored: dict[str, StoredRow], versions: dict[str, int]
) -> list[AppendResult] | None:
    """Returns the stored results if every event of this append is already stored,
    in the same streams and order (a retried append); None if none of them is.

    Raises DuplicateEventId when only some are, or they belong elsewhere: that
    is not a retry but a conflict.
    """
    ids = [e.event_id for item in prepared for e in item.events]
    found = [i for i in ids if i in stored]
    if not found:
        return None
    results = []
    for item in prepared:
        if not item.events:
            results.append(AppendResult(item.stream_id, versions.get(item.stream_id, 0), ()))
            continue
        rows = [stored.get(e.event_id) for e in item.events]
        if any(r is None for r in rows) or any(
            r[1] != item.stream_id for r in rows if r is not None
        ):
            raise DuplicateEventId(
                f"stream {item.stream_id!r}: {len(found)} of {len(ids)} event ids are already "
                "stored, for other events; nothing was written",
                stream_id=item.stream_id,
                event_ids=found,
            )
        stored_versions = [r[2] for r in rows if r is not None]
        if stored_versions != list(range(stored_versions[0], stored_versions[0] + len(rows))):
            raise DuplicateEventId(
                f"stream {item.stream_id!r}: event ids are stored in a different order",
                stream_id=item.stream_id,
                event_ids=found,
            )
        positions = tuple(r[3] for r in rows if r is not None)
        results.append(AppendResult(item.stream_id, stored_versions[-1], positions))
    return results


def has_client_ids(prepared: Sequence[PreparedAppend]) -> bool:
    return any(e.client_supplied_id for item in prepared for e in item.events)


def check_read_args(position: object, limit: object) -> None:
    """Raises InvalidArgument unless position >= 0 and limit >= 1 are ints."""
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position <= MAX_INT64:
        raise InvalidArgument(f"position must be an int >= 0 (and < 2**63), got {position!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_INT64:
        raise InvalidArgument(f"limit must be an int >= 1 (and < 2**63), got {limit!r}")


class _Deadlines:
    """One daemon thread that fires every watchdog whose time limit passed, so
    that a batch does not pay for starting a timer thread of its own."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, Watchdog]] = {}
        self._ids = itertools.count()
        self._wake_at = float("inf")
        self._thread: threading.Thread | None = None

    def arm(self, watchdog: Watchdog, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self._cond:
            key = next(self._ids)
            self._armed[key] = (deadline, watchdog)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="stoic-watchdog", daemon=True)
                self._thread.start()
            elif deadline < self._wake_at:
                self._cond.notify()
        return key

    def disarm(self, key: int) -> None:
        with self._cond:
            self._armed.pop(key, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for key in [k for k, (deadline, _) in self._armed.items() if deadline <= now]:
                    # Each firing gets its own thread, as with a timer per batch: cancel() may block.
                    watchdog = self._armed.pop(key)[1]
                    threading.Thread(target=watchdog._fire, name="stoic-watchdog-fire", daemon=True).start()
                self._wake_at = min((deadline for deadline, _ in self._armed.values()), default=float("inf"))
                self._cond.wait(self._wake_at - now if self._armed else None)


_DEADLINES = _Deadlines()


class Watchdog:
    """Cancels a batch that runs past its time limit: the running statement is
    cancelled at once, and :meth:`check` fails the batch if the limit passed
    while Python code ran."""

    def __init__(self, cancel: Callable[[], None], timeout: float | None) -> None:
        self.cancel, self.timeout = cancel, timeout
        self.fired = False
        self._key: int | None = None

    def __enter__(self) -> Watchdog:
        if self.timeout is not None:
            self._key = _DEADLINES.arm(self, self.timeout)
        return self

    def _fire(self) -> None:
        self.fired = True
        with contextlib.suppress(Exception):
            self.cancel()

    def check(self) -> None:
        if self.fired:
            raise OperationTimeout(f"batch ran past its time limit of {self.timeout} s; rolled back")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._key is not None:
            _DEADLINES.disarm(self._key)
        if self.fired and exc_type is not None and not isinstance(exc, StoicError):
            raise OperationTimeout(f"batch ran past its time limit of {self.timeout} s; rolled back") from (
                exc if isinstance(exc, BaseException) else None
            )


def _positive_int(name: str, value: object) -> int:
    """Parses a positive integer option; raises ConfigurationError naming it."""
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    return number


class StoreBase:
    """What both stores do the same way on top of their own ``_append``,
    ``_read`` and queries ``Q``: the public append and read calls and the
    in-process announcement of new events."""

    Q: dict[str, str]
    max_event_bytes: int
    _head_cond: threading.Condition
    _known_head: int

    def _append(self, prepared: list[PreparedAppend]) -> list[AppendResult]:
        raise NotImplementedError

    def _read(self, query: str, params: Any = ()) -> list[Any]:
        raise NotImplementedError

    def append(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: Expected = ANY
    ) -> AppendResult:
        """Appends events to one stream; see :meth:`stoic.store.Store.append`."""
        validate_stream_id(stream_id)
        return self._counted(self._append(prepare_append([(stream_id, events, expected_version)],
                                                         self.max_event_bytes)))[0]

    def append_many(self, items: Sequence[AppendItem]) -> list[AppendResult]:
        """Appends to several streams in one transaction: all or nothing."""
        return self._counted(self._append(prepare_append(items, self.max_event_bytes)))

    @staticmethod
    def _counted(results: list[AppendResult]) -> list[AppendResult]:
        APPENDS.inc()
        APPENDED_EVENTS.inc(sum(len(r.positions) for r in results))
        return results

    def iter_all(self, after: int = 0, batch_size: int = 1000) -> Iterator[RecordedEvent]:
        """Iterates over every committed event after a position."""
        while True:
            batch = self.read_all(after, batch_size)
            yield from batch
            if len(batch) < batch_size:
                return
            after = batch[-1].position

    def read_all(self, after: int = 0, limit: int = 500) -> list[RecordedEvent]:
        """Returns committed events after a global position, in global order."""
        check_read_args(after, limit)
        return [RecordedEvent(*row) for row in self._read(self.Q["read_all"], (after, limit))]

    def head(self) -> int:
        """Returns the last committed global position."""
        return int(self._read(self.Q["head"])[0][0])

    def stream_version(self, stream_id: str) -> int:
        """Returns a stream's current version (0 when it does not exist)."""
        return int(self._read(self.Q["stream_version"], (stream_id,))[0][0])

    def _announce(self, head: int) -> None:
        with self._head_cond:
            if head > self._known_head:
                self._known_head = head
            self._head_cond.notify_all()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def quote(identifier: str) -> str:
    """A table or view name for DDL; only plain identifiers are accepted."""
    if not IDENTIFIER.match(identifier):
        raise ConfigurationError(f"not a plain SQL identifier: {identifier!r}")
    return f'"{identifier}"'


class SessionVersioning:
    """The versioned-read-model calls of a session, the same on both backends:
    their SQL is in each backend's queries, the DDL is standard. A session
    provides ``Q``, ``conn``, ``fence``, ``_write()`` (a write transaction on
    its connection) and ``_handle()`` (the Transaction over it)."""

    Q: dict[str, str]
    conn: Any

    def fence(self, lease: Lease) -> None:
        raise NotImplementedError

    def _write(self) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def _handle(self) -> Transaction:
        raise NotImplementedError

    def _fetch(self, query: str, params: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    def _ts(self, value: Any) -> datetime | None:
        return value if value is None or isinstance(value, datetime) else datetime.fromtimestamp(value, UTC)

    def versioning(self, name: str) -> Versioning | None:
        rows = self._fetch(self.Q["versioning"], (name,))
        if not rows:
            return None
        values = list(rows[0])
        values[5] = self._ts(values[5])
        return Versioning(*values)

    def fenced(self, lease: Lease, work: Callable[[Transaction], T]) -> T:
        with self._write():
            self.fence(lease)
            return work(self._handle())

    def administer(self, work: Callable[[Transaction], T]) -> T:
        with self._write():
            return work(self._handle())

    def point_views(self, tx: Transaction, views: dict[str, str]) -> None:
        for logical, physical in views.items():
            kind = self.conn.execute(self.Q["relation_kind"], (logical,)).fetchone()
            if kind is not None and kind[0] == "table":
                tx.execute(f"ALTER TABLE {quote(logical)} RENAME TO {quote(logical + '_g0')}")
            elif kind is not None:
                tx.execute(f"DROP VIEW {quote(logical)}")
            tx.execute(f"CREATE VIEW {quote(logical)} AS SELECT * FROM {quote(physical)}")

    def drop_tables(self, tx: Transaction, tables: Sequence[str]) -> None:
        for table in tables:
            tx.execute(f"DROP TABLE IF EXISTS {quote(table)}")

    def set_version(self, tx: Transaction, name: str, version: int, generation: int) -> None:
        self.conn.execute(self.Q["set_version"], {"name": name, "version": version, "generation": generation})

    def restart_build(self, tx: Transaction, name: str, version: int, generation: int) -> None:
        self.conn.execute(self.Q["restart_build"], {"name": name, "version": version, "generation": generation})
        self.conn.execute(self.Q["delete_failures"], (name,))

    def switch_version(self, tx: Transaction, main: str, build: str) -> None:
        names = {"main": main, "build": build, "now": time.time()}
        self.conn.execute(self.Q["switch_version"], names)
        self.conn.execute(self.Q["supersede_failures"], names)
        self.conn.execute(self.Q["close_superseded_failures"], names)
        self.conn.execute(self.Q["adopt_failures"], names)
        self.conn.execute(self.Q["delete_projection"], (build,))

    def rollback_version(self, tx: Transaction, name: str) -> bool:
        return self.conn.execute(self.Q["rollback_version"], {"name": name, "now": time.time()}).rowcount == 1

    def abandon_build(self, tx: Transaction, build: str) -> None:
        self.conn.execute(self.Q["abandon_build"], (build,))

    def forget_previous(self, tx: Transaction, name: str) -> None:
        self.conn.execute(self.Q["forget_previous"], (name,))

    def record_build_note(self, name: str, note: str | None) -> None:
        self.conn.execute(self.Q["build_note"], (note, name))


class SessionSegments:
    """The segment and reconciliation reads of a session, the same on both backends
    (each provides ``_types_param`` for a list of types, ``_failure`` for a row)."""

    Q: dict[str, str]
    conn: Any

    @staticmethod
    def _types_param(types: Sequence[str]) -> Any:
        raise NotImplementedError

    @staticmethod
    def _failure(row: Any) -> FailureRecord:
        raise NotImplementedError

    def stream_ids(self, upto: int, after: str, types: Sequence[str] | None, limit: int) -> list[str]:
        rows = self._fetch(self.Q["stream_ids"], {
            "upto": upto, "after": after, "types": None if types is None else self._types_param(types),
            "limit": limit})
        return [r[0] for r in rows]

    def stream_at(self, position: int) -> tuple[str, str] | None:
        rows = self._fetch(self.Q["stream_at"], (position,))
        return (rows[0][0], rows[0][1]) if rows else None

    def stream_failures(self, name: str, stream_id: str) -> list[FailureRecord]:
        return [self._failure(r) for r in self._fetch(self.Q["list_failures"], {
            "projection": name, "status": None, "stream_id": stream_id, "limit": 10_000, "offset": 0})]

    def _write(self) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def _fetch(self, query: str, params: Any) -> list[Any]:
        raise NotImplementedError

    def segment_count(self, base: str) -> int | None:
        rows = self._fetch(self.Q["segment_count"], {"prefix": f"{base}#"})
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    def segment_rows(self, base: str) -> list[tuple[str, int, str | None, int | None, int]]:
        return [tuple(r) for r in self._fetch(self.Q["segment_rows"], {"prefix": f"{base}#"})]  # type: ignore[misc]

    def cancel_request(self, name: str) -> None:
        with self._write():
            self.conn.execute(self.Q["cancel_request"], (name,))

    def resegment(self, tx: Transaction, base: str, old: Sequence[str], count: int, position: int) -> None:
        moves = []
        for name in old:
            moves.extend((failure_id, stream_id) for failure_id, stream_id in
                         self.conn.execute(self.Q["failures_of"], (name,)).fetchall())
            self.conn.execute(self.Q["delete_projection"], (name,))
        def row(index: int) -> str:
            return base if count == 1 else f"{base}#{index}"

        for index in range(count):
            self.conn.execute(self.Q["insert_segment"], {
                "name": row(index), "segments": None if count == 1 else count, "position": position,
                "now": time.time()})
        for failure_id, stream_id in moves:
            self.conn.execute(self.Q["move_failure"], (row(segment_of(stream_id, count)), failure_id))
