"""Bad input gets a typed error that says what is wrong and where, and the store
is unchanged (DESIGN guarantee 5)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

import stoic
from stoic.events import MAX_EVENT_BYTES

from ._helpers import ev, snapshot

GOOD = stoic.NewEvent("Good", {"ok": True})
DUP = uuid.uuid4()


def batch(bad: Any) -> list[Any]:
    """A bad event in the middle of good ones: none of them may be written."""
    return [GOOD, bad, stoic.NewEvent("Good", {"ok": 2})]


Call = Callable[[stoic.Store], object]

APPEND_CASES: list[tuple[str, Call, type[Exception], list[str]]] = [
    ("empty stream id", lambda s: s.append("", [GOOD]), stoic.InvalidEvent, ["stream id", "non-empty", "''"]),
    (
        "long stream id",
        lambda s: s.append("x" * 201, [GOOD]),
        stoic.InvalidEvent,
        ["stream id", "201", "200"],
    ),
    ("int stream id", lambda s: s.append(42, [GOOD]), stoic.InvalidEvent, ["stream id", "42"]),  # type: ignore[arg-type]
    ("None stream id", lambda s: s.append(None, [GOOD]), stoic.InvalidEvent, ["stream id", "None"]),  # type: ignore[arg-type]
    ("NUL in stream id", lambda s: s.append("a\x00b", [GOOD]), stoic.InvalidEvent, ["stream id", "NUL"]),
    (
        "empty type",
        lambda s: s.append("acc", batch(stoic.NewEvent(""))),
        stoic.InvalidEvent,
        ["'acc'", "event 1", "event type", "non-empty"],
    ),
    (
        "long type",
        lambda s: s.append("acc", batch(stoic.NewEvent("T" * 201))),
        stoic.InvalidEvent,
        ["'acc'", "event 1", "event type", "201", "200"],
    ),
    (
        "non-str type",
        lambda s: s.append("acc", batch(stoic.NewEvent(7))),
        stoic.InvalidEvent,  # type: ignore[arg-type]
        ["'acc'", "event 1", "event type", "7"],
    ),
    (
        "NUL in type",
        lambda s: s.append("acc", batch(stoic.NewEvent("A\x00"))),
        stoic.InvalidEvent,
        ["'acc'", "event 1", "event type", "NUL"],
    ),
    (
        "set in data",
        lambda s: s.append("acc", batch(stoic.NewEvent("Bad", {"tags": {1, 2}}))),
        stoic.InvalidEvent,
        ["'acc'", "event 1 (Bad)", "data", "not JSON-serialisable", "set"],
    ),
    (
        "datetime in data",
        lambda s: s.append("acc", batch(stoic.NewEvent("Bad", {"at": datetime(2024, 1, 1)}))),
        stoic.InvalidEvent,
        ["'acc'", "event 1 (Bad)", "data", "not JSON-serialisable", "datetime"],
    ),
    (
        "NaN in data",
        lambda s: s.append("acc", batch(stoic.NewEvent("Bad", {"x": math.nan}))),
        stoic.InvalidEvent,
        ["'acc'", "event 1 (Bad)", "data", "not JSON-serialisable"],
    ),
    (
        "infinity in data",
        lambda s: s.append("acc", batch(stoic.NewEvent("Bad", {"x": [math.inf]}))),
        stoic.InvalidEvent,
        ["'acc'", "event 1 (Bad)", "data", "not JSON-serialisable"],
    ),
    (
        "bytes in data",
        lambda s: s.append("acc", batch(stoic.NewEvent("Bad", {"x": b"raw"}))),
        stoic.InvalidEvent,
        ["event 1 (Bad)", "data", "bytes"],
    ),
    (
        "list as data",
        lambda s: s.append("acc", batch(stoic.NewEvent("Bad", [1, 2]))),
        stoic.InvalidEvent,  # type: ignore[arg-type]
        ["'acc'", "event 1 (Bad)", "data", "JSON object", "list"],
    ),
    (
        "None as data",
        lambda s: s.append("acc", batch(stoic.NewEvent("Bad", None))),
        stoic.InvalidEvent,  # type: ignore[arg-type]
        ["event 1 (Bad)", "data", "JSON object", "NoneType"],
    ),
    (
        "NUL in data",
        lambda s: s.append("acc", batch(stoic.NewEvent("Bad", {"s": "a\x00b"}))),
        stoic.InvalidEvent,
        ["event 1 (Bad)", "data", "NUL"],
    ),
    (
        "lone surrogate in data",
        lambda s: s.append("acc", batch(stoic.NewEvent("Bad", {"s": "\ud800"}))),
        stoic.InvalidEvent,
        ["event 1 (Bad)", "data", "Unicode"],
    ),
    (
        "set in metadata",
        lambda s: s.append("acc", batch(stoic.NewEvent("Bad", {}, {"who": {"x"}}))),
        stoic.InvalidEvent,
        ["'acc'", "event 1 (Bad)", "metadata", "not JSON-serialisable"],
    ),
    (
        "list as metadata",
        lambda s: s.append("acc", batch(stoic.NewEvent("Bad", {}, ["x"]))),  # type: ignore[arg-type]
        stoic.InvalidEvent,
        ["event 1 (Bad)", "metadata", "JSON object"],
    ),
    (
        "not a NewEvent",
        lambda s: s.append("acc", batch({"type": "Bad"})),
        stoic.InvalidEvent,
        ["'acc'", "event 1", "NewEvent", "dict"],
    ),
    (
        "events not a list",
        lambda s: s.append("acc", GOOD),
        stoic.InvalidEvent,  # type: ignore[arg-type]
        ["'acc'", "list of stoic.NewEvent"],
    ),
    (
        "str event id",
        lambda s: s.append("acc", batch(stoic.NewEvent("Bad", event_id=str(DUP)))),  # type: ignore[arg-type]
        stoic.InvalidEvent,
        ["event 1 (Bad)", "event_id", "UUID"],
    ),
    (
        "same id twice in one append",
        lambda s: s.append("acc", [stoic.NewEvent("A", event_id=DUP), stoic.NewEvent("B", event_id=DUP)]),
        stoic.InvalidEvent,
        ["'acc'", "event_id", "twice"],
    ),
    (
        "expected -1",
        lambda s: s.append("acc", [GOOD], expected_version=-1),
        stoic.InvalidEvent,
        ["'acc'", "expected_version", "-1"],
    ),
    (
        "expected '3'",
        lambda s: s.append("acc", [GOOD], expected_version="3"),
        stoic.InvalidEvent,  # type: ignore[arg-type]
        ["'acc'", "expected_version", "'3'"],
    ),
    (
        "expected True",
        lambda s: s.append("acc", [GOOD], expected_version=True),
        stoic.InvalidEvent,
        ["'acc'", "expected_version", "True"],
    ),
    (
        "expected None",
        lambda s: s.append("acc", [GOOD], expected_version=None),
        stoic.InvalidEvent,  # type: ignore[arg-type]
        ["expected_version", "None"],
    ),
    (
        "expected 1.0",
        lambda s: s.append("acc", [GOOD], expected_version=1.0),
        stoic.InvalidEvent,  # type: ignore[arg-type]
        ["expected_version", "1.0"],
    ),
    (
        "expected 2**63",
        lambda s: s.append("acc", [GOOD], expected_version=2**63),
        stoic.InvalidEvent,
        ["expected_version", str(2**63)],
    ),
    (
        "same stream twice in append_many",
        lambda s: s.append_many(
            [("acc", [GOOD], stoic.ANY), ("b", [GOOD], stoic.ANY), ("acc", [GOOD], stoic.ANY)]
        ),
        stoic.InvalidEvent,
        ["'acc'", "twice"],
    ),
    (
        "bad event in the second stream of append_many",
        lambda s: s.append_many(
            [("fresh", [GOOD], stoic.ANY), ("acc", batch(stoic.NewEvent("Bad", {"x": {1}})), 1)]
        ),
        stoic.InvalidEvent,
        ["'acc'", "event 1 (Bad)", "data"],
    ),
    (
        "bad stream id in append_many",
        lambda s: s.append_many([("fresh", [GOOD], stoic.ANY), ("", [GOOD], stoic.ANY)]),
        stoic.InvalidEvent,
        ["item 1", "stream id"],
    ),
    (
        "bad expected version in append_many",
        lambda s: s.append_many([("fresh", [GOOD], stoic.ANY), ("acc", [GOOD], -3)]),
        stoic.InvalidEvent,
        ["'acc'", "expected_version", "-3"],
    ),
    (
        "append_many item not a triple",
        lambda s: s.append_many([("fresh", [GOOD])]),
        stoic.InvalidEvent,  # type: ignore[list-item]
        ["item 0", "(stream_id, events, expected_version)"],
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "fragments"),
    [pytest.param(c, e, f, id=i) for i, c, e, f in APPEND_CASES],
)
def test_bad_appends_raise_a_typed_error_and_write_nothing(
    store: stoic.Store, call: Call, error: type[Exception], fragments: list[str]
) -> None:
    store.append("acc", [ev("Opened")])
    before = snapshot(store)

    with pytest.raises(error) as info:
        call(store)

    assert type(info.value) is error
    assert isinstance(info.value, stoic.PermanentError)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert snapshot(store) == before
    assert store.stream_version("fresh") == 0


READ_CASES: list[tuple[str, Call, type[Exception], list[str]]] = [
    ("read_all after -1", lambda s: s.read_all(after=-1), stoic.InvalidArgument, ["position", "-1"]),
    ("read_all after '1'", lambda s: s.read_all(after="1"), stoic.InvalidArgument, ["position", "'1'"]),  # type: ignore[arg-type]
    ("read_all after True", lambda s: s.read_all(after=True), stoic.InvalidArgument, ["position", "True"]),
    ("read_all after 2**63", lambda s: s.read_all(after=2**63), stoic.InvalidArgument, ["position"]),
    ("read_all limit 0", lambda s: s.read_all(limit=0), stoic.InvalidArgument, ["limit", "0"]),
    ("read_all limit -5", lambda s: s.read_all(limit=-5), stoic.InvalidArgument, ["limit", "-5"]),
    ("read_all limit 1.5", lambda s: s.read_all(limit=1.5), stoic.InvalidArgument, ["limit", "1.5"]),  # type: ignore[arg-type]
    ("read_stream from -1", lambda s: s.read_stream("acc", from_version=-1), stoic.InvalidArgument, ["-1"]),
    ("read_stream limit 0", lambda s: s.read_stream("acc", limit=0), stoic.InvalidArgument, ["limit", "0"]),
    ("read_stream empty id", lambda s: s.read_stream(""), stoic.InvalidEvent, ["read_stream", "stream id"]),
    ("iter_all after -1", lambda s: list(s.iter_all(after=-1)), stoic.InvalidArgument, ["position", "-1"]),
    ("iter_all batch 0", lambda s: list(s.iter_all(batch_size=0)), stoic.InvalidArgument, ["limit", "0"]),
]


@pytest.mark.parametrize(
    ("call", "error", "fragments"),
    [pytest.param(c, e, f, id=i) for i, c, e, f in READ_CASES],
)
def test_bad_read_arguments_raise_a_typed_error(
    store: stoic.Store, call: Call, error: type[Exception], fragments: list[str]
) -> None:
    store.append("acc", [ev("Opened")])
    before = snapshot(store)

    with pytest.raises(error) as info:
        call(store)

    assert type(info.value) is error
    for fragment in fragments:
        assert fragment in str(info.value)
    assert snapshot(store) == before


def test_limits_are_inclusive(store: stoic.Store) -> None:
    longest_stream, longest_type = "s" * 200, "T" * 200

    store.append(longest_stream, [stoic.NewEvent(longest_type)])

    (event,) = store.read_all()
    assert (event.stream_id, event.type) == (longest_stream, longest_type)
    assert store.read_stream(longest_stream) == [event]


def blob(size: int) -> dict[str, str]:
    """Data whose compact JSON encoding is exactly ``size`` bytes: {"b":"..."}."""
    return {"b": "x" * (size - len('{"b":""}'))}


def test_the_default_size_limit_is_one_mebibyte(store: stoic.Store) -> None:
    assert MAX_EVENT_BYTES == 1024 * 1024
    store.append("acc", [stoic.NewEvent("Fits", blob(MAX_EVENT_BYTES))])
    before = snapshot(store)

    with pytest.raises(stoic.EventTooLarge) as info:
        store.append("acc", [GOOD, stoic.NewEvent("Huge", blob(MAX_EVENT_BYTES + 1))])

    error = info.value
    assert isinstance(error, stoic.InvalidEvent)
    assert (error.size, error.limit) == (MAX_EVENT_BYTES + 1, MAX_EVENT_BYTES)  # type: ignore[attr-defined]
    for fragment in ("'acc'", "event 1 (Huge)", str(MAX_EVENT_BYTES + 1), str(MAX_EVENT_BYTES)):
        assert fragment in str(error)
    assert snapshot(store) == before
    assert len(store.read_all()[0].data["b"]) == MAX_EVENT_BYTES - 8


@pytest.mark.parametrize("how", ["option", "url"])
@pytest.mark.parametrize("backend", ["sqlite-memory", "sqlite-file", "postgres"])
def test_a_custom_size_limit(make_url: Callable[[str], str], backend: str, how: str) -> None:
    url = make_url(backend)
    if how == "url":
        url += ("&" if "?" in url else "?") + "max_event_bytes=100"
        store = stoic.connect(url)
    else:
        store = stoic.connect(url, max_event_bytes=100)
    try:
        store.append("acc", [stoic.NewEvent("Fits", blob(100))])
        store.append("acc", [stoic.NewEvent("FitsToo", blob(60), metadata=blob(40))])
        before = snapshot(store)

        with pytest.raises(stoic.EventTooLarge) as info:
            store.append("acc", [stoic.NewEvent("Big", blob(101))])
        assert "100" in str(info.value) and "101" in str(info.value)
        # metadata counts towards the limit too
        with pytest.raises(stoic.EventTooLarge):
            store.append("acc", [stoic.NewEvent("Big", blob(60), metadata=blob(41))])
        # the size is in UTF-8 bytes, not characters: "é" is two bytes
        with pytest.raises(stoic.EventTooLarge):
            store.append("acc", [stoic.NewEvent("Big", {"b": "é" * 50})])

        assert snapshot(store) == before
    finally:
        store.close()
