"""Helpers of the failure-handling suite: events, a worker thread, module-level
toggles ("the handler is fixed" = a switch flipped off), call recorders and
shortcuts to failures and health."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any, ClassVar

import pytest
from tests.apps import wait_until

import stoic
from stoic.health import ProjectionHealth
from stoic.store import FailureRecord, FailureStatus, ProjectionDetails

worker_backends = pytest.mark.parametrize("backend", ["sqlite-file", "postgres"])
"""For the tests that run a worker thread (seconds each): the ``store`` fixture on a
SQLite file and PostgreSQL only; the in-memory variant adds nothing there."""


class Switch:
    """A module-level toggle: on = broken (or: dependency down). Every switch is
    turned back on before each test by the suite's conftest."""

    _all: ClassVar[list[Switch]] = []

    def __init__(self) -> None:
        self.on = True
        Switch._all.append(self)

    @classmethod
    def reset_all(cls) -> None:
        for switch in cls._all:
            switch.on = True


class Calls:
    """Records handler calls (monotonic time, position), thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[float, int]] = []

    def add(self, position: int) -> None:
        with self._lock:
            self.items.append((time.monotonic(), position))

    def at(self, position: int) -> list[float]:
        """When the handler was called for one position."""
        with self._lock:
            return [t for t, p in self.items if p == position]

    def __len__(self) -> int:
        with self._lock:
            return len(self.items)


def ev(amount: int = 1, type: str = "Deposited", **data: Any) -> stoic.NewEvent:
    return stoic.NewEvent(type, {"amount": amount, **data})


def poison(amount: int = 1) -> stoic.NewEvent:
    """An event the suite's faults refuse while their switch is on."""
    return ev(amount, poison=True)


def append_each(store: stoic.Store, plan: Iterable[tuple[str, stoic.NewEvent]]) -> list[int]:
    """Appends events one by one (so the global order is the plan's); returns positions."""
    return [store.append(stream, [event]).positions[0] for stream, event in plan]


class WorkerThread:
    """``Runner.run()`` (the long-running worker) in a thread, stopped and joined on exit;
    an exception escaping the worker fails the test."""

    def __init__(self, store: stoic.Store, app: stoic.App, **options: Any) -> None:
        options.setdefault("claim_interval", 0.1)
        options.setdefault("lease_ttl", 3.0)
        self.runner = stoic.Runner(store, app, **options)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="failures-worker", daemon=True)

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as exc:  # reported by __exit__
            self.error = exc

    def __enter__(self) -> WorkerThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.stop()
        self._thread.join(20)
        assert not self._thread.is_alive(), "the worker did not stop"
        if self.error is not None:
            raise AssertionError(f"the worker crashed: {self.error!r}") from self.error


def failures(store: stoic.Store, name: str, status: str | None = None) -> list[FailureRecord]:
    """A projection's failures, oldest first."""
    found = store.list_failures(name, FailureStatus(status) if status else None, None, 1000, 0)
    return sorted(found, key=lambda f: f.id)


def only_failure(store: stoic.Store, name: str) -> FailureRecord:
    found = failures(store, name)
    assert len(found) == 1, f"expected one failure of {name}, got {found}"
    return found[0]


def wait_failure(store: stoic.Store, name: str, timeout: float = 10, **fields: Any) -> FailureRecord:
    """Waits until the projection's only failure has these field values; returns it."""

    def check() -> FailureRecord | None:
        found = failures(store, name)
        if len(found) != 1:
            return None
        failure = found[0]
        for key, value in fields.items():
            if getattr(failure, key) != value:
                return None
        return failure

    return wait_until(check, timeout, f"the failure of {name} to have {fields}: {failures(store, name)}")  # type: ignore[no-any-return]


def details(store: stoic.Store, name: str) -> ProjectionDetails:
    return {d.name: d for d in store.projection_details()}[name]


def checkpoint(store: stoic.Store, name: str) -> int:
    return {s.name: s.position for s in store.projections()}.get(name, 0)


def wait_checkpoint(store: stoic.Store, name: str, position: int, timeout: float = 10) -> None:
    wait_until(lambda: checkpoint(store, name) >= position, timeout,
               f"{name} to reach {position} (at {checkpoint(store, name)})")


def health(store: stoic.Store, name: str) -> ProjectionHealth:
    return stoic.Operations(store).projection_health(name)


def codes(item: ProjectionHealth) -> set[str]:
    return {c.code for c in item.causes}


def cause(item: ProjectionHealth, code: str) -> str:
    """The sentence of one cause (fails when the cause is absent)."""
    for c in item.causes:
        if c.code == code:
            return c.message
    raise AssertionError(f"{item.name}: no cause {code!r} in {item.causes}")
