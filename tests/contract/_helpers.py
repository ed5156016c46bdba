"""Small helpers shared by the contract tests: snapshots of a store's content and
a balances projection whose read model is compared with a fold of the events."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import stoic
from stoic.store import ProjectionState

Row = tuple[int, str, int, str, str, dict[str, Any], dict[str, Any]]


def ev(type: str, **data: Any) -> stoic.NewEvent:
    """A NewEvent of a type with keyword data."""
    return stoic.NewEvent(type, data)


def rows(events: Iterable[stoic.RecordedEvent]) -> list[Row]:
    """Every field of the events except ``recorded_at``, as plain tuples."""
    return [(e.position, e.stream_id, e.version, e.type, str(e.event_id), e.data, e.metadata) for e in events]


def snapshot(store: stoic.Store) -> tuple[int, list[Row], list[Row]]:
    """The store's observable content: head, read_all, and iter_all (every event)."""
    return store.head(), rows(store.read_all(0, 10_000)), rows(store.iter_all())


def fold_balances(events: Iterable[stoic.RecordedEvent]) -> dict[str, tuple[int, int]]:
    """The balances read model computed in Python: account -> (balance, movements)."""
    balances: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for event in events:
        if event.type == "Opened":
            balances[event.stream_id] = [0, 0]
        elif event.type in ("Deposited", "Withdrawn"):
            sign = 1 if event.type == "Deposited" else -1
            balances[event.stream_id][0] += sign * event.data["amount"]
            balances[event.stream_id][1] += 1
    return {account: (b, n) for account, (b, n) in balances.items()}


class Balances(stoic.Projection):
    """One row per account; every write goes through ``tx`` with ``?`` placeholders."""

    name = "balances"

    def __init__(self) -> None:
        self.seen: list[int] = []  # positions handled, in order (including rolled-back batches)
        self.setups = 0
        self.fail_at: int | None = None  # a position whose handler writes, then raises Boom

    def setup(self, tx: stoic.Transaction) -> None:
        self.setups += 1
        tx.execute(
            "CREATE TABLE IF NOT EXISTS balances ("
            "account TEXT PRIMARY KEY, balance BIGINT NOT NULL, movements BIGINT NOT NULL)"
        )

    @stoic.handles("Opened")
    def opened(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        tx.execute("INSERT INTO balances (account, balance, movements) VALUES (?, 0, 0)", (event.stream_id,))
        self._done(event)

    @stoic.handles("Deposited", "Withdrawn")
    def moved(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
        sign = 1 if event.type == "Deposited" else -1
        tx.execute(
            "UPDATE balances SET balance = balance + ?, movements = movements + 1 WHERE account = ?",
            (sign * event.data["amount"], event.stream_id),
        )
        self._done(event)

    def _done(self, event: stoic.RecordedEvent) -> None:
        """Records the call; at ``fail_at`` raises *after* the handler wrote, so a
        half-applied event would show in the read model."""
        self.seen.append(event.position)
        if event.position == self.fail_at:
            raise Boom(f"handler failed at position {event.position}")


class Boom(Exception):
    """The error a test handler raises on purpose."""


def read_balances(store: stoic.Store) -> dict[str, tuple[int, int]]:
    return {
        a: (int(b), int(n)) for a, b, n in store.query("SELECT account, balance, movements FROM balances")
    }


def projection_state(store: stoic.Store, name: str) -> ProjectionState:
    states = {s.name: s for s in store.projections()}
    return states[name]
