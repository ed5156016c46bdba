"""Rebuild without read downtime on a real store (SQLite file and PostgreSQL):
a new version builds into its own tables beside the serving one and switches in
atomically; a reader querying in a loop never sees an empty or partial model;
a crash mid-build resumes; the verification gate refuses a wrong build; an
operator can roll back while the old tables exist and drop them after."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from tests.apps import Processes, wait_until

import stoic
from stoic import Transaction
from stoic.errors import ActionRefused
from stoic.health import Status

backends = pytest.mark.parametrize("backend", ["sqlite-file", "postgres"])
ACTOR = "ops-test"


class Totals(stoic.Projection):
    """Version 1: the total of each stream's deposits."""

    name = "totals"
    tables = ("totals",)
    version = 1
    factor = 1

    def setup(self, tx: Transaction) -> None:
        tx.execute(f"CREATE TABLE IF NOT EXISTS {self.table('totals')} (stream TEXT PRIMARY KEY, total BIGINT)")

    def reset(self, tx: Transaction) -> None:
        tx.execute(f"DELETE FROM {self.table('totals')}")

    @stoic.handles("Deposited")
    def deposited(self, event: Any, tx: Transaction) -> None:
        amount = event.data["amount"] * self.factor
        if tx.execute(f"UPDATE {self.table('totals')} SET total = total + ? WHERE stream = ?",
                      (amount, event.stream_id)).rowcount == 0:
            tx.execute(f"INSERT INTO {self.table('totals')} VALUES (?, ?)", (event.stream_id, amount))

    def expected_state(self, stream_id: str, events: list[Any]) -> dict[str, Any] | None:
        amounts = [e.data["amount"] for e in events if e.type == "Deposited"]
        return {"total": sum(amounts) * type(self).expected_factor} if amounts else None

    expected_factor = 1

    def actual_state(self, stream_id: str, tx: Transaction) -> dict[str, Any] | None:
        row = tx.execute(f"SELECT total FROM {self.table('totals')} WHERE stream = ?", (stream_id,)).fetchone()
        return None if row is None else {"total": int(row[0])}


class TotalsInCents(Totals):
    """Version 2: the same totals, in cents (a new read-model shape)."""

    version = 2
    factor = 100
    expected_factor = 100


class BrokenTotals(Totals):
    """Version 3: a bug (doubles every amount) the verification gate must catch."""

    version = 3
    factor = 2
    expected_factor = 1


def deposits(store: stoic.Store, count: int, streams: int = 50, amount: int = 1) -> None:
    for start in range(0, count, 500):
        grouped: dict[str, list[stoic.NewEvent]] = {}
        for i in range(start, min(count, start + 500)):
            grouped.setdefault(f"s-{i % streams:03d}", []).append(stoic.NewEvent("Deposited", {"amount": amount}))
        store.append_many([(stream, events, stoic.ANY) for stream, events in grouped.items()])


def totals(store: stoic.Store) -> dict[str, int]:
    return {s: int(t) for s, t in store.query("SELECT stream, total FROM totals")}


@backends
def test_a_new_version_builds_beside_the_old_one_and_switches_atomically(store: stoic.Store) -> None:
    deposits(store, 2000)
    stoic.Runner(store, stoic.App([Totals()])).run_until_caught_up()
    assert sum(totals(store).values()) == 2000
    deposits(store, 500)

    # Deploy version 2: the build runs first and switches; the main runner then catches up.
    app2 = stoic.App([TotalsInCents()])
    stoic.Runner(store, app2).run_until_caught_up()
    assert sum(totals(store).values()) == 2500 * 100
    state = {d.name: d for d in store.projection_details()}
    assert "totals@build" not in state
    assert (state["totals"].version, state["totals"].generation, state["totals"].previous_generation) == (2, 2, 1)
    assert state["totals"].position == store.head()
    switch = [a for a in stoic.Operations(store).audit() if a.action == "switch"]
    assert len(switch) == 1 and switch[0].outcome.startswith("done: generation 2")


