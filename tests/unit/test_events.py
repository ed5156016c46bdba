"""stoic.events: validation helpers, encoding, NewEvent/AppendResult, and the
lazily decoded RecordedEvent."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

import stoic
from stoic.events import (
    MAX_EVENT_BYTES,
    MAX_STREAM_ID_CHARS,
    MAX_TYPE_CHARS,
    encode_events,
    validate_expected,
    validate_stream_id,
)

# -- validate_stream_id --------------------------------------------------------------


@pytest.mark.parametrize("stream_id", ["a", "account-1", "x" * MAX_STREAM_ID_CHARS, "ünïcødé ✓", " "])
def test_valid_stream_ids_are_returned(stream_id: str) -> None:
    assert validate_stream_id(stream_id) == stream_id


@pytest.mark.parametrize(
    ("stream_id", "fragment"),
    [
        ("", "non-empty string, got ''"),
        (None, "got None"),
        (42, "got 42"),
        (b"bytes", "got b'bytes'"),
        ("x" * (MAX_STREAM_ID_CHARS + 1), f"{MAX_STREAM_ID_CHARS + 1} characters long, the limit is 200"),
        ("nul\x00inside", "NUL"),
        ("\udc80", "not valid Unicode"),
    ],
)
def test_invalid_stream_ids_raise_invalid_event(stream_id: object, fragment: str) -> None:
    with pytest.raises(stoic.InvalidEvent) as info:
        validate_stream_id(stream_id, where="somewhere")
    message = str(info.value)
    assert message.startswith("somewhere: ")
    assert "stream id" in message
    assert fragment in message
    assert info.value.where == "somewhere"  # type: ignore[attr-defined]


# -- validate_expected ---------------------------------------------------------------


@pytest.mark.parametrize("expected", [0, 1, 7, 2**63 - 1, stoic.NO_STREAM, stoic.ANY])
def test_valid_expected_versions_are_returned(expected: object) -> None:
    assert validate_expected(expected, "here") is expected


@pytest.mark.parametrize("expected", [-1, "3", True, False, 1.0, None, 2**63, [1], "ANY"])
def test_invalid_expected_versions_raise(expected: object) -> None:
    with pytest.raises(stoic.InvalidEvent) as info:
        validate_expected(expected, "stream 'acc'")
    assert str(info.value).startswith("stream 'acc': expected_version must be")
    assert repr(expected) in str(info.value)


# -- encode_events -------------------------------------------------------------------


def test_encoding_is_compact_json_and_keeps_unicode() -> None:
    given_id = uuid.uuid4()
    (plain, with_id) = encode_events(
        "acc",
        [
            stoic.NewEvent("Opened", {"owner": "Zoë", "n": [1, 2]}),
            stoic.NewEvent("Noted", {}, metadata={"by": "ann"}, event_id=given_id),
        ],
    )
    assert (plain.type, plain.data, plain.metadata) == ("Opened", '{"owner":"Zoë","n":[1,2]}', None)
    assert not plain.client_supplied_id
    assert uuid.UUID(plain.event_id).version == 4
    assert (with_id.data, with_id.metadata) == ("{}", '{"by":"ann"}')
    assert with_id.event_id == str(given_id)
    assert with_id.client_supplied_id


def test_generated_event_ids_are_unique() -> None:
    encoded = encode_events("acc", [stoic.NewEvent("E") for _ in range(200)])
    assert len({e.event_id for e in encoded}) == 200


def test_an_empty_list_encodes_to_nothing() -> None:
    assert encode_events("acc", []) == []
    assert encode_events("acc", ()) == []


@pytest.mark.parametrize(
    ("events", "fragments"),
    [
        ("not a list", ["stream 'acc': events must be a list"]),
        (stoic.NewEvent("E"), ["events must be a list"]),
        ([stoic.NewEvent("E"), {"type": "E"}], ["stream 'acc', event 1: expected stoic.NewEvent, got dict"]),
        ([stoic.NewEvent("")], ["event 0", "event type must be a non-empty string"]),
        ([stoic.NewEvent(None)], ["event 0", "event type", "None"]),  # type: ignore[arg-type]
        (
            [stoic.NewEvent("T" * (MAX_TYPE_CHARS + 1))],
            ["event type is 201 characters long, the limit is 200"],
        ),
        ([stoic.NewEvent("A\x00B")], ["event type", "NUL"]),
        ([stoic.NewEvent("E", {"x": {1}})], ["event 0 (E): data is not JSON-serialisable"]),
        (
            [stoic.NewEvent("E", {"x": datetime(2024, 1, 1)})],
            ["(E): data is not JSON-serialisable", "datetime"],
        ),
        ([stoic.NewEvent("E", {"x": math.nan})], ["(E): data is not JSON-serialisable"]),
        ([stoic.NewEvent("E", {"x": -math.inf})], ["(E): data is not JSON-serialisable"]),
        ([stoic.NewEvent("E", [1])], ["(E): data must be a JSON object (a dict), got list"]),  # type: ignore[arg-type]
        ([stoic.NewEvent("E", "text")], ["data must be a JSON object", "got str"]),  # type: ignore[arg-type]
        ([stoic.NewEvent("E", {"s": "\x00"})], ["(E): data contains a NUL character"]),
        ([stoic.NewEvent("E", {"\x00key": 1})], ["(E): data contains a NUL character"]),
        ([stoic.NewEvent("E", {"s": "\ud83d"})], ["(E): data is not valid Unicode"]),
        ([stoic.NewEvent("E", {}, {"t": {1}})], ["(E): metadata is not JSON-serialisable"]),
        ([stoic.NewEvent("E", {}, ("a",))], ["(E): metadata must be a JSON object"]),  # type: ignore[arg-type]
        (
            [stoic.NewEvent("E", event_id="8c1f7e4c-5a0e-4a51-9f55-0a3f1c8d2b6e")],
            ["(E): event_id must be a uuid.UUID"],
        ),  # type: ignore[arg-type]
    ],
)
def test_invalid_events_raise_invalid_event_saying_what_and_where(
    events: object, fragments: list[str]
) -> None:
    with pytest.raises(stoic.InvalidEvent) as info:
        encode_events("acc", events)
    assert type(info.value) is stoic.InvalidEvent
    for fragment in fragments:
        assert fragment in str(info.value)


def test_an_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    (event,) = encode_events("acc", [stoic.NewEvent("E", {"path": "C:\\u0000", "odd": "\\\\u0000"})])
    assert json.loads(event.data) == {"path": "C:\\u0000", "odd": "\\\\u0000"}


def test_the_same_event_id_twice_in_one_append_is_rejected() -> None:
    same = uuid.uuid4()
    with pytest.raises(stoic.InvalidEvent, match="the same event_id appears twice"):
        encode_events("acc", [stoic.NewEvent("A", event_id=same), stoic.NewEvent("B", event_id=same)])


def sized(size: int) -> dict[str, str]:
    """Data whose compact JSON is exactly ``size`` bytes."""
    return {"b": "x" * (size - len('{"b":""}'))}


def test_the_size_limit_is_inclusive_and_counts_data_and_metadata() -> None:
    assert len(encode_events("acc", [stoic.NewEvent("E", sized(100))], max_event_bytes=100)) == 1
    assert len(encode_events("acc", [stoic.NewEvent("E", sized(50), sized(50))], max_event_bytes=100)) == 1
    with pytest.raises(stoic.EventTooLarge) as info:
        encode_events(
            "acc", [stoic.NewEvent("E"), stoic.NewEvent("Big", sized(50), sized(51))], max_event_bytes=100
        )
    error = info.value
    assert isinstance(error, stoic.InvalidEvent)
    assert (error.size, error.limit, error.where) == (101, 100, "stream 'acc', event 1 (Big)")  # type: ignore[attr-defined]
    assert str(error) == "stream 'acc', event 1 (Big): encoded size 101 bytes is over the limit of 100 bytes"


def test_the_size_is_counted_in_utf8_bytes() -> None:
    data = {"b": "é" * 46}  # 46 characters, 92 bytes; {"b":""} adds 8
    assert len(encode_events("acc", [stoic.NewEvent("E", data)], max_event_bytes=100)) == 1
    with pytest.raises(stoic.EventTooLarge):
        encode_events("acc", [stoic.NewEvent("E", data)], max_event_bytes=99)


def test_the_default_limit_is_one_mebibyte() -> None:
    assert MAX_EVENT_BYTES == 1024 * 1024
    encode_events("acc", [stoic.NewEvent("E", sized(MAX_EVENT_BYTES))])
    with pytest.raises(stoic.EventTooLarge):
        encode_events("acc", [stoic.NewEvent("E", sized(MAX_EVENT_BYTES + 1))])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_encoded_data_decodes_to_the_same_value_unless_rejected(data: dict[str, object]) -> None:
    try:
        (event,) = encode_events("acc", [stoic.NewEvent("E", data)])
    except stoic.InvalidEvent as error:
        # only strings no backend can store the same way are refused
        assert "NUL" in str(error) or "Unicode" in str(error)
        return
    assert json.loads(event.data) == data


# -- NewEvent and AppendResult ---------------------------------------------------------


def test_new_event_defaults_and_immutability() -> None:
    event = stoic.NewEvent("Opened")
    assert (event.type, event.data, event.metadata, event.event_id) == ("Opened", {}, None, None)
    with pytest.raises(AttributeError):
        event.type = "Closed"  # type: ignore[misc]


def test_append_result_first_and_last_positions() -> None:
    assert stoic.AppendResult("s", 3, (5, 6, 7)).first_position == 5
    assert stoic.AppendResult("s", 3, (5, 6, 7)).last_position == 7
    empty = stoic.AppendResult("s", 0, ())
    assert (empty.first_position, empty.last_position) == (None, None)


# -- RecordedEvent -------------------------------------------------------------------------

EVENT_ID = uuid.UUID("5f0c6f2e-8d8a-4a5e-9d0c-3c7b1e2a4f10")
WHEN = datetime(2024, 5, 17, 12, 30, 15, 250000, tzinfo=UTC)


def stored(**overrides: object) -> stoic.RecordedEvent:
    """A RecordedEvent as a backend builds it: JSON text, UUID text, epoch seconds."""
    fields: dict[str, object] = {
        "position": 7,
        "stream_id": "acc-1",
        "version": 3,
        "type": "Deposited",
        "event_id": str(EVENT_ID),
        "data": '{"amount":10}',
        "metadata": '{"by":"ann"}',
        "recorded_at": WHEN.timestamp(),
    }
    fields.update(overrides)
    return stoic.RecordedEvent(**fields)  # type: ignore[arg-type]


def test_stored_fields_are_decoded_on_access() -> None:
    event = stored()
    assert event.event_id == EVENT_ID and isinstance(event.event_id, uuid.UUID)
    assert event.data == {"amount": 10}
    assert event.metadata == {"by": "ann"}
    assert event.recorded_at == WHEN
    assert event.recorded_at.tzinfo is not None and event.recorded_at.utcoffset() == timedelta(0)
    assert (event.position, event.stream_id, event.version, event.type) == (7, "acc-1", 3, "Deposited")


def test_decoding_is_lazy() -> None:
    # Building an event with undecodable fields succeeds: nothing is decoded until asked.
    event = stored(data="{not json", event_id="not-a-uuid", metadata="[broken")
    assert event.position == 7 and event.type == "Deposited"
    with pytest.raises(json.JSONDecodeError):
        _ = event.data
    with pytest.raises(ValueError):
        _ = event.event_id
    with pytest.raises(json.JSONDecodeError):
        _ = event.metadata


def test_decoded_values_are_cached() -> None:
    event = stored()
    assert event.data is event.data
    assert event.metadata is event.metadata
    assert event.event_id is event.event_id
    assert event.recorded_at is event.recorded_at


def test_missing_metadata_is_an_empty_dict() -> None:
    assert stored(metadata=None).metadata == {}


def test_decoded_values_are_accepted_as_they_are() -> None:
    aware = datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=2)))
    event = stored(event_id=EVENT_ID, data={"a": 1}, metadata={"m": 2}, recorded_at=aware)
    assert (event.event_id, event.data, event.metadata, event.recorded_at) == (
        EVENT_ID,
        {"a": 1},
        {"m": 2},
        aware,
    )


def test_equality_compares_decoded_values() -> None:
    as_text = stored()
    as_values = stored(event_id=EVENT_ID, data={"amount": 10}, metadata={"by": "ann"}, recorded_at=WHEN)
    assert as_text == as_values
    assert hash(as_text) == hash(as_values)
    assert len({as_text, as_values}) == 1
    assert stored(metadata=None) == stored(metadata="{}")


@pytest.mark.parametrize(
    "change",
    [
        {"position": 8},
        {"stream_id": "acc-2"},
        {"version": 4},
        {"type": "Withdrawn"},
        {"event_id": str(uuid.uuid4())},
        {"data": '{"amount":11}'},
        {"metadata": '{"by":"bob"}'},
    ],
)
def test_events_differing_in_a_field_are_not_equal(change: dict[str, object]) -> None:
    assert stored() != stored(**change)


def test_a_recorded_event_is_not_equal_to_other_types() -> None:
    assert stored() != (7, "acc-1")
    assert stored().__eq__("x") is NotImplemented


def test_repr_names_the_event() -> None:
    text = repr(stored())
    for fragment in ("position=7", "stream_id='acc-1'", "version=3", "type='Deposited'", str(EVENT_ID)):
        assert fragment in text
