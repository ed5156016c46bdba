"""Appending and reading: positions are 1-based, gap-free and increasing across
streams; versions are 1-based per stream; every RecordedEvent field round-trips."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import stoic

from ._helpers import ev, rows


def test_an_empty_store_has_nothing(store: stoic.Store) -> None:
    assert store.head() == 0
    assert store.read_all() == []
    assert list(store.iter_all()) == []
    assert store.stream_version("nobody") == 0
    assert store.read_stream("nobody") == []


def test_append_returns_the_new_version_and_positions(store: stoic.Store) -> None:
    result = store.append("acc-1", [ev("Opened"), ev("Deposited", amount=5), ev("Deposited", amount=7)])

    assert result == stoic.AppendResult("acc-1", 3, (1, 2, 3))
    assert (result.first_position, result.last_position) == (1, 3)
    assert store.head() == 3
    assert store.stream_version("acc-1") == 3

    second = store.append("acc-1", [ev("Withdrawn", amount=2)], expected_version=3)
    assert second == stoic.AppendResult("acc-1", 4, (4,))


def test_positions_are_gap_free_and_versions_count_per_stream(store: stoic.Store) -> None:
    plan = [("a", 2), ("b", 1), ("a", 3), ("c", 1), ("b", 2), ("a", 1)]
    for stream, n in plan:
        store.append(stream, [ev("Tick", stream=stream, i=i) for i in range(n)])

    events = store.read_all()
    assert [e.position for e in events] == list(range(1, 11))
    assert store.head() == 10
    for stream, total in (("a", 6), ("b", 3), ("c", 1)):
        versions = [e.version for e in events if e.stream_id == stream]
        assert versions == list(range(1, total + 1))
        assert store.stream_version(stream) == total
    # Global order is append order: the streams interleave as they were appended.
    assert [e.stream_id for e in events] == ["a", "a", "b", "a", "a", "a", "c", "b", "b", "a"]


def test_recorded_event_fields(store: stoic.Store) -> None:
    given_id = uuid.uuid4()
    before = datetime.now(UTC)
    store.append("acc-9", [ev("Opened", owner="Ann")])
    store.append(
        "acc-9",
        [
            stoic.NewEvent(
                "Deposited", {"amount": 10}, metadata={"user": "ann", "ip": "10.0.0.1"}, event_id=given_id
            )
        ],
        expected_version=1,
    )
    after = datetime.now(UTC)

    first, second = store.read_all()
    assert isinstance(first.event_id, uuid.UUID) and isinstance(second.event_id, uuid.UUID)
    assert first.event_id != second.event_id
    assert second.event_id == given_id
    assert (first.stream_id, first.version, first.type, first.position) == ("acc-9", 1, "Opened", 1)
    assert (second.stream_id, second.version, second.type, second.position) == ("acc-9", 2, "Deposited", 2)
    assert first.data == {"owner": "Ann"}
    assert first.metadata == {}  # no metadata given: an empty dict, not None
    assert second.data == {"amount": 10}
    assert second.metadata == {"user": "ann", "ip": "10.0.0.1"}
    for event in (first, second):
        assert event.recorded_at.tzinfo is not None
        assert event.recorded_at.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=5) <= event.recorded_at <= after + timedelta(seconds=5)


def test_data_round_trips(store: stoic.Store) -> None:
    payload = {
        "text": 'héllo ✓ 😀 "quoted" back\\slash \n newline',
        "int": -42,
        "big": 2**70,
        "float": 1.5,
        "tiny": 0.1,
        "bool": True,
        "none": None,
        "list": [1, "two", [3.25, {"four": 4}]],
        "nested": {"a": {"b": {"c": []}}},
        "empty": {},
        "percent": "100% ?",
    }
    store.append("s", [stoic.NewEvent("Everything", payload, metadata={"nested": {"x": [1, 2]}})])

    (event,) = store.read_all()
    assert event.data == payload
    assert event.metadata == {"nested": {"x": [1, 2]}}
    assert store.read_stream("s")[0].data == payload


def test_read_all_after_a_position_continues(store: stoic.Store) -> None:
    for i in range(7):
        store.append(f"s-{i % 3}", [ev("E", i=i)])
    everything = store.read_all()

    assert store.read_all(after=3) == everything[3:]
    assert store.read_all(after=7) == []
    assert store.read_all(after=100) == []
    paged, after = [], 0
    while batch := store.read_all(after=after, limit=2):
        assert len(batch) <= 2
        paged.extend(batch)
        after = batch[-1].position
    assert rows(paged) == rows(everything)


def test_limit_is_respected(store: stoic.Store) -> None:
    store.append("s", [ev("E", i=i) for i in range(5)])

    assert [e.position for e in store.read_all(limit=1)] == [1]
    assert [e.position for e in store.read_all(after=1, limit=3)] == [2, 3, 4]
    assert len(store.read_all(limit=500)) == 5
    assert [e.version for e in store.read_stream("s", limit=2)] == [1, 2]


def test_read_stream_from_a_version(store: stoic.Store) -> None:
    store.append("a", [ev("E", i=i) for i in range(4)])
    store.append("b", [ev("E", i=i) for i in range(2)])
    store.append("a", [ev("E", i=i) for i in range(4, 6)])

    stream = store.read_stream("a")
    assert [e.version for e in stream] == [1, 2, 3, 4, 5, 6]
    assert [e.data["i"] for e in stream] == [0, 1, 2, 3, 4, 5]
    assert stream == [e for e in store.read_all() if e.stream_id == "a"]
    assert [e.version for e in store.read_stream("a", from_version=4)] == [4, 5, 6]
    assert [e.version for e in store.read_stream("a", from_version=3, limit=2)] == [3, 4]
    assert store.read_stream("a", from_version=7) == []


def test_iter_all_yields_every_event_batch_by_batch(store: stoic.Store) -> None:
    store.append("s", [ev("E", i=i) for i in range(7)])

    assert [e.position for e in store.iter_all(batch_size=2)] == list(range(1, 8))
    assert [e.position for e in store.iter_all(after=5, batch_size=2)] == [6, 7]
    assert [e.position for e in store.iter_all(batch_size=7)] == list(range(1, 8))
    assert list(store.iter_all(after=7)) == []


def test_stream_ids_are_exact(store: stoic.Store) -> None:
    store.append("Account-1", [ev("E")])
    store.append("account-1", [ev("E"), ev("E")])
    store.append("account-1 ", [ev("E")])

    assert store.stream_version("Account-1") == 1
    assert store.stream_version("account-1") == 2
    assert store.stream_version("account-1 ") == 1
    assert store.stream_version("account-") == 0


def test_empty_append_writes_nothing(store: stoic.Store) -> None:
    store.append("a", [ev("E")])

    assert store.append("a", [], expected_version=1) == stoic.AppendResult("a", 1, ())
    assert store.append("new", [], expected_version=stoic.NO_STREAM) == stoic.AppendResult("new", 0, ())
    assert store.head() == 1
    assert store.stream_version("new") == 0


def test_query_reads_and_writes_with_qmark_placeholders(store: stoic.Store) -> None:
    store.append("a", [ev("E"), ev("F")])
    store.append("b", [ev("E")])

    assert store.query("SELECT count(*) FROM stoic_events WHERE stream_id = ?", ("a",)) == [(2,)]
    assert store.query("SELECT count(*) FROM stoic_events WHERE type = ? AND stream_id = ?", ("E", "b")) == [
        (1,)
    ]
    store.query("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    store.query("INSERT INTO notes (id, body) VALUES (?, ?)", (1, "it's 100% done?"))
    store.query("INSERT INTO notes (id, body) VALUES (?, 'literal ? and 50%')", (2,))
    assert store.query("SELECT id, body FROM notes ORDER BY id") == [
        (1, "it's 100% done?"),
        (2, "literal ? and 50%"),
    ]
    assert store.query("SELECT 7 % 4") == [(3,)]
    assert store.query("SELECT ? % 4 -- remainder, 100%\n", (7,)) == [(3,)]
