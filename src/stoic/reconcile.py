"""Reconciliation: prove a read model matches its events.

A projection that implements ``expected_state(stream_id, events)`` (the
entity's state folded from its stream) and ``actual_state(stream_id, tx)``
(the state its read model holds) can be checked stream by stream. Each chunk
of streams is read in one consistent snapshot — checkpoint, events, failures
and read model together — so a worker applying events meanwhile never shows
up as a false mismatch. Events the projection never applied on purpose (a
skipped failure; a parked stream's events from its failing event on) are left
out of the fold, so parking is not reported as drift.

Global checks (``checks(snapshot)``, e.g. "the sum of balances equals deposits
minus withdrawals") run in a snapshot too.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stoic.errors import ConfigurationError
from stoic.events import RecordedEvent
from stoic.projection import Projection, segment_of
from stoic.store import OPEN_STATUSES, FailureRecord, FailureStatus, StoreSession, Transaction

CHUNK = 200  #: streams read per snapshot: short read transactions, few round trips
MAX_REPORTED = 1000  #: mismatches kept in a report (the count is always exact)


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One field of one stream's read-model state that differs from the fold."""

    stream_id: str
    field: str  #: the differing field, or ``<row>`` when one side has no state at all
    expected: Any
    actual: Any


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of a projection's global check."""

    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class ReconcileReport:
    """What a reconciliation found: mismatches, a summary, and global checks."""

    projection: str
    position: int  #: the checkpoint the last snapshot saw
    checked: int  #: streams compared
    matched: int
    mismatched_streams: tuple[str, ...]
    mismatches: tuple[Mismatch, ...]  #: at most MAX_REPORTED
    parked: tuple[str, ...] = ()  #: streams compared only up to their open failure
    checks: tuple[CheckResult, ...] = ()
    duration: float = 0.0
    repair_requested: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.mismatched_streams and all(c.ok for c in self.checks)


class Snapshot:
    """What ``checks()`` may read: the read model (``execute``) and the events up
    to the checkpoint, all as of one moment."""

    def __init__(self, session: StoreSession, tx: Transaction, name: str, segments: int | None = None) -> None:
        self._session, self.tx, self.name = session, tx, name
        self._segments = [session.checkpoint(f"{name}#{i}") for i in range(segments)] if segments else None
        self.position = max(self._segments) if self._segments else session.checkpoint(name)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.tx.execute(sql, params)

    def events(self, batch: int = 1000) -> Iterable[RecordedEvent]:
        """Every event up to the checkpoint, in order."""
        after = 0
        while after < self.position:
            chunk = [e for e in self._session.read_all(after, batch) if e.position <= self.position]
            if not chunk:
                return
            if self._segments is None:
                yield from chunk
            else:  # each stream up to its own segment's checkpoint
                count = len(self._segments)
                yield from (e for e in chunk if e.position <= self._segments[segment_of(e.stream_id, count)])
            after = chunk[-1].position


def applied_events(events: Iterable[RecordedEvent], failures: Iterable[FailureRecord]) -> list[RecordedEvent]:
    """The events of a stream the projection has applied: without skipped ones,
    and without anything from an open (parking) failure on."""
    skipped = {f.position for f in failures if f.status is FailureStatus.SKIPPED}
    blocked_from = min((f.position for f in failures if f.status in OPEN_STATUSES and f.blocking), default=None)
    return [e for e in events
            if e.position not in skipped and (blocked_from is None or e.position < blocked_from)]


def reconcilable(projection: Projection) -> bool:
    cls = type(projection)
    return cls.expected_state is not Projection.expected_state and cls.actual_state is not Projection.actual_state


def compare(stream_id: str, expected: dict[str, Any] | None, actual: dict[str, Any] | None) -> list[Mismatch]:
    """Field-by-field differences (numbers compared by value: 5 == 5.0)."""
    if expected is None and actual is None:
        return []
    if expected is None or actual is None:
        return [Mismatch(stream_id, "<row>", expected, actual)]
    return [Mismatch(stream_id, key, expected.get(key), actual.get(key))
            for key in sorted(set(expected) | set(actual)) if expected.get(key) != actual.get(key)]


