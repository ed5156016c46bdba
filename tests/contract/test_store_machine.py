"""A Hypothesis state machine: random appends (single and multi-stream, with
right and wrong expected versions, fresh and retried event ids) against a
Python model of the log; after every step the store must read back exactly the
model."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import stoic

STREAMS = ("acc-a", "acc-b", "acc-c")
HOW = ("exact", "any", "no_stream", "wrong")

Model = list[tuple[str, int, str, dict[str, Any], uuid.UUID | None]]


class StoreMachine(RuleBasedStateMachine):
    make_url: Callable[[], str]

    def __init__(self) -> None:
        super().__init__()
        self.store = stoic.connect(type(self).make_url())
        self.model: Model = []  # (stream, version, type, data, event_id if client-supplied)
        self.counter = 0
        self.last: tuple[list[Any], list[stoic.AppendResult]] | None = None

    def teardown(self) -> None:
        self.store.close()

    # -- helpers ---------------------------------------------------------------------

    def version(self, stream: str) -> int:
        return sum(1 for e in self.model if e[0] == stream)

    def new_events(self, n: int, client_ids: bool) -> list[stoic.NewEvent]:
        events = []
        for _ in range(n):
            self.counter += 1
            event_id = uuid.uuid4() if client_ids else None
            events.append(stoic.NewEvent(f"T{self.counter % 3}", {"n": self.counter}, event_id=event_id))
        return events

    def expected_for(self, stream: str, how: str, delta: int) -> tuple[object, bool]:
        """An expected_version of the given kind, and whether it matches."""
        current = self.version(stream)
        if how == "exact":
            return current, True
        if how == "any":
            return stoic.ANY, True
        if how == "no_stream":
            return stoic.NO_STREAM, current == 0
        wrong = current + delta if current + delta >= 0 else current + 1
        return wrong, False

    def record(self, stream: str, events: list[stoic.NewEvent]) -> stoic.AppendResult:
        head, version = len(self.model), self.version(stream)
        for i, event in enumerate(events, 1):
            self.model.append((stream, version + i, event.type, dict(event.data), event.event_id))
        return stoic.AppendResult(
            stream, version + len(events), tuple(range(head + 1, head + 1 + len(events)))
        )

    # -- rules -------------------------------------------------------------------------

    @rule(
        stream=st.sampled_from(STREAMS),
        n=st.integers(0, 3),
        how=st.sampled_from(HOW),
        delta=st.sampled_from([-2, -1, 1, 2]),
        client_ids=st.booleans(),
    )
    def append(self, stream: str, n: int, how: str, delta: int, client_ids: bool) -> None:
        expected, matches = self.expected_for(stream, how, delta)
        events = self.new_events(n, client_ids)
        if matches:
            result = self.store.append(stream, events, expected_version=expected)  # type: ignore[arg-type]
            assert result == self.record(stream, events)
            if client_ids and n:
                self.last = ([(stream, events, expected)], [result])
        else:
            actual = self.version(stream)
            try:
                self.store.append(stream, events, expected_version=expected)  # type: ignore[arg-type]
            except stoic.ConcurrencyError as error:
                assert (error.stream_id, error.actual) == (stream, actual)
            else:
                raise AssertionError(f"append to {stream} at {expected} (actual {actual}) did not raise")

    @rule(
        streams=st.lists(st.sampled_from(STREAMS), min_size=1, max_size=3, unique=True),
        sizes=st.lists(st.integers(1, 2), min_size=3, max_size=3),
        wrong=st.one_of(st.none(), st.integers(0, 2)),
        client_ids=st.booleans(),
    )
    def append_many(self, streams: list[str], sizes: list[int], wrong: int | None, client_ids: bool) -> None:
        items = []
        for i, stream in enumerate(streams):
            expected, _ = self.expected_for(stream, "wrong" if i == wrong else "exact", 1)
            items.append((stream, self.new_events(sizes[i], client_ids), expected))
        if wrong is None or wrong >= len(streams):
            results = self.store.append_many(items)
            assert results == [self.record(stream, events) for stream, events, _ in items]
            if client_ids:
                self.last = (items, results)
        else:
            try:
                self.store.append_many(items)
            except stoic.ConcurrencyError as error:
                assert error.stream_id == streams[wrong]
            else:
                raise AssertionError("append_many with a wrong expected version did not raise")

    @precondition(lambda self: self.last is not None)
    @rule()
    def retry_last_append(self) -> None:
        assert self.last is not None
        items, results = self.last
        if len(items) == 1:
            stream, events, expected = items[0]
            assert self.store.append(stream, events, expected_version=expected) == results[0]
        else:
            assert self.store.append_many(items) == results

    # -- the invariant ---------------------------------------------------------------

    @invariant()
    def reads_match_the_model(self) -> None:
        events = self.store.read_all(0, 10_000)
        assert self.store.head() == len(self.model)
        assert [e.position for e in events] == list(range(1, len(self.model) + 1))
        got = [(e.stream_id, e.version, e.type, e.data) for e in events]
        assert got == [m[:4] for m in self.model]
        for event, modelled in zip(events, self.model, strict=True):
            if modelled[4] is not None:
                assert event.event_id == modelled[4]
        for stream in STREAMS:
            assert self.store.stream_version(stream) == self.version(stream)
            assert self.store.read_stream(stream) == [e for e in events if e.stream_id == stream]


@pytest.mark.parametrize("backend", ["sqlite-memory", "sqlite-file", "postgres"])
def test_store_matches_a_model(backend: str, make_url: Callable[[str], str]) -> None:
    make_url(backend)  # skips early when the backend is unavailable

    class Machine(StoreMachine):
        pass

    Machine.make_url = staticmethod(lambda: make_url(backend))  # type: ignore[assignment]
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=25,
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
