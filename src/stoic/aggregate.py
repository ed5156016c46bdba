"""Aggregates: the write side that decides which events to append.

An :class:`Aggregate` is the state of one stream folded from its events. A
command method checks the current state, then calls :meth:`Aggregate.record`,
which applies the new event at once (so later checks in the same command see
it), runs :meth:`Aggregate.check_invariants`, and queues the event as pending.
A command that breaks a rule raises :class:`~stoic.errors.InvariantViolation`
and leaves the aggregate exactly as it was: nothing is queued, nothing is
written.

A :class:`Repository` loads aggregates from a store and saves their pending
events with ``expected_version`` set to the version it loaded, so two writers
deciding on the same stream never overwrite each other's decisions;
:meth:`Repository.execute` is the usual *load, decide, save, retry on
conflict* loop. :func:`save_all` saves several aggregates in one atomic
``append_many`` (a step of a process that touches two streams).

Event ids are derived from a command id (``uuid5``), so saving the same command
again after an unknown outcome (a lost connection) returns the stored result
instead of writing the events twice.
"""

from __future__ import annotations

import copy
import functools
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Generic, Self, TypeVar

from stoic.errors import (
    ConcurrencyError,
    ConfigurationError,
    InvalidArgument,
    InvariantViolation,
    LockNotAvailable,
    StoreUnavailable,
)
from stoic.events import NO_STREAM, AppendResult, Expected, NewEvent, RecordedEvent, validate_stream_id
from stoic.projection import marked_methods
from stoic.store import Store

F = TypeVar("F", bound=Callable[..., Any])
A = TypeVar("A", bound="Aggregate")
R = TypeVar("R")

Event = RecordedEvent | NewEvent
"""What an applier receives: a stored event (loading) or a new one (recording).
Both have ``type``, ``data`` and ``metadata``."""

DEFAULT_MAX_ATTEMPTS = 10  #: attempts of :meth:`Repository.execute` before a conflict is re-raised
TRANSIENT_RETRIES = 3  #: retries of a lost connection or a lock timeout (they are slow; a down store stays down)
RETRYABLE = (ConcurrencyError, StoreUnavailable, LockNotAvailable)  #: what execute retries


def applies(*event_types: str) -> Callable[[F], F]:
    """Registers an aggregate method as the applier of some event types.

    The counterpart of :func:`stoic.handles` on the write side: the method is
    called as ``method(event)`` and only changes ``self``; it never refuses
    (the event is a fact: refusing is the command's job)::

        @applies("Deposited")
        def _deposited(self, event): self.balance += event.data["amount"]
    """
    if not event_types or not all(isinstance(t, str) and t for t in event_types):
        raise ConfigurationError("applies() needs one or more event type names")

    def register(method: F) -> F:
        existing: tuple[str, ...] = getattr(method, "_stoic_applies", ())
        method._stoic_applies = existing + event_types  # type: ignore[attr-defined]
        return method

    return register


def command(method: F) -> F:
    """Makes a command method all-or-nothing.

    If the method raises (an invariant, a bad argument, a bug), the aggregate
    is put back as it was when the outermost command started: events recorded
    earlier in the same command are discarded too. Nested commands share the
    outermost one's snapshot.
    """

    @functools.wraps(method)
    def run(self: Aggregate, *args: Any, **kwargs: Any) -> Any:
        if self._in_command:
            return method(self, *args, **kwargs)
        saved = self._snapshot_state()
        self._in_command = True
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self._restore_state(saved)
            raise
        finally:
            self._in_command = False

    return run  # type: ignore[return-value]


