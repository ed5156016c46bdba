"""The failure model shared by projections, jobs and pipelines.

One function decides whether an exception is transient or permanent
(:func:`classify`, extended by a :class:`Classifier`); policies are values that
say what to do next (when to retry, how many attempts are left), and the
runner persists what they decide. Nothing here touches a database.

Transient (retry in process with back-off; repeated → circuit breaker):
``stoic.TransientError``, ``TimeoutError``, ``ConnectionError``, lost
connections and operational errors of sqlite3 ("database is locked") and
psycopg, PostgreSQL deadlock (40P01), serialization failure (40001), lock not
available (55P03) and query cancelled (57014). Everything else, and
``stoic.PermanentError``, is permanent (recorded, parked, retried in the
background on a schedule, then dead).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Final

from stoic.errors import ConfigurationError, PermanentError, TransientError

TRANSIENT_SQLSTATES: Final = frozenset({"40P01", "40001", "55P03", "57014", "57P01", "57P02", "57P03"})
MAX_RETRY_DELAY_S: Final = 365 * 24 * 3600.0  #: longest wait of a background retry (a long schedule must not overflow)


class Kind(Enum):
    """What kind of failure an exception is."""

    TRANSIENT = "transient"  #: retry the same work later, it may succeed
    PERMANENT = "permanent"  #: retrying the same work will fail the same way


Predicate = Callable[[BaseException], "Kind | None"]


def _builtin(exc: BaseException) -> Kind:
    if isinstance(exc, PermanentError):
        return Kind.PERMANENT
    if isinstance(exc, TransientError | TimeoutError | ConnectionError):
        return Kind.TRANSIENT
    # The core imports no driver: if sqlite3 was never loaded, exc is not one of its errors.
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is not None and isinstance(exc, sqlite3.OperationalError):
        # SQLITE_ERROR is an error in the SQL itself (no such table, syntax): permanent.
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_ERROR:
            return Kind.PERMANENT
        return Kind.TRANSIENT
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate in TRANSIENT_SQLSTATES:
        return Kind.TRANSIENT
    # psycopg is optional: recognise its connection-level errors by module, not import.
    module = type(exc).__module__ or ""
    if module.startswith("psycopg") and type(exc).__name__ in ("OperationalError", "InterfaceError"):
        return Kind.TRANSIENT
    if module.startswith("psycopg") and sqlstate is None:
        for base in type(exc).__mro__:
            if base.__name__ in ("OperationalError", "InterfaceError") and (base.__module__ or "").startswith(
                "psycopg"
            ):
                return Kind.TRANSIENT
    if module.startswith("psycopg_pool") and type(exc).__name__ == "PoolTimeout":
        return Kind.TRANSIENT
    return Kind.PERMANENT


@dataclass(frozen=True)
class Classifier:
    """Extends the built-in classification: exception types and predicates that
    the user declares transient or permanent. Rules are checked in order —
    predicates, then permanent types, then transient types — before the
    built-in rules. Combine an app's and a projection's with :meth:`then`."""

    transient: tuple[type[BaseException], ...] = ()
    permanent: tuple[type[BaseException], ...] = ()
    predicates: tuple[Predicate, ...] = ()
    parent: Classifier | None = None

    def classify(self, exc: BaseException) -> Kind:
        """Returns whether ``exc`` is transient or permanent."""
        for predicate in self.predicates:
            verdict = predicate(exc)
            if verdict is not None:
                return verdict
        if self.permanent and isinstance(exc, self.permanent):
            return Kind.PERMANENT
        if self.transient and isinstance(exc, self.transient):
            return Kind.TRANSIENT
        return self.parent.classify(exc) if self.parent else _builtin(exc)

    def then(self, fallback: Classifier | None) -> Classifier:
        """Returns a classifier that asks this one first, then ``fallback``."""
        if fallback is None:
            return self
        parent = self.parent.then(fallback) if self.parent else fallback
        return Classifier(self.transient, self.permanent, self.predicates, parent)


DEFAULT_CLASSIFIER: Final = Classifier()


def classify(exc: BaseException, classifier: Classifier | None = None) -> Kind:
    """Returns whether ``exc`` is transient or permanent (the one place that decides)."""
    return (classifier or DEFAULT_CLASSIFIER).classify(exc)


@dataclass(frozen=True)
class RetryPolicy:
    """In-process retries of transient errors: exponential back-off with full
    jitter. After ``max_attempts`` failures in a row the circuit breaker opens."""

    initial_delay: float = 0.1  # seconds
    multiplier: float = 2.0
    max_delay: float = 10.0  # seconds
    max_attempts: int = 5

    def __post_init__(self) -> None:
        if self.initial_delay < 0 or self.max_delay < 0 or self.multiplier < 1 or self.max_attempts < 1:
            raise ConfigurationError(f"invalid retry policy {self}")

    def cap(self, attempt: int) -> float:
        """The largest delay after the ``attempt``-th failure (1-based)."""
        return min(self.max_delay, self.initial_delay * self.multiplier ** min(attempt - 1, 60))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """A full-jitter delay after the ``attempt``-th failure: uniform in [0, cap]."""
        return (rng or random).uniform(0, self.cap(attempt))


@dataclass(frozen=True)
class RetrySchedule:
    """Background retries of a permanent failure: 4 s, 8 s, 16 s, 32 s, then dead
    after 5 attempts by default (a fix deployed meanwhile resolves it)."""

    first_delay: float = 4.0  # seconds
    multiplier: float = 2.0
    max_attempts: int = 5

    def __post_init__(self) -> None:
        if self.first_delay < 0 or self.multiplier < 1 or self.max_attempts < 1:
            raise ConfigurationError(f"invalid retry schedule {self}")

    def next_retry(self, attempts: int, now: datetime) -> datetime | None:
        """When to retry after ``attempts`` failed attempts; None when the failure is dead."""
        if attempts >= self.max_attempts:
            return None
        try:
            seconds = min(MAX_RETRY_DELAY_S, self.first_delay * self.multiplier ** (attempts - 1))
        except OverflowError:
            seconds = MAX_RETRY_DELAY_S
        return now + timedelta(seconds=seconds)


@dataclass(frozen=True)
class BreakerPolicy:
    """When a projection's circuit opens and how long it rests before a probe."""

    cooldown: float = 30.0  # seconds before one half-open probe batch


