"""The admin actions on failures and projections through HTTP: each does what it
says (the worker then does the work), is audited with actor, action, target,
reason and outcome, and is refused with 409 when it makes no sense now — audited,
and changing nothing else. A malformed request is 422, changes nothing and is
not audited; an unknown failure id is 404 (audited as refused), an unknown
projection name 404 (not audited)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from tests.apps import LedgerProjection, check_applied, check_exactly_once

import stoic

from ._support import Broken, World, error_code, make_app, make_client


def audit_rows(world: World, limit: int = 1000) -> list[tuple[Any, ...]]:
    """The audit log as the API shows it, newest first: (actor, action, target, reason, outcome)."""
    response = world.get(f"/admin/audit?limit={limit}", admin=True)
    assert response.status_code == 200, response.text
    return [(a["actor"], a["action"], a["target"], a["reason"], a["outcome"]) for a in response.json()]


def without_audit(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k != "audit"}


def assert_refused(world: World, response: Any, before: dict[str, Any], audited: tuple[Any, ...],
                   status: int = 409, code: str = "refused") -> None:
    """The request was refused with ``status``, one audit row ``audited`` was added, nothing else changed."""
    assert (response.status_code, error_code(response)) == (status, code), response.text
    after = world.snapshot()
    assert without_audit(after) == without_audit(before)
    added = len(after["audit"]) - len(before["audit"])
    assert added == 1 and after["audit"][1:] == before["audit"]
    assert audit_rows(world, 1) == [audited]


def test_retry_is_done_by_the_worker_and_refused_once_resolved(world: World) -> None:
    failure = world.failures("faulty")[0]
    target = f"failure:{failure.id}"

    asked = world.post(f"/admin/failures/{failure.id}/retry", {"reason": "fix deployed"})
    assert asked.status_code == 200, asked.text
    body = asked.json()
    assert (body["id"], body["status"], body["retry_requested"], body["actor"], body["note"]) == (
        failure.id, "retrying", True, "admin", "fix deployed")
    assert audit_rows(world) == [("admin", "retry", target, "fix deployed", "ok")]

    world.broken.on = False
    world.run()
    done = world.get(f"/admin/failures/{failure.id}", admin=True).json()
    assert (done["status"], done["resolution"], done["retry_requested"]) == ("resolved", "manual_retry", False)
    check_applied(world.store, "faulty", not_applied=[4, 5])  # 2 applied, then its parked follower 3

    for action in ("retry", "revive", "skip", "resolve"):
        before = world.snapshot()
        refused = world.post(f"/admin/failures/{failure.id}/{action}", {"reason": "again"})
        assert "it is resolved (manual_retry by admin)" in refused.json()["error"]["message"]
        assert_refused(world, refused, before, ("admin", action, target, "again", "refused"))


@pytest.mark.parametrize("backend", ["sqlite-memory"])
def test_retry_needs_no_body_and_no_reason(world: World) -> None:
    first, second = world.failures("fragile")
    no_body = world.post(f"/admin/failures/{first.id}/retry")
    null_body = world.post(f"/admin/failures/{second.id}/retry", content=b"null",
                           headers={"content-type": "application/json"})
    for response in (no_body, null_body):
        assert response.status_code == 200, response.text
        assert (response.json()["status"], response.json()["retry_requested"]) == ("retrying", True)
    assert [row[3:] for row in audit_rows(world)] == [(None, "ok"), (None, "ok")]


def test_revive_gives_a_dead_failure_its_schedule_back_and_refuses_a_retrying_one(world: World) -> None:
    dead = world.failures("fragile")[0]
    assert (dead.status.value, dead.attempts) == ("dead", 1)
    revived = world.post(f"/admin/failures/{dead.id}/revive", {"reason": "dependency is back"}).json()
    assert (revived["status"], revived["attempts"], revived["retry_requested"]) == ("retrying", 0, True)
    assert audit_rows(world)[0] == ("admin", "revive", f"failure:{dead.id}", "dependency is back", "ok")

    retrying = world.failures("faulty")[0]
    before = world.snapshot()
    refused = world.post(f"/admin/failures/{retrying.id}/revive", {})
    assert "revive applies to dead failures" in refused.json()["error"]["message"]
    assert_refused(world, refused, before, ("admin", "revive", f"failure:{retrying.id}", None, "refused"))

    world.broken.on = False
    world.run()
    assert world.store.get_failure(dead.id).resolution.value == "manual_retry"  # type: ignore[union-attr]
    check_applied(world.store, "fragile", not_applied=[4, 5])


@pytest.mark.parametrize(("action", "status", "resolution"), [
    ("skip", "skipped", "manual_skip"), ("resolve", "resolved", "manual_resolve")])
def test_skip_and_resolve_release_the_parked_followers(
    world: World, action: str, status: str, resolution: str
) -> None:
    failure = world.failures("faulty")[0]
    response = world.post(f"/admin/failures/{failure.id}/{action}", {"reason": "  test data from the import  "})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["resolution"], body["actor"], body["note"]) == (
        status, resolution, "admin", "test data from the import")
    assert audit_rows(world)[0] == ("admin", action, f"failure:{failure.id}", "test data from the import", "ok")

    world.run()  # still broken: the event itself is never applied, its follower is
    check_applied(world.store, "faulty", not_applied=[2, 4, 5])
    assert world.get("/health/projections/faulty").json()["failures"] == {status: 1, "retrying": 1}


def test_retry_all_asks_for_every_open_failure_once(world: World) -> None:
    ids = sorted(f.id for f in world.failures("fragile"))
    response = world.post("/admin/projections/fragile/failures/retry-all", {"reason": "fixed"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["projection"], body["retried"], sorted(body["failure_ids"])) == ("fragile", 2, ids)
    rows = audit_rows(world)
    assert rows[0] == ("admin", "retry-all", "projection:fragile", "fixed", "ok: 2 failures")
    assert sorted(rows[1:]) == sorted(("admin", "retry", f"failure:{i}", "fixed", "ok") for i in ids)

    again = world.post("/admin/projections/fragile/failures/retry-all").json()
    assert (again["retried"], again["failure_ids"]) == (0, [])  # already requested
    assert world.post("/admin/projections/ledger/failures/retry-all").json() == {
        "projection": "ledger", "retried": 0, "failure_ids": []}

    world.broken.on = False
    world.run()
    assert {f.status.value for f in world.failures("fragile")} == {"resolved"}
    check_applied(world.store, "fragile")


def test_pause_stops_the_projection_and_resume_lets_it_go_on(world: World) -> None:
    paused = world.post("/admin/projections/ledger/pause", {"reason": "schema migration"})
    assert (paused.status_code, paused.json()) == (200, {"projection": "ledger", "paused": True})
    assert audit_rows(world)[0] == ("admin", "pause", "projection:ledger", "schema migration", "ok")
    health = world.get("/health/projections/ledger").json()
    assert health["status"] == "paused" and "paused" in {c["code"] for c in health["causes"]}

    world.store.append("late", [stoic.NewEvent("Deposited", {"amount": 4})] * 2)
    world.run()
    checkpoints = {c["projection"]: c["position"] for c in (
        world.get(f"/health/projections/{n}/checkpoint").json() for n in ("ledger", "tally"))}
    assert checkpoints == {"ledger": 6, "tally": 8}

    resumed = world.post("/admin/projections/ledger/resume")
    assert (resumed.status_code, resumed.json()) == (200, {"projection": "ledger", "paused": False})
    assert audit_rows(world)[0] == ("admin", "resume", "projection:ledger", None, "ok")
    world.run()
    assert world.get("/health/projections/ledger/checkpoint").json()["position"] == 8
    check_exactly_once(world.store, ["ledger"])


def test_unknown_failures_are_404_and_audited_as_refused(world: World) -> None:
    for action in ("retry", "revive", "skip", "resolve"):
        before = world.snapshot()
        response = world.post(f"/admin/failures/424242/{action}", {"reason": "why not"})
        assert_refused(world, response, before, ("admin", action, "failure:424242", "why not", "refused"),
                       status=404, code="not_found")


@pytest.mark.parametrize("backend", ["sqlite-memory"])
def test_unknown_projections_are_404_and_change_nothing(world: World) -> None:
    before = world.snapshot()
    for path, body in [
        ("pause", {"reason": "x"}), ("resume", None), ("failures/retry-all", None), ("reset", {"reason": "x"}),
        ("replay", {"reason": "x", "from_position": 0}),
    ]:
        for name in ("nope", "Ledger", "ledger "):
            response = world.post(f"/admin/projections/{name}/{path}", body)
            assert (response.status_code, error_code(response)) == (404, "not_found"), (name, path, response.text)
    assert world.snapshot() == before  # not even audited: the name is not one of the app's


@pytest.mark.parametrize("backend", ["sqlite-memory", "postgres"])
def test_acting_on_a_projection_that_never_ran(store: stoic.Store) -> None:
    app = make_app(Broken())
    app.add(LedgerProjection("dormant"))
    with make_client(store, app) as client:
        world = World(store, app, Broken(), client)
        for action, body, status, code in [
            ("reset", {"reason": "x"}, 409, "refused"),
            ("pause", {"reason": "x"}, 404, "not_found"),  # (says "has never run")
        ]:
            audit_before = store.audit_log(1000)
            response = world.post(f"/admin/projections/dormant/{action}", body)
            assert (response.status_code, error_code(response)) == (status, code), response.text
            assert re.search("never run|no worker has run", response.json()["error"]["message"])
            assert store.audit_log(1000)[1:] == audit_before
            assert audit_rows(world, 1) == [("admin", action, "projection:dormant", "x", "refused")]
        assert store.projection_details() == []


INVALID_BODIES: list[tuple[str, Any]] = [
    # skip and resolve need a reason
    ("failures/{id}/skip", None),
    ("failures/{id}/skip", {}),
    ("failures/{id}/skip", {"reason": ""}),
    ("failures/{id}/skip", {"reason": "   "}),
    ("failures/{id}/skip", {"reason": None}),
    ("failures/{id}/skip", {"reason": 42}),
    ("failures/{id}/skip", {"reason": "x" * 2001}),
    ("failures/{id}/skip", {"reason": "a\x00b"}),
    ("failures/{id}/skip", {"reason": "x", "force": True}),
    ("failures/{id}/skip", ["reason"]),
    ("failures/{id}/skip", b"reason=x"),
    ("failures/{id}/skip", b'{"reason": "x"'),
    ("failures/{id}/resolve", None),
    ("failures/{id}/resolve", {"reason": "\t\n"}),
    ("failures/{id}/resolve", {"Reason": "x"}),
    # optional reasons are still checked
    ("failures/{id}/retry", {"reason": "x", "now": True}),
    ("failures/{id}/retry", {"reason": "a\x00"}),
    ("failures/{id}/retry", {"reason": "x" * 2001}),
    ("failures/{id}/retry", b"not json"),
    ("failures/{id}/retry", b"[]"),
    ("failures/{id}/retry", b'{"reason": "caf\xe9"}'),  # not UTF-8
    ("failures/{id}/skip", b"\xb7"),
    ("failures/{id}/revive", {"reason": 1.5}),
    ("projections/faulty/failures/retry-all", {"reason": ["x"]}),
    ("projections/ledger/pause", {"reason": "x", "until": "tomorrow"}),
    ("projections/ledger/resume", b"{{"),
    # reset and replay need a reason (and replay a position)
    ("projections/ledger/reset", None),
    ("projections/ledger/reset", {}),
    ("projections/ledger/reset", {"reason": " "}),
    ("projections/ledger/reset", {"reason": "x", "from_position": 0}),
    ("projections/tally/replay", {"from_position": 0}),
    ("projections/tally/replay", {"reason": "x"}),
    ("projections/tally/replay", {"reason": "", "from_position": 0}),
    ("projections/tally/replay", {"reason": "x", "from_position": -1}),
    ("projections/tally/replay", {"reason": "x", "from_position": 2**63}),
    ("projections/tally/replay", {"reason": "x", "from_position": 10**30}),
    ("projections/tally/replay", {"reason": "x", "from_position": "two"}),
    ("projections/tally/replay", {"reason": "x", "from_position": 1.5}),
    ("projections/tally/replay", {"reason": "x", "from_position": None}),
    ("projections/tally/replay", {"reason": "x\x00", "from_position": 0}),
    ("projections/tally/replay", {"reason": "x", "from_position": 0, "dry_run": True}),
    # bad path parameters
    ("failures/0/retry", None),
    ("failures/-1/retry", None),
    ("failures/9223372036854775808/retry", None),
    ("failures/abc/skip", {"reason": "x"}),
    ("projections/led%00ger/pause", None),
    ("projections/" + "x" * 201 + "/reset", {"reason": "x"}),
]


@pytest.mark.parametrize("backend", ["sqlite-memory"])
def test_invalid_requests_are_422_change_nothing_and_are_not_audited(world: World) -> None:
    failure_id = world.failures("faulty")[0].id
    before = world.snapshot()
    wrong = []
    for path, body in INVALID_BODIES:
        url = "/admin/" + path.replace("{id}", str(failure_id))
        if isinstance(body, bytes):
            response = world.post(url, content=body, headers={"content-type": "application/json"})
        else:
            response = world.post(url, body)
        if response.status_code != 422 or error_code(response) not in ("invalid_request", "invalid_argument"):
            wrong.append((url, body, response.status_code, response.text[:200]))
    assert not wrong, wrong
    assert world.snapshot() == before


@pytest.mark.parametrize("backend", ["sqlite-memory"])
def test_a_body_that_is_not_declared_json_is_422(world: World) -> None:
    failure_id = world.failures("faulty")[0].id
    before = world.snapshot()
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        response = world.post(f"/admin/failures/{failure_id}/skip", content=b'{"reason": "x"}',
                               headers={"content-type": content_type})
        assert (response.status_code, error_code(response)) == (422, "invalid_request"), response.text
    assert world.snapshot() == before
