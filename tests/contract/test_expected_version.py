"""Optimistic concurrency: an int version, NO_STREAM or ANY. A mismatch raises
ConcurrencyError with its facts and leaves the store exactly as it was."""

from __future__ import annotations

import pytest

import stoic

from ._helpers import ev, snapshot


def test_no_stream_appends_to_a_new_stream(store: stoic.Store) -> None:
    result = store.append("acc", [ev("Opened")], expected_version=stoic.NO_STREAM)
    assert result == stoic.AppendResult("acc", 1, (1,))


def test_zero_means_the_stream_does_not_exist(store: stoic.Store) -> None:
    assert store.append("acc", [ev("Opened")], expected_version=0).version == 1
    with pytest.raises(stoic.ConcurrencyError) as info:
        store.append("acc", [ev("Opened")], expected_version=0)
    assert (info.value.stream_id, info.value.expected, info.value.actual) == ("acc", 0, 1)


def test_the_current_version_is_accepted(store: stoic.Store) -> None:
    store.append("acc", [ev("Opened"), ev("Deposited", amount=1)])
    assert store.append("acc", [ev("Deposited", amount=2)], expected_version=2) == stoic.AppendResult(
        "acc", 3, (3,)
    )
    assert store.append("acc", [ev("Deposited", amount=3)], expected_version=3).version == 4


def test_any_appends_whatever_the_version(store: stoic.Store) -> None:
    assert store.append("acc", [ev("A")], expected_version=stoic.ANY).version == 1
    assert store.append("acc", [ev("B"), ev("C")], expected_version=stoic.ANY).version == 3
    assert store.append("acc", [ev("D")]).version == 4  # ANY is the default


@pytest.mark.parametrize(
    ("expected", "described"),
    [(1, "1"), (3, "3"), (99, "99"), (0, "0"), (stoic.NO_STREAM, "NO_STREAM")],
)
def test_a_mismatch_raises_with_facts_and_writes_nothing(
    store: stoic.Store, expected: object, described: str
) -> None:
    store.append("acc-7", [ev("Opened"), ev("Deposited", amount=5)])
    store.append("other", [ev("Opened")])
    before = snapshot(store)

    with pytest.raises(stoic.ConcurrencyError) as info:
        store.append(
            "acc-7", [ev("Deposited", amount=1), ev("Deposited", amount=2)], expected_version=expected
        )

    error = info.value
    assert isinstance(error, stoic.PermanentError)
    assert error.stream_id == "acc-7"
    assert error.actual == 2
    if expected is stoic.NO_STREAM:
        assert error.expected in ("NO_STREAM", stoic.NO_STREAM)
    else:
        assert error.expected == expected
    message = str(error)
    assert "'acc-7'" in message
    assert f"expected version {described}" in message
    assert "actual version 2" in message
    assert snapshot(store) == before
    assert store.stream_version("acc-7") == 2


def test_a_mismatch_on_a_new_stream_reports_actual_zero(store: stoic.Store) -> None:
    with pytest.raises(stoic.ConcurrencyError) as info:
        store.append("ghost", [ev("Opened")], expected_version=4)
    assert (info.value.stream_id, info.value.expected, info.value.actual) == ("ghost", 4, 0)
    assert store.head() == 0
    assert store.read_stream("ghost") == []


def test_an_empty_append_still_checks_the_version(store: stoic.Store) -> None:
    store.append("acc", [ev("Opened")])
    before = snapshot(store)

    with pytest.raises(stoic.ConcurrencyError) as info:
        store.append("acc", [], expected_version=5)
    assert (info.value.stream_id, info.value.actual) == ("acc", 1)
    with pytest.raises(stoic.ConcurrencyError):
        store.append("acc", [], expected_version=stoic.NO_STREAM)
    assert snapshot(store) == before


def test_after_a_mismatch_the_right_version_succeeds(store: stoic.Store) -> None:
    store.append("acc", [ev("Opened")])
    with pytest.raises(stoic.ConcurrencyError):
        store.append("acc", [ev("Deposited", amount=1)], expected_version=0)

    result = store.append("acc", [ev("Deposited", amount=1)], expected_version=1)
    assert result == stoic.AppendResult("acc", 2, (2,))
    assert [e.position for e in store.read_all()] == [1, 2]
