"""Runner.run_until_caught_up on every backend: the read model equals a fold of
the events, each event is applied once, a failing batch leaves nothing half
applied, and handlers write through ``tx`` with ``?`` placeholders."""

from __future__ import annotations

import time

import pytest

import stoic
from stoic.store import FailureStatus

from ._helpers import Balances, ev, fold_balances, projection_state, read_balances


def open_accounts(store: stoic.Store) -> None:
    """Three accounts with deposits, withdrawals and transfers (append_many)."""
    for account in ("acc-1", "acc-2", "acc-3"):
        store.append(account, [ev("Opened", owner=account)], expected_version=stoic.NO_STREAM)
    store.append("acc-1", [ev("Deposited", amount=100), ev("Deposited", amount=50)], expected_version=1)
    store.append("acc-2", [ev("Deposited", amount=70)], expected_version=1)
    store.append_many(
        [
            ("acc-1", [ev("Withdrawn", amount=30)], 3),
            ("acc-3", [ev("Deposited", amount=30)], 1),
        ]
    )
    store.append("acc-2", [ev("Withdrawn", amount=5), ev("Audited")], expected_version=2)


def test_the_read_model_equals_a_fold_of_the_events(store: stoic.Store) -> None:
    open_accounts(store)
    projection = Balances()

    positions = stoic.Runner(store, stoic.App([projection]), batch_size=3).run_until_caught_up()

    head = store.head()
    assert positions == {"balances": head}
    assert read_balances(store) == fold_balances(store.read_all())
    assert read_balances(store) == {"acc-1": (120, 3), "acc-2": (65, 2), "acc-3": (30, 1)}
    handled = [e.position for e in store.read_all() if e.type != "Audited"]
    assert projection.seen == handled  # each event once, in global order
    state = projection_state(store, "balances")
    assert (state.position, state.events_processed, state.holder) == (head, head, None)
    assert store.workers() == []  # the runner unregistered itself


def test_a_second_call_processes_only_new_events(store: stoic.Store) -> None:
    open_accounts(store)
    projection = Balances()
    app = stoic.App([projection])
    stoic.Runner(store, app, batch_size=4).run_until_caught_up()
    first_head = store.head()
    projection.seen.clear()

    store.append("acc-3", [ev("Deposited", amount=1), ev("Withdrawn", amount=2)])
    store.append("acc-4", [ev("Opened"), ev("Deposited", amount=9)])
    positions = stoic.Runner(store, app, batch_size=4).run_until_caught_up()

    assert positions == {"balances": first_head + 4}
    assert projection.seen == list(range(first_head + 1, first_head + 5))
    assert read_balances(store) == fold_balances(store.read_all())

    projection.seen.clear()
    assert stoic.Runner(store, app).run_until_caught_up() == {"balances": first_head + 4}
    assert projection.seen == []


def test_setup_runs_at_every_start_and_is_idempotent(store: stoic.Store) -> None:
    open_accounts(store)
    projection = Balances()
    stoic.Runner(store, stoic.App([projection])).run_until_caught_up()
    before = read_balances(store)

    stoic.Runner(store, stoic.App([projection])).run_until_caught_up()

    assert projection.setups == 2
    assert read_balances(store) == before == fold_balances(store.read_all())


def two_accounts(store: stoic.Store) -> list[stoic.RecordedEvent]:
    """acc-1: Opened + five deposits (positions 1-6); acc-2: Opened + a deposit (7-8)."""
    store.append("acc-1", [ev("Opened")] + [ev("Deposited", amount=10**i) for i in range(5)])
    store.append("acc-2", [ev("Opened"), ev("Deposited", amount=7)])
    return store.read_all()


class HaltingBalances(Balances):
    on_error = "halt"


class SkippingBalances(Balances):
    on_error = "skip"


