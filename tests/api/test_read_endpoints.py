"""The read endpoints, over the real app and a real store on every backend: the JSON
holds the store's figures (lag = head - checkpoint, failures by status, workers),
unknown names are 404, bad parameters 422, and nothing is ever a 500."""

from __future__ import annotations

import socket

import pytest
from tests.apps import LedgerProjection

import stoic
from stoic.api.auth import ApiSettings

from ._support import ADMIN, NAMES, STREAM_A, Broken, World, error_code, make_app, make_client

SUMMARY_KEYS = {
    "id", "projection", "position", "event_type", "policy", "status", "error_class", "cause", "attempts",
    "first_failed_at", "last_failed_at", "next_retry_at", "blocking", "parked", "retry_requested",
}
DETAIL_KEYS = SUMMARY_KEYS | {
    "event_id", "stream_id", "message", "traceback", "resolution", "actor", "note", "updated_at",
}


def test_liveness_and_readiness(world: World) -> None:
    assert world.get("/health").json() == {"status": "ok"}
    ready = world.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "schema_version": world.store.schema_version(),
                            "expected_schema_version": world.store.expected_schema_version, "head": 6}


@pytest.mark.parametrize("backend", ["sqlite-memory"])
def test_readiness_is_503_on_a_schema_mismatch_or_an_unreachable_database(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = world.store.expected_schema_version
    monkeypatch.setattr(world.store, "schema_version", lambda: expected - 1)
    mismatch = world.get("/health/ready")
    assert mismatch.status_code == 503
    assert mismatch.json() == {"status": "schema_mismatch", "schema_version": expected - 1,
                               "expected_schema_version": expected, "head": 6}

    def down() -> int:
        raise stoic.StoreUnavailable("connection refused (password=hunter2)")

    monkeypatch.setattr(world.store, "schema_version", down)
    unreachable = world.get("/health/ready")
    assert unreachable.status_code == 503 and error_code(unreachable) == "unavailable"
    assert "hunter2" not in unreachable.text  # the class name only, never the driver's message
    assert world.get("/health").status_code == 200  # liveness does not touch the database

    monkeypatch.setattr(world.store, "head", down)
    for path in ("/health/projections", "/health/projections/ledger", "/metrics"):
        response = world.get(path)
        assert (response.status_code, error_code(response)) == (503, "unavailable"), path


def test_projections_health_has_the_stores_figures(world: World) -> None:
    world.store.append("late", [stoic.NewEvent("Deposited", {"amount": 1})] * 3)  # lag 3 everywhere
    response = world.get("/health/projections")
    assert response.status_code == 200
    items = {item["name"]: item for item in response.json()}
    assert sorted(items) == sorted(NAMES)
    details = {d.name: d for d in world.store.projection_details()}
    head = world.store.head()
    assert head == 9
    for name, item in items.items():
        assert item["position"] == details[name].position == 6
        assert item["head"] == head
        assert item["lag_events"] == head - details[name].position == 3
        assert item["lag_seconds"] >= 0
        assert item["events_processed"] == details[name].events_processed == 6
        assert (item["holder"], item["holder_alive"], item["breaker"]) == (None, False, "closed")
        assert item["status"] == "offline"  # nobody holds it between runs
        assert "no_holder" in {c["code"] for c in item["causes"]}
    assert items["ledger"]["failures"] == {} and items["tally"]["failures"] == {}
    assert items["faulty"]["failures"] == {"retrying": 2}
    assert items["fragile"]["failures"] == {"dead": 2}
    for name in ("faulty", "fragile"):
        assert (items[name]["parked_streams"], items[name]["parked_events"]) == (2, 2)
    assert {"dead_failures", "parked_streams"} <= {c["code"] for c in items["fragile"]["causes"]}
    assert {"retrying_failures", "parked_streams"} <= {c["code"] for c in items["faulty"]["causes"]}

    one = world.get("/health/projections/fragile").json()
    volatile = {"lag_seconds", "throughput"}
    assert {k: v for k, v in one.items() if k not in volatile} == {
        k: v for k, v in items["fragile"].items() if k not in volatile}


def test_a_projection_that_never_ran_is_offline_with_a_zero_checkpoint(store: stoic.Store) -> None:
    app = make_app(Broken())
    app.add(LedgerProjection("dormant"))
    store.append("s", [stoic.NewEvent("Deposited", {"amount": 1})] * 4)
    with make_client(store, app) as client:
        health = client.get("/health/projections/dormant").json()
        assert (health["status"], [c["code"] for c in health["causes"]]) == ("offline", ["never_started"])
        assert (health["position"], health["head"], health["lag_events"]) == (0, 4, 4)
        assert client.get("/health/projections/dormant/checkpoint").json() == {
            "projection": "dormant", "position": 0, "head": 4, "lag_events": 4, "events_processed": 0,
            "updated_at": None, "holder": None, "holder_alive": False, "epoch": 0, "pending_request": None,
            "pending_request_position": None}
        assert client.get("/health/projections/dormant/failures").json()["items"] == []


def test_checkpoint_is_the_stores(world: World) -> None:
    world.store.append("late", [stoic.NewEvent("Deposited", {"amount": 1})] * 2)
    details = {d.name: d for d in world.store.projection_details()}["ledger"]
    body = world.get("/health/projections/ledger/checkpoint").json()
    assert body == {
        "projection": "ledger", "position": 6, "head": 8, "lag_events": 2, "events_processed": 6,
        "updated_at": body["updated_at"], "holder": None, "holder_alive": False, "epoch": details.epoch,
        "pending_request": None, "pending_request_position": None,
    }
    assert body["updated_at"] is not None and details.epoch >= 1

    world.post("/admin/projections/ledger/reset", {"reason": "rebuild"})
    pending = world.get("/health/projections/ledger/checkpoint").json()
    assert (pending["pending_request"], pending["pending_request_position"], pending["position"]) == ("reset", 0, 6)


def test_a_projections_failures_open_and_as_admin(world: World) -> None:
    stored = world.failures("fragile")
    assert [f.position for f in stored] == [2, 4]
    newest_first = [f.id for f in reversed(stored)]

    open_page = world.get("/health/projections/fragile/failures").json()
    assert (open_page["detailed"], open_page["limit"], open_page["offset"]) == (False, 50, 0)
    assert [item["id"] for item in open_page["items"]] == newest_first
    for item, failure in zip(open_page["items"], reversed(stored), strict=True):
        assert set(item) == SUMMARY_KEYS
        assert item == {
            "id": failure.id, "projection": "fragile", "position": failure.position, "event_type": "Deposited",
            "policy": "park", "status": "dead", "error_class": "ValueError", "cause": "handler_error",
            "attempts": 1, "first_failed_at": item["first_failed_at"], "last_failed_at": item["last_failed_at"],
            "next_retry_at": None, "blocking": True, "parked": 1, "retry_requested": False,
        }

    admin_page = world.get("/health/projections/fragile/failures", admin=True).json()
    assert admin_page["detailed"] is True
    assert [set(item) for item in admin_page["items"]] == [DETAIL_KEYS, DETAIL_KEYS]
    assert [item["stream_id"] for item in admin_page["items"]] == [f.stream_id for f in reversed(stored)]

    def ids(query: str) -> list[int]:
        response = world.get(f"/health/projections/fragile/failures?{query}")
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert ids("status=dead") == newest_first
    assert ids("status=retrying") == []
    assert ids("limit=1") == newest_first[:1]
    assert ids("limit=1&offset=1") == newest_first[1:]
    assert ids("offset=2") == []
    assert ids("offset=9223372036854775807") == []
    assert ids("limit=1000") == newest_first


def test_system_status_has_failures_by_status_and_the_workers(world: World) -> None:
    world.store.register_worker("worker-api-test", socket.gethostname(), 4242, 30.0)
    world.store.register_worker("worker-gone", "elsewhere", 7, -1.0)  # already expired
    body = world.get("/admin/status", admin=True).json()
    assert set(body) == {"head", "at", "projections", "failures", "workers"}
    assert body["head"] == world.store.head() == 6
    assert body["failures"] == {"retrying": 2, "dead": 2}
    assert sorted(p["name"] for p in body["projections"]) == sorted(NAMES)
    workers = {w["worker_id"]: w for w in body["workers"]}
    assert set(workers) == {"worker-api-test", "worker-gone"}
    mine = workers["worker-api-test"]
    assert (mine["hostname"], mine["pid"], mine["alive"]) == (socket.gethostname(), 4242, True)
    assert mine["expires_at"] > mine["heartbeat_at"]
    assert (workers["worker-gone"]["hostname"], workers["worker-gone"]["alive"]) == ("elsewhere", False)
    stored = {w.worker_id: w for w in world.store.workers()}
    assert {w: stored[w].alive for w in stored} == {w: workers[w]["alive"] for w in workers}


def test_admin_failures_are_filtered_and_paged(world: World) -> None:
    every = sorted(world.store.list_failures(None, None, None, 1000, 0), key=lambda f: -f.id)
    assert len(every) == 4

    def ids(query: str = "") -> list[int]:
        response = world.get(f"/admin/failures?{query}", admin=True)
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["detailed"] is True and all(set(item) == DETAIL_KEYS for item in page["items"])
        return [item["id"] for item in page["items"]]

    assert ids() == [f.id for f in every]
    assert ids("projection=faulty") == [f.id for f in every if f.projection == "faulty"]
    assert ids("status=dead") == [f.id for f in every if f.projection == "fragile"]
    assert ids("projection=faulty&status=dead") == []
    assert ids(f"stream_id={STREAM_A}") == [f.id for f in every if f.position == 2]
    assert ids("stream_id=nobody") == []
    assert ids("limit=2&offset=1") == [f.id for f in every][1:3]

    unknown = world.get("/admin/failures?projection=nope", admin=True)
    assert (unknown.status_code, error_code(unknown)) == (404, "not_found")


def test_one_failure_in_full(world: World) -> None:
    failure = world.failures("faulty")[0]
    body = world.get(f"/admin/failures/{failure.id}", admin=True).json()
    assert set(body) == DETAIL_KEYS
    assert (body["id"], body["projection"], body["position"], body["stream_id"], body["event_id"]) == (
        failure.id, "faulty", 2, STREAM_A, failure.event_id)
    assert (body["status"], body["attempts"], body["message"]) == ("retrying", 1, failure.message)
    assert "ValueError" in body["traceback"] and body["retry_requested"] is False
    assert (body["resolution"], body["actor"], body["note"]) == (None, None, None)

    for missing in (10**6, 2**63 - 1):
        response = world.get(f"/admin/failures/{missing}", admin=True)
        assert (response.status_code, error_code(response)) == (404, "not_found")
        assert str(missing) in response.json()["error"]["message"]


@pytest.mark.parametrize("backend", ["sqlite-memory"])
def test_unknown_projections_are_404(world: World) -> None:
    for name in ("nope", "LEDGER", "%20ledger", "ledger%20", "ledger_ledger"):
        for suffix in ("", "/checkpoint", "/failures"):
            for admin in (False, True):
                response = world.get(f"/health/projections/{name}{suffix}", admin=admin)
                assert (response.status_code, error_code(response)) == (404, "not_found"), (name, suffix)
                assert "no projection named" in response.json()["error"]["message"]


BAD_QUERIES = [
    "/health/projections/faulty/failures?limit=0",
    "/health/projections/faulty/failures?limit=1001",
    "/health/projections/faulty/failures?limit=5000",
    "/health/projections/faulty/failures?limit=-1",
    "/health/projections/faulty/failures?limit=ten",
    "/health/projections/faulty/failures?offset=-1",
    "/health/projections/faulty/failures?offset=9223372036854775808",
    "/health/projections/faulty/failures?status=exploded",
    "/health/projections/faulty/failures?status=RETRYING",
    "/health/projections/led%00ger",
    "/health/projections/led%00ger/checkpoint",
    "/health/projections/" + "x" * 201,
    "/admin/failures?limit=0",
    "/admin/failures?limit=5000",
    "/admin/failures?offset=-3",
    "/admin/failures?status=unknown",
    "/admin/failures?stream_id=a%00b",
    "/admin/failures?projection=fa%00ulty",
    "/admin/failures?projection=" + "p" * 201,
    "/admin/failures/0",
    "/admin/failures/-1",
    "/admin/failures/9223372036854775808",
    "/admin/failures/99999999999999999999999999",
    "/admin/failures/abc",
    "/admin/failures/1.5",
    "/admin/audit?limit=0",
    "/admin/audit?limit=1001",
    "/admin/audit?offset=-1",
    "/admin/audit?action=re%00set",
    "/admin/audit?action=" + "a" * 101,
]


@pytest.mark.parametrize("backend", ["sqlite-memory"])
def test_bad_parameters_are_422_and_change_nothing(world: World) -> None:
    before = world.snapshot()
    wrong = []
    for path in BAD_QUERIES:
        response = world.get(path, admin=True)
        if response.status_code != 422 or error_code(response) != "invalid_request":
            wrong.append((path, response.status_code, response.text[:200]))
    assert not wrong, wrong
    assert world.snapshot() == before


@pytest.mark.parametrize("backend", ["sqlite-memory"])
def test_unknown_routes_and_methods_are_json_errors(world: World) -> None:
    missing = world.get("/nope", admin=True)
    assert (missing.status_code, error_code(missing)) == (404, "not_found")
    wrong_method = world.client.delete("/health", headers=ADMIN)
    assert (wrong_method.status_code, error_code(wrong_method)) == (405, "method_not_allowed")
    get_an_action = world.get("/admin/projections/ledger/reset", admin=True)
    assert (get_an_action.status_code, error_code(get_an_action)) == (405, "method_not_allowed")


@pytest.mark.parametrize("backend", ["sqlite-memory"])
def test_dashboard_and_openapi_are_served(world: World) -> None:
    page = world.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    schema = world.get("/openapi.json").json()
    assert {"/health", "/health/ready", "/metrics", "/admin/status", "/admin/projections/{name}/replay"} <= set(
        schema["paths"])


@pytest.mark.parametrize("backend", ["sqlite-memory"])
def test_an_api_without_the_app_knows_the_projections_the_store_has_seen(world: World) -> None:
    with make_client(world.store, None, ApiSettings(admin_token="x" * 16)) as client:
        names = sorted(item["name"] for item in client.get("/health/projections").json())
        assert names == sorted(NAMES)
        assert client.get("/health/projections/nope").status_code == 404
        assert client.get("/health/projections/tally/checkpoint").json()["position"] == 6
