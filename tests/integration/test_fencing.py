"""Guarantee 3, fencing: a runner whose lease was taken over cannot commit.

Two runners of one projection live in this process, each with its own worker id
and store session. A worker "dies" by having its heartbeat expire
(``store.heartbeat(worker, -1)``: its lease ran out ``1 s`` ago) while its runner
object lives on as a zombie. Real SQLite files and a real PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest
from tests.apps import App, LedgerProjection, append_bulk, check_exactly_once, checkpoints, wait_until

import stoic
from stoic.projection_runner import ProjectionRunner, StepResult
from stoic.runner import Runner

NAME = "ledger_a"
_runners: list[ProjectionRunner] = []  # closed by the store fixture, even when a test fails


def runner(store: stoic.Store, worker: str, batch_size: int = 30, **kwargs: object) -> ProjectionRunner:
    store.register_worker(worker, "test-host", os.getpid(), 30.0)
    r = ProjectionRunner(store, LedgerProjection(NAME, **kwargs), worker, batch_size)  # type: ignore[arg-type]
    _runners.append(r)
    return r


def ledger_rows(store: stoic.Store) -> int:
    return int(store.query(f"SELECT count(*) FROM {NAME}_ledger")[0][0])


def drain(r: ProjectionRunner) -> None:
    while not r.step().idle:
        pass


@pytest.fixture
def store(shared_url: str):  # type: ignore[no-untyped-def]
    s = stoic.connect(shared_url)
    append_bulk(s, 100, seed=3, streams=7)
    yield s
    while _runners:
        _runners.pop().close_session()
    s.close()


@pytest.mark.timeout(30)
def test_zombie_cannot_commit_even_when_the_checkpoint_has_not_moved(store: stoic.Store) -> None:
    """Only the epoch tells the zombie apart: the new holder has not committed yet,
    so the checkpoint is still where the zombie's batch starts."""
    a, b = runner(store, "worker-a"), runner(store, "worker-b")
    assert a.acquire()
    assert not b.acquire(), "took a projection whose holder is alive"
    store.heartbeat("worker-a", -1.0)
    assert b.acquire()
    assert a.lease is not None and b.lease is not None
    assert b.lease.epoch > a.lease.epoch and b.lease.position == a.position == 0
    with pytest.raises(stoic.LeaseLost):
        a.step()
    assert ledger_rows(store) == 0, "the zombie's handler writes were committed"
    assert checkpoints(store)[NAME] == 0
    assert b.step().events == 30
    with pytest.raises(stoic.LeaseLost):
        a.step()
    drain(b)
    check_exactly_once(store, [NAME], upto=100)
    for r in (a, b):
        r.release()


@pytest.mark.timeout(30)
def test_zombie_cannot_commit_after_the_new_holder_moved_on(store: stoic.Store) -> None:
    a, b = runner(store, "worker-a"), runner(store, "worker-b")
    assert a.acquire()
    assert a.step().events == 30
    store.heartbeat("worker-a", -1.0)
    assert b.acquire()
    assert b.step().events == 30
    with pytest.raises(stoic.LeaseLost):
        a.step()  # re-applies 31..60 from its stale position: must roll back
    check_exactly_once(store, [NAME], upto=60)
    drain(b)
    check_exactly_once(store, [NAME], upto=100)
    for r in (a, b):
        r.release()


@pytest.mark.timeout(30)
def test_released_lease_cannot_commit(store: stoic.Store) -> None:
    """An operator (or the worker's own shutdown) frees the projection: the runner
    that still holds the old lease object commits nothing."""
    a = runner(store, "worker-a")
    assert a.acquire()
    store.unregister_worker("worker-a")
    assert {s.name: s.holder for s in store.projections()}[NAME] is None
    with pytest.raises(stoic.LeaseLost):
        a.step()
    assert ledger_rows(store) == 0 and checkpoints(store)[NAME] == 0
    a.release()


