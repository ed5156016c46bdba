"""The one error tree of Stoic.

Every error Stoic raises sits under :class:`StoicError`, on one of two branches
that the whole system agrees on: a :class:`TransientError` is worth retrying
with backoff, a :class:`PermanentError` is not (it is recorded, parked, and
eventually dead). A class's docstring doubles as its default message; the
facts of an error are attributes, not only text.

::

    StoicError
    ├── TransientError                 retry with backoff
    │   ├── StoreUnavailable           connection lost, server down, timeout
    │   ├── LockNotAvailable           database locked, lock timeout, deadlock
    │   ├── OperationTimeout           a statement or batch ran past its time limit
    │   ├── LeaseLost                  another runner took the projection
    │   └── CircuitOpen                a projection's breaker opened: its dependency keeps failing
    └── PermanentError                 record, park, then dead
        ├── ConfigurationError         bad URL, bad app reference, bad option
        ├── InvalidArgument            an argument is out of range or of the wrong type
        ├── InvalidEvent               an event fails validation
        │   └── EventTooLarge          an event is over the size limit
        ├── ConcurrencyError           expected version does not match
        ├── InvariantViolation         an aggregate's command breaks one of its rules
        ├── DuplicateEventId           an event id is stored for another event
        ├── UnknownProjection          no projection has that name
        ├── FailureNotFound            no failure has that id
        ├── ActionRefused              an admin action that makes no sense now
        └── SchemaError                the database schema is newer / broken
"""

from __future__ import annotations

from typing import Any


class StoicError(Exception):
    """A Stoic operation failed."""

    def __init__(self, message: str | None = None, **facts: Any) -> None:
        self.facts = facts
        for key, value in facts.items():
            setattr(self, key, value)
        super().__init__(message or (self.__doc__ or "").strip().splitlines()[0])


class TransientError(StoicError):
    """A transient error: the same operation may succeed if retried later."""


class PermanentError(StoicError):
    """A permanent error: retrying the same operation will fail the same way."""


class StoreUnavailable(TransientError):
    """The event store could not be reached (connection lost, server down, timeout)."""


class LockNotAvailable(TransientError):
    """A lock could not be taken in time (database locked, lock timeout, deadlock)."""


class OperationTimeout(TransientError):
    """An operation ran past its time limit and was cancelled."""


class LeaseLost(TransientError):
    """This runner no longer holds the projection's lease; its batch was not committed."""


class CircuitOpen(TransientError):
    """The projection's circuit breaker is open: its dependency keeps failing."""


class ConfigurationError(PermanentError):
    """Stoic is configured wrongly (bad URL, application reference or option)."""


class InvalidArgument(PermanentError):
    """An argument is out of range or of the wrong type; nothing was changed."""


class InvalidEvent(PermanentError):
    """An event failed validation; nothing was written."""


class EventTooLarge(InvalidEvent):
    """An event's encoded size is over the configured limit; nothing was written."""


class ConcurrencyError(PermanentError):
    """A stream's version is not the expected one; nothing was written.

    Attributes: ``stream_id``, ``expected`` and ``actual`` (versions; 0 means
    the stream does not exist).
    """

    stream_id: str
    expected: object
    actual: int

    def __init__(self, stream_id: str, expected: object, actual: int) -> None:
        super().__init__(
            f"stream {stream_id!r}: expected version {expected}, actual version {actual}; "
            "nothing was written",
            stream_id=stream_id,
            expected=expected,
            actual=actual,
        )

    def __reduce__(self) -> tuple[object, ...]:
        # Rebuilt from its facts: the default (cls, (message,)) does not fit __init__.
        return (type(self), (self.stream_id, self.expected, self.actual))


class InvariantViolation(PermanentError):
    """A command would break one of its aggregate's rules; nothing was changed or written.

    Attributes: ``aggregate`` (the class name), ``stream_id``, ``rule`` (a
    stable name such as ``"min_balance"``) and ``detail`` (the sentence).
    """

    aggregate: str
    stream_id: str
    rule: str
    detail: str


class DuplicateEventId(PermanentError):
    """An event id is already stored for a different event; nothing was written."""


class UnknownProjection(PermanentError):
    """No projection with this name is registered."""


class FailureNotFound(PermanentError):
    """No failure record has this id."""


class ActionRefused(PermanentError):
    """The action makes no sense in the current state (e.g. retrying a resolved failure)."""


class SchemaError(PermanentError):
    """The database schema cannot be used by this version of Stoic."""