class Reconciler:
    """Compares one projection's read model with the fold of its events."""

    def __init__(self, session: StoreSession, projection: Projection) -> None:
        if not reconcilable(projection):
            raise ConfigurationError(
                f"projection {projection.name!r} cannot be reconciled: implement expected_state() and "
                "actual_state()")
        self.session, self.projection, self.name = session, projection, projection.name
        handled = projection.handled_types()
        self.types: list[str] | None = None if "*" in handled else sorted(handled)
        self.segments = session.segment_count(projection.name) if projection.segment is None else None

    def _row(self, stream_id: str) -> str:
        """The checkpoint row that covers a stream (its segment's, when segmented)."""
        return f"{self.name}#{segment_of(stream_id, self.segments)}" if self.segments else self.name

    def _checkpoint(self) -> int:
        """The highest checkpoint over the projection's rows (for listing streams)."""
        if not self.segments:
            return self.session.checkpoint(self.name)
        return max(self.session.checkpoint(f"{self.name}#{i}") for i in range(self.segments))

    def run(self, stream_ids: Sequence[str] | None = None, checks: bool = True) -> ReconcileReport:
        """Checks the given streams (all of the projection's when None) and, when
        ``checks``, the projection's global checks."""
        started = time.monotonic()
        mismatches: list[Mismatch] = []
        bad: list[str] = []
        parked: list[str] = []
        checked = position = 0
        for chunk in self._chunks(stream_ids):
            position, found, chunk_parked = self._compare_chunk(chunk)
            checked += len(chunk)
            parked.extend(chunk_parked)
            for stream_id, stream_mismatches in found.items():
                bad.append(stream_id)
                mismatches.extend(stream_mismatches[: max(0, MAX_REPORTED - len(mismatches))])
        results: list[CheckResult] = []
        if checks:
            with self.session.read_snapshot() as tx:
                snapshot = Snapshot(self.session, tx, self.name, self.segments)
                position = position or snapshot.position
                results = list(self.projection.checks(snapshot))
        return ReconcileReport(
            projection=self.name, position=position, checked=checked, matched=checked - len(bad),
            mismatched_streams=tuple(bad), mismatches=tuple(mismatches), parked=tuple(parked),
            checks=tuple(results), duration=time.monotonic() - started)

    def sample(self, size: int, rng: random.Random | None = None) -> list[str]:
        """Up to ``size`` distinct streams picked at random positions below the
        checkpoint (busier streams are picked more often)."""
        rng = rng or random.Random()
        position = self._checkpoint()
        found: dict[str, None] = {}
        for _ in range(size * 3):
            if position < 1 or len(found) >= size:
                break
            hit = self.session.stream_at(rng.randint(1, position))
            if hit is not None and (self.types is None or hit[1] in self.types) and self._mine(hit[0]):
                found[hit[0]] = None
        return list(found)

    def _mine(self, stream_id: str) -> bool:
        """On a segment's runner, only the segment's own streams are compared."""
        segment = self.projection.segment
        return segment is None or segment_of(stream_id, segment[1]) == segment[0]

    def _chunks(self, stream_ids: Sequence[str] | None) -> Iterable[list[str]]:
        if stream_ids is not None:
            unique = list(dict.fromkeys(stream_ids))
            for i in range(0, len(unique), CHUNK):
                yield unique[i:i + CHUNK]
            return
        upto = self._checkpoint()
        after = ""
        while True:
            page = self.session.stream_ids(upto, after, self.types, CHUNK)
            if not page:
                return
            mine = [stream for stream in page if self._mine(stream)]
            if mine:
                yield mine
            after = page[-1]

    def _compare_chunk(self, chunk: list[str]) -> tuple[int, dict[str, list[Mismatch]], list[str]]:
        found: dict[str, list[Mismatch]] = {}
        parked: list[str] = []
        with self.session.read_snapshot() as tx:
            position = self._checkpoint()
            for stream_id in chunk:
                row = self._row(stream_id)
                failures = self.session.stream_failures(row, stream_id)
                if any(f.status in OPEN_STATUSES and f.blocking for f in failures):
                    parked.append(stream_id)
                upto = self.session.checkpoint(row) if self.segments else position
                events = applied_events(self.session.read_stream_range(stream_id, 0, upto), failures)
                expected = self.projection.expected_state(stream_id, events)
                actual = self.projection.actual_state(stream_id, tx)
                differences = compare(stream_id, expected, actual)
                if differences:
                    found[stream_id] = differences
        return position, found, parked
