"""Pure unit tests of the failure model: the back-off and retry-schedule maths
(property tests), the one classifier, and the health rules (stoic.health.assess on
hand-built ProjectionDetails). No database."""

from __future__ import annotations

import random
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg
import psycopg.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stoic
from stoic.failures import MAX_RETRY_DELAY_S, Classifier, Kind, RetryPolicy, RetrySchedule, classify
from stoic.health import Status, Thresholds, assess
from stoic.store import FailureCount, FailureStatus, ProjectionDetails

# -- RetryPolicy.delay and RetrySchedule.next_retry --------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    initial=st.floats(0, 100, allow_nan=False),
    multiplier=st.floats(1, 10, allow_nan=False),
    max_delay=st.floats(0, 1000, allow_nan=False),
    attempt=st.integers(1, 200),
    seed=st.integers(0, 2**32),
)
def test_a_delay_is_always_within_the_full_jitter_range(
    initial: float, multiplier: float, max_delay: float, attempt: int, seed: int
) -> None:
    policy = RetryPolicy(initial_delay=initial, multiplier=multiplier, max_delay=max_delay, max_attempts=3)
    upper = min(max_delay, initial * multiplier ** (attempt - 1))
    delay = policy.delay(attempt, random.Random(seed))
    assert 0 <= delay <= upper
    assert 0 <= policy.delay(attempt) <= upper  # with the module's own random generator too


@settings(max_examples=50, deadline=None)
@given(attempt=st.integers(1, 8), seed=st.integers(0, 2**32))
def test_the_jitter_is_full_it_spreads_over_the_whole_range(attempt: int, seed: int) -> None:
    policy = RetryPolicy(initial_delay=0.1, multiplier=2, max_delay=10)
    rng = random.Random(seed)
    upper = min(10, 0.1 * 2 ** (attempt - 1))
    delays = [policy.delay(attempt, rng) for _ in range(400)]
    assert min(delays) < upper * 0.1 and max(delays) > upper * 0.9


