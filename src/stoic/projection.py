"""Projections (read models fed from the store) and the App that lists them.

A projection is a plain class: a ``name``, handlers registered with
:func:`handles`, and optional ``setup(tx)`` / ``reset(tx)``. Every handler gets
``tx``, the transaction that also moves the projection's checkpoint, so what it
writes through ``tx`` is applied exactly once.
"""

from __future__ import annotations

import copy as _copy
import re
import zlib
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final, TypeVar

from stoic.errors import ConfigurationError, UnknownProjection
from stoic.events import RecordedEvent
from stoic.failures import (
    BreakerPolicy,
    Classifier,
    FailurePolicy,
    OnError,
    RetryPolicy,
    RetrySchedule,
    parse_on_error,
)
from stoic.health import BUILD_SUFFIX
from stoic.store import Transaction

ALL: Final = "*"  #: pass to :func:`handles` to receive every event type
DEFAULT_BATCH_SIZE: Final = 500  #: events read and applied per transaction
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}$")

Handler = Callable[[RecordedEvent, Transaction], None]
F = TypeVar("F", bound=Callable[..., Any])


def handles(*event_types: str) -> Callable[[F], F]:
    """Registers a method as the handler of some event types (``"*"``: all of them).

    ::

        @handles("Deposited")
        def deposited(self, event, tx): ...
    """
    if not event_types or not all(isinstance(t, str) and t for t in event_types):
        raise ConfigurationError("handles() needs one or more event type names (or stoic.ALL)")

    def register(method: F) -> F:
        existing: tuple[str, ...] = getattr(method, "_stoic_handles", ())
        method._stoic_handles = existing + event_types  # type: ignore[attr-defined]
        return method

    return register


handles_all = handles(ALL)
"""Registers a method as the catch-all handler: ``@handles_all``."""


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,50}$")


def marked_methods(cls: type, marker: str, verb: str) -> dict[str, str]:
    """``{event type: method name}`` of the methods a decorator marked (``marker``
    holds their event types), subclasses overriding bases; two methods of one
    class for the same type are a ConfigurationError."""
    names: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        local: dict[str, str] = {}
        for attr, value in vars(klass).items():
            for event_type in getattr(value, marker, ()):
                if event_type in local:
                    raise ConfigurationError(
                        f"{klass.__name__}: {event_type!r} is {verb} by both {local[event_type]} and {attr}")
                local[event_type] = attr
        names.update(local)
    return names


def segment_of(stream_id: str, count: int) -> int:
    """The segment a stream belongs to: a stable hash (the same in every process
    and release), so all of a stream's events go to one segment, in order."""
    return zlib.crc32(stream_id.encode("utf-8", "surrogatepass")) % count


MAX_SEGMENTS = 256


