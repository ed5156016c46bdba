"""stoic.errors: one tree with two branches, drawn in the module docstring;
default messages from docstrings; facts as attributes."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
import re

import pytest

import stoic
import stoic.errors as errors
from stoic.errors import PermanentError, StoicError, TransientError

ROOTS = {StoicError, TransientError, PermanentError}


def error_classes_in_errors_module() -> list[type[StoicError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, StoicError) and cls.__module__ == errors.__name__
    ]


def all_stoic_error_classes() -> set[type[StoicError]]:
    """Every StoicError subclass defined anywhere in the stoic package."""
    for module in pkgutil.walk_packages(stoic.__path__, "stoic."):
        if module.name.startswith(("stoic.api", "stoic.cli", "stoic.demo", "stoic.__main__")):
            continue  # thin shells with optional dependencies; they define no errors
        importlib.import_module(module.name)
    found: set[type[StoicError]] = set()
    todo = [StoicError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("stoic") and sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def test_every_concrete_error_sits_on_exactly_one_branch() -> None:
    concrete = all_stoic_error_classes() - ROOTS
    assert len(concrete) >= 10
    for cls in concrete:
        branches = [issubclass(cls, TransientError), issubclass(cls, PermanentError)]
        assert branches.count(True) == 1, cls


@pytest.mark.parametrize(
    "cls", [stoic.StoreUnavailable, stoic.LockNotAvailable, stoic.OperationTimeout, stoic.LeaseLost]
)
def test_transient_errors(cls: type[StoicError]) -> None:
    assert issubclass(cls, TransientError) and not issubclass(cls, PermanentError)


@pytest.mark.parametrize(
    "cls",
    [
        stoic.ConfigurationError,
        stoic.InvalidArgument,
        stoic.InvalidEvent,
        stoic.EventTooLarge,
        stoic.ConcurrencyError,
        stoic.DuplicateEventId,
        stoic.UnknownProjection,
        stoic.SchemaError,
    ],
)
def test_permanent_errors(cls: type[StoicError]) -> None:
    assert issubclass(cls, PermanentError) and not issubclass(cls, TransientError)


def test_event_too_large_is_an_invalid_event() -> None:
    assert issubclass(stoic.EventTooLarge, stoic.InvalidEvent)


def drawn_tree() -> dict[str, str]:
    """``{class name: parent name}`` as drawn in the module docstring."""
    doc = errors.__doc__ or ""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        match = re.match(r"^(\s*(?:[│ ]\s*)*)(?:[├└]── )?([A-Z]\w+)\b", line)
        if not match or not line.strip().startswith(("StoicError", "├", "└", "│")):
            continue
        depth, name = match.start(2), match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            parents[name] = stack[-1][1]
        stack.append((depth, name))
    return parents


def test_the_docstring_draws_every_error_with_its_real_parent() -> None:
    parents = drawn_tree()
    classes = {cls.__name__: cls for cls in error_classes_in_errors_module()}
    assert set(parents) | {"StoicError"} == set(classes)
    for name, parent in parents.items():
        assert classes[name].__bases__ == (classes[parent],), name


def test_every_error_of_the_tree_is_exported() -> None:
    for cls in error_classes_in_errors_module():
        assert getattr(stoic, cls.__name__) is cls
        assert cls.__name__ in stoic.__all__


def test_the_docstring_is_the_default_message() -> None:
    for cls in error_classes_in_errors_module():
        if cls is stoic.ConcurrencyError:
            continue  # its message is built from its facts
        assert str(cls()) == (cls.__doc__ or "").strip().splitlines()[0]
        assert str(cls()).endswith(".")
    assert str(stoic.InvalidEvent()) == "An event failed validation; nothing was written."


def test_facts_are_attributes() -> None:
    error = stoic.InvalidEvent("bad", where="stream 'a'", size=3)
    assert str(error) == "bad"
    assert (error.where, error.size) == ("stream 'a'", 3)  # type: ignore[attr-defined]
    assert error.facts == {"where": "stream 'a'", "size": 3}
    assert StoicError().facts == {}


def test_concurrency_error_carries_its_facts() -> None:
    error = stoic.ConcurrencyError("acc-1", 3, 5)
    assert (error.stream_id, error.expected, error.actual) == ("acc-1", 3, 5)
    assert error.facts == {"stream_id": "acc-1", "expected": 3, "actual": 5}
    message = str(error)
    assert "'acc-1'" in message
    assert "expected version 3" in message
    assert "actual version 5" in message
    assert "nothing was written" in message
    assert isinstance(error, PermanentError)


def test_errors_can_be_raised_and_caught_by_branch() -> None:
    with pytest.raises(TransientError):
        raise stoic.LockNotAvailable("database is locked")
    with pytest.raises(PermanentError):
        raise stoic.ConcurrencyError("s", 0, 1)
    with pytest.raises(StoicError):
        raise stoic.UnknownProjection("no such projection", name="x")


def test_errors_survive_pickling_with_their_facts() -> None:
    # Errors cross process boundaries (worker subprocesses, multiprocessing pools).
    for cls in error_classes_in_errors_module():
        if cls is stoic.ConcurrencyError:
            error: StoicError = stoic.ConcurrencyError("acc", 3, 5)
        else:
            error = cls("msg", where="w")
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is cls
        assert str(copy) == str(error)
        assert copy.facts == error.facts
    copy = pickle.loads(pickle.dumps(stoic.ConcurrencyError("acc", 3, 5)))
    assert (copy.stream_id, copy.expected, copy.actual) == ("acc", 3, 5)
