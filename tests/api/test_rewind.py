"""Reset, replay and per-stream rebuild asked through the API and carried out for
real by a worker: the read model is rebuilt with every event applied exactly
once (reset) or the replayed events applied once more (replay, idempotent
projections only), the checkpoint and counters agree, the failures the rewind
goes back over are closed as ``reset``/``replay``, and the request is audited.
A reset asked while a worker thread is busy ends with a correct read model."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from tests.apps import check_applied, check_exactly_once, wait_until

import stoic

from ._support import (
    ADMIN,
    STREAM_A,
    STREAM_B,
    STREAM_C,
    ReconciledLedger,
    World,
    error_code,
    make_client,
)

file_backends = pytest.mark.parametrize("backend", ["sqlite-file", "postgres"])


def audit_rows(world: World, limit: int = 1000) -> list[tuple[Any, ...]]:
    audit = world.get(f"/admin/audit?limit={limit}", admin=True).json()
    return [(a["actor"], a["action"], a["target"], a["reason"], a["outcome"]) for a in audit]


def checkpoint(world: World, name: str) -> dict[str, Any]:
    response = world.get(f"/health/projections/{name}/checkpoint")
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_reset_rebuilds_the_read_model_with_every_event_applied_once(world: World) -> None:
    world.store.query("UPDATE ledger_balance SET balance = balance + 1000")  # a bug corrupted the read model
    epoch = checkpoint(world, "ledger")["epoch"]

    response = world.post("/admin/projections/ledger/reset", {"reason": "rebuild after the rounding fix"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body == {"projection": "ledger", "action": "reset", "position": 0, "request": body["request"],
                    "head": 6, "events_to_process": 6, "streams": []}
    pending = checkpoint(world, "ledger")
    assert (pending["pending_request"], pending["pending_request_position"], pending["position"]) == ("reset", 0, 6)
    assert audit_rows(world) == [("admin", "reset", "projection:ledger", "rebuild after the rounding fix",
                                  "requested")]
    assert world.get("/admin/audit", admin=True).json()[0]["details"] == {
        "position": 0, "head": 6, "seq": body["request"]}

    world.run()
    check_exactly_once(world.store, ["ledger"], upto=6)  # ledger rows applied once, balances = the fold
    done = checkpoint(world, "ledger")
    assert (done["position"], done["events_processed"], done["pending_request"], done["lag_events"]) == (
        6, 6, None, 0)
    assert done["epoch"] > epoch
    assert world.get("/admin/projections/ledger/reconcile", admin=True).json()["ok"] is True
    others = {name: checkpoint(world, name)["events_processed"] for name in ("faulty", "fragile", "tally")}
    assert others == {"faulty": 6, "fragile": 6, "tally": 6}  # nobody else was touched


def test_reset_closes_the_open_failures_as_reset(world: World) -> None:
    old = {name: [f.id for f in world.failures(name)] for name in ("faulty", "fragile")}
    world.post("/admin/projections/faulty/reset", {"reason": "fix deployed: rebuild"})
    world.post("/admin/projections/fragile/reset", {"reason": "rebuild, still broken"})
    world.broken.on = False
    world.app.projection("fragile").fault = _still_broken  # type: ignore[attr-defined]
    world.run()

    for failure_id in old["faulty"]:
        closed = world.get(f"/admin/failures/{failure_id}", admin=True).json()
        assert (closed["status"], closed["resolution"], closed["blocking"]) == ("resolved", "reset", False)
    check_applied(world.store, "faulty")  # fixed: every event applied once, in stream order
    assert world.get("/health/projections/faulty").json()["failures"] == {"resolved": 2}
    # still broken: the same two events fail again, and their records (one per event) open again as a
    # new occurrence: attempts, parked count, actor and note start over
    for failure_id in old["fragile"]:
        again = world.get(f"/admin/failures/{failure_id}", admin=True).json()
        assert (again["status"], again["resolution"], again["attempts"], again["blocking"]) == ("dead", None, 1, True)
        assert (again["actor"], again["note"]) == (None, None)
    check_applied(world.store, "fragile", not_applied=[2, 3, 4, 5])
    assert world.get("/health/projections/fragile").json()["failures"] == {"dead": 2}


def _still_broken(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
    if event.data.get("poison"):
        raise ValueError("still broken")


def test_replay_applies_the_events_after_the_position_once_more(world: World) -> None:
    amounts = world.store.query("SELECT position, amount FROM tally_amounts ORDER BY position")
    response = world.post("/admin/projections/tally/replay", {"reason": "re-send to the index", "from_position": 2})
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["action"], body["position"], body["head"], body["events_to_process"]) == ("replay", 2, 6, 4)
    assert checkpoint(world, "tally")["pending_request"] == "replay"
    assert audit_rows(world)[0] == ("admin", "replay", "projection:tally", "re-send to the index", "requested")

    world.run()
    applied = dict(world.store.query("SELECT position, times FROM tally_applied ORDER BY position"))
    assert applied == {1: 1, 2: 1, 3: 2, 4: 2, 5: 2, 6: 2}  # each replayed event exactly once more
    assert world.store.query("SELECT position, amount FROM tally_amounts ORDER BY position") == amounts
    done = checkpoint(world, "tally")
    assert (done["position"], done["pending_request"], done["lag_events"]) == (6, None, 0)

    # from the checkpoint itself: nothing to apply again
    world.post("/admin/projections/tally/replay", {"reason": "no-op", "from_position": 6})
    world.run()
    assert dict(world.store.query("SELECT position, times FROM tally_applied")) == applied


@pytest.mark.parametrize("backend", ["sqlite-memory", "postgres"])
def test_replay_closes_the_failures_it_goes_back_over(world: World) -> None:
    tally = world.app.projection("tally")
    tally.refuse = True  # type: ignore[attr-defined]
    world.store.append("acct-D", [stoic.NewEvent("Deposited", {"amount": 9, "tally_poison": True})])
    world.run()
    (failure,) = world.failures("tally")
    assert (failure.position, failure.status.value) == (7, "retrying")

    tally.refuse = False  # type: ignore[attr-defined]
    assert world.post("/admin/projections/tally/replay", {"reason": "fixed", "from_position": 6}).status_code == 202
    world.run()
    closed = world.get(f"/admin/failures/{failure.id}", admin=True).json()
    assert (closed["status"], closed["resolution"], closed["blocking"]) == ("resolved", "replay", False)
    assert dict(world.store.query("SELECT position, times FROM tally_applied")) == {p: 1 for p in range(1, 8)}
    assert world.get("/health/projections/tally").json()["failures"] == {"resolved": 1}


@pytest.mark.parametrize("backend", ["sqlite-memory"])
def test_a_replay_leaves_the_self_check_clean(world: World) -> None:
    world.post("/admin/projections/tally/replay", {"reason": "re-send", "from_position": 2})
    world.run()
    session = world.store.open_session()
    try:
        missing = session.check_late_arrivals("tally")  # what the holder's runner does every 60 s
    finally:
        session.close()
    health = world.get("/health/projections/tally").json()
    assert "late_arrival" not in {c["code"] for c in health["causes"]}, health["causes"]
    assert (missing, checkpoint(world, "tally")["events_processed"]) == (0, 6)


def assert_refused(world: World, response: Any, audited: tuple[Any, ...], before: dict[str, Any],
                   code: str = "refused") -> None:
    assert (response.status_code, error_code(response)) == (409, code), response.text
    after = world.snapshot()
    assert {k: v for k, v in after.items() if k != "audit"} == {k: v for k, v in before.items() if k != "audit"}
    assert after["audit"][1:] == before["audit"]
    assert audit_rows(world, 1) == [audited]


def test_refused_rewinds_are_409_audited_and_change_nothing(world: World) -> None:
    for path, body, message in [
        ("ledger/replay", {"reason": "r", "from_position": 0}, "not declared idempotent"),
        ("faulty/replay", {"reason": "r", "from_position": 3}, "not declared idempotent"),
        ("tally/replay", {"reason": "r", "from_position": 7}, "past the checkpoint 6"),
        ("tally/replay", {"reason": "r", "from_position": 2**63 - 1}, "past the checkpoint 6"),
        ("tally/reset", {"reason": "r"}, "does not implement reset"),
    ]:
        before = world.snapshot()
        response = world.post(f"/admin/projections/{path}", body)
        assert message in response.json()["error"]["message"], response.text
        name, action = path.split("/")
        assert_refused(world, response, ("admin", action, f"projection:{name}", "r", "refused"), before)


def test_reconcile_finds_a_corrupted_stream_and_repair_fixes_only_it(world: World) -> None:
    clean = world.get("/admin/projections/ledger/reconcile", admin=True)
    assert clean.status_code == 200, clean.text
    assert {k: clean.json()[k] for k in ("projection", "ok", "position", "checked", "matched", "mismatches")} == {
        "projection": "ledger", "ok": True, "position": 6, "checked": 3, "matched": 3, "mismatches": []}

    world.store.query("UPDATE ledger_balance SET balance = 1 WHERE account = ?", (STREAM_A,))
    world.store.query("DELETE FROM ledger_balance WHERE account = ?", (STREAM_B,))
    report = world.get("/admin/projections/ledger/reconcile", admin=True).json()
    assert (report["ok"], report["checked"], report["matched"]) == (False, 3, 1)
    assert report["mismatched_streams"] == sorted([STREAM_A, STREAM_B])
    assert sorted(report["mismatches"], key=lambda m: m["stream_id"]) == sorted([
        {"stream_id": STREAM_A, "field": "balance", "expected": 12, "actual": 1},
        {"stream_id": STREAM_B, "field": "<row>", "expected": {"balance": 8, "events": 2}, "actual": None},
    ], key=lambda m: str(m["stream_id"]))
    one = world.get(f"/admin/projections/ledger/reconcile/{STREAM_A}", admin=True).json()
    assert (one["checked"], one["mismatched_streams"]) == (1, [STREAM_A])
    assert world.get(f"/admin/projections/ledger/reconcile/{STREAM_C}", admin=True).json()["ok"] is True

    untouched = world.store.query("SELECT * FROM ledger_balance WHERE account = ?", (STREAM_C,))
    repaired = world.post("/admin/projections/ledger/reconcile", {"repair": True, "reason": "drift found"})
    assert repaired.status_code == 200 and repaired.json()["repair_requested"] is True
    assert checkpoint(world, "ledger")["pending_request"] == "repair"
    world.run()
    assert world.get("/admin/projections/ledger/reconcile", admin=True).json()["ok"] is True
    assert world.store.query("SELECT * FROM ledger_balance WHERE account = ?", (STREAM_C,)) == untouched
    check_exactly_once(world.store, ["ledger"], upto=6)
    assert [(r[0].split(":")[0], r[1], r[4].split(":")[0]) for r in audit_rows(world)[:4]] == [
        ("admin", "reconcile", "ok"), ("worker", "repair", "done"), ("admin", "repair", "requested"),
        ("admin", "reconcile", "ok")]


def test_rebuild_streams_rebuilds_the_named_ones(world: World) -> None:
    world.store.query("UPDATE ledger_balance SET events = 0")
    response = world.post("/admin/projections/ledger/streams/rebuild",
                          {"reason": "manual fix", "streams": [STREAM_C, STREAM_A, STREAM_C]})
    assert response.status_code == 202, response.text
    assert {k: response.json()[k] for k in ("action", "position", "events_to_process", "streams")} == {
        "action": "repair", "position": 6, "events_to_process": 0, "streams": [STREAM_C, STREAM_A]}
    world.run()
    mismatched = world.get("/admin/projections/ledger/reconcile", admin=True).json()["mismatched_streams"]
    assert mismatched == [STREAM_B]  # only the named streams were rebuilt


def test_reconcile_and_rebuild_refusals(world: World) -> None:
    for method, path, body, message, action in [
        ("GET", "tally/reconcile", None, "does not implement expected_state", "reconcile"),
        ("POST", "tally/reconcile", {"reason": "r"}, "does not implement expected_state", "reconcile"),
        ("POST", "faulty/streams/rebuild", {"reason": "r", "streams": [STREAM_A]}, "does not implement forget",
         "rebuild-streams"),
    ]:
        before = world.snapshot()
        response = world.client.request(method, f"/admin/projections/{path}", json=body, headers=ADMIN)
        assert message in response.json()["error"]["message"], response.text
        assert_refused(world, response, ("admin", action, f"projection:{path.split('/')[0]}",
                                         body["reason"] if body else None, "refused"), before)

    with make_client(world.store, None) as bare:  # an API started without the application's code
        before = world.snapshot()
        response = bare.get("/admin/projections/ledger/reconcile", headers=ADMIN)
        assert (response.status_code, error_code(response)) == (409, "not_configured")
        assert world.snapshot() == before


@pytest.mark.parametrize("backend", ["sqlite-memory"])
def test_invalid_reconcile_and_rebuild_requests_are_422(world: World) -> None:
    before = world.snapshot()
    for path, body in [
        ("ledger/reconcile", {"repair": "maybe"}),
        ("ledger/reconcile", {"repair": True, "reason": "a\x00"}),
        ("ledger/reconcile", {"repair": True, "dry": True}),
        ("ledger/reconcile", [True]),
        ("ledger/streams/rebuild", {"reason": "r", "streams": []}),
        ("ledger/streams/rebuild", {"reason": "r", "streams": [""]}),
        ("ledger/streams/rebuild", {"reason": "r", "streams": ["a\x00b"]}),
        ("ledger/streams/rebuild", {"reason": "r", "streams": ["s" * 1001]}),
        ("ledger/streams/rebuild", {"reason": "r", "streams": "acct-1"}),
        ("ledger/streams/rebuild", {"reason": "r", "streams": [1]}),
        ("ledger/streams/rebuild", {"streams": [STREAM_A]}),
        ("ledger/streams/rebuild", {"reason": " ", "streams": [STREAM_A]}),
    ]:
        response = world.post(f"/admin/projections/{path}", body)
        assert response.status_code == 422, (path, body, response.text)
    response = world.get("/admin/projections/ledger/reconcile/a%00b", admin=True)
    assert response.status_code == 422, response.text
    assert world.snapshot() == before
    for path in ("nope/reconcile", f"nope/reconcile/{STREAM_A}"):
        assert world.get(f"/admin/projections/{path}", admin=True).status_code == 404


@pytest.mark.parametrize("backend", ["sqlite-memory"])
def test_a_pending_reset_is_not_silently_dropped_by_a_later_request(world: World) -> None:
    world.store.query("UPDATE ledger_balance SET balance = 999")
    world.post("/admin/projections/ledger/reset", {"reason": "rebuild everything"})
    second = world.post("/admin/projections/ledger/streams/rebuild", {"reason": "one stream", "streams": [STREAM_C]})
    world.run()
    if second.status_code != 409:  # either refused while the reset is pending, or the reset still happens
        assert world.get("/admin/projections/ledger/reconcile", admin=True).json()["ok"] is True


@file_backends
def test_a_reset_while_a_worker_thread_runs_ends_with_a_correct_read_model(store: stoic.Store) -> None:
    app = stoic.App([ReconciledLedger("ledger", slow_s=0.001)])
    stop = threading.Event()
    appended: list[int] = []

    def append() -> None:
        i = 0
        while not stop.is_set() and i < 400:
            stream = f"acct-{i % 7}"
            appended.extend(store.append(stream, [stoic.NewEvent("Deposited", {"amount": i % 13 + 1})]).positions)
            i += 1
            time.sleep(0.002)

    store.append("acct-0", [stoic.NewEvent("Deposited", {"amount": 5})] * 50)
    runner = stoic.Runner(store, app, claim_interval=0.05, lease_ttl=3.0)
    worker = threading.Thread(target=runner.run, daemon=True)
    appender = threading.Thread(target=append, daemon=True)
    with make_client(store, app) as client:
        worker.start()
        appender.start()
        try:
            wait_until(lambda: client.get("/health/projections/ledger/checkpoint").json()["position"] > 60, 20,
                       "the worker to make progress")
            first = client.post("/admin/projections/ledger/reset", headers=ADMIN, json={"reason": "race 1"})
            assert first.status_code == 202, first.text
            wait_until(lambda: client.get("/health/projections/ledger/checkpoint").json()["pending_request"] is None,
                       20, "the holder to carry out the reset")
            second = client.post("/admin/projections/ledger/reset", headers=ADMIN, json={"reason": "race 2"})
            assert second.json()["request"] == first.json()["request"] + 1
            time.sleep(0.05)
        finally:
            stop.set()
            appender.join(20)

        def caught_up() -> bool:
            state = client.get("/health/projections/ledger/checkpoint").json()
            return state["pending_request"] is None and state["position"] == store.head()

        try:
            wait_until(caught_up, 30, "the worker to catch up after the resets")
        finally:
            runner.stop()
            worker.join(20)
        assert not worker.is_alive()
        check_exactly_once(store, ["ledger"], upto=store.head())
        assert client.get("/admin/projections/ledger/reconcile", headers=ADMIN).json()["ok"] is True
        rows = client.get("/admin/audit?action=reset", headers=ADMIN).json()
        outcomes = [(a["action"], a["reason"], a["outcome"]) for a in rows if a["outcome"] == "requested"]
        assert outcomes == [("reset", "race 2", "requested"), ("reset", "race 1", "requested")]
        assert any(a["outcome"].startswith("done: checkpoint moved back to 0") for a in rows)
