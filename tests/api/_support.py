"""Helpers of the HTTP API suite: the token, a populated system (``World``) with
projections of every kind, and snapshots of the store's state to prove that a
refused or invalid request changed nothing.

The world's events (global order = the order below):

====  =================  =====================================================
pos   stream             event
====  =================  =====================================================
1     STREAM_A           Deposited 10
2     STREAM_A           Deposited 5, poison (its payload holds PAYLOAD_SECRET)
3     STREAM_A           Withdrawn 3 (parked behind 2 in the faulty ones)
4     STREAM_B           Deposited 7, poison
5     STREAM_B           Deposited 1 (parked behind 4)
6     STREAM_C           Deposited 2
====  =================  =====================================================

Projections (app order, which is also the order a runner processes them):

- ``ledger``: a LedgerProjection (has reset(), not idempotent), reconcilable and
  repairable (expected_state, actual_state, forget);
- ``faulty``: a FaultyLedger refusing poison events with an error whose message
  holds MESSAGE_SECRET; background retries in an hour, 5 attempts, so its two
  failures stay ``retrying``;
- ``fragile``: the same, but one attempt only, so its two failures are ``dead``;
- ``tally``: idempotent, without reset().
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi.testclient import TestClient
from tests.apps import FaultyLedger, LedgerProjection, fold

import stoic
from stoic.api.app import create_app
from stoic.api.auth import ApiSettings
from stoic.store import FailureRecord, FailureStatus

TOKEN = "api-test-token-5d1f0c2b9e8a"  #: the admin token (at least 16 characters)
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
MESSAGE_SECRET = "sk_live_MSG7c31"  #: only in the failing handler's error message
PAYLOAD_SECRET = "pan-4111-PAYLOAD-9b2e"  #: only in a poison event's payload
STREAM_A = "customer-jane.doe@example.com"  #: stream ids are customer data too
STREAM_B = "customer-bob.smith@example.com"
STREAM_C = "customer-carol@example.com"
NAMES = ["ledger", "faulty", "fragile", "tally"]


class Broken:
    """The faulty projections' bug: on until the test "deploys the fix"."""

    def __init__(self) -> None:
        self.on = True


