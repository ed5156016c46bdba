"""Workers, projections and sessions: registration and heartbeats, claiming a
projection (one live holder at a time), releasing it, and apply_batch fencing:
a stale start or a stale epoch raises LeaseLost and commits none of the writes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

import stoic
from stoic.store import StoreSession

from ._helpers import ev, projection_state

TTL = 0.3  # seconds: a worker silent this long is dead


@pytest.fixture
def sessions(store: stoic.Store) -> Iterator[tuple[StoreSession, StoreSession]]:
    """Two sessions (connections) on the same store, as two runners would have."""
    a, b = store.open_session(), store.open_session()
    yield a, b
    a.close()
    b.close()


def create_side_table(session: StoreSession, name: str = "p") -> None:
    session.run_setup(name, lambda tx: tx.execute("CREATE TABLE IF NOT EXISTS side (n INTEGER NOT NULL)"))


def side_rows(store: stoic.Store) -> list[int]:
    return [n for (n,) in store.query("SELECT n FROM side ORDER BY n")]


def write_side(*values: int):  # type: ignore[no-untyped-def]
    def apply(tx: stoic.Transaction) -> None:
        for value in values:
            tx.execute("INSERT INTO side (n) VALUES (?)", (value,))

    return apply


# -- workers -----------------------------------------------------------------------


def test_register_worker_and_list_it(store: stoic.Store) -> None:
    assert store.workers() == []
    store.register_worker("w1", "host-a", 1234, 30.0)
    store.register_worker("w2", "host-b", 5678, 30.0)

    workers = {w.worker_id: w for w in store.workers()}
    assert set(workers) == {"w1", "w2"}
    w1 = workers["w1"]
    assert (w1.hostname, w1.pid, w1.alive) == ("host-a", 1234, True)
    for stamp in (w1.started_at, w1.heartbeat_at, w1.expires_at):
        assert stamp.tzinfo is not None
    assert timedelta(seconds=29) < w1.expires_at - w1.heartbeat_at <= timedelta(seconds=31)


def test_a_worker_dies_when_its_ttl_passes_and_a_heartbeat_revives_it(store: stoic.Store) -> None:
    store.register_worker("w1", "h", 1, TTL)
    assert [w.alive for w in store.workers()] == [True]
    time.sleep(TTL + 0.1)
    assert [w.alive for w in store.workers()] == [False]

    assert store.heartbeat("w1", 30.0) is True
    (worker,) = store.workers()
    assert worker.alive
    assert worker.expires_at - worker.heartbeat_at > timedelta(seconds=29)


def test_heartbeat_of_an_unknown_worker_returns_false(store: stoic.Store) -> None:
    assert store.heartbeat("nobody", 30.0) is False
    assert store.workers() == []


def test_registering_again_keeps_one_row(store: stoic.Store) -> None:
    store.register_worker("w1", "h", 1, TTL)
    time.sleep(TTL + 0.1)
    store.register_worker("w1", "h", 1, 30.0)

    (worker,) = store.workers()
    assert worker.alive


def test_unregister_removes_the_worker_and_frees_its_projections(
    store: stoic.Store, sessions: tuple[StoreSession, StoreSession]
) -> None:
    a, b = sessions
    store.register_worker("w1", "h", 1, 30.0)
    store.register_worker("w2", "h", 2, 30.0)
    for name in ("p", "q"):
        a.ensure_projection(name)
        assert a.claim(name, "w1") is not None

    store.unregister_worker("w1")

    assert [w.worker_id for w in store.workers()] == ["w2"]
    assert all(s.holder is None for s in store.projections())
    assert b.claim("p", "w2") is not None


# -- projections and leases -----------------------------------------------------------


def test_ensure_projection_creates_it_once(
    store: stoic.Store, sessions: tuple[StoreSession, StoreSession]
) -> None:
    a, b = sessions
    assert store.projections() == []
    a.ensure_projection("p")
    a.ensure_projection("p")
    b.ensure_projection("p")

    (state,) = store.projections()
    assert (
        state.name,
        state.position,
        state.events_processed,
        state.holder,
        state.holder_alive,
        state.epoch,
    ) == ("p", 0, 0, None, False, 0)
    assert a.checkpoint("p") == 0
    assert a.checkpoint("unknown") == 0


def test_claim_gives_a_lease_and_records_the_holder(
    store: stoic.Store, sessions: tuple[StoreSession, StoreSession]
) -> None:
    a, _ = sessions
    store.register_worker("w1", "h", os.getpid(), 30.0)
    a.ensure_projection("p")

    lease = a.claim("p", "w1")

    assert lease is not None
    assert (lease.projection, lease.worker_id, lease.epoch, lease.position) == ("p", "w1", 1, 0)
    state = projection_state(store, "p")
    assert (state.holder, state.holder_alive, state.epoch) == ("w1", True, 1)


def test_a_second_worker_cannot_claim_while_the_first_lives_but_can_after_its_ttl(
    store: stoic.Store, sessions: tuple[StoreSession, StoreSession]
) -> None:
    a, b = sessions
    store.register_worker("w1", "h", 1, 30.0)
    store.register_worker("w2", "h", 2, 30.0)
    a.ensure_projection("p")
    first = a.claim("p", "w1")
    assert first is not None

    assert b.claim("p", "w2") is None
    assert projection_state(store, "p").holder == "w1"

    # w1's last heartbeat promises only TTL seconds more; then it falls silent.
    assert store.heartbeat("w1", TTL)
    assert b.claim("p", "w2") is None
    time.sleep(TTL + 0.15)
    assert projection_state(store, "p").holder_alive is False
    second = b.claim("p", "w2")

    assert second is not None
    assert second.epoch > first.epoch
    state = projection_state(store, "p")
    assert (state.holder, state.holder_alive, state.epoch) == ("w2", True, second.epoch)


def test_release_frees_the_projection_for_another_worker(
    store: stoic.Store, sessions: tuple[StoreSession, StoreSession]
) -> None:
    a, b = sessions
    store.register_worker("w1", "h", 1, 30.0)
    store.register_worker("w2", "h", 2, 30.0)
    a.ensure_projection("p")
    lease = a.claim("p", "w1")
    assert lease is not None

    a.release(lease)

    assert projection_state(store, "p").holder is None
    assert b.claim("p", "w2") is not None


def test_a_lease_starts_at_the_checkpoint(
    store: stoic.Store, sessions: tuple[StoreSession, StoreSession]
) -> None:
    a, b = sessions
    store.append("s", [ev("E") for _ in range(5)])
    store.register_worker("w1", "h", 1, 30.0)
    store.register_worker("w2", "h", 2, 30.0)
    a.ensure_projection("p")
    lease = a.claim("p", "w1")
    assert lease is not None
    a.apply_batch(lease, 0, 3, 3, lambda tx: None)
    a.release(lease)

    again = b.claim("p", "w2")

    assert again is not None
    assert again.position == 3


# -- apply_batch and fencing --------------------------------------------------------


def test_apply_batch_commits_the_writes_and_moves_the_checkpoint(
    store: stoic.Store, sessions: tuple[StoreSession, StoreSession]
) -> None:
    a, _ = sessions
    store.append("s", [ev("E", i=i) for i in range(5)])
    store.register_worker("w1", "h", 1, 30.0)
    a.ensure_projection("p")
    create_side_table(a)
    lease = a.claim("p", "w1")
    assert lease is not None

    events = a.read_all(lease.position, 3)
    assert events == store.read_all(0, 3)
    a.apply_batch(lease, 0, events[-1].position, len(events), write_side(1, 2, 3))
    a.apply_batch(lease, 3, 5, 2, write_side(4, 5))

    assert side_rows(store) == [1, 2, 3, 4, 5]
    assert a.checkpoint("p") == 5
    state = projection_state(store, "p")
    assert (state.position, state.events_processed, state.holder) == (5, 5, "w1")
    assert state.updated_at is not None and state.updated_at.tzinfo is not None


def test_apply_batch_from_a_stale_start_raises_lease_lost_and_commits_nothing(
    store: stoic.Store, sessions: tuple[StoreSession, StoreSession]
) -> None:
    a, _ = sessions
    store.append("s", [ev("E") for _ in range(6)])
    store.register_worker("w1", "h", 1, 30.0)
    a.ensure_projection("p")
    create_side_table(a)
    lease = a.claim("p", "w1")
    assert lease is not None
    a.apply_batch(lease, 0, 3, 3, write_side(1))

    # The same batch again (a replay from a stale position): fenced out.
    with pytest.raises(stoic.LeaseLost) as info:
        a.apply_batch(lease, 0, 3, 3, write_side(2))

    assert isinstance(info.value, stoic.TransientError)
    assert "'p'" in str(info.value)
    assert side_rows(store) == [1]
    assert a.checkpoint("p") == 3
    assert projection_state(store, "p").events_processed == 3


def test_apply_batch_under_a_stale_epoch_raises_lease_lost_and_commits_nothing(
    store: stoic.Store, sessions: tuple[StoreSession, StoreSession]
) -> None:
    a, b = sessions
    store.append("s", [ev("E") for _ in range(6)])
    store.register_worker("zombie", "h", 1, 30.0)
    store.register_worker("w2", "h", 2, 30.0)
    a.ensure_projection("p")
    create_side_table(a)
    old = a.claim("p", "zombie")
    assert old is not None
    assert store.heartbeat("zombie", TTL)  # its last heartbeat; then it freezes
    time.sleep(TTL + 0.15)
    new = b.claim("p", "w2")
    assert new is not None and new.position == 0

    # The zombie's batch starts at the right position but under the old epoch.
    with pytest.raises(stoic.LeaseLost):
        a.apply_batch(old, 0, 3, 3, write_side(99))
    assert side_rows(store) == []
    assert a.checkpoint("p") == 0

    # Nor can it release the new holder's lease.
    a.release(old)
    assert projection_state(store, "p").holder == "w2"

    b.apply_batch(new, 0, 3, 3, write_side(1))
    assert side_rows(store) == [1]
    # Even a revived zombie (heartbeat again) stays fenced by its epoch.
    assert store.heartbeat("zombie", 30.0)
    with pytest.raises(stoic.LeaseLost):
        a.apply_batch(old, 3, 6, 3, write_side(98))
    assert side_rows(store) == [1]
    assert b.checkpoint("p") == 3


def test_reclaiming_by_the_same_worker_fences_its_older_lease(
    store: stoic.Store, sessions: tuple[StoreSession, StoreSession]
) -> None:
    a, b = sessions
    store.append("s", [ev("E") for _ in range(3)])
    store.register_worker("w1", "h", 1, 30.0)
    a.ensure_projection("p")
    create_side_table(a)
    older = a.claim("p", "w1")
    newer = b.claim("p", "w1")
    assert older is not None and newer is not None
    assert newer.epoch > older.epoch

    with pytest.raises(stoic.LeaseLost):
        a.apply_batch(older, 0, 3, 3, write_side(1))
    b.apply_batch(newer, 0, 3, 3, write_side(2))

    assert side_rows(store) == [2]


def test_a_failing_apply_commits_nothing(
    store: stoic.Store, sessions: tuple[StoreSession, StoreSession]
) -> None:
    a, _ = sessions
    store.append("s", [ev("E") for _ in range(3)])
    store.register_worker("w1", "h", 1, 30.0)
    a.ensure_projection("p")
    create_side_table(a)
    lease = a.claim("p", "w1")
    assert lease is not None

    def apply(tx: stoic.Transaction) -> None:
        write_side(1, 2)(tx)
        raise KeyError("handler bug")

    with pytest.raises(KeyError):
        a.apply_batch(lease, 0, 3, 3, apply)

    assert side_rows(store) == []
    assert a.checkpoint("p") == 0
    # The session is still usable, and the lease still valid.
    a.apply_batch(lease, 0, 3, 3, write_side(3))
    assert side_rows(store) == [3]


def test_run_setup_commits_or_rolls_back(
    store: stoic.Store, sessions: tuple[StoreSession, StoreSession]
) -> None:
    a, _ = sessions

    def failing_setup(tx: stoic.Transaction) -> None:
        tx.execute("CREATE TABLE half (n INTEGER)")
        raise RuntimeError("setup bug")

    with pytest.raises(RuntimeError):
        a.run_setup("p", failing_setup)
    create_side_table(a)
    create_side_table(a)  # idempotent setup runs again without error

    assert side_rows(store) == []
    assert store.query("SELECT count(*) FROM side") == [(0,)]
    tables = {
        name
        for (name,) in store.query(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            if store.dialect == "sqlite"
            else "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    }
    assert "side" in tables
    assert "half" not in tables


def test_session_reads_match_the_store(
    store: stoic.Store, sessions: tuple[StoreSession, StoreSession]
) -> None:
    a, _ = sessions
    store.append("s", [ev("E", i=i) for i in range(4)])
    assert a.read_all(0, 10) == store.read_all()
    assert a.read_all(2, 1) == store.read_all(after=2, limit=1)
    assert a.read_all(4, 10) == []