class Gate:
    """A handler hook that stops a batch at one position until released."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, event: stoic.RecordedEvent) -> None:
        if event.position == self.at:
            self.entered.set()
            if not self.release.wait(20):
                raise TimeoutError("gate never released")


@pytest.mark.timeout(60)
def test_zombie_in_the_middle_of_a_batch(store: stoic.Store) -> None:
    """The zombie has applied part of its batch (uncommitted) when its lease is taken.

    PostgreSQL: the new holder claims at once; the zombie's commit is refused
    (LeaseLost) and rolled back, the new holder applies the same events once.
    SQLite: the zombie holds the single write lock, so the claim waits for the
    zombie's commit (still under its own lease: legitimate) and starts after it.
    """
    gate = Gate(at=12)
    a = runner(store, "worker-a", hook=gate)
    b = runner(store, "worker-b")
    assert a.acquire()
    store.heartbeat("worker-a", -1.0)
    outcome: dict[str, object] = {}

    def run_a() -> None:
        try:
            outcome["a"] = a.step()
        except stoic.StoicError as exc:
            outcome["a"] = exc

    def run_b() -> None:
        try:
            outcome["b_acquired"] = b.acquire()
            outcome["b"] = b.step()
        except stoic.StoicError as exc:
            outcome["b"] = exc

    ta = threading.Thread(target=run_a)
    ta.start()
    assert gate.entered.wait(10)
    tb = threading.Thread(target=run_b)
    tb.start()
    if store.dialect == "postgresql":
        wait_until(lambda: "b_acquired" in outcome, 10, "the takeover")
    else:
        time.sleep(0.3)
        assert "b_acquired" not in outcome, "claimed while the zombie held SQLite's write lock"
    gate.release.set()
    ta.join(20)
    tb.join(20)
    assert outcome["b_acquired"] is True
    assert b.lease is not None and a.lease is not None and b.lease.epoch > a.lease.epoch
    if store.dialect == "postgresql":
        assert isinstance(outcome["a"], stoic.LeaseLost), outcome["a"]
        assert b.lease.position == 0
    else:
        assert isinstance(outcome["a"], StepResult) and outcome["a"].events == 30  # its whole batch
        assert b.lease.position == 30
    assert not isinstance(outcome["b"], BaseException), outcome["b"]
    drain(b)
    check_exactly_once(store, [NAME], upto=100)
    for r in (a, b):
        r.release()


@pytest.mark.timeout(60)
def test_worker_whose_lease_is_taken_steps_back(store: stoic.Store, caplog: pytest.LogCaptureFixture) -> None:
    """Two full Runners (worker loops) in threads. The first one's heartbeat is made
    to expire while it idles at the head; the second takes the projection. New
    events wake both: the first gets LeaseLost on its commit, logs it and stops
    running the projection; the second applies them, once.

    (The zombie idles rather than catching up because on SQLite a worker that
    commits batch after batch starves a competing claim of the write lock; the
    mid-batch zombie is covered above and by tests/chaos/test_zombie.py.)
    """
    caplog.set_level(logging.WARNING, logger="stoic")
    app = App([LedgerProjection(NAME)])
    # A long ttl: the first worker's own heartbeat thread would not revive it for 10 s.
    first = Runner(store, app, worker_id="worker-first", lease_ttl=30, claim_interval=0.1, batch_size=25)
    t1 = threading.Thread(target=first.run)
    t1.start()
    try:
        wait_until(lambda: checkpoints(store).get(NAME) == 100, 20, "the first worker to catch up")
        store.heartbeat("worker-first", -1.0)
        second = Runner(store, app, worker_id="worker-second", lease_ttl=30, claim_interval=0.1, batch_size=25)
        t2 = threading.Thread(target=second.run)
        t2.start()
        try:
            wait_until(
                lambda: {s.name: s.holder for s in store.projections()}[NAME] == "worker-second",
                20,
                "the second worker to take over",
            )
            assert first.held == [NAME], "the zombie should still believe it holds the projection"
            append_bulk(store, 200, seed=5, streams=9, chunk=20)
            wait_until(lambda: not first.held, 10, "the first worker to let go")
            wait_until(lambda: checkpoints(store)[NAME] == 300, 30, "the second worker to catch up")
            assert second.held == [NAME]
        finally:
            second.stop()
            t2.join(20)
    finally:
        first.stop()
        t1.join(20)
    lost = [r for r in caplog.records if getattr(r, "action", None) == "lease_lost"]
    assert [getattr(r, "worker", None) for r in lost] == ["worker-first"], caplog.text
    check_exactly_once(store, [NAME], upto=300)
