"""Operator actions on failures and projections (stoic.Operations): each one does
what it says, refuses what makes no sense with a typed error, and is recorded in
the audit log with actor, action, target, reason and outcome — refused ones too.
Skip and resolve release the parked followers (applied in order; the failing event
itself is not applied)."""

from __future__ import annotations

import threading
import time

import pytest
from tests.apps import FaultyLedger, applied_order, check_applied, check_exactly_once, wait_until

import stoic
from stoic.health import Status
from stoic.store import AuditEntry, FailureStatus, Resolution

from ._support import (
    Switch,
    WorkerThread,
    append_each,
    cause,
    checkpoint,
    ev,
    failures,
    health,
    only_failure,
    poison,
    wait_failure,
    worker_backends,
)

NAME = "operated"
BROKEN = Switch()


def fault(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
    if event.data.get("poison") and BROKEN.on:
        raise ValueError(f"bad event at position {event.position}")


def make_app(max_attempts: int = 5) -> stoic.App:
    schedule = stoic.RetrySchedule(first_delay=3600, max_attempts=max_attempts)  # operators only
    return stoic.App([FaultyLedger(NAME, fault, retry_schedule=schedule)])


def run(store: stoic.Store, max_attempts: int = 5) -> None:
    """One in-process pass: applies new events and does what operators asked for."""
    stoic.Runner(store, make_app(max_attempts)).run_until_caught_up()


def audit_entry(entry: AuditEntry) -> tuple[str, str, str, str | None, str]:
    return entry.actor, entry.action, entry.target, entry.reason, entry.outcome


def last_audit(ops: stoic.Operations) -> tuple[str, str, str, str | None, str]:
    return audit_entry(ops.audit(limit=1)[0])


@pytest.fixture
def two_failures(store: stoic.Store) -> tuple[stoic.Operations, list[int]]:
    """Stream A: a1, a2 (poison), a3, a4; stream B: b1 (poison), b2 — after one pass,
    two retrying failures (a2 parks 2 events, b1 parks 1)."""
    positions = append_each(store, [
        ("A", ev(1)), ("A", poison(2)), ("B", poison(3)), ("A", ev(4)), ("B", ev(5)), ("A", ev(6))])
    run(store)
    assert [f.position for f in failures(store, NAME)] == [positions[1], positions[2]]
    return stoic.Operations(store, projections=[NAME]), positions


def test_retry_is_audited_done_by_the_worker_and_refused_once_resolved(
    store: stoic.Store, two_failures: tuple[stoic.Operations, list[int]]
) -> None:
    ops, (a1, a2, _, a3, _, a4) = two_failures
    failure = failures(store, NAME)[0]

    asked = ops.retry(failure.id, actor="alice", reason="looks transient")
    assert (asked.status, asked.retry_requested) == (FailureStatus.RETRYING, True)
    assert last_audit(ops) == ("alice", "retry", f"failure:{failure.id}", "looks transient", "ok")
    run(store)  # still broken: one more failed attempt, no longer requested
    again = ops.failure(failure.id)
    assert (again.status, again.attempts, again.retry_requested) == (FailureStatus.RETRYING, 2, False)

    BROKEN.on = False
    ops.retry(failure.id, actor="alice")  # the reason is optional for a retry
    assert last_audit(ops) == ("alice", "retry", f"failure:{failure.id}", None, "ok")
    run(store)
    done = ops.failure(failure.id)
    assert (done.status, done.resolution, done.actor) == (FailureStatus.RESOLVED, Resolution.MANUAL_RETRY, "alice")
    assert applied_order(store, NAME) == [a1, a2, a3, a4]  # b1 still parks b2

    with pytest.raises(stoic.ActionRefused, match=r"it is resolved \(manual_retry by alice\)") as refused:
        ops.retry(failure.id, actor="alice", reason="again")
    assert (refused.value.status, refused.value.action, refused.value.failure_id) == ("resolved", "retry", failure.id)
    assert last_audit(ops) == ("alice", "retry", f"failure:{failure.id}", "again", "refused")
    for action in (ops.skip, ops.resolve):
        with pytest.raises(stoic.ActionRefused, match="it is resolved"):
            action(failure.id, actor="alice", reason="too late")
        assert last_audit(ops)[-1] == "refused"
    assert ops.failure(failure.id) == done  # refusals change nothing


@pytest.mark.parametrize("action", ["skip", "resolve"])
def test_skip_and_resolve_need_a_reason_and_release_the_parked_followers(
    store: stoic.Store, two_failures: tuple[stoic.Operations, list[int]], action: str
) -> None:
    ops, (a1, a2, b1, a3, b2, a4) = two_failures
    failure = failures(store, NAME)[0]
    act = getattr(ops, action)
    audit_before = ops.audit(limit=1000)

    for reason in (None, "", "   "):
        with pytest.raises(stoic.InvalidArgument, match="a reason is required"):
            act(failure.id, actor="bob", reason=reason)
    assert ops.failure(failure.id) == failure and ops.audit(limit=1000) == audit_before  # nothing changed

    ended = act(failure.id, actor="bob", reason="test data from the import")
    status, resolution = {
        "skip": (FailureStatus.SKIPPED, Resolution.MANUAL_SKIP),
        "resolve": (FailureStatus.RESOLVED, Resolution.MANUAL_RESOLVE),
    }[action]
    assert (ended.status, ended.resolution, ended.actor, ended.note) == (
        status, resolution, "bob", "test data from the import")
    assert last_audit(ops) == ("bob", action, f"failure:{failure.id}", "test data from the import", "ok")

    run(store)  # the worker releases the stream: followers in order, the failed event never
    assert applied_order(store, NAME) == [a1, a3, a4]
    assert not ops.failure(failure.id).blocking
    check_applied(store, NAME, not_applied=[a2, b1, b2])

    with pytest.raises(stoic.ActionRefused, match=rf"it is {status.value} \({resolution.value} by bob\)"):
        ops.retry(failure.id, actor="bob", reason="changed my mind")
    assert last_audit(ops) == ("bob", "retry", f"failure:{failure.id}", "changed my mind", "refused")
    with pytest.raises(stoic.ActionRefused, match="revive applies to dead failures"):
        ops.revive(failure.id, actor="bob")
    assert last_audit(ops) == ("bob", "revive", f"failure:{failure.id}", None, "refused")
    assert ops.failure(failure.id).status is status


def test_revive_applies_to_dead_failures_only(store: stoic.Store) -> None:
    append_each(store, [("A", poison(1)), ("A", ev(2))])
    run(store, max_attempts=1)  # dead at the first failure
    ops = stoic.Operations(store, projections=[NAME])
    [dead] = failures(store, NAME)
    assert dead.status is FailureStatus.DEAD

    revived = ops.revive(dead.id, actor="dana", reason="the fix is out")
    assert (revived.status, revived.attempts, revived.retry_requested) == (FailureStatus.RETRYING, 0, True)
    assert last_audit(ops) == ("dana", "revive", f"failure:{dead.id}", "the fix is out", "ok")
    with pytest.raises(stoic.ActionRefused, match="it is retrying; revive applies to dead failures"):
        ops.revive(dead.id, actor="dana", reason="twice")
    assert last_audit(ops) == ("dana", "revive", f"failure:{dead.id}", "twice", "refused")

    BROKEN.on = False
    run(store, max_attempts=1)
    done = ops.failure(dead.id)
    assert (done.status, done.resolution) == (FailureStatus.RESOLVED, Resolution.MANUAL_RETRY)
    check_exactly_once(store, [NAME], upto=2)


def test_retry_all_retries_every_open_failure_of_a_projection(
    store: stoic.Store, two_failures: tuple[stoic.Operations, list[int]]
) -> None:
    ops, _ = two_failures
    fa, fb = failures(store, NAME)
    ops.skip(fb.id, actor="erin", reason="bad import")  # not open: retry_all leaves it alone
    append_each(store, [("C", poison(7))])
    run(store)
    fa, fb, fc = failures(store, NAME)

    changed = ops.retry_all(NAME, actor="erin", reason="fix deployed")

    assert sorted(f.id for f in changed) == [fa.id, fc.id]
    assert all(f.retry_requested and f.status is FailureStatus.RETRYING for f in changed)
    entries = [audit_entry(e) for e in ops.audit(limit=3)]
    assert entries[0] == ("erin", "retry-all", f"projection:{NAME}", "fix deployed", "ok: 2 failures")
    assert sorted(entries[1:]) == sorted(
        ("erin", "retry", f"failure:{f.id}", "fix deployed", "ok") for f in (fa, fc))
    assert sorted(ops.audit(limit=1)[0].details["failure_ids"]) == [fa.id, fc.id]  # type: ignore[index]
    assert ops.audit(limit=2)[1].details == {"via": "retry-all", "projection": NAME}

    BROKEN.on = False
    run(store)
    fa, fb, fc = failures(store, NAME)
    assert [(f.status, f.resolution) for f in (fa, fb, fc)] == [
        (FailureStatus.RESOLVED, Resolution.MANUAL_RETRY), (FailureStatus.SKIPPED, Resolution.MANUAL_SKIP),
        (FailureStatus.RESOLVED, Resolution.MANUAL_RETRY)]
    check_applied(store, NAME, not_applied=[fb.position])  # b2 was released by the skip


def test_unknown_ids_and_projections_are_refused_with_typed_errors(
    store: stoic.Store, two_failures: tuple[stoic.Operations, list[int]]
) -> None:
    ops, _ = two_failures
    before = failures(store, NAME)

    with pytest.raises(stoic.FailureNotFound, match="no failure with id 9999"):
        ops.failure(9999)
    for name in ("retry", "revive", "skip", "resolve"):
        with pytest.raises(stoic.FailureNotFound) as missing:
            getattr(ops, name)(9999, actor="eve", reason="why not")
        assert missing.value.failure_id == 9999
        # A refused action is audited (the store's change and the audit entry are one transaction).
        assert last_audit(ops) == ("eve", name, "failure:9999", "why not", "refused")

    audit_before = ops.audit(limit=1000)
    for call in (
        lambda: ops.retry_all("nope", actor="eve"),
        lambda: ops.pause("nope", actor="eve", reason="x"),
        lambda: ops.resume("nope", actor="eve"),
        lambda: ops.projection_health("nope"),
    ):
        with pytest.raises(stoic.UnknownProjection, match="'nope'"):
            call()
    # Guarantee 5: an unknown projection name is bad input: a typed error, and the store is unchanged.
    assert ops.audit(limit=1000) == audit_before

    for bad in (0, -1, "1", True, None):
        with pytest.raises(stoic.InvalidArgument, match="failure id must be a positive integer"):
            ops.retry(bad, actor="eve")  # type: ignore[arg-type]
    for actor in ("", "   "):
        with pytest.raises(stoic.InvalidArgument, match="actor"):
            ops.retry(before[0].id, actor=actor)
    with pytest.raises(stoic.InvalidArgument, match="status must be one of"):
        ops.failures(status="exploded")
    assert ops.audit(limit=1000) == audit_before
    assert failures(store, NAME) == before


def test_a_projection_the_app_knows_but_never_ran_cannot_be_paused(store: stoic.Store) -> None:
    ops = stoic.Operations(store, projections=["future"])
    with pytest.raises(stoic.UnknownProjection, match="never run"):
        ops.pause("future", actor="gus", reason="prepare")
    assert last_audit(ops) == ("gus", "pause", "projection:future", "prepare", "refused")
    [item] = ops.health()
    assert (item.name, item.status, [c.code for c in item.causes]) == ("future", Status.OFFLINE, ["never_started"])


@pytest.mark.timeout(60)
@worker_backends
def test_pause_and_resume_with_a_running_worker(store: stoic.Store) -> None:
    BROKEN.on = False
    first = append_each(store, [("A", ev(1)), ("B", ev(2))])
    ops = stoic.Operations(store, projections=[NAME])
    with WorkerThread(store, make_app()):
        wait_until(lambda: checkpoint(store, NAME) == first[-1], 10, "the first events")
        ops.pause(NAME, actor="frank", reason="schema migration")
        assert last_audit(ops) == ("frank", "pause", f"projection:{NAME}", "schema migration", "ok")
        time.sleep(0.6)  # the holder notices within a maintenance round (0.5 s)
        later = append_each(store, [("A", ev(3)), ("C", ev(4))])
        time.sleep(0.5)
        assert checkpoint(store, NAME) == first[-1], "a paused projection went on"
        item = health(store, NAME)
        assert item.status is Status.PAUSED, item.causes
        assert "paused by frank" in cause(item, "paused") and "schema migration" in cause(item, "paused")

        ops.resume(NAME, actor="frank")
        assert last_audit(ops) == ("frank", "resume", f"projection:{NAME}", None, "ok")
        wait_until(lambda: checkpoint(store, NAME) == later[-1], 5, "the resumed projection")
        assert health(store, NAME).status is Status.HEALTHY
    check_exactly_once(store, [NAME], upto=later[-1])


@pytest.mark.timeout(60)
@worker_backends
def test_a_running_worker_releases_skipped_and_resolved_streams_promptly(store: stoic.Store) -> None:
    a1, a2, c1, b1, a3, c2, a4 = append_each(store, [
        ("A", ev(1)), ("A", poison(2)), ("C", poison(3)), ("B", ev(4)), ("A", ev(5)), ("C", ev(6)),
        ("A", ev(7, type="Withdrawn"))])
    ops = stoic.Operations(store, projections=[NAME])
    with WorkerThread(store, make_app()):
        wait_until(lambda: [f.parked for f in failures(store, NAME)] == [2, 1], 10, "both failures")
        wait_until(lambda: checkpoint(store, NAME) == a4, 5, "the checkpoint at the head")
        fa, fc = failures(store, NAME)
        ops.skip(fa.id, actor="hank", reason="not needed")
        ops.resolve(fc.id, actor="hank", reason="applied by hand")
        started = time.monotonic()
        wait_until(lambda: applied_order(store, NAME) == [a1, b1, a3, a4, c2], 5, "the followers")
        # docs/failures.md: the holder does the work "within half a second" (a maintenance round).
        assert time.monotonic() - started < 1.0
    check_applied(store, NAME, not_applied=[a2, c1])
    assert not any(f.blocking for f in failures(store, NAME))


@pytest.mark.timeout(60)
@worker_backends
def test_a_skip_racing_a_retry_leaves_a_truthful_record(store: stoic.Store, request: pytest.FixtureRequest) -> None:
    """An operator skips a failure while its holder is retrying it (the fix is out).
    Whoever wins, the record must tell the truth: resolved if the event was applied,
    skipped only if it was not. On SQLite the skip waits for the retry's write lock
    and is then refused. On PostgreSQL the skip would commit while the retry's transaction
    runs, unless the retry locks the failure row first, which it does: the skip
    waits for the retry's transaction and is then refused."""
    in_retry, go = threading.Event(), threading.Event()

    def gated(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        if event.data.get("poison"):
            if BROKEN.on:
                raise ValueError("poison")
            in_retry.set()
            go.wait(10)

    app = stoic.App([FaultyLedger(NAME, gated, retry_schedule=stoic.RetrySchedule(first_delay=3600))])
    a1, a2, a3 = append_each(store, [("A", ev(1)), ("A", poison(2)), ("A", ev(3))])
    ops = stoic.Operations(store, projections=[NAME])
    outcome: list[object] = []

    def skip() -> None:
        try:
            outcome.append(ops.skip(failure.id, actor="bob", reason="skip it").status)
        except stoic.ActionRefused as exc:
            outcome.append(exc)

    with WorkerThread(store, app):
        failure = wait_failure(store, NAME, parked=1)
        BROKEN.on = False
        ops.retry(failure.id, actor="alice", reason="fix deployed")
        assert in_retry.wait(5), "the retry did not start"
        operator = threading.Thread(target=skip)
        operator.start()
        time.sleep(0.3)  # the skip is under way (SQLite: waiting for the write lock)
        go.set()
        operator.join(15)
        wait_until(lambda: not only_failure(store, NAME).blocking, 5, "the stream to be released")

    final = only_failure(store, NAME)
    applied = applied_order(store, NAME)
    assert a1 in applied and a3 in applied
    if a2 in applied:
        assert (final.status, final.resolution) == (FailureStatus.RESOLVED, Resolution.MANUAL_RETRY), (
            f"event {a2} was applied but its failure reads {final.status.value} ({final.resolution}); "
            f"the skip returned {outcome}")
        assert isinstance(outcome[0], stoic.ActionRefused)
    else:
        assert (final.status, final.resolution) == (FailureStatus.SKIPPED, Resolution.MANUAL_SKIP)
