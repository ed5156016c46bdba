"""Repository and aggregates on a real store, on every backend: loading and
saving at the loaded version, refusals that write nothing, concurrent commands
on one stream that all succeed through retries, bounded retries, idempotent
re-saves, and atomic multi-stream saves."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stoic
from stoic import Aggregate, InvariantViolation, Repository, applies, command
from stoic.aggregate import Event, command_id_for, save_all

from ._helpers import rows


class Tally(Aggregate):
    """A counter that may not exceed ``LIMIT``."""

    LIMIT = 1_000

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self.total = 0
        self.adds = 0

    @command
    def add(self, n: int) -> None:
        self.require(n > 0, "positive", f"n must be > 0, got {n}")
        self.record("Added", {"n": n})

    def check_invariants(self) -> None:
        self.require(self.total <= self.LIMIT, "limit", f"total {self.total} over {self.LIMIT}")

    @applies("Added")
    def _added(self, event: Event) -> None:
        self.total += event.data["n"]
        self.adds += 1


def fold(store: stoic.Store, stream: str) -> int:
    return sum(e.data["n"] for e in store.read_stream(stream))


def test_an_unknown_stream_loads_as_a_new_aggregate_and_saves_with_no_stream(store: stoic.Store) -> None:
    repo = Repository(store, Tally)
    tally = repo.load("tally-1")
    assert (tally.version, tally.exists, tally.total) == (0, False, 0)
    tally.add(3)
    tally.add(4)
    result = repo.save(tally)
    assert result is not None and result.version == 2
    assert (tally.version, tally.pending) == (2, ())
    loaded = repo.load("tally-1")
    assert loaded.snapshot() == tally.snapshot() and loaded.exists
    assert repo.save(loaded) is None  # nothing pending: nothing written, no check


def test_a_save_at_a_stale_version_raises_and_writes_nothing(store: stoic.Store) -> None:
    repo = Repository(store, Tally)
    repo.execute("t", lambda t: t.add(1))
    first, second = repo.load("t"), repo.load("t")
    first.add(2)
    second.add(5)
    repo.save(first)
    before = rows(store.iter_all())
    with pytest.raises(stoic.ConcurrencyError) as caught:
        repo.save(second)
    assert (caught.value.expected, caught.value.actual) == (1, 2)
    assert rows(store.iter_all()) == before
    assert len(second.pending) == 1  # still pending: the caller may reload and decide again

    # two creators of one new stream: the second gets NO_STREAM's conflict
    a, b = repo.load("fresh"), repo.load("fresh")
    a.add(1)
    b.add(1)
    repo.save(a)
    with pytest.raises(stoic.ConcurrencyError) as caught:
        repo.save(b)
    assert caught.value.expected == "NO_STREAM"


def test_an_invariant_violation_is_raised_at_once_and_nothing_is_written(store: stoic.Store) -> None:
    repo = Repository(store, Tally)
    repo.execute("t", lambda t: t.add(Tally.LIMIT - 1))
    head = store.head()
    calls = []

    def too_much(tally: Tally) -> None:
        calls.append(tally.version)
        tally.add(1)
        tally.add(1)  # over the limit: the whole command is refused

    with pytest.raises(InvariantViolation) as caught:
        repo.execute("t", too_much)
    assert (caught.value.rule, caught.value.stream_id, caught.value.aggregate) == ("limit", "t", "Tally")
    assert calls == [1]  # a refusal is not a conflict: no retry
    assert store.head() == head and store.stream_version("t") == 1
    with pytest.raises(InvariantViolation, match="positive"):
        repo.execute("new-stream", lambda t: t.add(0))
    assert store.stream_version("new-stream") == 0


def test_two_threads_on_one_stream_both_succeed_through_a_retry(store: stoic.Store) -> None:
    repo = Repository(store, Tally)
    repo.execute("shared", lambda t: t.add(1))
    both_loaded = threading.Barrier(2, timeout=10)
    seen: dict[str, list[int]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def client(name: str, n: int) -> None:
        def cmd(tally: Tally) -> None:
            seen[name].append(tally.version)
            if len(seen[name]) == 1:
                both_loaded.wait()  # both decide on version 1: one of the saves must conflict
            tally.add(n)

        try:
            repo.execute("shared", cmd)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=("a", 10)), threading.Thread(target=client, args=("b", 100))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert repo.retries >= 1
    assert sorted(len(v) for v in seen.values()) == [1, 2]  # the loser ran its command again, on fresh state
    assert sorted(v[-1] for v in seen.values()) == [1, 2]
    final = repo.load("shared")
    assert (final.version, final.total, final.adds) == (3, 111, 3)
    assert final.total == fold(store, "shared")


def test_many_threads_hammering_one_stream_lose_no_command(store: stoic.Store) -> None:
    repo = Repository(store, Tally, max_attempts=200)
    threads_n, each = 4, 12
    errors: list[BaseException] = []

    def client() -> None:
        try:
            for _ in range(each):
                repo.execute("hot", lambda t: t.add(1))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    final = repo.load("hot")
    assert final.version == final.total == fold(store, "hot") == threads_n * each
    assert [e.version for e in store.read_stream("hot")] == list(range(1, threads_n * each + 1))


def test_retries_are_bounded_and_the_conflict_is_reraised(store: stoic.Store) -> None:
    repo = Repository(store, Tally)
    calls: list[int] = []

    def always_overtaken(tally: Tally) -> None:
        calls.append(tally.version)
        store.append("contested", [stoic.NewEvent("Added", {"n": 1})])  # someone else, every time
        tally.add(50)

    with pytest.raises(stoic.ConcurrencyError):
        repo.execute("contested", always_overtaken, max_attempts=3)
    assert calls == [0, 1, 2]  # reloaded before every attempt
    assert repo.retries == 2
    assert [e.data["n"] for e in store.read_stream("contested")] == [1, 1, 1]  # none of the command's events


def test_events_carry_causal_metadata_and_a_repeated_command_id_is_not_written_twice(store: stoic.Store) -> None:
    repo = Repository(store, Tally)
    command_id = uuid.uuid4()
    repo.execute("t", lambda t: t.add(7), command_id=command_id, correlation_id="corr-1",
                 metadata={"user": "teller-7"})
    (event,) = store.read_stream("t")
    assert event.event_id == uuid.uuid5(command_id, "t#0#Added")
    assert event.metadata == {"aggregate": "Tally", "command_id": str(command_id), "correlation_id": "corr-1",
                              "causation_id": str(command_id), "user": "teller-7"}

    # The client timed out and sends the same command again: the store recognises the ids.
    again = repo.execute("t", lambda t: t.add(7), command_id=command_id, correlation_id="corr-1")
    assert store.stream_version("t") == 1
    assert (again.version, again.total, again.pending) == (1, 7, ())


def test_save_all_writes_every_aggregate_or_none(store: stoic.Store) -> None:
    repo = Repository(store, Tally)
    repo.execute("a", lambda t: t.add(1))
    repo.execute("b", lambda t: t.add(1))
    a, b = repo.load("a"), repo.load("b")
    store.append("b", [stoic.NewEvent("Added", {"n": 1})])  # b moves on
    a.add(2)
    b.add(2)
    head = store.head()
    with pytest.raises(stoic.ConcurrencyError):
        save_all(store, [a, b], command_id=command_id_for("pair", 1))
    assert store.head() == head and store.stream_version("a") == 1  # a was not written either
    a, b = repo.load("a"), repo.load("b")
    a.add(2)
    b.add(2)
    results = save_all(store, [a, b], command_id=command_id_for("pair", 2), correlation_id="pair")
    assert [r.version for r in results] == [2, 3]
    assert results[0].positions[0] + 1 == results[1].positions[0]  # one transaction, in order


@pytest.mark.parametrize("backend", ["sqlite-memory", "postgres"])
def test_loading_what_was_saved_equals_the_live_aggregate(store: stoic.Store) -> None:
    repo = Repository(store, Tally)

    @settings(max_examples=25, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(st.lists(st.integers(-3, 400), min_size=1, max_size=4), max_size=6))
    def run(commands: list[list[int]]) -> None:
        stream = f"prop-{uuid.uuid4().hex[:10]}"
        live = repo.load(stream)
        for batch in commands:
            before: Any = live.snapshot()
            try:
                for n in batch:
                    live.add(n)
            except InvariantViolation:
                pass
            repo.save(live)
            assert live.version >= before["version"]
        loaded = repo.load(stream)
        assert loaded.snapshot() == live.snapshot()
        assert loaded.total == fold(store, stream) <= Tally.LIMIT

    run()
