"""The open endpoints never show what may hold customer data or secrets: a
failure's message, traceback, stream id or event id, an event's payload, an
operator's free text, a dependency's error message. Admins see all of it."""

from __future__ import annotations

import pytest
from tests.apps import FaultyLedger

import stoic
from stoic.failures import BreakerPolicy, RetryPolicy

from ._support import ADMIN, MESSAGE_SECRET, PAYLOAD_SECRET, STREAM_A, STREAM_B, World, make_client

SECRETS = [MESSAGE_SECRET, PAYLOAD_SECRET, STREAM_A, STREAM_B, "card rejected", "Traceback", "jane.doe"]
OPEN_PATHS = ["/health/projections", "/health/projections/faulty", "/health/projections/fragile",
              "/health/projections/faulty/checkpoint", "/metrics"] + [
    f"/health/projections/{name}/failures{query}"
    for name in ("faulty", "fragile") for query in ("", "?status=retrying", "?status=dead", "?limit=1&offset=1")]


def leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def test_open_endpoints_hide_messages_streams_and_payloads_admins_see_them(world: World) -> None:
    # a failed retry rewrites the message: still hidden
    world.post(f"/admin/failures/{world.failures('faulty')[0].id}/retry")
    world.run()
    event_ids = [f.event_id for f in world.failures("faulty") + world.failures("fragile")]
    for headers in ({}, {"Authorization": "Bearer not-the-admin-token"}):  # a wrong token is not an admin
        for path in OPEN_PATHS:
            response = world.client.get(path, headers=headers)
            assert response.status_code == 200, path
            assert leaks(response.text) == [], path
            assert not [e for e in event_ids if e in response.text], path

    admin = world.get("/health/projections/faulty/failures", admin=True)
    assert MESSAGE_SECRET in admin.text and STREAM_A in admin.text and "Traceback" in admin.text
    assert MESSAGE_SECRET in world.get("/admin/failures?projection=fragile", admin=True).text
    detail = world.get(f"/admin/failures/{world.failures('fragile')[0].id}", admin=True).json()
    assert MESSAGE_SECRET in detail["message"] and detail["stream_id"] == STREAM_A
    # the payload is in no response at all: failures name the event, they do not copy it
    assert PAYLOAD_SECRET not in world.get("/admin/failures", admin=True).text


@pytest.mark.parametrize("backend", ["sqlite-memory"])
def test_open_health_hides_an_operators_reason(world: World) -> None:
    world.post("/admin/projections/ledger/pause", {"reason": "customer jane.doe asked for an erasure"},
               headers={"X-Stoic-Actor": "alice"})
    public = world.get("/health/projections/ledger").json()
    assert public["status"] == "paused" and "paused" in {c["code"] for c in public["causes"]}
    assert "jane.doe" not in str(public) and "alice" not in str(public)
    full = world.get("/health/projections/ledger", admin=True).json()
    assert "jane.doe" in str(full["causes"]) and "alice" in str(full["causes"])
    assert "jane.doe" in str(world.get("/admin/status", admin=True).json())


@pytest.mark.parametrize("backend", ["sqlite-memory", "postgres"])
def test_open_health_hides_the_dependency_error_that_opened_the_breaker(store: stoic.Store) -> None:
    secret = "postgresql://app:pw-SECRET-77@db.internal/app"

    def fault(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        raise stoic.TransientError(f"could not reach {secret}")

    app = stoic.App([FaultyLedger("flaky", fault, retry_policy=RetryPolicy(initial_delay=0.001, max_attempts=2),
                                  breaker_policy=BreakerPolicy(cooldown=600))])
    store.append("s", [stoic.NewEvent("Deposited", {"amount": 1})])
    with pytest.raises(stoic.CircuitOpen):
        stoic.Runner(store, app).run_until_caught_up(timeout=30)
    with make_client(store, app) as client:
        public = client.get("/health/projections/flaky").json()
        assert (public["status"], public["breaker"]) == ("offline", "open")  # no holder outranks critical
        assert "breaker_open" in {c["code"] for c in public["causes"]}
        for path in ("/health/projections", "/health/projections/flaky", "/metrics"):
            assert "pw-SECRET-77" not in client.get(path).text, path
        for path in ("/health/projections", "/health/projections/flaky", "/admin/status"):
            assert "pw-SECRET-77" in client.get(path, headers=ADMIN).text, path
