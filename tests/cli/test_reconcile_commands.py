"""``stoic reconcile``, ``rebuild-stream``, ``rebuild``, ``rollback`` and
``drop-previous`` on a real SQLite file: reports, exit codes, progress to the
switch, and JSON equal to the HTTP API's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import stoic
from stoic.api import ApiSettings, create_app
from stoic.cli import app as cli
from stoic.cli.common import EXIT_ERROR, EXIT_REFUSED

LEDGER = "tests.cli.apps:app"
V1, V2 = "tests.reconcile.test_rebuild:app_v1", "tests.reconcile.test_rebuild:app_v2"


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, list(args), env={"STOIC_ACTOR": "ops-carol"})
    assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.output}"
    return result.stdout


@pytest.fixture
def ledger_db(tmp_path: Path) -> str:
    from tests.cli import apps

    apps.BROKEN.on = False
    url = f"sqlite:///{tmp_path}/ledger.db"
    store = stoic.connect(url)
    for i in range(30):
        store.append(f"acct-{i % 6}", [stoic.NewEvent("Deposited", {"amount": i})])
    stoic.Runner(store, apps.app).run_until_caught_up()
    store.query("UPDATE cli_ledger SET total = 0 WHERE stream = 'acct-3'")
    store.close()
    yield url
    apps.BROKEN.on = True


def test_reconcile_reports_the_mismatch_and_exits_1(ledger_db: str) -> None:
    out = run("reconcile", "ledger", "--db", ledger_db, "--app", LEDGER, code=EXIT_ERROR)
    assert "5 of 6 streams match" in out and "acct-3" in out
    report = json.loads(run("reconcile", "ledger", "--db", ledger_db, "--app", LEDGER, "--json", code=EXIT_ERROR))
    assert report["mismatches"] == [
        {"stream_id": "acct-3", "field": "total", "expected": 3 + 9 + 15 + 21 + 27, "actual": 0}]
    store = stoic.connect(ledger_db)
    try:
        api = TestClient(create_app(store, stoic.load_app(LEDGER), ApiSettings(admin_token="t" * 20)))
        from_api = api.get("/admin/projections/ledger/reconcile", headers={"Authorization": "Bearer " + "t" * 20})
    finally:
        store.close()
    assert from_api.status_code == 200
    body = from_api.json()
    body.pop("duration_seconds"), report.pop("duration_seconds")
    assert body == report


def test_reconcile_repair_then_clean(ledger_db: str) -> None:
    out = run("reconcile", "ledger", "--db", ledger_db, "--app", LEDGER, "--repair", "--reason", "audit")
    assert "repair of 1 streams requested" in out
    store = stoic.connect(ledger_db)
    try:
        from tests.cli import apps

        stoic.Runner(store, apps.app).run_until_caught_up()
    finally:
        store.close()
    assert "6 of 6 streams match" in run("reconcile", "ledger", "--db", ledger_db, "--app", LEDGER)


def test_rebuild_stream_runs_here_with_the_app(ledger_db: str) -> None:
    run("rebuild-stream", "ledger", "acct-3", "--reason", "ticket 42", "--db", ledger_db, "--app", LEDGER)
    assert "6 of 6 streams match" in run("reconcile", "ledger", "--db", ledger_db, "--app", LEDGER)


def test_rebuild_rollback_and_drop_previous(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/totals.db"
    store = stoic.connect(url)
    for i in range(50):
        store.append(f"s-{i % 5}", [stoic.NewEvent("Deposited", {"amount": 1})])
    stoic.Runner(store, stoic.load_app(V1)).run_until_caught_up()
    store.close()
    run("rebuild", "totals", "--reason", "new index", "--db", url, "--app", V1, "--timeout", "60")
    store = stoic.connect(url)
    try:
        state = {d.name: d for d in store.projection_details()}["totals"]
        assert (state.generation, state.previous_generation) == (2, 1)
        assert store.query("SELECT SUM(total) FROM totals") == [(50,)]
    finally:
        store.close()
    assert "generation 1 serves again" in run("rollback", "totals", "--reason", "oops", "--db", url, "--app", V1)
    run("rollback", "totals", "--reason", "oops", "--db", url, "--app", V1, code=EXIT_REFUSED)
    run("drop-previous", "totals", "--db", url, "--app", V1, code=EXIT_REFUSED)
    audit = json.loads(run("audit", "--db", url, "--json"))
    assert [a["action"] for a in audit][:3] == ["drop-previous", "rollback", "rollback"]


SEGMENTED = "tests.scale.test_segments:make_segmented_app"


def test_resegment_runs_the_segments_here_and_swaps_the_rows(tmp_path: Path) -> None:
    from tests.apps import append_bulk

    url = f"sqlite:///{tmp_path}/seg.db"
    store = stoic.connect(url)
    append_bulk(store, 1500, streams=40)
    stoic.Runner(store, stoic.load_app(SEGMENTED)).run_until_caught_up()
    append_bulk(store, 300, seed=2, streams=40)  # the segments are behind: the command drains them here
    store.close()
    out = run("resegment", "seg", "--to", "2", "--reason", "fewer workers", "--db", url, "--app", SEGMENTED)
    assert "seg: 2 segments from position 1800" in out
    store = stoic.connect(url)
    try:
        rows = {s.name: (s.position, s.segments) for s in store.projections()}
        assert rows == {"seg#0": (1800, 2), "seg#1": (1800, 2)}
        from tests.scale.test_segments import check_complete

        check_complete(store)
    finally:
        store.close()
    refused = CliRunner().invoke(cli, ["reset", "seg", "--reason", "x", "--db", url, "--app", SEGMENTED])
    assert refused.exit_code == EXIT_REFUSED
    assert "resegment it to 1 segment first" in " ".join(refused.output.split())