class Projection:
    """Base class of projections.

    Subclasses set ``name`` (stable: it keys the checkpoint) and write handlers
    ``def on_x(self, event, tx)``. ``batch_size`` bounds how many events one
    transaction applies. The failure settings have production defaults:

    - ``on_error``: ``"park"`` (record the failure, park later events of the same
      stream behind it, go on with other streams), ``"halt"`` (stop the
      projection at the failing event) or ``"skip"`` (record it and go on);
    - ``retry_policy``: in-process retries of transient errors (back-off with
      jitter; after ``max_attempts`` in a row the circuit breaker opens);
    - ``retry_schedule``: background retries of a permanent failure, then dead;
    - ``breaker_policy``: the breaker's cool-down before a half-open probe;
    - ``batch_timeout``: seconds a batch may take before it is cancelled;
    - ``classifier``: extra transient/permanent rules for this projection.

    ``idempotent = True`` declares that applying an event twice gives the same
    read model, which allows an operator to replay from an earlier position.
    Implementing ``reset(tx)`` allows an operator to reset (rebuild from 0).
    """

    name: ClassVar[str]
    batch_size: ClassVar[int] = DEFAULT_BATCH_SIZE
    on_error: ClassVar[str | OnError] = OnError.PARK
    retry_policy: ClassVar[RetryPolicy] = RetryPolicy()
    retry_schedule: ClassVar[RetrySchedule] = RetrySchedule()
    breaker_policy: ClassVar[BreakerPolicy] = BreakerPolicy()
    batch_timeout: ClassVar[float] = 60.0
    classifier: ClassVar[Classifier | None] = None
    idempotent: ClassVar[bool] = False
    version: ClassVar[int] = 1  #: bump it to rebuild the read model (into new tables) without read downtime
    tables: ClassVar[tuple[str, ...]] = ()  #: the read model's tables; declaring them makes it versioned
    verify_sample: ClassVar[int | None] = 1000  #: streams the switch gate reconciles (None: all)
    retain_previous: ClassVar[float] = 3600.0  #: seconds the replaced generation's tables are kept
    build_of: str | None = None  #: on a build copy: the projection it rebuilds
    segments: ClassVar[int] = 1  #: split the projection by stream over this many segments (each its own worker)
    segment: tuple[int, int] | None = None  #: on a segment copy: (index, count)
    base_name: str | None = None  #: on a segment copy: the projection's own name
    _generation: int | None = None
    reconcile_every: ClassVar[float | None] = None  #: seconds between continuous sample checks (None: off)
    reconcile_sample: ClassVar[int] = 20  #: streams per continuous check
    auto_repair: ClassVar[bool] = False  #: repair drifted streams found by the continuous check
    _handler_names: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handler_names = marked_methods(cls, "_stoic_handles", "handled")
        for table in cls.tables:
            if not isinstance(table, str) or not _IDENTIFIER.match(table):
                raise ConfigurationError(f"{cls.__name__}.tables: {table!r} is not a plain SQL identifier")
        if not isinstance(cls.version, int) or isinstance(cls.version, bool) or cls.version < 1:
            raise ConfigurationError(f"{cls.__name__}.version must be a positive integer")
        if not isinstance(cls.segments, int) or isinstance(cls.segments, bool) or not 1 <= cls.segments <= MAX_SEGMENTS:
            raise ConfigurationError(f"{cls.__name__}.segments must be an integer from 1 to {MAX_SEGMENTS}")
        if cls.segments > 1 and cls.tables:
            raise ConfigurationError(
                f"{cls.__name__}: a projection cannot be both versioned (tables) and segmented yet")

    # -- segmented projections: one projection spread over several workers -------------------

    def for_segment(self, index: int, count: int) -> Projection:
        """The copy that processes the streams of segment ``index`` of ``count``,
        under its own checkpoint and lease ``<name>#<index>``."""
        copy = _copy.copy(self)
        copy.segment = (index, count)
        copy.base_name = self.name
        copy.name = f"{self.name}#{index}"  # type: ignore[misc]
        return copy

    # -- versioned read models: rebuild without read downtime ---------------------------

    def table(self, logical: str) -> str:
        """The physical table to write for a declared table: ``<name>_g<generation>``.
        Readers query the logical name: a view that shows the serving generation."""
        if logical not in self.tables:
            raise ConfigurationError(f"{self.name}: {logical!r} is not in tables {self.tables!r}")
        if self._generation is None:
            raise ConfigurationError(f"{self.name}: table() is only known while a runner runs the projection")
        return f"{logical}_g{self._generation}"

    @property
    def versioned(self) -> bool:
        """True when the projection declares its tables (so it can be rebuilt side by side)."""
        return bool(self.tables)

    @property
    def generation(self) -> int | None:
        return self._generation

    def bound(self, generation: int) -> Projection:
        """This projection writing generation ``generation``'s tables."""
        copy = _copy.copy(self)
        copy._generation = generation
        return copy

    def builder(self) -> Projection:
        """The copy that builds the next generation, under its own checkpoint ``<name>@build``."""
        copy = _copy.copy(self)
        copy.build_of = self.name
        copy.name = f"{self.name}{BUILD_SUFFIX}"  # type: ignore[misc]
        return copy

    def physical_tables(self, generation: int) -> dict[str, str]:
        """Each declared table and its physical table in a generation."""
        return {logical: f"{logical}_g{generation}" for logical in self.tables}

    def setup(self, tx: Transaction) -> None:
        """Creates the read model's tables; must be idempotent (runs at every start)."""

    def reset(self, tx: Transaction) -> None:
        """Clears the read model, for a rebuild from position 0 (``setup`` runs
        right after, in the same transaction). Until a subclass implements it,
        operators cannot reset the projection."""

    @property
    def resettable(self) -> bool:
        """True when this projection implements :meth:`reset`."""
        return type(self).reset is not Projection.reset

    # -- reconciliation (optional): prove the read model matches the events -------------

    def expected_state(self, stream_id: str, events: list[RecordedEvent]) -> dict[str, Any] | None:
        """The state the read model should hold for one stream, folded from the
        stream's applied events (None: no state). Implement it with
        :meth:`actual_state` to make the projection reconcilable."""
        raise NotImplementedError

    def actual_state(self, stream_id: str, tx: Transaction) -> dict[str, Any] | None:
        """The state the read model holds for one stream, read through ``tx``
        (None: no state), with the same keys as :meth:`expected_state`."""
        raise NotImplementedError

    def forget(self, stream_id: str, tx: Transaction) -> None:
        """Removes one stream's rows from the read model, so the stream can be
        rebuilt on its own (``repair``). Until implemented, repairs are refused."""
        raise NotImplementedError

    def checks(self, snapshot: Any) -> Iterable[Any]:
        """Global checks run by reconciliation: yield ``stoic.CheckResult(name, ok,
        detail)``. ``snapshot.execute(sql)`` reads the read model and
        ``snapshot.events()`` the events, both as of one moment."""
        return ()

    @property
    def repairable(self) -> bool:
        """True when this projection implements :meth:`forget`."""
        return type(self).forget is not Projection.forget

    def handlers(self) -> tuple[dict[str, Handler], Handler | None]:
        """Returns the bound handler of each event type, and the catch-all (or None)."""
        bound = {t: getattr(self, attr) for t, attr in self._handler_names.items()}
        catch_all = bound.pop(ALL, None)
        return bound, catch_all

    def failure_policy(self, app_classifier: Classifier | None = None) -> FailurePolicy:
        """Returns this projection's failure settings as one value."""
        classifier = self.classifier.then(app_classifier) if self.classifier else app_classifier
        return FailurePolicy(
            on_error=parse_on_error(self.on_error),
            retry=self.retry_policy,
            schedule=self.retry_schedule,
            breaker=self.breaker_policy,
            batch_timeout=self.batch_timeout,
            classifier=classifier,
        )

    def handled_types(self) -> frozenset[str]:
        """The event types with a handler (``"*"`` when there is a catch-all)."""
        return frozenset(self._handler_names)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {getattr(self, 'name', '?')!r}>"


