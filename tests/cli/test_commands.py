"""The ``stoic`` admin commands against a real SQLite file (and PostgreSQL for the
view-agreement test): happy paths, clear errors with the documented exit codes,
nothing changed by bad input, the audit trail, and the CLI's JSON equal to the
HTTP API's for the same state."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import stoic
from stoic.api import ApiSettings, create_app
from stoic.cli import app as cli
from stoic.cli.common import EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_USAGE
from stoic.store import FailureStatus

TOKEN = "cli-test-token-0123456789"
APP_REF = "tests.cli.apps:app"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[str]:
    """A SQLite file with one failing event (position 2) and three good ones, projected."""
    from tests.cli import apps

    apps.BROKEN.on = True
    url = f"sqlite:///{tmp_path}/cli.db"
    store = stoic.connect(url)
    store.append("acct-1", [stoic.NewEvent("Deposited", {"amount": 5})])
    store.append("acct-2", [stoic.NewEvent("Deposited", {"amount": 7, "poison": True})])
    store.append("acct-2", [stoic.NewEvent("Deposited", {"amount": 1})])
    store.append("acct-3", [stoic.NewEvent("Deposited", {"amount": 2})])
    stoic.Runner(store, apps.app).run_until_caught_up()
    store.close()
    yield url
    apps.BROKEN.on = True


def run(runner: CliRunner, *args: str, code: int = 0) -> Any:
    result = runner.invoke(cli, list(args), env={"STOIC_ACTOR": "ops-alice"})
    assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.output}"
    return result


def as_json(runner: CliRunner, *args: str) -> Any:
    return json.loads(run(runner, *args, "--json").stdout)


def failure_id(url: str) -> int:
    store = stoic.connect(url)
    try:
        [failure] = stoic.Operations(store).failures("ledger")
        return failure.id
    finally:
        store.close()


def test_status_shows_the_projection_and_its_open_failure(runner: CliRunner, db: str) -> None:
    out = run(runner, "status", "--db", db, "--sample", "0").stdout
    assert "ledger" in out and "retrying" in out
    status = as_json(runner, "status", "--db", db, "--sample", "0")
    [ledger] = status["projections"]
    # Nobody holds it after run_until_caught_up: offline, and the failure is a cause too.
    assert (ledger["name"], ledger["status"], ledger["position"], status["head"]) == ("ledger", "offline", 4, 4)
    assert ledger["failures"] == {"retrying": 1} and ledger["parked_streams"] == 1
    assert [c["code"] for c in ledger["causes"]] == ["no_holder", "retrying_failures", "parked_streams"]


def test_failures_list_and_show(runner: CliRunner, db: str) -> None:
    [item] = as_json(runner, "failures", "list", "--db", db)
    assert (item["position"], item["stream_id"], item["status"]) == (2, "acct-2", "retrying")
    assert "poison at 2" in item["message"] and "Traceback" in item["traceback"]
    shown = as_json(runner, "failures", "show", str(item["id"]), "--db", db)
    assert shown == item
    text = run(runner, "failures", "show", str(item["id"]), "--db", db).stdout
    assert "poison at 2" in text and "acct-2" in text
    assert as_json(runner, "failures", "list", "--db", db, "--status", "dead") == []


def test_skip_applies_the_parked_followers_and_is_audited(runner: CliRunner, db: str) -> None:
    fid = failure_id(db)
    skipped = as_json(runner, "skip", str(fid), "--db", db, "--reason", "bad data from import")
    assert (skipped["status"], skipped["resolution"], skipped["actor"]) == ("skipped", "manual_skip", "ops-alice")
    store = stoic.connect(db)
    try:
        from tests.cli import apps

        stoic.Runner(store, apps.app).run_until_caught_up()
        assert store.query("SELECT stream, total FROM cli_ledger ORDER BY stream") == [
            ("acct-1", 5), ("acct-2", 1), ("acct-3", 2)]
    finally:
        store.close()
    [entry] = as_json(runner, "audit", "--db", db, "--action", "skip")
    assert (entry["actor"], entry["target"], entry["reason"], entry["outcome"]) == (
        "ops-alice", f"failure:{fid}", "bad data from import", "ok")


def test_retry_after_the_fix_turns_the_projection_healthy(runner: CliRunner, db: str) -> None:
    from tests.cli import apps

    apps.BROKEN.on = False
    fid = failure_id(db)
    run(runner, "retry", str(fid), "--db", db, "--reason", "fix deployed")
    store = stoic.connect(db)
    try:
        stoic.Runner(store, apps.app).run_until_caught_up()
    finally:
        store.close()
    shown = as_json(runner, "failures", "show", str(fid), "--db", db)
    assert (shown["status"], shown["resolution"]) == ("resolved", "manual_retry")
    [ledger] = as_json(runner, "status", "--db", db, "--sample", "0")["projections"]
    assert ledger["failures"].get("retrying", 0) == 0 and ledger["parked_streams"] == 0


@pytest.mark.parametrize(("args", "code", "message"), [
    (("failures", "show", "999"), EXIT_NOT_FOUND, "no failure with id 999"),
    (("retry", "999"), EXIT_NOT_FOUND, "no failure with id 999"),
    (("pause", "nope", "--app", APP_REF), EXIT_NOT_FOUND, "no projection named 'nope'"),
    (("replay", "ledger", "--from", "0", "--reason", "x", "--app", APP_REF), EXIT_REFUSED, "not declared idempotent"),
    (("reset", "ledger", "--reason", "   ", "--app", APP_REF), EXIT_USAGE, "a reason is required"),
    (("skip", "1"), EXIT_USAGE, "Missing option '--reason'"),
    (("failures", "list", "--status", "broken"), EXIT_USAGE, "Invalid value"),
])
def test_bad_input_gives_a_clear_error_and_changes_nothing(
    runner: CliRunner, db: str, args: tuple[str, ...], code: int, message: str
) -> None:
    before = as_json(runner, "failures", "list", "--db", db), as_json(runner, "audit", "--db", db)
    result = run(runner, *args, "--db", db, code=code)
    assert message in " ".join(result.output.split())
    after = as_json(runner, "failures", "list", "--db", db), as_json(runner, "audit", "--db", db)
    refused_audit = [a for a in after[1] if a["outcome"] == "refused"]
    assert after[0] == before[0]
    assert len(after[1]) == len(before[1]) + len(refused_audit)


def test_a_refused_action_is_audited(runner: CliRunner, db: str) -> None:
    fid = failure_id(db)
    run(runner, "skip", str(fid), "--db", db, "--reason", "first")
    result = run(runner, "retry", str(fid), "--db", db, code=EXIT_REFUSED)
    assert "it is skipped" in result.output
    [entry] = as_json(runner, "audit", "--db", db, "--action", "retry")
    assert (entry["outcome"], entry["actor"]) == ("refused", "ops-alice")


def test_a_mistyped_database_is_an_error_not_a_new_file(runner: CliRunner, tmp_path: Path) -> None:
    result = run(runner, "status", "--db", f"sqlite:///{tmp_path}/typo.db", code=EXIT_USAGE)
    assert "no SQLite database" in result.output
    assert not (tmp_path / "typo.db").exists()


def test_reset_with_the_app_rebuilds_the_read_model_here(runner: CliRunner, db: str) -> None:
    from tests.cli import apps

    apps.BROKEN.on = False
    store = stoic.connect(db)
    store.query("UPDATE cli_ledger SET total = -999")  # a corrupted read model
    store.close()
    result = run(runner, "reset", "ledger", "--reason", "corrupted", "--db", db, "--app", APP_REF)
    assert "reset of ledger done: 4 events" in result.stdout
    store = stoic.connect(db)
    try:
        assert store.query("SELECT stream, total FROM cli_ledger ORDER BY stream") == [
            ("acct-1", 5), ("acct-2", 8), ("acct-3", 2)]
        [failure] = stoic.Operations(store).failures("ledger")
        assert (failure.status, failure.resolution.value if failure.resolution else None) == (
            FailureStatus.RESOLVED, "reset")
    finally:
        store.close()
    [done, entry] = as_json(runner, "audit", "--db", db, "--action", "reset")
    assert (done["actor"], done["outcome"]) == ("worker:" + done["actor"][7:], "done: checkpoint moved back to 0")
    assert (entry["outcome"], entry["reason"], entry["details"]["head"]) == ("requested", "corrupted", 4)


def test_reset_without_a_worker_or_app_says_who_will_do_it(runner: CliRunner, db: str) -> None:
    result = run(runner, "reset", "ledger", "--reason", "later", "--db", db, "--app", APP_REF, "--no-wait")
    assert "reset of ledger requested" in result.stdout
    result = run(runner, "reset", "ledger", "--reason", "later", "--db", db)
    assert "no live worker holds ledger" in " ".join(result.output.split())
    checkpoint = stoic.Operations(stoic.connect(db)).checkpoint("ledger")
    assert (checkpoint.request, checkpoint.position) == ("reset", 4)


def test_pause_and_resume(runner: CliRunner, db: str) -> None:
    run(runner, "pause", "ledger", "--db", db, "--reason", "maintenance")
    [ledger] = as_json(runner, "status", "--db", db, "--sample", "0")["projections"]
    assert ledger["status"] == "paused"
    run(runner, "resume", "ledger", "--db", db)
    [ledger] = as_json(runner, "status", "--db", db, "--sample", "0")["projections"]
    assert ledger["status"] != "paused"
    assert [a["action"] for a in as_json(runner, "audit", "--db", db)][:2] == ["resume", "pause"]


@pytest.mark.parametrize("backend", ["sqlite-file", "postgres"])
def test_the_cli_and_the_api_show_the_same_state(runner: CliRunner, backend: str, make_url: Any) -> None:
    from tests.cli import apps

    apps.BROKEN.on = True
    url = make_url(backend)
    store = stoic.connect(url)
    try:
        store.append("acct-9", [stoic.NewEvent("Deposited", {"amount": 3, "poison": True})])
        store.append("acct-8", [stoic.NewEvent("Deposited", {"amount": 4})])
        stoic.Runner(store, apps.app).run_until_caught_up()
        store.register_worker("w-1", "host-a", 123, 30.0)
        stoic.Operations(store).pause("ledger", "ops-bob", "look")
        client = TestClient(create_app(store, apps.app, ApiSettings(admin_token=TOKEN)))
        headers = {"Authorization": f"Bearer {TOKEN}"}
        api_status = client.get("/admin/status", headers=headers).json()
        api_failures = client.get("/admin/failures", headers=headers).json()["items"]
        api_audit = client.get("/admin/audit", headers=headers).json()
    finally:
        store.close()
    cli_status = as_json(runner, "status", "--db", url, "--sample", "0")
    for view in (api_status, cli_status):
        view.pop("at")
        for projection in view["projections"]:
            projection.pop("throughput")
        for worker in view["workers"]:
            worker.pop("expires_at"), worker.pop("heartbeat_at")
    assert cli_status == api_status
    assert as_json(runner, "failures", "list", "--db", url) == api_failures
    assert as_json(runner, "audit", "--db", url) == api_audit
