"""Who may call what: admin endpoints need the bearer token (401 without, with
WWW-Authenticate; 403 with a wrong one; 403 admin_disabled when no token is
configured), loopback clients only when the demo setting allows them,
``protect_reads`` puts the health details and metrics behind the token (never
liveness and readiness), and X-Stoic-Actor names the audit log's actor."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
import uvicorn

from stoic.api.app import create_app
from stoic.api.auth import ApiSettings

from ._support import ADMIN, STREAM_A, STREAM_C, TOKEN, World, error_code, make_client

quick = pytest.mark.parametrize("backend", ["sqlite-memory"])

OPEN_ALWAYS = ["/health", "/health/ready"]
READS = ["/health/projections", "/health/projections/faulty", "/health/projections/faulty/checkpoint",
         "/health/projections/faulty/failures", "/metrics"]


def admin_requests(world: World) -> list[tuple[str, str, Any]]:
    """One request to every admin endpoint (method, path, JSON body). Each succeeds, in this order,
    except those in REFUSED (409): resegment to the 1 segment it has; the stream rebuild, because the
    reset before it is still pending;
    and the last three, because the world has no versioned projection."""
    first, second = (f.id for f in world.failures("faulty"))
    dead = world.failures("fragile")[0].id
    return [
        ("GET", "/admin/whoami", None),
        ("GET", "/admin/status", None),
        ("GET", "/admin/audit", None),
        ("GET", "/admin/failures", None),
        ("GET", f"/admin/failures/{first}", None),
        ("POST", f"/admin/failures/{first}/retry", {"reason": "r"}),
        ("POST", f"/admin/failures/{dead}/revive", {"reason": "r"}),
        ("POST", f"/admin/failures/{first}/skip", {"reason": "r"}),
        ("POST", f"/admin/failures/{second}/resolve", {"reason": "r"}),
        ("POST", "/admin/projections/fragile/failures/retry-all", {"reason": "r"}),
        ("POST", "/admin/projections/ledger/pause", {"reason": "r"}),
        ("POST", "/admin/projections/ledger/resume", {"reason": "r"}),
        ("GET", "/admin/projections/ledger/reconcile", None),
        ("GET", f"/admin/projections/ledger/reconcile/{STREAM_A}", None),
        ("POST", "/admin/projections/ledger/reconcile", {"repair": False, "reason": "r"}),
        ("POST", "/admin/projections/ledger/resegment", {"reason": "r", "to": 1}),
        ("POST", "/admin/projections/ledger/reset", {"reason": "r"}),
        ("POST", "/admin/projections/ledger/streams/rebuild", {"reason": "r", "streams": [STREAM_C]}),
        ("POST", "/admin/projections/tally/replay", {"reason": "r", "from_position": 0}),
        ("POST", "/admin/projections/ledger/rebuild", {"reason": "r"}),
        ("POST", "/admin/projections/ledger/rollback", {"reason": "r"}),
        ("POST", "/admin/projections/ledger/drop-previous", {"reason": "r"}),
    ]


REFUSED = {"/admin/projections/ledger/resegment", "/admin/projections/ledger/streams/rebuild",
           "/admin/projections/ledger/rebuild",
           "/admin/projections/ledger/rollback", "/admin/projections/ledger/drop-previous"}


@quick
def test_every_admin_route_is_in_the_list(world: World) -> None:
    """So that a new admin endpoint cannot escape the auth tests below."""
    routes = {(method, route.path) for route in world.client.app.routes  # type: ignore[attr-defined]
              if getattr(route, "path", "").startswith("/admin") for method in route.methods}
    covered = set()
    for method, path, _ in admin_requests(world):
        for route in world.client.app.routes:  # type: ignore[attr-defined]
            scope = {"type": "http", "method": method, "path": path}
            if getattr(route, "path", "").startswith("/admin") and route.matches(scope)[0].name == "FULL":
                covered.add((method, route.path))
    assert covered == routes


def send(client: Any, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    return client.request(method, path, json=body, headers=headers)


@quick
@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, "unauthenticated"),
    ({"Authorization": "Bearer wrong-token-0000000000"}, 403, "forbidden"),
    ({"Authorization": f"Bearer {TOKEN.upper()}"}, 403, "forbidden"),
    ({"Authorization": f"Bearer {TOKEN}x"}, 403, "forbidden"),
    ({"Authorization": f"Bearer {TOKEN[:-1]}"}, 403, "forbidden"),
    ({"Authorization": "Bearer"}, 403, "forbidden"),
    ({"Authorization": f"Basic {TOKEN}"}, 403, "forbidden"),
    ({"Authorization": TOKEN}, 403, "forbidden"),
    ({"X-Admin-Token": TOKEN}, 401, "unauthenticated"),
])
def test_admin_endpoints_refuse_a_missing_or_wrong_token(
    world: World, headers: dict[str, str], status: int, code: str
) -> None:
    before = world.snapshot()
    for method, path, body in admin_requests(world):
        response = send(world.client, method, path, body, headers)
        assert (response.status_code, error_code(response)) == (status, code), (method, path)
        if status == 401:
            assert response.headers["www-authenticate"] == "Bearer"
        else:
            assert "www-authenticate" not in response.headers
        assert TOKEN not in response.text
    assert world.snapshot() == before


@quick
def test_the_token_is_accepted_in_any_scheme_case_and_with_spaces(world: World) -> None:
    for header in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER   {TOKEN}  "):
        assert world.client.get("/admin/status", headers={"Authorization": header}).status_code == 200, header


@quick
def test_without_a_configured_token_admin_is_disabled_even_from_loopback(world: World) -> None:
    before = world.snapshot()
    for client in (("127.0.0.1", 50000), ("10.1.2.3", 1234)):
        with make_client(world.store, world.app, ApiSettings(), client=client) as api:
            for method, path, body in admin_requests(world):
                for headers in ({}, ADMIN):
                    response = send(api, method, path, body, headers)
                    assert (response.status_code, error_code(response)) == (403, "admin_disabled"), (path, client)
                    assert "www-authenticate" not in response.headers
            assert api.get("/health/projections").status_code == 200  # reads stay open
            assert api.get("/health/projections/faulty/failures").json()["detailed"] is False
    assert world.snapshot() == before


@quick
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_loopback_admin_when_allowed_and_no_token_is_configured(world: World, host: str) -> None:
    settings = ApiSettings(allow_loopback_admin=True)
    with make_client(world.store, world.app, settings, client=(host, 50000)) as api:
        for method, path, body in admin_requests(world):
            response = send(api, method, path, body, {})
            assert response.status_code in ((409,) if path in REFUSED else (200, 202)), (path, response.text)
        assert api.get("/health/projections/faulty/failures").json()["detailed"] is True
        assert api.get("/admin/whoami").json() == {"actor": f"anonymous@{host}", "mode": "loopback"}
    actors = {a.actor for a in world.store.audit_log(1000)}
    assert actors == {f"anonymous@{host}"}


@quick
@pytest.mark.parametrize("host", ["10.1.2.3", "192.168.1.20", "172.17.0.1", "8.8.8.8", "127.0.0.2.example.com"])
def test_loopback_admin_refuses_other_clients(world: World, host: str) -> None:
    before = world.snapshot()
    with make_client(world.store, world.app, ApiSettings(allow_loopback_admin=True), client=(host, 1234)) as api:
        for method, path, body in admin_requests(world):
            response = send(api, method, path, body, {})
            assert (response.status_code, error_code(response)) == (403, "admin_disabled"), path
        assert api.get("/health/projections/faulty/failures").json()["detailed"] is False
    assert world.snapshot() == before


@quick
def test_a_configured_token_wins_over_loopback(world: World) -> None:
    settings = ApiSettings(admin_token=TOKEN, allow_loopback_admin=True)
    with make_client(world.store, world.app, settings, client=("127.0.0.1", 50000)) as api:
        response = api.get("/admin/status")
        assert (response.status_code, error_code(response)) == (401, "unauthenticated")
        assert api.get("/admin/status", headers=ADMIN).status_code == 200


@quick
def test_the_test_clients_made_up_host_is_not_loopback(world: World) -> None:
    with make_client(world.store, world.app, ApiSettings(allow_loopback_admin=True)) as api:  # ("testclient", 50000)
        assert api.get("/admin/status").status_code == 403


@contextlib.contextmanager
def serving(api: Any) -> Iterator[str]:
    """A real uvicorn server (as ``stoic serve`` configures it) on 127.0.0.1; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(api, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off",
                            ws="none", http="h11")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.mark.parametrize("backend", ["sqlite-file"])