class Aggregate:
    """Base class of aggregates: the state of one stream and the commands on it.

    Subclasses set their initial state in ``__init__(self, stream_id)`` (call
    ``super().__init__(stream_id)`` first), register appliers with
    :func:`applies`, write commands that call :meth:`record`, and override
    :meth:`check_invariants` using :meth:`require`.

    - ``version`` is the stream version the state was loaded or saved at (0 for
      a new stream): the ``expected_version`` of the next save. Pending events
      do not count until they are saved.
    - Stored events of a type without an applier are passed over (their
      version still counts), so old streams keep loading when a type is
      retired; :meth:`record` of such a type is a programming error.
    - Invariants are checked when an event is *recorded* (a decision), not when
      history is loaded: a stored event is a fact, and a rule tightened later
      must not make old streams unloadable.
    - State lives in the instance ``__dict__`` (no ``__slots__``): a refusal
      puts it back from a deep copy taken before the event.
    """

    _appliers: ClassVar[dict[str, str]] = {}

    def __init__(self, stream_id: str) -> None:
        self.stream_id: str = validate_stream_id(stream_id, "aggregate")
        self.version: int = 0
        self._pending: list[NewEvent] = []
        self._in_command = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._appliers = marked_methods(cls, "_stoic_applies", "applied")

    # -- building from history ----------------------------------------------------------

    @classmethod
    def from_events(cls, stream_id: str, events: Iterable[Event]) -> Self:
        """Folds stored (or any) events into a fresh aggregate."""
        aggregate = cls(stream_id)
        for event in events:
            aggregate.apply(event)
        return aggregate

    def apply(self, event: Event) -> None:
        """Applies one event of the stream's history and counts its version.

        A :class:`RecordedEvent` must be this stream's next one; anything else
        would fold a state that never existed (raises ``InvalidArgument``).
        """
        if self._pending:
            raise InvalidArgument(f"{self._describe()}: cannot apply history while events are pending")
        if isinstance(event, RecordedEvent) and (
            event.stream_id != self.stream_id or event.version != self.version + 1
        ):
            raise InvalidArgument(
                f"{self._describe()}: expected version {self.version + 1} of this stream, "
                f"got version {event.version} of {event.stream_id!r}"
            )
        self._dispatch(event)
        self.version += 1

    def _dispatch(self, event: Event) -> None:
        attr = self._appliers.get(event.type)
        if attr is not None:
            getattr(self, attr)(event)

    # -- deciding -----------------------------------------------------------------------

    def record(
        self,
        event_type: str,
        data: Mapping[str, Any] | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> NewEvent:
        """Applies a new event now, checks the invariants, and queues it.

        On a violation the aggregate is put back as it was before this event
        (a :func:`command` then puts back its earlier events too) and
        InvariantViolation is raised. ``metadata`` is merged over what the
        repository adds when saving.
        """
        if event_type not in self._appliers:
            raise ConfigurationError(f"{type(self).__name__}: no @applies method for {event_type!r}")
        event = NewEvent(event_type, dict(data or {}), dict(metadata) if metadata else None)
        # Restored here even inside a command: a command that catches the violation
        # and goes on must not keep half of the refused event.
        saved = self._snapshot_state()
        try:
            self._dispatch(event)
            self.check_invariants()
        except BaseException:
            self._restore_state(saved)
            raise
        self._pending.append(event)
        return event

    def check_invariants(self) -> None:
        """Raises InvariantViolation (via :meth:`require`) when the state breaks
        a rule. Called after every recorded event; the default has no rules."""

    def require(self, condition: object, rule: str, message: str) -> None:
        """Raises InvariantViolation for ``rule`` unless ``condition`` holds."""
        if not condition:
            raise InvariantViolation(
                f"{self._describe()}: {rule}: {message}",
                aggregate=type(self).__name__,
                stream_id=self.stream_id,
                rule=rule,
                detail=message,
            )

    # -- pending events -----------------------------------------------------------------

    @property
    def pending(self) -> tuple[NewEvent, ...]:
        """Events recorded and not saved yet, in order."""
        return tuple(self._pending)

    @property
    def exists(self) -> bool:
        """Whether the stream has stored events (a loaded or saved aggregate)."""
        return self.version > 0

    def mark_saved(self, version: int) -> None:
        """Forgets the pending events once they are stored at ``version``."""
        self._pending.clear()
        self.version = version

    # -- state --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of the public state (attributes not starting with ``_``),
        e.g. to compare two aggregates in a test."""
        return copy.deepcopy({k: v for k, v in vars(self).items() if not k.startswith("_")})

    def _snapshot_state(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)

    def _restore_state(self, saved: dict[str, Any]) -> None:
        self.__dict__.clear()
        self.__dict__.update(saved)

    def _describe(self) -> str:
        return f"{type(self).__name__} {self.stream_id!r}"

    def __repr__(self) -> str:
        pending = f", pending={len(self._pending)}" if self._pending else ""
        return f"<{type(self).__name__} {self.stream_id!r} version={self.version}{pending}>"


# -- saving -------------------------------------------------------------------------------

_NAMESPACE = uuid.UUID("3f1a7c52-8d0e-4b4c-9a39-5d7e2c1b6f10")


def command_id_for(*parts: object) -> uuid.UUID:
    """A deterministic command id from names (e.g. a transfer id and a step):
    the same step tried again gets the same event ids."""
    return uuid.uuid5(_NAMESPACE, "/".join(str(p) for p in parts))


def _expected(aggregate: Aggregate) -> Expected:
    return NO_STREAM if aggregate.version == 0 else aggregate.version


def _new_events(
    aggregate: Aggregate,
    command_id: uuid.UUID,
    correlation_id: str | None,
    causation_id: str | None,
    metadata: Mapping[str, Any] | None,
) -> list[NewEvent]:
    """The pending events with ids derived from the command and the causal metadata."""
    base = {
        "aggregate": type(aggregate).__name__,
        "command_id": str(command_id),
        "correlation_id": correlation_id or str(command_id),
        "causation_id": causation_id or str(command_id),
        **(metadata or {}),
    }
    events = []
    for index, event in enumerate(aggregate.pending):
        event_id = uuid.uuid5(command_id, f"{aggregate.stream_id}#{index}#{event.type}")
        events.append(NewEvent(event.type, event.data, {**base, **(event.metadata or {})}, event_id))
    return events


def save_all(
    store: Store,
    aggregates: Sequence[Aggregate],
    *,
    command_id: uuid.UUID | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> list[AppendResult]:
    """Saves the pending events of several aggregates in one transaction: all
    or nothing, each stream at the version its aggregate was loaded at.

    Aggregates without pending events are left out. Raises ConcurrencyError
    (nothing written) when any stream moved. When the save turns out to repeat
    an earlier one (same command id, so the store wrote nothing), the aggregate
    is reloaded: its state is then the stored one.
    """
    dirty = [a for a in aggregates if a.pending]
    if not dirty:
        return []
    if len({a.stream_id for a in dirty}) != len(dirty):
        raise InvalidArgument("save_all: two aggregates of the same stream")
    cid = command_id or uuid.uuid4()
    items = [(a.stream_id, _new_events(a, cid, correlation_id, causation_id, metadata), _expected(a)) for a in dirty]
    results = store.append_many(items)
    for aggregate, result in zip(dirty, results, strict=True):
        if result.version == aggregate.version + len(aggregate.pending):
            aggregate.mark_saved(result.version)
        else:
            # The store returned an earlier, identical append (same command id): the
            # decision in memory may differ from the stored one, so take the stored one.
            stored = type(aggregate).from_events(aggregate.stream_id, store.read_stream(aggregate.stream_id))
            aggregate._restore_state(stored.__dict__)
    return results


def retry_on_conflict(
    attempt: Callable[[], R],
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    on_retry: Callable[[BaseException], None] | None = None,
) -> R:
    """Calls ``attempt`` until it does not raise ConcurrencyError, at most
    ``max_attempts`` times in all; then re-raises the last error. A transient
    store error (StoreUnavailable, LockNotAvailable) is retried too, with
    back-off, at most TRANSIENT_RETRIES times.

    ``attempt`` must reload what it decides on: it runs again on fresh state.
    Retries wait a short random time so that clients that collided do not
    collide again in lockstep.
    """
    if not isinstance(max_attempts, int) or max_attempts < 1:
        raise InvalidArgument(f"max_attempts must be an int >= 1, got {max_attempts!r}")
    transient = 0
    for number in range(1, max_attempts + 1):
        try:
            return attempt()
        except RETRYABLE as exc:
            conflict = isinstance(exc, ConcurrencyError)
            transient += 0 if conflict else 1
            if number == max_attempts or transient > TRANSIENT_RETRIES:
                raise
            if on_retry is not None:
                on_retry(exc)
            cap = 0.002 * number if conflict else 0.05 * 2**transient
            time.sleep(random.uniform(0, cap))
    raise AssertionError("unreachable")  # pragma: no cover


class Repository(Generic[A]):
    """Loads and saves aggregates of one type from a store.

    ``retries`` counts the attempts :meth:`execute` repeated (conflicts and
    transient store errors), for reports and tests.
    """

    def __init__(self, store: Store, aggregate_type: type[A], *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        if not (isinstance(aggregate_type, type) and issubclass(aggregate_type, Aggregate)):
            raise ConfigurationError(f"not a stoic.Aggregate subclass: {aggregate_type!r}")
        self.store = store
        self.aggregate_type = aggregate_type
        self.max_attempts = max_attempts
        self.retries = 0
        self._lock = threading.Lock()

    def load(self, stream_id: str) -> A:
        """Reads the stream and folds it; an unknown stream gives a new aggregate
        at version 0 (``exists`` is False)."""
        return self.aggregate_type.from_events(stream_id, self.store.read_stream(stream_id))

    def save(
        self,
        aggregate: A,
        *,
        command_id: uuid.UUID | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> AppendResult | None:
        """Appends the aggregate's pending events at the version it was loaded at
        (NO_STREAM for a new stream); None when nothing was pending. Raises
        ConcurrencyError, with nothing written, when the stream moved meanwhile."""
        results = save_all(
            self.store, [aggregate], command_id=command_id, correlation_id=correlation_id,
            causation_id=causation_id, metadata=metadata,
        )
        return results[0] if results else None

    def execute(
        self,
        stream_id: str,
        command: Callable[[A], object],
        max_attempts: int | None = None,
        *,
        command_id: uuid.UUID | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> A:
        """Loads the aggregate, runs ``command`` on it, saves; on a conflict
        reloads and runs the command again, up to ``max_attempts`` times in all,
        then re-raises ConcurrencyError. Returns the saved aggregate.

        An InvariantViolation (or any other error of the command) is raised at
        once and nothing is written. Every attempt uses the same ``command_id``
        (default: a new one per call), so an attempt whose outcome was unknown
        is never written twice.
        """
        cid = command_id or uuid.uuid4()

        def attempt() -> A:
            aggregate = self.load(stream_id)
            command(aggregate)
            self.save(aggregate, command_id=cid, correlation_id=correlation_id, causation_id=causation_id,
                      metadata=metadata)
            return aggregate

        return retry_on_conflict(attempt, max_attempts or self.max_attempts, self._count_retry)

    def _count_retry(self, exc: BaseException) -> None:
        with self._lock:
            self.retries += 1

    def __repr__(self) -> str:
        return f"Repository({self.aggregate_type.__name__})"