def test_halt_stops_before_the_failing_event_and_nothing_is_half_applied(store: stoic.Store) -> None:
    events = two_accounts(store)
    projection = HaltingBalances()
    projection.fail_at = 5  # the first event of the batch [5, 6]; it writes, then raises

    positions = stoic.Runner(store, stoic.App([projection]), batch_size=2).run_until_caught_up()

    assert positions == {"balances": 4}
    state = projection_state(store, "balances")
    assert (state.position, state.events_processed, state.holder) == (4, 4, None)
    # Position 5's deposit (1000) was written by its handler and must have been rolled back.
    assert read_balances(store) == fold_balances(events[:4]) == {"acc-1": (111, 3)}
    (failure,) = store.list_failures("balances")
    assert (failure.position, failure.stream_id, failure.event_type, failure.policy) == (
        5,
        "acc-1",
        "Deposited",
        "halt",
    )
    assert failure.event_id == str(events[4].event_id)
    assert failure.error_class.endswith("Boom")
    assert failure.message == "handler failed at position 5"
    assert "Boom" in failure.traceback
    assert failure.status is FailureStatus.RETRYING and failure.blocking
    assert store.workers() == []


def test_halt_in_the_middle_of_a_batch_commits_the_events_before_it(store: stoic.Store) -> None:
    events = two_accounts(store)
    projection = HaltingBalances()
    projection.fail_at = 6  # the second event of the batch [5, 6]

    assert stoic.Runner(store, stoic.App([projection]), batch_size=2).run_until_caught_up() == {"balances": 5}
    assert read_balances(store) == fold_balances(events[:5]) == {"acc-1": (1111, 4)}
    assert [f.position for f in store.list_failures("balances")] == [6]


def test_park_holds_back_the_stream_and_other_streams_go_on(store: stoic.Store) -> None:
    events = two_accounts(store)
    projection = Balances()  # on_error="park" is the default
    projection.fail_at = 5

    positions = stoic.Runner(store, stoic.App([projection]), batch_size=2).run_until_caught_up()

    assert positions == {"balances": 8}
    applied = [e for e in events if e.position not in (5, 6)]  # 5 failed, 6 parked behind it
    assert read_balances(store) == fold_balances(applied) == {"acc-1": (111, 3), "acc-2": (7, 1)}
    (failure,) = store.list_failures("balances")
    assert (failure.position, failure.policy, failure.parked, failure.blocking) == (5, "park", 1, True)
    assert failure.status is FailureStatus.RETRYING


def test_skip_records_the_failure_and_goes_on(store: stoic.Store) -> None:
    events = two_accounts(store)
    projection = SkippingBalances()
    projection.fail_at = 5

    assert stoic.Runner(store, stoic.App([projection]), batch_size=2).run_until_caught_up() == {"balances": 8}
    applied = [e for e in events if e.position != 5]
    assert read_balances(store) == fold_balances(applied) == {"acc-1": (10111, 4), "acc-2": (7, 1)}
    (failure,) = store.list_failures("balances")
    assert (failure.position, failure.policy, failure.blocking) == (5, "skip", False)
    assert failure.status is FailureStatus.SKIPPED