def test_loopback_admin_over_a_real_socket(world: World) -> None:
    api = create_app(world.store, world.app, ApiSettings(allow_loopback_admin=True))
    with serving(api) as url, httpx2.Client(base_url=url, timeout=10) as http:
        local = http.post("/admin/projections/ledger/pause", json={"reason": "from the same machine"})
        assert local.status_code == 200, local.text
        # uvicorn trusts X-Forwarded-For from 127.0.0.1 (a local proxy): the client it names is not loopback.
        proxied = http.post("/admin/projections/ledger/resume", headers={"X-Forwarded-For": "203.0.113.7"})
        assert (proxied.status_code, proxied.json()["error"]["code"]) == (403, "admin_disabled")
        assert http.get("/health/projections/ledger").json()["status"] == "paused"
    assert [(a.actor, a.action) for a in world.store.audit_log()] == [("anonymous@127.0.0.1", "pause")]


@quick
def test_protect_reads_puts_health_details_and_metrics_behind_the_token(world: World) -> None:
    with make_client(world.store, world.app, ApiSettings(admin_token=TOKEN, protect_reads=True)) as api:
        for path in OPEN_ALWAYS:
            assert api.get(path).status_code == 200, path
        for path in READS:
            missing = api.get(path)
            assert (missing.status_code, error_code(missing)) == (401, "unauthenticated"), path
            assert missing.headers["www-authenticate"] == "Bearer"
            wrong = api.get(path, headers={"Authorization": "Bearer not-the-token-at-all"})
            assert (wrong.status_code, error_code(wrong)) == (403, "forbidden"), path
            assert api.get(path, headers=ADMIN).status_code == 200, path
        for path in ("/health/projections/nope", "/health/projections/nope/failures"):
            assert api.get(path).status_code == 401  # no probing for names without the token
    with make_client(world.store, world.app, ApiSettings(protect_reads=True)) as api:
        assert [api.get(path).status_code for path in OPEN_ALWAYS] == [200, 200]
        assert {error_code(api.get(path)) for path in READS} == {"admin_disabled"}
    for path in READS + OPEN_ALWAYS:  # the default: open
        assert world.get(path).status_code == 200, path