def _instance(projection: Projection | type[Projection]) -> Projection:
    if isinstance(projection, type) and issubclass(projection, Projection):
        projection = projection()
    if not isinstance(projection, Projection):
        raise ConfigurationError(f"not a stoic.Projection: {projection!r}")
    name = getattr(projection, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"{type(projection).__name__}: name must be 1-100 characters of letters, digits, "
            f"'_', '.', '-', got {name!r}"
        )
    if not projection.handled_types():
        raise ConfigurationError(f"projection {name!r} has no @handles methods")
    projection.failure_policy()  # raises ConfigurationError on a bad setting
    if not isinstance(projection.batch_size, int) or projection.batch_size < 1:
        raise ConfigurationError(f"projection {name!r}: batch_size must be an int >= 1")
    return projection


class App:
    """A user application: the projections a worker runs.

    ``stoic worker --app module:app`` imports this object.
    """

    def __init__(
        self,
        projections: Iterable[Projection | type[Projection]] = (),
        name: str = "stoic",
        classifier: Classifier | None = None,
    ) -> None:
        self.name = name
        self.classifier = classifier
        self._projections: dict[str, Projection] = {}
        for projection in projections:
            self.add(projection)

    def add(self, projection: Projection | type[Projection]) -> Projection:
        """Adds a projection (a class is instantiated); names must be unique."""
        instance = _instance(projection)
        if instance.name in self._projections:
            raise ConfigurationError(f"two projections are named {instance.name!r}")
        self._projections[instance.name] = instance
        return instance

    @property
    def projections(self) -> list[Projection]:
        return list(self._projections.values())

    def projection(self, name: str) -> Projection:
        """Returns the projection of that name; raises UnknownProjection."""
        try:
            return self._projections[name]
        except KeyError:
            known = ", ".join(sorted(self._projections)) or "none"
            raise UnknownProjection(
                f"no projection named {name!r} (known: {known})", name=name
            ) from None

    def __repr__(self) -> str:
        return f"App({self.name!r}, projections={sorted(self._projections)})"


def load_app(reference: str) -> App:
    """Imports ``module:attribute`` and returns the App it names."""
    import importlib
    import sys

    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"app reference must look like module:attribute, got {reference!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attribute, None)
    if callable(app) and not isinstance(app, App):
        app = app()
    if not isinstance(app, App):
        raise ConfigurationError(f"{reference} is not a stoic.App (got {type(app).__name__})")
    return app