def poison_fault(broken: Broken) -> Any:
    def fault(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        if event.data.get("poison") and broken.on:
            raise ValueError(f"card rejected by the gateway (key {MESSAGE_SECRET}) for {event.stream_id}")

    return fault


class Tally(stoic.Projection):
    """Idempotent (an event applied twice gives the same ``tally_amounts``); no reset().
    ``tally_applied`` counts the applications of each position, to watch a replay."""

    name = "tally"
    idempotent = True
    refuse = False  #: a test switches it on: events with data["tally_poison"] then fail


    def setup(self, tx: stoic.Transaction) -> None:
        tx.execute("CREATE TABLE IF NOT EXISTS tally_amounts (position BIGINT PRIMARY KEY, amount BIGINT NOT NULL)")
        tx.execute("CREATE TABLE IF NOT EXISTS tally_applied (position BIGINT PRIMARY KEY, times INTEGER NOT NULL)")

    @stoic.handles_all
    def apply(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        if self.refuse and event.data.get("tally_poison"):
            raise ValueError("the tally refuses this event")
        tx.execute("INSERT INTO tally_amounts (position, amount) VALUES (?, ?) "
                   "ON CONFLICT (position) DO UPDATE SET amount = excluded.amount",
                   (event.position, int(event.data.get("amount", 0))))
        tx.execute("INSERT INTO tally_applied (position, times) VALUES (?, 1) "
                   "ON CONFLICT (position) DO UPDATE SET times = tally_applied.times + 1", (event.position,))


class ReconciledLedger(LedgerProjection):
    """A LedgerProjection whose balance rows can be reconciled with the events and rebuilt per stream."""

    def expected_state(self, stream_id: str, events: list[stoic.RecordedEvent]) -> dict[str, Any] | None:
        folded = fold(events).get(stream_id)
        return None if folded is None else {"balance": folded[0], "events": folded[1]}

    def actual_state(self, stream_id: str, tx: stoic.Transaction) -> dict[str, Any] | None:
        row = tx.execute(f"SELECT balance, events FROM {self.balance} WHERE account = ?", (stream_id,)).fetchone()
        return None if row is None else {"balance": int(row[0]), "events": int(row[1])}

    def forget(self, stream_id: str, tx: stoic.Transaction) -> None:
        tx.execute(f"DELETE FROM {self.ledger} WHERE stream_id = ?", (stream_id,))
        tx.execute(f"DELETE FROM {self.balance} WHERE account = ?", (stream_id,))


def make_app(broken: Broken) -> stoic.App:
    fault = poison_fault(broken)
    return stoic.App([
        ReconciledLedger("ledger"),
        FaultyLedger("faulty", fault, retry_schedule=stoic.RetrySchedule(first_delay=3600, max_attempts=5)),
        FaultyLedger("fragile", fault, retry_schedule=stoic.RetrySchedule(first_delay=3600, max_attempts=1)),
        Tally(),
    ], name="api-tests")


def append_world(store: stoic.Store) -> list[int]:
    plan = [
        (STREAM_A, stoic.NewEvent("Deposited", {"amount": 10})),
        (STREAM_A, stoic.NewEvent("Deposited", {"amount": 5, "poison": True, "card": PAYLOAD_SECRET})),
        (STREAM_A, stoic.NewEvent("Withdrawn", {"amount": 3})),
        (STREAM_B, stoic.NewEvent("Deposited", {"amount": 7, "poison": True})),
        (STREAM_B, stoic.NewEvent("Deposited", {"amount": 1})),
        (STREAM_C, stoic.NewEvent("Deposited", {"amount": 2})),
    ]
    return [store.append(stream, [event]).positions[0] for stream, event in plan]


def make_client(store: stoic.Store, app: stoic.App | None, settings: ApiSettings | None = None,
                **client: Any) -> TestClient:
    """A TestClient over the real app (server exceptions come back as 500s, not raised)."""
    api = create_app(store, app, settings or ApiSettings(admin_token=TOKEN))
    return TestClient(api, raise_server_exceptions=False, **client)


@dataclass
class World:
    """A store with the world's events processed once, its app and an admin client."""

    store: stoic.Store
    app: stoic.App
    broken: Broken
    client: TestClient
    positions: list[int] = field(default_factory=list)

    def run(self) -> dict[str, int]:
        """One in-process worker pass: new events and whatever operators asked for."""
        return stoic.Runner(self.store, self.app).run_until_caught_up(timeout=30)

    def failures(self, projection: str, status: str | None = None) -> list[FailureRecord]:
        """A projection's failures, oldest first."""
        found = self.store.list_failures(projection, FailureStatus(status) if status else None, None, 1000, 0)
        return sorted(found, key=lambda f: f.id)

    def get(self, path: str, admin: bool = False, **kwargs: Any) -> Any:
        headers = {**(ADMIN if admin else {}), **kwargs.pop("headers", {})}
        return self.client.get(path, headers=headers, **kwargs)

    def post(self, path: str, json: Any = None, admin: bool = True, **kwargs: Any) -> Any:
        headers = {**(ADMIN if admin else {}), **kwargs.pop("headers", {})}
        return self.client.post(path, json=json, headers=headers, **kwargs)

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self.store)


def snapshot(store: stoic.Store) -> dict[str, Any]:
    """Everything an API request could change: failures, projections (checkpoint, pause,
    pending request, breaker, ...), the audit log, the head and the read models."""
    models = {}
    for name in ("ledger", "faulty", "fragile"):
        models[name] = store.query(f"SELECT position, applied FROM {name}_ledger ORDER BY position")
    models["tally"] = store.query("SELECT position, times FROM tally_applied ORDER BY position")
    return {
        "failures": sorted(store.list_failures(None, None, None, 1000, 0), key=lambda f: f.id),
        "projections": sorted(store.projection_details(), key=lambda d: d.name),
        "audit": store.audit_log(1000),
        "head": store.head(),
        "models": models,
    }


def error_code(response: Any) -> str:
    """The ``error.code`` of a JSON error response (and checks its shape)."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"], body
    return str(body["error"]["code"])