@pytest.mark.parametrize("backend", ["sqlite-memory", "postgres"])
def test_the_actor_header_names_who_acted(world: World) -> None:
    failure = world.failures("faulty")[0]
    named = world.post(f"/admin/failures/{failure.id}/skip", {"reason": "bad import"},
                       headers={"X-Stoic-Actor": "Alice Smith"})
    assert named.status_code == 200 and named.json()["actor"] == "Alice Smith"
    world.post("/admin/projections/ledger/pause", headers={"X-Stoic-Actor": "svc:deploy-bot@eu-1/v2+x_y.z"})
    world.post("/admin/projections/ledger/resume", headers={"X-Stoic-Actor": "   "})  # blank: the default
    actors = [(a["actor"], a["action"]) for a in world.get("/admin/audit", admin=True).json()]
    assert actors == [("admin", "resume"), ("svc:deploy-bot@eu-1/v2+x_y.z", "pause"), ("Alice Smith", "skip")]


@quick
@pytest.mark.parametrize("actor", ["bob; DROP TABLE", "<script>", "a" * 201, "tab\there", "quote'd", "x=1",
                                   "caf\u00c3\u00a9"])
def test_a_bad_actor_header_is_400_and_changes_nothing(world: World, actor: str) -> None:
    failure = world.failures("faulty")[0]
    before = world.snapshot()
    headers = {"X-Stoic-Actor": actor.encode("latin-1")}  # header bytes, as a client would send them
    for method, path, body in admin_requests(world):
        response = world.client.request(method, path, json=body, headers={**ADMIN, **headers})
        assert (response.status_code, error_code(response)) == (400, "invalid_actor"), (path, response.text)
    assert world.snapshot() == before
    assert failure == world.failures("faulty")[0]
    # on an open read it only decides whether the caller is an admin (it is not, then)
    page = world.client.get("/health/projections/faulty/failures", headers={**ADMIN, **headers})
    assert page.status_code == 200 and page.json()["detailed"] is False


