"""Rebuild without downtime through the API: a rebuild request builds a new
generation and switches to it when a worker runs; rollback serves the replaced
generation again, drop-previous drops it; what makes no sense is 409 and audited."""

from __future__ import annotations

from typing import Any

import pytest

import stoic
from stoic import Transaction

from ._support import ADMIN, World, error_code, make_client


class Totals(stoic.Projection):
    """A versioned read model: the total of each stream's deposits, in ``totals``."""

    name = "totals"
    tables = ("totals",)

    def setup(self, tx: Transaction) -> None:
        tx.execute(f"CREATE TABLE IF NOT EXISTS {self.table('totals')} (stream TEXT PRIMARY KEY, total BIGINT)")

    def reset(self, tx: Transaction) -> None:
        tx.execute(f"DELETE FROM {self.table('totals')}")

    @stoic.handles("Deposited")
    def deposited(self, event: Any, tx: Transaction) -> None:
        if tx.execute(f"UPDATE {self.table('totals')} SET total = total + ? WHERE stream = ?",
                      (event.data["amount"], event.stream_id)).rowcount == 0:
            tx.execute(f"INSERT INTO {self.table('totals')} VALUES (?, ?)", (event.stream_id, event.data["amount"]))

    def expected_state(self, stream_id: str, events: list[Any]) -> dict[str, Any] | None:
        amounts = [e.data["amount"] for e in events if e.type == "Deposited"]
        return {"total": sum(amounts)} if amounts else None

    def actual_state(self, stream_id: str, tx: Transaction) -> dict[str, Any] | None:
        row = tx.execute(f"SELECT total FROM {self.table('totals')} WHERE stream = ?", (stream_id,)).fetchone()
        return None if row is None else {"total": int(row[0])}


def generations(store: stoic.Store) -> tuple[Any, Any]:
    details = {d.name: d for d in store.projection_details()}["totals"]
    return details.generation, details.previous_generation


@pytest.mark.parametrize("backend", ["sqlite-memory", "postgres"])
def test_rebuild_switch_rollback_and_drop_previous(store: stoic.Store) -> None:
    app = stoic.App([Totals()])
    store.append("s1", [stoic.NewEvent("Deposited", {"amount": 3})] * 4)
    store.append("s2", [stoic.NewEvent("Deposited", {"amount": 5})])
    stoic.Runner(store, app).run_until_caught_up(timeout=30)
    assert generations(store) == (1, None)

    def post(path: str, body: Any = None) -> Any:
        return client.post(f"/admin/projections/totals/{path}", json=body, headers=ADMIN)

    def audit(limit: int = 1) -> list[tuple[Any, ...]]:
        rows = client.get(f"/admin/audit?limit={limit}", headers=ADMIN).json()
        return [(a["action"], a["reason"], a["outcome"].split(":")[0]) for a in rows]

    with make_client(store, app) as client:
        asked = post("rebuild", {"reason": "new index"})
        assert asked.status_code == 202, asked.text
        assert {k: asked.json()[k] for k in ("projection", "action", "position", "head")} == {
            "projection": "totals", "action": "rebuild", "position": 5, "head": 5}
        assert client.get("/health/projections/totals/checkpoint").json()["pending_request"] == "rebuild"
        stoic.Runner(store, app).run_until_caught_up(timeout=30)
        assert generations(store) == (2, 1)
        assert dict(store.query("SELECT stream, total FROM totals")) == {"s1": 12, "s2": 5}
        assert audit(2) == [("switch", None, "done"), ("rebuild", "new index", "requested")]

        rolled = post("rollback", {"reason": "the new one is slow"})
        assert (rolled.status_code, rolled.json()) == (200, {"projection": "totals", "generation": 1})
        assert generations(store) == (1, None)
        assert dict(store.query("SELECT stream, total FROM totals")) == {"s1": 12, "s2": 5}
        assert audit() == [("rollback", "the new one is slow", "ok")]
        for path, body in (("rollback", {"reason": "again"}), ("drop-previous", None)):
            refused = post(path, body)
            assert (refused.status_code, error_code(refused)) == (409, "refused"), refused.text
            assert audit() == [(path, body["reason"] if body else None, "refused")]

        post("rebuild", {"reason": "try again"})
        stoic.Runner(store, app).run_until_caught_up(timeout=30)
        assert generations(store) == (2, 1)  # generation 2 was dropped by the rollback: its number is free
        dropped = post("drop-previous", {"reason": "no way back needed"})
        assert (dropped.status_code, dropped.json()) == (200, {"projection": "totals", "generation": 1})
        assert generations(store) == (2, None)
        assert audit() == [("drop-previous", "no way back needed", "ok")]
        assert dict(store.query("SELECT stream, total FROM totals")) == {"s1": 12, "s2": 5}


def test_rebuild_refusals_and_bad_requests(world: World) -> None:
    """The world's projections declare no tables: nothing to rebuild, roll back or drop."""
    for path, body, message in [
        ("ledger/rebuild", {"reason": "r"}, "declares no tables"),
        ("ledger/rollback", {"reason": "r"}, "no previous generation"),
        ("ledger/drop-previous", {"reason": "r"}, "no previous generation"),
    ]:
        before = world.snapshot()
        response = world.post(f"/admin/projections/{path}", body)
        assert (response.status_code, error_code(response)) == (409, "refused"), response.text
        assert message in response.json()["error"]["message"]
        after = world.snapshot()
        assert after["audit"][1:] == before["audit"] and after["projections"] == before["projections"]
        assert (after["audit"][0].action, after["audit"][0].outcome) == (path.split("/")[1], "refused")
    before = world.snapshot()
    for path, body in [("ledger/rebuild", None), ("ledger/rebuild", {"reason": " "}), ("ledger/rollback", {}),
                       ("ledger/drop-previous", {"reason": "a\x00"}), ("ledger/drop-previous", {"why": "x"})]:
        response = world.post(f"/admin/projections/{path}", body)
        assert response.status_code == 422, (path, body, response.text)
    for path in ("nope/rebuild", "nope/rollback", "nope/drop-previous"):
        assert world.post(f"/admin/projections/{path}", {"reason": "r"}).status_code == 404
    assert world.snapshot() == before