class BadSql(stoic.Projection):
    name = "bad_sql"

    @stoic.handles("Opened")
    def opened(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        tx.execute("INSERT INTO no_such_table (account) VALUES (?)", (event.stream_id,))


def test_a_handler_sql_error_is_a_recorded_permanent_failure(store: stoic.Store) -> None:
    store.append("acc-1", [ev("Opened")])
    store.append("acc-2", [ev("Opened")])

    started = time.monotonic()
    positions = stoic.Runner(store, stoic.App([BadSql])).run_until_caught_up(timeout=20)

    # Not retried as if the database were down: recorded at once, on every backend.
    assert time.monotonic() - started < 5
    assert positions == {"bad_sql": 2}
    failures = sorted(store.list_failures("bad_sql"), key=lambda f: f.position)
    assert [(f.position, f.stream_id) for f in failures] == [(1, "acc-1"), (2, "acc-2")]
    assert all("no_such_table" in f.message for f in failures)


class Notes(stoic.Projection):
    """Writes through tx with ``?`` next to literal ``?`` and ``%`` in quotes and comments."""

    name = "notes"

    def setup(self, tx: stoic.Transaction) -> None:
        tx.execute(
            "CREATE TABLE IF NOT EXISTS notes (position BIGINT PRIMARY KEY, body TEXT NOT NULL, tag TEXT)"
        )

    @stoic.handles_all
    def note(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        tx.execute(
            "INSERT INTO notes (position, body) VALUES (?, 'is it 100% done? -- no') -- why? 50% sure\n",
            (event.position,),
        )
        tx.executemany("UPDATE notes SET tag = ? WHERE position = ?", [(event.type, event.position)])
        (count,) = tx.execute("SELECT count(*) FROM notes WHERE body LIKE ?", ("%100%",)).fetchone() or (0,)
        (mod,) = tx.execute("SELECT ? % 3", (event.position,)).fetchone()
        tx.execute(
            "UPDATE notes SET body = body || ? WHERE position = ?", (f" [{count}|{mod}]", event.position)
        )


def test_handlers_write_through_tx_with_qmark_placeholders(store: stoic.Store) -> None:
    store.append("s", [ev("A"), ev("B"), ev("C")])

    stoic.Runner(store, stoic.App([Notes])).run_until_caught_up()

    assert store.query("SELECT position, body, tag FROM notes ORDER BY position") == [
        (1, "is it 100% done? -- no [1|1]", "A"),
        (2, "is it 100% done? -- no [2|2]", "B"),
        (3, "is it 100% done? -- no [3|0]", "C"),
    ]


class Recorder(stoic.Projection):
    """Records (handler, position, type) of every call, in memory."""

    def __init__(self, name: str) -> None:
        self.name = name  # type: ignore[misc]
        self.calls: list[tuple[str, int, str]] = []


class StarAll(Recorder):
    @stoic.handles("*")
    def any_event(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        self.calls.append(("star", event.position, event.type))


class HandlesAll(Recorder):
    @stoic.handles_all
    def any_event(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        self.calls.append(("all", event.position, event.type))


class Mixed(Recorder):
    @stoic.handles("Opened")
    def opened(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        self.calls.append(("opened", event.position, event.type))

    @stoic.handles(stoic.ALL)
    def other(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        self.calls.append(("other", event.position, event.type))


def test_catch_all_handlers_see_every_event(store: stoic.Store) -> None:
    open_accounts(store)
    star, every, mixed = StarAll("star"), HandlesAll("every"), Mixed("mixed")

    positions = stoic.Runner(store, stoic.App([star, every, mixed]), batch_size=5).run_until_caught_up()

    events = [(e.position, e.type) for e in store.read_all()]
    assert positions == dict.fromkeys(("star", "every", "mixed"), store.head())
    assert [c[1:] for c in star.calls] == events
    assert [c[1:] for c in every.calls] == events
    assert [c[1:] for c in mixed.calls] == events
    assert {c[0] for c in mixed.calls if c[2] == "Opened"} == {"opened"}
    assert {c[0] for c in mixed.calls if c[2] != "Opened"} == {"other"}


def test_unhandled_event_types_still_move_the_checkpoint(store: stoic.Store) -> None:
    store.append("misc", [ev("Audited"), ev("Noted")])
    projection = Balances()

    assert stoic.Runner(store, stoic.App([projection])).run_until_caught_up() == {"balances": 2}
    assert projection.seen == []
    assert projection_state(store, "balances").events_processed == 2


def test_each_projection_has_its_own_checkpoint(store: stoic.Store) -> None:
    open_accounts(store)
    star, balances = StarAll("star"), Balances()
    app = stoic.App([star, balances])
    stoic.Runner(store, app, projections=["star"]).run_until_caught_up()

    assert {s.name: s.position for s in store.projections()} == {"star": store.head()}
    assert balances.seen == []

    store.append("acc-1", [ev("Deposited", amount=1)])
    assert stoic.Runner(store, app).run_until_caught_up() == {"star": store.head(), "balances": store.head()}
    assert len(star.calls) == store.head()
    assert read_balances(store) == fold_balances(store.read_all())


def test_a_projection_held_by_another_live_worker_is_not_run(store: stoic.Store) -> None:
    store.append("acc-1", [ev("Opened")])
    store.register_worker("other", "elsewhere", 1, 30.0)
    session = store.open_session()
    try:
        session.ensure_projection("balances")
        assert session.claim("balances", "other") is not None
        projection = Balances()

        with pytest.raises(stoic.LeaseLost):
            stoic.Runner(store, stoic.App([projection])).run_until_caught_up(timeout=0.3)

        assert projection.seen == []
        state = projection_state(store, "balances")
        assert (state.holder, state.position) == ("other", 0)
    finally:
        session.close()
