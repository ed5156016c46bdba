"""append_many: several streams in one transaction, all or nothing."""

from __future__ import annotations

import pytest

import stoic

from ._helpers import ev, snapshot


def test_append_many_writes_every_stream_in_order(store: stoic.Store) -> None:
    store.append("src", [ev("Opened"), ev("Deposited", amount=100)])
    store.append("dst", [ev("Opened")])

    results = store.append_many(
        [
            ("src", [ev("Withdrawn", amount=30, to="dst")], 2),
            ("dst", [ev("Deposited", amount=30, source="src")], 1),
            ("log", [ev("Transferred", amount=30), ev("Audited")], stoic.NO_STREAM),
        ]
    )

    assert results == [
        stoic.AppendResult("src", 3, (4,)),
        stoic.AppendResult("dst", 2, (5,)),
        stoic.AppendResult("log", 2, (6, 7)),
    ]
    events = store.read_all()
    assert [(e.position, e.stream_id, e.version, e.type) for e in events[3:]] == [
        (4, "src", 3, "Withdrawn"),
        (5, "dst", 2, "Deposited"),
        (6, "log", 1, "Transferred"),
        (7, "log", 2, "Audited"),
    ]
    assert store.head() == 7


def test_append_many_of_nothing_returns_nothing(store: stoic.Store) -> None:
    store.append("a", [ev("E")])
    assert store.append_many([]) == []
    assert store.head() == 1


@pytest.mark.parametrize("bad", [0, 1, 2])
def test_one_wrong_version_writes_nothing_anywhere(store: stoic.Store, bad: int) -> None:
    for stream in ("s0", "s1", "s2"):
        store.append(stream, [ev("Opened")])
    before = snapshot(store)
    items = [(f"s{i}", [ev("Deposited", amount=i), ev("Noted")], 5 if i == bad else 1) for i in range(3)]

    with pytest.raises(stoic.ConcurrencyError) as info:
        store.append_many(items)  # type: ignore[arg-type]

    assert info.value.stream_id == f"s{bad}"
    assert (info.value.expected, info.value.actual) == (5, 1)
    assert f"'s{bad}'" in str(info.value)
    assert snapshot(store) == before
    assert [store.stream_version(s) for s in ("s0", "s1", "s2")] == [1, 1, 1]


def test_no_stream_on_an_existing_stream_writes_nothing_anywhere(store: stoic.Store) -> None:
    store.append("exists", [ev("Opened")])
    before = snapshot(store)

    with pytest.raises(stoic.ConcurrencyError) as info:
        store.append_many(
            [("fresh", [ev("Opened")], stoic.NO_STREAM), ("exists", [ev("Opened")], stoic.NO_STREAM)]
        )

    assert info.value.stream_id == "exists"
    assert snapshot(store) == before
    assert store.stream_version("fresh") == 0


def test_append_many_continues_positions_after_single_appends(store: stoic.Store) -> None:
    store.append("a", [ev("E")])
    store.append_many([("b", [ev("E")], stoic.ANY), ("c", [ev("E")], stoic.ANY)])
    store.append("a", [ev("E")])

    assert [(e.position, e.stream_id, e.version) for e in store.read_all()] == [
        (1, "a", 1),
        (2, "b", 1),
        (3, "c", 1),
        (4, "a", 2),
    ]