class OnError(Enum):
    """What a projection does with an event that fails permanently."""

    PARK = "park"  #: record it, park later events of its stream behind it, go on with other streams
    HALT = "halt"  #: record it and stop the projection there (strict global order)
    SKIP = "skip"  #: record it as skipped and go on


@dataclass(frozen=True)
class FailurePolicy:
    """Everything a projection decides about failures, with sensible defaults."""

    on_error: OnError = OnError.PARK
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    schedule: RetrySchedule = field(default_factory=RetrySchedule)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    batch_timeout: float = 60.0  # seconds a batch may take before it is cancelled
    classifier: Classifier | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.on_error, OnError):
            object.__setattr__(self, "on_error", parse_on_error(self.on_error))
        if self.batch_timeout <= 0:
            raise ConfigurationError("batch_timeout must be positive")


def parse_on_error(value: object) -> OnError:
    """Accepts ``"park"``, ``"halt"``, ``"skip"`` or an OnError."""
    if isinstance(value, OnError):
        return value
    try:
        return OnError(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in OnError)
        raise ConfigurationError(f"on_error must be one of {choices}, got {value!r}") from None


def describe(exc: BaseException) -> tuple[str, str]:
    """Returns the error class (qualified) and message of an exception."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ in ("builtins", None) else f"{cls.__module__}.{cls.__qualname__}"
    return name, str(exc)
