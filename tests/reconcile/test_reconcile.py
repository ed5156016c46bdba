"""Reconciliation and per-stream rebuild on a real store (SQLite file and
PostgreSQL): a corrupted row is reported with stream, field, expected and
actual; repair fixes exactly that stream; a parked stream is not drift; the
continuous check shows drift in health and metrics and repairs it when asked;
and a reconciliation racing a live worker reports no false mismatch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.apps import wait_until
from tests.cli import apps
from tests.cli.apps import Ledger

import stoic
from stoic.errors import ActionRefused, ConfigurationError

backends = pytest.mark.parametrize("backend", ["sqlite-file", "postgres"])
ACTOR = "ops-test"


@pytest.fixture(autouse=True)
def _fixed() -> Iterator[None]:
    apps.BROKEN.on = False
    yield
    apps.BROKEN.on = True


def deposit(store: stoic.Store, stream: str, amount: int, **extra: Any) -> None:
    store.append(stream, [stoic.NewEvent("Deposited", {"amount": amount, **extra})])


def filled(store: stoic.Store, streams: int = 20, per_stream: int = 3) -> None:
    for i in range(per_stream):
        for s in range(streams):
            deposit(store, f"acct-{s:03d}", s + i + 1)


def ops_for(store: stoic.Store, app: stoic.App = apps.app) -> stoic.Operations:
    return stoic.Operations(store, app=app)


@backends
def test_a_corrupted_row_is_reported_and_repair_fixes_only_that_stream(store: stoic.Store) -> None:
    filled(store)
    stoic.Runner(store, apps.app).run_until_caught_up()
    ops = ops_for(store)
    clean = ops.reconcile("ledger", ACTOR)
    assert (clean.ok, clean.checked, clean.matched, clean.mismatches) == (True, 20, 20, ())

    store.query("UPDATE cli_ledger SET total = 1 WHERE stream = ?", ("acct-007",))
    store.query("DELETE FROM cli_ledger WHERE stream = ?", ("acct-011",))
    report = ops.reconcile("ledger", ACTOR)
    assert (report.ok, report.checked, report.matched) == (False, 20, 18)
    assert report.mismatched_streams == ("acct-007", "acct-011")
    assert report.mismatches == (
        stoic.Mismatch("acct-007", "total", 8 + 9 + 10, 1),
        stoic.Mismatch("acct-011", "<row>", {"total": 12 + 13 + 14}, None),
    )
    one = ops.reconcile("ledger", ACTOR, stream_id="acct-007")
    assert (one.checked, one.mismatched_streams) == (1, ("acct-007",))

    other_rows = store.query("SELECT stream, total FROM cli_ledger WHERE stream NOT IN ('acct-007', 'acct-011') "
                             "ORDER BY stream")
    repaired = ops.reconcile("ledger", ACTOR, repair=True, reason="drift found in review")
    assert repaired.repair_requested
    stoic.Runner(store, apps.app).run_until_caught_up()
    after = ops.reconcile("ledger", ACTOR)
    assert after.ok and after.matched == 20
    assert store.query("SELECT stream, total FROM cli_ledger WHERE stream NOT IN ('acct-007', 'acct-011') "
                       "ORDER BY stream") == other_rows
    actions = [(a.action, a.outcome.split(":")[0]) for a in ops.audit()]
    assert ("repair", "done") in actions and ("reconcile", "ok") in actions


@backends
def test_a_parked_stream_is_compared_up_to_its_failure_not_reported_as_drift(store: stoic.Store) -> None:
    apps.BROKEN.on = True
    deposit(store, "acct-1", 5)
    deposit(store, "acct-2", 2)
    deposit(store, "acct-2", 9, poison=True)
    deposit(store, "acct-2", 4)  # parked behind the poison event
    stoic.Runner(store, apps.app).run_until_caught_up()
    report = ops_for(store).reconcile("ledger", ACTOR)
    assert (report.ok, report.checked, report.parked) == (True, 2, ("acct-2",))
    # Skipped events are not part of the fold either.
    [failure] = ops_for(store).failures("ledger")
    ops_for(store).skip(failure.id, ACTOR, "bad amount")
    stoic.Runner(store, apps.app).run_until_caught_up()
    report = ops_for(store).reconcile("ledger", ACTOR)
    assert (report.ok, report.parked) == (True, ())
    assert store.query("SELECT total FROM cli_ledger WHERE stream = 'acct-2'") == [(6,)]


@backends
def test_rebuild_of_one_stream_leaves_the_others_alone(store: stoic.Store) -> None:
    filled(store, streams=5)
    stoic.Runner(store, apps.app).run_until_caught_up()
    store.query("UPDATE cli_ledger SET total = total + 1000")  # every row wrong
    request = ops_for(store).rebuild_streams("ledger", ["acct-002"], ACTOR, "customer complaint")
    assert (request.action, request.streams) == ("repair", ("acct-002",))
    stoic.Runner(store, apps.app).run_until_caught_up()
    rows = dict(store.query("SELECT stream, total FROM cli_ledger"))
    assert rows["acct-002"] == 3 + 4 + 5
    assert all(total > 1000 for stream, total in rows.items() if stream != "acct-002")


@backends
def test_refusals(store: stoic.Store) -> None:
    deposit(store, "acct-1", 5)
    stoic.Runner(store, apps.app).run_until_caught_up()

    class Plain(stoic.Projection):
        name = "plain"

        @stoic.handles("Deposited")
        def on(self, event: Any, tx: Any) -> None:
            pass

    app = stoic.App([apps.Ledger(), Plain()])
    stoic.Runner(store, app).run_until_caught_up()
    with pytest.raises(ActionRefused, match="does not implement expected_state"):
        ops_for(store, app).reconcile("plain", ACTOR)
    with pytest.raises(ActionRefused, match="does not implement forget"):
        ops_for(store, app).rebuild_streams("plain", ["acct-1"], ACTOR, "x")
    with pytest.raises(ConfigurationError, match="needs the application"):
        stoic.Operations(store).reconcile("ledger", ACTOR)
    with pytest.raises(stoic.InvalidArgument, match="reason is required"):
        ops_for(store).rebuild_streams("ledger", ["acct-1"], ACTOR, " ")
    refused = [a for a in ops_for(store).audit() if a.outcome == "refused"]
    assert {a.action for a in refused} == {"reconcile", "rebuild-streams"}


class DriftingLedger(Ledger):
    """Checks 50 sampled streams every 0.2 s; repairs drift when asked to."""

    reconcile_every = 0.2
    reconcile_sample = 50


class AutoRepairingLedger(DriftingLedger):
    auto_repair = True


@backends
def test_continuous_reconciliation_shows_drift_in_health_and_metrics(store: stoic.Store) -> None:
    app = stoic.App([DriftingLedger()])
    filled(store, streams=10)
    stoic.Runner(store, app).run_until_caught_up()
    store.query("UPDATE cli_ledger SET total = -5 WHERE stream = 'acct-004'")
    runner = stoic.Runner(store, app, claim_interval=0.1)
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        ops = ops_for(store, app)
        health = wait_until(lambda: next((h for h in ops.health() if h.drifted_streams), None), 20,
                            "drift to show in health")
        assert health.status is stoic.health.Status.CRITICAL
        assert [c.code for c in health.causes] == ["drift"]
        from stoic.metrics import render

        assert 'stoic_projection_drifted_streams{projection="ledger"} 1.0' in render(ops).decode()
    finally:
        runner.stop()
        thread.join(10)
    assert store.query("SELECT total FROM cli_ledger WHERE stream = 'acct-004'") == [(-5,)]  # not repaired


@backends
def test_continuous_reconciliation_repairs_drift_when_asked(store: stoic.Store) -> None:
    app = stoic.App([AutoRepairingLedger()])
    filled(store, streams=10)
    stoic.Runner(store, app).run_until_caught_up()
    store.query("UPDATE cli_ledger SET total = -5 WHERE stream = 'acct-004'")
    runner = stoic.Runner(store, app, claim_interval=0.1)
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        wait_until(lambda: store.query("SELECT total FROM cli_ledger WHERE stream = 'acct-004'") == [(5 + 6 + 7,)],
                   20, "the drifted stream to be repaired")
        ops = ops_for(store, app)
        wait_until(lambda: ops.projection_health("ledger").drifted_streams == 0, 20, "drift to clear")
    finally:
        runner.stop()
        thread.join(10)
    assert any(a.action == "repair" and a.outcome.startswith("done") for a in ops_for(store, app).audit())


@backends
def test_reconciling_while_a_worker_applies_events_reports_no_false_mismatch(store: stoic.Store) -> None:
    filled(store, streams=30, per_stream=1)
    runner = stoic.Runner(store, apps.app, claim_interval=0.05)
    thread = threading.Thread(target=runner.run)
    thread.start()
    stop = threading.Event()

    def append() -> None:
        n = 0
        while not stop.is_set():
            deposit(store, f"acct-{n % 30:03d}", 1)
            n += 1

    appender = threading.Thread(target=append)
    appender.start()
    try:
        ops = ops_for(store)
        wait_until(lambda: ops.checkpoint("ledger").position >= 30, 20, "the worker to start")
        reports = []
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            reports.append(ops.reconcile("ledger", ACTOR))
        assert len(reports) >= 3
        assert all(r.ok for r in reports), [r.mismatches[:3] for r in reports if not r.ok]
        assert len({r.position for r in reports}) > 1  # the worker did move meanwhile
    finally:
        stop.set()
        appender.join(10)
        runner.stop()
        thread.join(10)