@backends
def test_a_reader_never_sees_an_empty_or_partial_model_during_a_rebuild(store: stoic.Store) -> None:
    deposits(store, 3000, streams=100)
    stoic.Runner(store, stoic.App([Totals()])).run_until_caught_up()
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            rows = store.query("SELECT COUNT(*), SUM(total) FROM totals")
            seen.append((int(rows[0][0]), int(rows[0][1] or 0)))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        stoic.Runner(store, stoic.App([TotalsInCents()]), batch_size=100).run_until_caught_up()
        time.sleep(0.05)
    finally:
        stop.set()
        reader.join(10)
    assert len(seen) > 10
    # Only two states are ever visible: the whole old model or the whole new one.
    assert set(seen) == {(100, 3000), (100, 300_000)}, sorted(set(seen))[:5]


@backends
def test_the_verification_gate_refuses_a_wrong_build_and_reads_stay_on_the_old_one(store: stoic.Store) -> None:
    deposits(store, 400, streams=20)
    stoic.Runner(store, stoic.App([Totals()])).run_until_caught_up()
    app3 = stoic.App([BrokenTotals()])
    stoic.Runner(store, app3).run_until_caught_up()
    assert sum(totals(store).values()) == 400  # still version 1
    health = {h.name: h for h in stoic.Operations(store, app=app3).health()}
    build = health["totals@build"]
    # No worker holds it after run_until_caught_up (offline); the refusal is critical.
    assert build.status is Status.OFFLINE
    assert [c.code for c in build.causes] == ["rebuilding", "switch_refused", "no_holder"]
    assert [c.status for c in build.causes][1] is Status.CRITICAL
    assert "20 of 20 streams differ" in build.causes[1].message
    assert health["totals"].status is Status.REBUILDING
    assert [c.code for c in health["totals"].causes] == ["serving_previous"]


@backends
def test_rollback_and_drop_previous(store: stoic.Store) -> None:
    deposits(store, 300, streams=10)
    stoic.Runner(store, stoic.App([Totals()])).run_until_caught_up()
    app2 = stoic.App([TotalsInCents()])
    stoic.Runner(store, app2).run_until_caught_up()
    ops = stoic.Operations(store, app=app2)
    assert ops.rollback("totals", ACTOR, "cents broke the invoices") == 1
    assert sum(totals(store).values()) == 300  # generation 1 serves again
    with pytest.raises(ActionRefused, match="no previous generation"):
        ops.rollback("totals", ACTOR, "again")
    # Version 2 is still deployed: it builds again (into fresh generation-2 tables) and switches in.
    stoic.Runner(store, app2).run_until_caught_up()
    assert sum(totals(store).values()) == 300 * 100
    generation = {d.name: d for d in store.projection_details()}["totals"]
    assert (generation.generation, generation.previous_generation) == (2, 1)
    assert ops.drop_previous("totals", ACTOR, "done") == 1
    with pytest.raises(Exception):  # noqa: B017  the table is gone (driver error)
        store.query("SELECT COUNT(*) FROM totals_g1")
    actions = [a.action for a in ops.audit()]
    assert {"rollback", "drop-previous", "switch"} <= set(actions)


@backends
def test_an_operator_rebuild_of_the_same_version(store: stoic.Store) -> None:
    deposits(store, 200, streams=10)
    app = stoic.App([Totals()])
    stoic.Runner(store, app).run_until_caught_up()
    store.query("UPDATE totals_g1 SET total = 0")  # corrupted
    ops = stoic.Operations(store, app=app)
    request = ops.rebuild("totals", ACTOR, "corrupted by a manual fix")
    assert request.action == "rebuild"
    stoic.Runner(store, app).run_until_caught_up()
    assert sum(totals(store).values()) == 200
    state = {d.name: d for d in store.projection_details()}["totals"]
    assert (state.version, state.generation, state.request) == (1, 2, None)