@pytest.mark.parametrize("backend", ["sqlite-memory", "postgres"])
def test_every_admin_action_is_audited(world: World) -> None:
    """actor, action, target, reason and outcome of each action, newest first, in GET /admin/audit."""
    headers = {"X-Stoic-Actor": "carol"}
    done = []
    for method, path, body in admin_requests(world):
        response = world.client.request(method, path, json=body, headers={**ADMIN, **headers})
        assert response.status_code in ((409,) if path in REFUSED else (200, 202)), (path, response.text)
        done.append((method, path))
    audit = world.get("/admin/audit?limit=1000", admin=True).json()
    rows = [(a["actor"], a["action"], a["target"], a["reason"], a["outcome"]) for a in reversed(audit)]
    first, second = (f.id for f in world.failures("faulty"))
    dead, other_dead = (f.id for f in world.failures("fragile"))
    assert rows == [
        ("carol", "retry", f"failure:{first}", "r", "ok"),
        ("carol", "revive", f"failure:{dead}", "r", "ok"),
        ("carol", "skip", f"failure:{first}", "r", "ok"),
        ("carol", "resolve", f"failure:{second}", "r", "ok"),
        ("carol", "retry", f"failure:{other_dead}", "r", "ok"),  # by retry-all: the revived one is requested already
        ("carol", "retry-all", "projection:fragile", "r", "ok: 1 failure"),
        ("carol", "pause", "projection:ledger", "r", "ok"),
        ("carol", "resume", "projection:ledger", "r", "ok"),
        ("carol", "reconcile", "projection:ledger", None, "ok: 3 of 3 streams match"),
        ("carol", "reconcile", f"projection:ledger/stream:{STREAM_A}", None, "ok: 1 of 1 streams match"),
        ("carol", "reconcile", "projection:ledger", "r", "ok: 3 of 3 streams match"),
        ("carol", "resegment", "projection:ledger", "r", "refused"),
        ("carol", "reset", "projection:ledger", "r", "requested"),
        ("carol", "repair", "projection:ledger", "r", "refused"),
        ("carol", "replay", "projection:tally", "r", "requested"),
        ("carol", "rebuild", "projection:ledger", "r", "refused"),
        ("carol", "rollback", "projection:ledger", "r", "refused"),
        ("carol", "drop-previous", "projection:ledger", "r", "refused"),
    ]
    assert all(a["id"] > b["id"] and a["at"] >= b["at"] for a, b in itertools.pairwise(audit))
    assert audit[3]["details"] == {"position": 0, "head": 6, "seq": 1}  # the replay of tally
    assert world.get("/admin/audit?action=retry", admin=True).json() == [a for a in audit if a["action"] == "retry"]
    assert world.get("/admin/audit?limit=2&offset=1", admin=True).json() == audit[1:3]
    assert world.get("/admin/whoami", admin=True, headers=headers).json() == {"actor": "carol", "mode": "token"}
    assert len(done) == len(admin_requests(world))


def test_token_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        ApiSettings(admin_token="short")
