"""stoic.aggregate without a database: appliers, recording, invariants that
leave the aggregate untouched, folding history, retries and event ids."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stoic
from stoic import Aggregate, InvariantViolation, applies, command
from stoic.aggregate import TRANSIENT_RETRIES, Event, command_id_for, retry_on_conflict, save_all
from stoic.events import AppendResult, RecordedEvent


class Wallet(Aggregate):
    """Money in and out, never below zero nor above ``LIMIT``."""

    LIMIT = 1_000

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self.balance = 0
        self.history: list[int] = []

    @command
    def put(self, amount: int) -> None:
        self.require(amount > 0, "positive_amount", f"amount must be > 0, got {amount}")
        self.record("Put", {"amount": amount})

    @command
    def take(self, amount: int) -> None:
        self.require(amount > 0, "positive_amount", f"amount must be > 0, got {amount}")
        self.record("Taken", {"amount": amount})

    @command
    def move_twice(self, first: int, second: int) -> None:
        """Two events in one command: all or nothing."""
        self.put(first)
        self.take(second)

    def check_invariants(self) -> None:
        self.require(self.balance >= 0, "min_balance", f"balance {self.balance} below 0")
        self.require(self.balance <= self.LIMIT, "max_balance", f"balance {self.balance} above {self.LIMIT}")

    @applies("Put")
    def _put(self, event: Event) -> None:
        self.balance += event.data["amount"]
        self.history.append(event.data["amount"])

    @applies("Taken")
    def _taken(self, event: Event) -> None:
        self.balance -= event.data["amount"]
        self.history.append(-event.data["amount"])


def recorded(stream: str, version: int, type: str, **data: Any) -> RecordedEvent:
    return RecordedEvent(version, stream, version, type, uuid.uuid4(), data, None, 0.0)


# -- appliers -------------------------------------------------------------------------------


def test_appliers_are_registered_by_type_and_a_subclass_may_override_one() -> None:
    class Strict(Wallet):
        @applies("Put")
        def _put_twice(self, event: Event) -> None:
            self.balance += 2 * event.data["amount"]

    assert Wallet._appliers == {"Put": "_put", "Taken": "_taken"}
    assert Strict._appliers == {"Put": "_put_twice", "Taken": "_taken"}
    strict = Strict("s")
    strict.put(5)
    assert strict.balance == 10


def test_two_appliers_of_one_type_in_one_class_are_refused() -> None:
    with pytest.raises(stoic.ConfigurationError, match="'Put' is applied by both"):

        class Twice(Aggregate):
            @applies("Put")
            def a(self, event: Event) -> None: ...

            @applies("Put")
            def b(self, event: Event) -> None: ...


def test_applies_needs_a_type() -> None:
    with pytest.raises(stoic.ConfigurationError):
        applies()
    with pytest.raises(stoic.ConfigurationError):
        applies("")


# -- recording and invariants ---------------------------------------------------------------


def test_record_applies_at_once_and_queues_the_event_without_moving_the_version() -> None:
    wallet = Wallet("w-1")
    wallet.put(30)
    wallet.take(10)
    assert wallet.balance == 20
    assert [(e.type, dict(e.data)) for e in wallet.pending] == [("Put", {"amount": 30}), ("Taken", {"amount": 10})]
    assert wallet.version == 0
    assert not wallet.exists
    wallet.mark_saved(2)
    assert (wallet.pending, wallet.version, wallet.exists) == ((), 2, True)


def test_an_invariant_violation_names_the_rule_and_leaves_the_aggregate_unchanged() -> None:
    wallet = Wallet("w-1")
    wallet.put(50)
    before = (wallet.snapshot(), wallet.pending)
    with pytest.raises(InvariantViolation) as caught:
        wallet.take(80)
    error = caught.value
    assert (error.aggregate, error.stream_id, error.rule) == ("Wallet", "w-1", "min_balance")
    assert error.detail == "balance -30 below 0"
    assert "min_balance" in str(error) and "'w-1'" in str(error)
    assert isinstance(error, stoic.PermanentError)
    assert (wallet.snapshot(), wallet.pending) == before


def test_a_violation_without_a_command_decorator_still_restores_the_state() -> None:
    wallet = Wallet("w-1")
    with pytest.raises(InvariantViolation):
        wallet.record("Taken", {"amount": 1})
    assert (wallet.balance, wallet.history, wallet.pending) == (0, [], ())


def test_a_command_is_all_or_nothing_across_several_events() -> None:
    wallet = Wallet("w-1")
    wallet.put(100)
    with pytest.raises(InvariantViolation, match="min_balance"):
        wallet.move_twice(10, 500)  # the put is fine, the take is not: neither stays
    assert (wallet.balance, wallet.history, len(wallet.pending)) == (100, [100], 1)
    wallet.move_twice(10, 50)
    assert (wallet.balance, len(wallet.pending)) == (60, 3)


def test_an_unexpected_error_in_a_command_also_restores_the_state() -> None:
    class Buggy(Wallet):
        @command
        def crash(self) -> None:
            self.put(5)
            raise KeyError("bug")

    buggy = Buggy("b")
    with pytest.raises(KeyError):
        buggy.crash()
    assert (buggy.balance, buggy.pending) == (0, ())
    buggy.put(1)  # the command flag was reset: the next command snapshots again
    with pytest.raises(InvariantViolation):
        buggy.take(2)
    assert buggy.balance == 1


def test_a_command_that_catches_a_refusal_keeps_nothing_of_the_refused_event() -> None:
    class Careful(Wallet):
        @command
        def take_what_you_can(self, amount: int) -> None:
            try:
                self.take(amount)
            except InvariantViolation:
                self.take(self.balance)

    careful = Careful("c")
    careful.put(30)
    careful.take_what_you_can(100)
    assert (careful.balance, careful.history) == (0, [30, -30])
    assert [dict(e.data) for e in careful.pending] == [{"amount": 30}, {"amount": 30}]


def test_recording_a_type_without_an_applier_is_a_programming_error() -> None:
    with pytest.raises(stoic.ConfigurationError, match="no @applies method for 'Burnt'"):
        Wallet("w").record("Burnt", {})


def test_a_stream_id_is_validated() -> None:
    with pytest.raises(stoic.InvalidEvent):
        Wallet("")


# -- history ----------------------------------------------------------------------------------


def test_from_events_folds_history_and_counts_unknown_types() -> None:
    events = [
        recorded("w", 1, "Put", amount=5), recorded("w", 2, "Renamed", to="x"), recorded("w", 3, "Taken", amount=2)
    ]
    wallet = Wallet.from_events("w", events)
    assert (wallet.balance, wallet.version, wallet.exists, wallet.pending) == (3, 3, True, ())


def test_history_must_be_this_streams_next_version() -> None:
    wallet = Wallet("w")
    with pytest.raises(stoic.InvalidArgument, match="expected version 1"):
        wallet.apply(recorded("w", 2, "Put", amount=1))
    with pytest.raises(stoic.InvalidArgument):
        wallet.apply(recorded("other", 1, "Put", amount=1))
    wallet.put(1)
    with pytest.raises(stoic.InvalidArgument, match="pending"):
        wallet.apply(recorded("w", 1, "Put", amount=1))


def test_history_is_not_checked_against_invariants() -> None:
    # A stored event is a fact: a rule tightened later must not make the stream unloadable.
    wallet = Wallet.from_events("w", [recorded("w", 1, "Put", amount=Wallet.LIMIT * 5)])
    assert wallet.balance == Wallet.LIMIT * 5
    with pytest.raises(InvariantViolation, match="max_balance"):
        wallet.put(1)


commands = st.lists(st.tuples(st.sampled_from(["put", "take", "move_twice"]), st.integers(-5, 700),
                              st.integers(1, 700)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(commands)
def test_rebuilding_from_the_recorded_events_equals_the_live_aggregate(ops: list[tuple[str, int, int]]) -> None:
    live = Wallet("w")
    for name, a, b in ops:
        before = (live.snapshot(), live.pending)
        try:
            if name == "move_twice":
                live.move_twice(a, b)
            else:
                getattr(live, name)(a)
        except InvariantViolation:
            assert (live.snapshot(), live.pending) == before  # refused: unchanged
        assert 0 <= live.balance <= Wallet.LIMIT
    events = list(live.pending)
    rebuilt = Wallet.from_events("w", events)
    one_by_one = Wallet("w")
    for event in events:
        one_by_one.apply(event)
    assert rebuilt.snapshot() == one_by_one.snapshot() == {**live.snapshot(), "version": len(events)}


# -- saving: event ids, metadata, retries -------------------------------------------------------


class RecordingStore:
    """Just enough of a Store for save_all: records append_many calls."""

    def __init__(self) -> None:
        self.items: list[Sequence[Any]] = []

    def append_many(self, items: Sequence[Any]) -> list[AppendResult]:
        self.items.append(items)
        return [AppendResult(s, (0 if e is stoic.NO_STREAM else e) + len(evs), ()) for s, evs, e in items]


def test_save_all_derives_event_ids_from_the_command_and_adds_causal_metadata() -> None:
    store = RecordingStore()
    command_id = command_id_for("transfer", "t-1", "debit")
    assert command_id == command_id_for("transfer", "t-1", "debit") != command_id_for("transfer", "t-1", "credit")
    saved = Wallet.from_events("a", [recorded("a", 1, "Put", amount=9)])
    saved.take(4)
    new = Wallet("b")
    new.put(4)
    untouched = Wallet("c")
    save_all(store, [saved, new, untouched], command_id=command_id, correlation_id="t-1",  # type: ignore[arg-type]
             metadata={"step": "debit"})
    ((a_id, a_events, a_expected), (b_id, _, b_expected)) = store.items[0]
    assert (a_id, a_expected, b_id, b_expected) == ("a", 1, "b", stoic.NO_STREAM)
    assert a_events[0].event_id == uuid.uuid5(command_id, "a#0#Taken")
    assert a_events[0].metadata == {"aggregate": "Wallet", "command_id": str(command_id), "correlation_id": "t-1",
                                    "causation_id": str(command_id), "step": "debit"}
    assert (saved.version, saved.pending, new.version, new.pending) == (2, (), 1, ())
    assert save_all(store, [untouched]) == []  # type: ignore[arg-type]


def test_save_all_refuses_two_aggregates_of_one_stream() -> None:
    one, two = Wallet("a"), Wallet("a")
    one.put(1)
    two.put(2)
    with pytest.raises(stoic.InvalidArgument):
        save_all(RecordingStore(), [one, two])  # type: ignore[arg-type]


def test_retry_on_conflict_is_bounded_and_reraises_the_last_conflict() -> None:
    calls: list[int] = []
    retried: list[BaseException] = []

    def always_conflicts() -> None:
        calls.append(1)
        raise stoic.ConcurrencyError("s", len(calls), len(calls) + 1)

    with pytest.raises(stoic.ConcurrencyError) as caught:
        retry_on_conflict(always_conflicts, max_attempts=4, on_retry=retried.append)
    assert len(calls) == 4 and len(retried) == 3
    assert caught.value.expected == 4


def test_retry_on_conflict_returns_once_an_attempt_succeeds_and_does_not_retry_other_errors() -> None:
    outcomes: list[BaseException | None] = [stoic.ConcurrencyError("s", 1, 2), stoic.LockNotAvailable(), None]

    def attempt() -> str:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return "done"

    assert retry_on_conflict(attempt, max_attempts=3) == "done"

    def refused() -> None:
        raise InvariantViolation("no", rule="r")

    calls = []
    with pytest.raises(InvariantViolation):
        retry_on_conflict(lambda: calls.append(1) or refused(), max_attempts=5)
    assert len(calls) == 1
    with pytest.raises(stoic.InvalidArgument):
        retry_on_conflict(lambda: None, max_attempts=0)


def test_a_repository_needs_an_aggregate_type() -> None:
    with pytest.raises(stoic.ConfigurationError):
        stoic.Repository(RecordingStore(), dict)  # type: ignore[arg-type, type-var]


def test_transient_store_errors_are_retried_only_a_few_times() -> None:
    calls: list[int] = []

    def store_down() -> None:
        calls.append(1)
        raise stoic.StoreUnavailable("closed")

    with pytest.raises(stoic.StoreUnavailable):
        retry_on_conflict(store_down, max_attempts=50)
    assert len(calls) == TRANSIENT_RETRIES + 1