@backends
def test_rebuild_is_refused_for_an_unversioned_projection(store: stoic.Store) -> None:
    class Plain(stoic.Projection):
        name = "plain"

        @stoic.handles("Deposited")
        def on(self, event: Any, tx: Any) -> None:
            pass

    app = stoic.App([Plain()])
    stoic.Runner(store, app).run_until_caught_up()
    with pytest.raises(ActionRefused, match="declares no tables"):
        stoic.Operations(store, app=app).rebuild("plain", ACTOR, "why not")


def test_a_build_interrupted_by_sigkill_resumes_where_it_was(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/rebuild.db"
    store = stoic.connect(url)
    deposits(store, 20_000, streams=200)
    stoic.Runner(store, stoic.App([Totals()])).run_until_caught_up()
    with Processes(tmp_path) as procs:
        worker = procs.worker(url, app="tests.reconcile.test_rebuild:slow_app_v2")
        wait_until(lambda: {d.name: d.position for d in store.projection_details()}.get("totals@build", 0) > 2000,
                   30, "the build to make progress")
        worker.kill()
        killed_at = {d.name: d.position for d in store.projection_details()}["totals@build"]
        assert 0 < killed_at < store.head()
        assert sum(totals(store).values()) == 20_000  # still the old generation
    stoic.Runner(store, stoic.App([TotalsInCents()])).run_until_caught_up()
    assert sum(totals(store).values()) == 20_000 * 100
    state = {d.name: d for d in store.projection_details()}["totals"]
    assert (state.generation, state.previous_generation) == (2, 1)  # resumed, not started over
    store.close()


class SlowTotalsInCents(TotalsInCents):
    batch_size = 100

    @stoic.handles("Deposited")
    def deposited(self, event: Any, tx: Transaction) -> None:
        if event.position % 100 == 0:
            time.sleep(0.01)
        super().deposited(event, tx)


slow_app_v2 = stoic.App([SlowTotalsInCents()])
app_v1 = stoic.App([Totals()])
app_v2 = stoic.App([TotalsInCents()])


@backends
def test_an_older_version_never_builds_over_a_newer_one(store: stoic.Store) -> None:
    deposits(store, 200, streams=10)
    stoic.Runner(store, stoic.App([Totals()])).run_until_caught_up()
    stoic.Runner(store, stoic.App([TotalsInCents()])).run_until_caught_up()  # version 2 serves
    # A worker still running version 1 (a rolling deploy): it builds nothing and runs nothing.
    positions = stoic.Runner(store, stoic.App([Totals()])).run_until_caught_up()
    assert positions == {}
    state = {d.name: d for d in store.projection_details()}
    assert (state["totals"].version, state["totals"].generation) == (2, 2) and "totals@build" not in state


@backends
def test_an_operator_rebuild_restarts_a_refused_build_with_the_fixed_code(store: stoic.Store) -> None:
    deposits(store, 300, streams=10)
    stoic.Runner(store, stoic.App([Totals()])).run_until_caught_up()
    stoic.Runner(store, stoic.App([BrokenTotals()])).run_until_caught_up()  # version 3 refused by the gate
    refused = {d.name: d for d in store.projection_details()}["totals@build"]
    assert refused.build_note and refused.generation == 2

    class FixedTotals(Totals):  # the fix, deployed under the same version number
        version = 3

    app = stoic.App([FixedTotals()])
    stoic.Operations(store, app=app).rebuild("totals", ACTOR, "fix deployed as version 3")
    stoic.Runner(store, app).run_until_caught_up()
    state = {d.name: d for d in store.projection_details()}
    assert "totals@build" not in state
    assert (state["totals"].version, state["totals"].generation) == (3, 3)
    assert sum(totals(store).values()) == 300
    with pytest.raises(Exception):  # noqa: B017  the refused build's tables were dropped
        store.query("SELECT COUNT(*) FROM totals_g2")
