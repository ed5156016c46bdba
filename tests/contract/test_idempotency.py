"""A retried append (same client-supplied event ids) returns the stored result
and writes nothing; an append that only partly overlaps stored ids is a conflict."""

from __future__ import annotations

import uuid

import pytest

import stoic

from ._helpers import ev, snapshot


def with_ids(*types: str) -> list[stoic.NewEvent]:
    return [stoic.NewEvent(t, {"n": i}, event_id=uuid.uuid4()) for i, t in enumerate(types)]


@pytest.mark.parametrize("expected", [stoic.NO_STREAM, 0, stoic.ANY])
def test_a_retried_append_returns_the_same_result_and_writes_nothing(
    store: stoic.Store, expected: object
) -> None:
    store.append("before", [ev("X")])
    events = with_ids("Opened", "Deposited", "Deposited")
    first = store.append("acc", events, expected_version=expected)  # type: ignore[arg-type]
    before = snapshot(store)

    again = store.append("acc", events, expected_version=expected)  # type: ignore[arg-type]

    assert again == first == stoic.AppendResult("acc", 3, (2, 3, 4))
    assert snapshot(store) == before


@pytest.mark.parametrize("expected", [stoic.NO_STREAM, 0, stoic.ANY])
def test_a_retry_after_the_stream_moved_on_returns_the_original_result(
    store: stoic.Store, expected: object
) -> None:
    events = with_ids("Opened", "Deposited")
    first = store.append("acc", events, expected_version=expected)  # type: ignore[arg-type]
    store.append("acc", [ev("Deposited", amount=3)], expected_version=2)
    store.append("other", [ev("X")])
    before = snapshot(store)

    # The expected version would now mismatch (or, for ANY, append again): neither happens.
    again = store.append("acc", events, expected_version=expected)  # type: ignore[arg-type]

    assert again == first == stoic.AppendResult("acc", 2, (1, 2))
    assert snapshot(store) == before


def test_append_many_retry_returns_the_same_results(store: stoic.Store) -> None:
    a, b = with_ids("Withdrawn"), with_ids("Deposited", "Noted")
    store.append("src", [ev("Opened")])
    store.append("dst", [ev("Opened")])
    items = [("src", a, 1), ("dst", b, 1)]
    first = store.append_many(items)  # type: ignore[arg-type]
    store.append("dst", [ev("Deposited", amount=1)])
    before = snapshot(store)

    again = store.append_many(items)  # type: ignore[arg-type]

    assert again == first == [stoic.AppendResult("src", 2, (3,)), stoic.AppendResult("dst", 3, (4, 5))]
    assert snapshot(store) == before


def test_a_partly_stored_id_set_is_a_conflict(store: stoic.Store) -> None:
    stored = with_ids("Opened")
    store.append("acc", stored)
    before = snapshot(store)

    with pytest.raises(stoic.DuplicateEventId) as info:
        store.append("acc", [stored[0], stoic.NewEvent("Deposited", {"amount": 1}, event_id=uuid.uuid4())])

    assert isinstance(info.value, stoic.PermanentError)
    assert "'acc'" in str(info.value)
    assert "nothing was written" in str(info.value)
    assert snapshot(store) == before


def test_a_partly_stored_id_set_is_a_conflict_in_append_many(store: stoic.Store) -> None:
    stored = with_ids("Opened")
    store.append("acc", stored)
    before = snapshot(store)

    with pytest.raises(stoic.DuplicateEventId):
        store.append_many([("acc", stored, stoic.ANY), ("new", with_ids("Opened"), stoic.NO_STREAM)])

    assert snapshot(store) == before
    assert store.stream_version("new") == 0


def test_an_id_stored_in_another_stream_is_a_conflict(store: stoic.Store) -> None:
    stored = with_ids("Opened")
    store.append("acc", stored)
    before = snapshot(store)

    with pytest.raises(stoic.DuplicateEventId) as info:
        store.append("elsewhere", stored)

    assert "'elsewhere'" in str(info.value)
    assert snapshot(store) == before


def test_ids_generated_by_the_store_never_deduplicate(store: stoic.Store) -> None:
    events = [ev("Deposited", amount=1)]  # no event_id: the store makes a fresh one each time
    store.append("acc", events)
    store.append("acc", events)

    stored = store.read_all()
    assert len(stored) == 2
    assert stored[0].event_id != stored[1].event_id
