"""Read models of the billing domain, and a notifier calling a flaky service.

Every handler writes through ``tx`` with ``?`` placeholders, so each read model
moves with its projection's checkpoint (exactly once) on SQLite and
PostgreSQL alike.

:class:`FlakyNotifier` calls :class:`SimulatedService`, an outside effect
(at least once: it passes ``event_id`` as the idempotency key, and the
service drops repeats). The service fails in the two ways the failure model
tells apart:

- during an :meth:`SimulatedService.outage` every call raises
  :class:`ServiceUnavailable`, a ``ConnectionError``: **transient**, so the
  batch is retried with back-off and, if the outage lasts, the circuit
  breaker opens;
- with probability ``failure_rate`` one call raises :class:`ServiceError` (the
  service answered "500" for that request): **permanent**, so the event gets a
  failure record (``stoic.Operations(store).failures()``), its account's later
  events are parked behind it, and it is retried in the background until it
  succeeds or is dead. A transient error never creates a failure record,
  which is why the random failures are not transient.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Final

from stoic import (
    BreakerPolicy,
    CheckResult,
    Projection,
    RecordedEvent,
    RetryPolicy,
    RetrySchedule,
    Transaction,
    handles,
)
from stoic.examples.billing.domain import MONEY_EVENTS, expected_balance, expected_balances, signed_amount

__all__ = [
    "Balances",
    "DailyTotals",
    "FlakyNotifier",
    "ServiceError",
    "ServiceUnavailable",
    "SimulatedService",
    "TransactionHistory",
    "expected_balance",
    "expected_balances",
]


def _at(event: RecordedEvent) -> str:
    """A portable timestamp (ISO 8601, UTC, microseconds) for a TEXT column."""
    return event.recorded_at.isoformat(timespec="microseconds")


class Balances(Projection):
    """One row per account: owner, currency, status and balance.

    Versioned (``tables``): bumping ``version`` rebuilds it beside the serving
    generation, and readers keep querying ``billing_balances`` throughout.
    Reconcilable: each account's row can be proved against its events, and the
    accounting equation (the sum of balances equals deposits plus refunds minus
    withdrawals) is checked globally.
    """

    name = "billing_balances"
    tables = ("billing_balances",)
    version = 1

    def setup(self, tx: Transaction) -> None:
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table('billing_balances')} (account TEXT PRIMARY KEY, "
            "owner TEXT NOT NULL, currency TEXT NOT NULL, status TEXT NOT NULL, balance BIGINT NOT NULL, "
            "movements BIGINT NOT NULL)"
        )

    def reset(self, tx: Transaction) -> None:
        tx.execute(f"DELETE FROM {self.table('billing_balances')}")

    @handles("AccountOpened")
    def opened(self, event: RecordedEvent, tx: Transaction) -> None:
        tx.execute(f"INSERT INTO {self.table('billing_balances')} VALUES (?, ?, ?, 'open', 0, 0)",
                   (event.stream_id, event.data["owner"], event.data["currency"]))

    @handles("Deposited", "Withdrawn", "TransferRefunded")
    def moved(self, event: RecordedEvent, tx: Transaction) -> None:
        tx.execute(f"UPDATE {self.table('billing_balances')} SET balance = balance + ?, movements = movements + 1 "
                   "WHERE account = ?", (signed_amount(event), event.stream_id))

    @handles("AccountClosed")
    def closed(self, event: RecordedEvent, tx: Transaction) -> None:
        tx.execute(f"UPDATE {self.table('billing_balances')} SET status = 'closed' WHERE account = ?",
                   (event.stream_id,))

    # -- reconciliation ---------------------------------------------------------------------

    def expected_state(self, stream_id: str, events: list[RecordedEvent]) -> dict[str, Any] | None:
        opened = next((e for e in events if e.type == "AccountOpened"), None)
        if opened is None:
            return None
        return {"owner": opened.data["owner"], "currency": opened.data["currency"],
                "status": "closed" if any(e.type == "AccountClosed" for e in events) else "open",
                "balance": expected_balance(events), "movements": sum(e.type in MONEY_EVENTS for e in events)}

    def actual_state(self, stream_id: str, tx: Transaction) -> dict[str, Any] | None:
        row = tx.execute(f"SELECT owner, currency, status, balance, movements FROM {self.table('billing_balances')} "
                         "WHERE account = ?", (stream_id,)).fetchone()
        if row is None:
            return None
        return {"owner": row[0], "currency": row[1], "status": row[2], "balance": int(row[3]), "movements": int(row[4])}

    def forget(self, stream_id: str, tx: Transaction) -> None:
        tx.execute(f"DELETE FROM {self.table('billing_balances')} WHERE account = ?", (stream_id,))

    def checks(self, snapshot: Any) -> list[CheckResult]:
        stored = int(snapshot.execute(
            f"SELECT COALESCE(SUM(balance), 0) FROM {self.table('billing_balances')}").fetchone()[0])
        moved = sum(signed_amount(e) for e in snapshot.events() if e.type in MONEY_EVENTS)
        return [CheckResult("accounting equation", stored == moved,
                            f"sum of balances {stored} vs deposits + refunds - withdrawals {moved}")]


class TransactionHistory(Projection):
    """One row per money movement, keyed by global position (so a movement can
    appear only once): account, type, amount, transfer id, when."""

    name = "billing_transactions"

    def setup(self, tx: Transaction) -> None:
        tx.execute(
            "CREATE TABLE IF NOT EXISTS billing_transactions (position BIGINT PRIMARY KEY, account TEXT NOT NULL, "
            "version BIGINT NOT NULL, type TEXT NOT NULL, amount BIGINT NOT NULL, currency TEXT NOT NULL, "
            "transfer_id TEXT, at TEXT NOT NULL)"
        )

    def reset(self, tx: Transaction) -> None:
        tx.execute("DELETE FROM billing_transactions")

    @handles(*sorted(MONEY_EVENTS))
    def moved(self, event: RecordedEvent, tx: Transaction) -> None:
        data = event.data
        tx.execute(
            "INSERT INTO billing_transactions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (event.position, event.stream_id, event.version, event.type, data["amount"], data["currency"],
             data.get("transfer_id"), _at(event)),
        )


class DailyTotals(Projection):
    """Per UTC day and currency: money deposited, withdrawn and refunded, and
    how many movements."""

    name = "billing_daily_totals"

    def setup(self, tx: Transaction) -> None:
        tx.execute(
            "CREATE TABLE IF NOT EXISTS billing_daily_totals (day TEXT NOT NULL, currency TEXT NOT NULL, "
            "deposits BIGINT NOT NULL, withdrawals BIGINT NOT NULL, refunds BIGINT NOT NULL, "
            "count BIGINT NOT NULL, PRIMARY KEY (day, currency))"
        )

    def reset(self, tx: Transaction) -> None:
        tx.execute("DELETE FROM billing_daily_totals")

    @handles(*sorted(MONEY_EVENTS))
    def moved(self, event: RecordedEvent, tx: Transaction) -> None:
        amount = event.data["amount"]
        columns = {"Deposited": (amount, 0, 0), "Withdrawn": (0, amount, 0), "TransferRefunded": (0, 0, amount)}
        deposits, withdrawals, refunds = columns[event.type]
        tx.execute(
            "INSERT INTO billing_daily_totals VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT (day, currency) DO UPDATE SET "
            "deposits = billing_daily_totals.deposits + excluded.deposits, "
            "withdrawals = billing_daily_totals.withdrawals + excluded.withdrawals, "
            "refunds = billing_daily_totals.refunds + excluded.refunds, "
            "count = billing_daily_totals.count + 1",
            (event.recorded_at.date().isoformat(), event.data["currency"], deposits, withdrawals, refunds),
        )


# -- the flaky outside world ----------------------------------------------------------------


class ServiceUnavailable(ConnectionError):
    """The service cannot be reached (an outage): transient, retried with back-off."""


class ServiceError(Exception):
    """The service refused one request (an HTTP 500): permanent for Stoic, so it
    is recorded as a failure and retried in the background."""


class SimulatedService:
    """A notification service that fails on purpose; thread-safe.

    ``failure_rate`` is the chance that one call raises ServiceError (drawn from a
    ``random.Random(seed)``, so a run is reproducible given the call order);
    :meth:`outage` makes every call raise ServiceUnavailable for a while.
    Deliveries are deduplicated by idempotency key, as a real provider would.
    """

    def __init__(self, failure_rate: float = 0.0, seed: int = 0, latency: float = 0.0) -> None:
        self.failure_rate = failure_rate
        self.latency = latency
        self.delivered: dict[str, dict[str, Any]] = {}
        self.calls = 0
        self.errors = 0
        self.unavailable = 0
        self.repeats = 0
        self._rng = random.Random(seed)
        self._down_until = 0.0
        self._lock = threading.Lock()

    def outage(self, seconds: float) -> None:
        """Every call fails with ServiceUnavailable for the next ``seconds`` (0 ends it)."""
        with self._lock:
            self._down_until = time.monotonic() + seconds if seconds > 0 else 0.0

    def recover(self) -> None:
        """Ends any outage and stops the random failures."""
        with self._lock:
            self._down_until = 0.0
            self.failure_rate = 0.0

    @property
    def down(self) -> bool:
        return time.monotonic() < self._down_until

    def send(self, key: str, message: dict[str, Any]) -> bool:
        """Delivers ``message`` once per ``key``; True when it was new."""
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            self.calls += 1
            if time.monotonic() < self._down_until:
                self.unavailable += 1
                raise ServiceUnavailable("notification service unreachable (outage)")
            if self.failure_rate and self._rng.random() < self.failure_rate:
                self.errors += 1
                raise ServiceError(f"notification service answered 500 for {key}")
            if key in self.delivered:
                self.repeats += 1
                return False
            self.delivered[key] = message
            return True


DEFAULT_NOTIFIER_RETRY: Final = RetryPolicy(initial_delay=0.05, multiplier=2.0, max_delay=0.5, max_attempts=5)
DEFAULT_NOTIFIER_SCHEDULE: Final = RetrySchedule(first_delay=0.5, multiplier=2.0, max_attempts=8)
DEFAULT_NOTIFIER_BREAKER: Final = BreakerPolicy(cooldown=2.0)


class FlakyNotifier(Projection):
    """Tells the account holder about every money movement through
    :class:`SimulatedService`, and records each notification sent (through
    ``tx``, so the table holds each movement exactly once even though the
    service may be called more than once)."""

    name = "billing_notifier"

    def __init__(
        self,
        service: SimulatedService | None = None,
        *,
        retry_policy: RetryPolicy = DEFAULT_NOTIFIER_RETRY,
        retry_schedule: RetrySchedule = DEFAULT_NOTIFIER_SCHEDULE,
        breaker_policy: BreakerPolicy = DEFAULT_NOTIFIER_BREAKER,
        batch_size: int = 100,
    ) -> None:
        self.service = service or SimulatedService()
        # Per-instance failure settings (the class attributes are the defaults).
        self.retry_policy = retry_policy  # type: ignore[misc]
        self.retry_schedule = retry_schedule  # type: ignore[misc]
        self.breaker_policy = breaker_policy  # type: ignore[misc]
        self.batch_size = batch_size  # type: ignore[misc]

    def setup(self, tx: Transaction) -> None:
        tx.execute(
            "CREATE TABLE IF NOT EXISTS billing_notifications (event_id TEXT PRIMARY KEY, position BIGINT NOT NULL, "
            "account TEXT NOT NULL, type TEXT NOT NULL, amount BIGINT NOT NULL)"
        )

    def reset(self, tx: Transaction) -> None:
        tx.execute("DELETE FROM billing_notifications")

    @handles(*sorted(MONEY_EVENTS))
    def notify(self, event: RecordedEvent, tx: Transaction) -> None:
        key = str(event.event_id)
        self.service.send(key, {"account": event.stream_id, "type": event.type, "amount": event.data["amount"]})
        tx.execute("INSERT INTO billing_notifications VALUES (?, ?, ?, ?, ?)",
                   (key, event.position, event.stream_id, event.type, event.data["amount"]))
