"""An SQL error in a handler (not a Python exception) is pinned to the event that
caused it: on PostgreSQL the pipelined batch cannot tell which statement failed,
so it is re-run with each statement waiting for its result. The failure is recorded
against the right event, the other events of the batch commit, and the stream of
the failing event is parked until it is retried."""

from __future__ import annotations

import pytest
from tests.apps import FaultyLedger, applied_order, check_exactly_once

import stoic
from stoic.store import FailureStatus, Resolution

from ._support import Switch, append_each, ev, only_failure, poison

NAME = "sqlbad"
BROKEN = Switch()

ERRORS = {
    # error: (SQL, expected error class on sqlite, on postgresql, text in the message)
    "missing_table": (
        "INSERT INTO no_such_table (x) VALUES (?)",
        "sqlite3.OperationalError", "psycopg.errors.UndefinedTable", "no_such_table"),
    "not_null": (
        f"INSERT INTO {NAME}_ledger (position, event_id, stream_id, applied, pid) VALUES (?, NULL, 'x', 1, 0)",
        "sqlite3.IntegrityError", "psycopg.errors.NotNullViolation", "event_id"),
}


@pytest.mark.parametrize("error", list(ERRORS))
def test_an_sql_error_is_recorded_against_its_event_and_the_rest_of_the_batch_commits(
    store: stoic.Store, error: str
) -> None:
    sql, sqlite_class, pg_class, text = ERRORS[error]

    def fault(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        if event.data.get("poison") and BROKEN.on:
            tx.execute(sql, (-event.position,))

    plan = [("A", ev(1)), ("B", ev(2)), ("C", ev(3)), ("B", poison(4)), ("A", ev(5)), ("B", ev(6)),
            ("C", ev(7)), ("B", ev(8)), ("A", ev(9))]
    positions = append_each(store, plan)
    app = stoic.App([FaultyLedger(NAME, fault, retry_schedule=stoic.RetrySchedule(first_delay=3600))])

    assert stoic.Runner(store, app).run_until_caught_up() == {NAME: positions[-1]}  # one batch

    failure = only_failure(store, NAME)
    bad = positions[3]
    assert (failure.position, failure.stream_id) == (bad, "B")
    assert failure.event_id == str(store.read_all(bad - 1, 1)[0].event_id)
    assert failure.error_class == (pg_class if store.dialect == "postgresql" else sqlite_class)
    assert text in failure.message and failure.traceback
    assert failure.parked == 2  # B's two later events
    b_positions = {p for (s, _), p in zip(plan, positions, strict=True) if s == "B"}
    assert applied_order(store, NAME) == [p for p in positions if p < bad or p not in b_positions]

    BROKEN.on = False
    stoic.Operations(store).retry(failure.id, actor="jo", reason="table created")
    stoic.Runner(store, app).run_until_caught_up()
    done = only_failure(store, NAME)
    assert (done.status, done.resolution) == (FailureStatus.RESOLVED, Resolution.MANUAL_RETRY)
    check_exactly_once(store, [NAME], upto=positions[-1])


def test_an_sql_error_is_pinned_even_when_every_event_of_the_batch_writes_first(store: stoic.Store) -> None:
    """The failing event's own earlier writes are rolled back with its savepoint."""

    def fault(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        tx.execute(f"UPDATE {NAME}_balance SET events = events WHERE account = ?", (event.stream_id,))
        if event.data.get("poison") and BROKEN.on:
            tx.execute(f"INSERT INTO {NAME}_balance (account, balance, events) VALUES ('x', 0, 0)")
            tx.execute(f"INSERT INTO {NAME}_balance (account, balance, events) VALUES ('x', 0, 0)")  # duplicate

    positions = append_each(store, [("A", ev(1)), ("A", poison(2)), ("B", ev(3))])
    app = stoic.App([FaultyLedger(NAME, fault)])
    stoic.Runner(store, app).run_until_caught_up()
    failure = only_failure(store, NAME)
    assert failure.position == positions[1]
    assert "Integrity" in failure.error_class or "UniqueViolation" in failure.error_class
    assert store.query(f"SELECT count(*) FROM {NAME}_balance WHERE account = 'x'") == [(0,)]
    assert applied_order(store, NAME) == [positions[0], positions[2]]