def test_the_back_off_cap_grows_exponentially_up_to_max_delay() -> None:
    policy = RetryPolicy(initial_delay=0.1, multiplier=2, max_delay=1.0)
    assert [policy.cap(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert policy.cap(10_000) == 1.0  # no overflow for absurd attempt numbers


NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def test_the_default_schedule_is_4_8_16_32_seconds_then_dead() -> None:
    schedule = RetrySchedule()
    delays = [schedule.next_retry(n, NOW) for n in range(1, 8)]
    assert delays[:4] == [NOW + timedelta(seconds=s) for s in (4, 8, 16, 32)]
    assert delays[4:] == [None, None, None]  # dead from max_attempts (5) on


@given(
    first=st.floats(0, 3600, allow_nan=False),
    multiplier=st.floats(1, 4, allow_nan=False),
    max_attempts=st.integers(1, 30),
    attempts=st.integers(1, 60),
)
def test_next_retry_follows_the_schedule_and_is_none_from_max_attempts_on(
    first: float, multiplier: float, max_attempts: int, attempts: int
) -> None:
    schedule = RetrySchedule(first_delay=first, multiplier=multiplier, max_attempts=max_attempts)
    at = schedule.next_retry(attempts, NOW)
    if attempts >= max_attempts:
        assert at is None
    else:
        assert at is not None
        expected = min(MAX_RETRY_DELAY_S, first * multiplier ** (attempts - 1))
        assert (at - NOW).total_seconds() == pytest.approx(expected, rel=1e-6, abs=1e-5)
        later = schedule.next_retry(attempts + 1, NOW)
        assert later is None or later >= at  # never sooner than the previous retry


@pytest.mark.parametrize(
    "schedule", [RetrySchedule(max_attempts=200), RetrySchedule(multiplier=1e6, max_attempts=2000)])
def test_a_long_schedule_does_not_overflow(schedule: RetrySchedule) -> None:
    """Regression: attempt 37 of RetrySchedule(4 s x 2) used to raise OverflowError (a
    date past year 9999), which wedged the runner's background retries."""
    delays = [schedule.next_retry(n, NOW) for n in range(1, schedule.max_attempts)]
    assert all(d is not None and NOW < d <= NOW + timedelta(seconds=MAX_RETRY_DELAY_S) for d in delays)
    assert delays == sorted(delays)  # type: ignore[type-var]


@pytest.mark.parametrize(
    "build",
    [
        lambda: RetryPolicy(initial_delay=-1),
        lambda: RetryPolicy(multiplier=0.5),
        lambda: RetryPolicy(max_attempts=0),
        lambda: RetrySchedule(first_delay=-1),
        lambda: RetrySchedule(max_attempts=0),
    ],
)
def test_nonsense_settings_are_refused(build: object) -> None:
    with pytest.raises(stoic.ConfigurationError):
        build()  # type: ignore[operator]


# -- classify ----------------------------------------------------------------------------


def sqlite_error(sql: str, path: str = ":memory:") -> sqlite3.OperationalError:
    conn = sqlite3.connect(path)
    try:
        conn.execute(sql)
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError(f"{sql!r} did not fail")


def locked_error(tmp_path: object) -> sqlite3.OperationalError:
    path = f"{tmp_path}/locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="database is locked") as info:
            waiter.execute("BEGIN IMMEDIATE")
        return info.value
    finally:
        holder.close()
        waiter.close()


def test_a_locked_sqlite_database_is_transient(tmp_path: object) -> None:
    assert classify(locked_error(tmp_path)) is Kind.TRANSIENT


@pytest.mark.parametrize("sql", ["INSERT INTO no_such_table VALUES (1)", "SELEC 1"])
def test_an_error_in_the_sql_itself_on_sqlite_is_permanent(sql: str) -> None:
    # Documented in stoic.failures: SQLITE_ERROR (no such table, syntax) is the caller's bug.
    exc = sqlite_error(sql)
    assert exc.sqlite_errorcode == sqlite3.SQLITE_ERROR
    assert classify(exc) is Kind.PERMANENT


@pytest.mark.parametrize("sqlstate", ["40P01", "40001", "55P03", "57014", "57P01"])
def test_postgres_deadlock_serialization_lock_and_cancel_errors_are_transient(sqlstate: str) -> None:
    cls = psycopg.errors.lookup(sqlstate)
    exc = cls(f"simulated {sqlstate}")
    assert exc.sqlstate == sqlstate
    assert classify(exc) is Kind.TRANSIENT


@pytest.mark.parametrize("exc", [psycopg.OperationalError("server closed the connection unexpectedly"),
                                 psycopg.InterfaceError("the connection is closed")])
def test_a_lost_postgres_connection_is_transient(exc: BaseException) -> None:
    assert classify(exc) is Kind.TRANSIENT


@pytest.mark.parametrize("sqlstate", ["42P01", "23505", "23502", "22012", "42601"])
def test_other_postgres_errors_are_permanent(sqlstate: str) -> None:
    assert classify(psycopg.errors.lookup(sqlstate)("simulated")) is Kind.PERMANENT


class Flaky(stoic.TransientError):
    pass


@pytest.mark.parametrize(
    "exc",
    [TimeoutError("timed out"), ConnectionError("refused"), ConnectionResetError(), BrokenPipeError(),
     stoic.TransientError("later"), Flaky("later"), stoic.LockNotAvailable("busy"),
     stoic.OperationTimeout("too long"), stoic.StoreUnavailable("down")],
    ids=type,
)
def test_builtin_transient_kinds(exc: BaseException) -> None:
    assert classify(exc) is Kind.TRANSIENT


class Both(stoic.PermanentError, TimeoutError):
    pass


@pytest.mark.parametrize(
    "exc",
    [ValueError("bad"), KeyError("k"), ZeroDivisionError(), stoic.PermanentError("never"),
     stoic.InvalidEvent("bad"), Both("permanent wins"), RuntimeError("bug"), sqlite3.IntegrityError("unique")],
    ids=type,
)
def test_builtin_permanent_kinds(exc: BaseException) -> None:
    assert classify(exc) is Kind.PERMANENT


def test_a_classifier_extends_and_overrides_in_order() -> None:
    class Quota(Exception):
        pass

    verdicts = Classifier(
        transient=(Quota, ValueError),
        permanent=(TimeoutError,),
        predicates=(lambda e: Kind.TRANSIENT if "503" in str(e) else None,),
    )
    assert classify(Quota(), verdicts) is Kind.TRANSIENT
    assert classify(TimeoutError(), verdicts) is Kind.PERMANENT  # permanent types before transient ones
    assert classify(RuntimeError("HTTP 503"), verdicts) is Kind.TRANSIENT  # predicates first
    assert classify(RuntimeError("HTTP 500"), verdicts) is Kind.PERMANENT  # falls through to built-ins
    assert classify(ConnectionError(), verdicts) is Kind.TRANSIENT
    # A projection's rules are asked before the app's.
    app_rules = Classifier(transient=(Quota,))
    projection_rules = Classifier(permanent=(Quota,))
    assert classify(Quota(), projection_rules.then(app_rules)) is Kind.PERMANENT
    assert classify(Quota(), app_rules.then(projection_rules)) is Kind.TRANSIENT
    assert classify(ConnectionError(), projection_rules.then(app_rules)) is Kind.TRANSIENT


# -- health.assess -----------------------------------------------------------------------

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def healthy_details(**changes: object) -> ProjectionDetails:
    base = ProjectionDetails(
        name="p", position=100, events_processed=100, holder="w1", holder_alive=True, epoch=3,
        updated_at=T0, held_since=T0 - timedelta(hours=1), holder_heartbeat_at=T0, breaker_state="closed",
        breaker_failures=0, breaker_opened_at=None, breaker_reason=None, paused_at=None, paused_by=None,
        paused_reason=None, verified_at=T0, verified_missing=0)
    return replace(base, **changes)  # type: ignore[arg-type]


def count(status: FailureStatus, n: int = 1, blocking: int = 1, parked: int = 0, name: str = "p") -> FailureCount:
    return FailureCount(name, status, n, blocking, parked)


def judge(details: ProjectionDetails | None = None, head: int = 100, oldest: datetime | None = None,
          counts: list[FailureCount] | None = None, now: datetime = T0, **kwargs: object) -> tuple[Status, list[str]]:
    item = assess(details or healthy_details(), head, oldest, counts or [], now, **kwargs)  # type: ignore[arg-type]
    return item.status, [c.code for c in item.causes]


def test_healthy_when_nothing_is_wrong() -> None:
    item = assess(healthy_details(), 100, None, [], T0)
    assert (item.status, item.causes, item.lag_events, item.lag_seconds) == (Status.HEALTHY, (), 0, 0.0)
    assert item.healthy


def test_each_rule_and_its_cause() -> None:
    assert judge(healthy_details(paused_at=T0, paused_by="ann", paused_reason="x")) == (Status.PAUSED, ["paused"])
    assert judge(healthy_details(holder=None, holder_alive=False)) == (Status.OFFLINE, ["no_holder"])
    assert judge(healthy_details(holder_alive=False)) == (Status.OFFLINE, ["holder_heartbeat_stale"])
    assert judge(healthy_details(breaker_state="open", breaker_failures=5, breaker_opened_at=T0,
                                 breaker_reason="5 transient errors")) == (Status.CRITICAL, ["breaker_open"])
    assert judge(healthy_details(breaker_state="half_open")) == (Status.DEGRADED, ["breaker_half_open"])
    assert judge(counts=[count(FailureStatus.DEAD, blocking=0)]) == (Status.CRITICAL, ["dead_failures"])
    assert judge(halted_at=101, head=105, oldest=T0) == (Status.CRITICAL, ["halted"])
    assert judge(healthy_details(verified_missing=2)) == (Status.CRITICAL, ["late_arrival"])
    assert judge(counts=[count(FailureStatus.RETRYING, blocking=0)]) == (Status.DEGRADED, ["retrying_failures"])
    assert judge(counts=[count(FailureStatus.RETRYING, parked=4)]) == (
        Status.DEGRADED, ["retrying_failures", "parked_streams"])
    assert judge(head=20_101, oldest=T0) == (Status.DEGRADED, ["lagging"])  # lag in events
    assert judge(head=101, oldest=T0 - timedelta(seconds=61)) == (Status.DEGRADED, ["lagging"])  # lag in seconds


def test_stalled_needs_lag_a_live_holder_and_no_progress() -> None:
    old = T0 - timedelta(seconds=120)
    stuck = healthy_details(updated_at=old)
    assert judge(stuck, head=101, oldest=old) == (Status.STALLED, ["stalled", "lagging"])
    assert judge(healthy_details(updated_at=T0), head=101, oldest=old)[0] is Status.DEGRADED  # progressing
    assert judge(stuck, head=100, oldest=None) == (Status.HEALTHY, [])  # caught up: nothing to do
    assert "stalled" not in judge(replace(stuck, holder_alive=False), head=101, oldest=old)[1]
    assert "stalled" not in judge(replace(stuck, breaker_state="open"), head=101, oldest=old)[1]
    assert "stalled" not in judge(stuck, head=101, oldest=old, halted_at=101)[1]
    assert judge(stuck, head=101, oldest=old, thresholds=Thresholds(stalled_after=600, lag_seconds=600)) == (
        Status.HEALTHY, [])


def test_the_most_urgent_status_wins_and_every_cause_is_listed() -> None:
    everything = healthy_details(
        paused_at=T0, holder_alive=False, breaker_state="open", breaker_opened_at=T0, verified_missing=1)
    counts = [count(FailureStatus.DEAD), count(FailureStatus.RETRYING, parked=2)]
    status, found = judge(everything, head=200, oldest=T0 - timedelta(seconds=90), counts=counts, halted_at=150)
    assert status is Status.PAUSED
    assert found == ["paused", "holder_heartbeat_stale", "breaker_open", "dead_failures", "halted",
                     "late_arrival", "retrying_failures", "parked_streams", "lagging"]
    assert judge(replace(everything, paused_at=None), counts=counts)[0] is Status.OFFLINE
    assert judge(replace(everything, paused_at=None, holder_alive=True), counts=counts)[0] is Status.CRITICAL


def test_causes_say_why_with_the_figures() -> None:
    item = assess(
        healthy_details(breaker_state="open", breaker_failures=5, breaker_opened_at=T0,
                        breaker_reason="last: ConnectionError: refused"),
        130, T0 - timedelta(seconds=30),
        [count(FailureStatus.DEAD, 2, 1, 3), count(FailureStatus.RETRYING, 1, 1, 4),
         count(FailureStatus.RESOLVED, 7, 0, 0), count(FailureStatus.DEAD, 9, 9, 9, name="other")],
        T0)
    messages = {c.code: c.message for c in item.causes}
    assert "after 5 transient errors in a row (last: ConnectionError: refused)" in messages["breaker_open"]
    assert messages["dead_failures"].startswith("2 failures dead after all retries")
    assert messages["retrying_failures"] == "1 failure waiting for a retry"
    assert messages["parked_streams"] == "2 streams parked behind a failure (7 events waiting)"
    assert item.failures == {"dead": 2, "retrying": 1, "resolved": 7}  # other projections are not counted
    assert (item.lag_events, item.lag_seconds) == (30, 30.0)  # the age of the oldest unprocessed event


def test_resolved_and_skipped_failures_do_not_degrade_health() -> None:
    counts = [count(FailureStatus.RESOLVED, 3, 0), count(FailureStatus.SKIPPED, 2, 0)]
    assert judge(counts=counts) == (Status.HEALTHY, [])
