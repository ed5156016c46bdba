"""Transfers between accounts: a process of steps, each atomic and idempotent.

A transfer has its own stream, ``transfer-<id>``, which records where the
process stands and serialises its steps:

1. **request** — ``TransferRequested {source, target, amount, currency}``;
2. **debit** — ``Withdrawn {transfer_id}`` on the source *and*
   ``TransferDebited`` on the transfer, in one ``append_many``; if the source
   refuses (insufficient funds, closed, missing), ``TransferFailed
   {stage: "debit"}`` instead and no money moved;
3. **credit** — ``Deposited {transfer_id}`` on the target *and*
   ``TransferCompleted``, in one ``append_many``; if the target refuses
   (closed, missing, over its max balance, another currency), the
   compensation instead: ``TransferRefunded`` on the source *and*
   ``TransferFailed {stage: "credit", refunded: true}``.

Each step writes to the transfer stream at the version it read, so two
processes driving the same transfer (a client and a sweeper) can never both
do a step: one gets a conflict, reloads, and finds the step done. The accounts
also remember which transfer steps they applied, as a second guard. A crash
between steps therefore leaves a transfer *requested* or *debited* — never
half a step — and :func:`continue_transfer` (or
:meth:`TransferService.resume`) finishes it; :func:`stuck_transfers` lists the
ones nobody finished.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from stoic import Aggregate, InvariantViolation, Repository, Store, applies, command
from stoic.aggregate import DEFAULT_MAX_ATTEMPTS, Event, command_id_for, retry_on_conflict, save_all
from stoic.examples.billing.domain import Account, is_cents

TRANSFER_PREFIX: Final = "transfer-"
PENDING: Final = frozenset({"requested", "debited"})
FINISHED: Final = frozenset({"completed", "failed"})

StepHook = Callable[[str, str], None]
"""``hook(transfer_id, status)`` after each committed step ("requested", "debited",
"completed", "failed"): tests use it to simulate a crash between steps."""


def transfer_stream(transfer_id: str) -> str:
    return f"{TRANSFER_PREFIX}{transfer_id}"


class Transfer(Aggregate):
    """Where one transfer stands: ``new`` → ``requested`` → ``debited`` →
    ``completed``, or → ``failed`` (with ``reason``, ``stage`` and ``refunded``)."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self.transfer_id = stream_id.removeprefix(TRANSFER_PREFIX)
        self.status = "new"
        self.source = ""
        self.target = ""
        self.amount = 0
        self.currency: str | None = None
        self.reason: str | None = None
        self.stage: str | None = None
        self.refunded = False

    @command
    def request(self, source: str, target: str, amount: int, currency: str | None) -> bool:
        """Records the request; asking again with the same terms is a no-op."""
        terms = (source, target, amount, currency)
        if self.status != "new":
            self.require(terms == (self.source, self.target, self.amount, self.currency), "same_request",
                         f"transfer {self.transfer_id} was requested with other terms")
            return False
        self.require(isinstance(source, str) and isinstance(target, str) and source != target, "accounts",
                     "a transfer needs two different accounts")
        self.require(is_cents(amount), "positive_amount", f"amount must be cents > 0, got {amount!r}")
        self.record("TransferRequested", {"source": source, "target": target, "amount": amount,
                                          "currency": currency})
        return True

    @command
    def mark_debited(self) -> None:
        self._transition("requested")
        self.record("TransferDebited", {"source": self.source, "amount": self.amount})

    @command
    def complete(self) -> None:
        self._transition("debited")
        self.record("TransferCompleted", {"target": self.target, "amount": self.amount})

    @command
    def fail(self, reason: str, stage: str, refunded: bool) -> None:
        self._transition("debited" if refunded else "requested")
        self.record("TransferFailed", {"reason": reason, "stage": stage, "refunded": refunded})

    def _transition(self, expected: str) -> None:
        self.require(self.status == expected, "transition", f"the transfer is {self.status}, not {expected}")

    @applies("TransferRequested")
    def _requested(self, event: Event) -> None:
        self.status = "requested"
        self.source, self.target = event.data["source"], event.data["target"]
        self.amount, self.currency = event.data["amount"], event.data["currency"]

    @applies("TransferDebited")
    def _debited(self, event: Event) -> None:
        self.status = "debited"

    @applies("TransferCompleted")
    def _completed(self, event: Event) -> None:
        self.status = "completed"

    @applies("TransferFailed")
    def _failed(self, event: Event) -> None:
        self.status = "failed"
        self.reason, self.stage = event.data["reason"], event.data["stage"]
        self.refunded = bool(event.data["refunded"])


def _reason(exc: InvariantViolation) -> str:
    return f"{exc.rule}: {exc.detail}"


class TransferService:
    """Runs transfers over the store; safe to use from many threads and
    processes at once, including on the same transfer."""

    def __init__(
        self, store: Store, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS * 3, after_step: StepHook | None = None
    ) -> None:
        self.store = store
        self.accounts = Repository(store, Account, max_attempts=max_attempts)
        self.transfers = Repository(store, Transfer, max_attempts=max_attempts)
        self.max_attempts = max_attempts
        self.after_step = after_step

    def transfer(self, source: str, target: str, amount: int, *, transfer_id: str | None = None) -> Transfer:
        """Requests a transfer and drives it to its end; returns it completed or
        failed. Raises InvariantViolation (nothing written) for a bad request, or
        for a known ``transfer_id`` requested with other terms."""
        tid = transfer_id or uuid.uuid4().hex
        currency = self.accounts.load(source).currency
        transfer = self.transfers.execute(
            transfer_stream(tid), lambda t: t.request(source, target, amount, currency),
            command_id=command_id_for(tid, "request"), correlation_id=tid)
        self._stepped(transfer)
        return self.resume(tid)

    def resume(self, transfer_id: str) -> Transfer:
        """Does whatever steps a transfer still needs (none if it is finished).
        Raises InvariantViolation (rule ``unknown_transfer``) for a transfer
        that was never requested."""
        transfer = self.transfers.load(transfer_stream(transfer_id))
        if transfer.status == "new":
            transfer.require(False, "unknown_transfer", f"no transfer {transfer_id} was requested")
        if transfer.status == "requested":
            transfer = self._debit(transfer_id)
        if transfer.status == "debited":
            transfer = self._credit(transfer_id)
        return transfer

    def resume_stuck(self, older_than: timedelta) -> list[Transfer]:
        """Finishes every transfer pending for longer than ``older_than`` (a sweeper)."""
        return [self.resume(s.transfer_id) for s in stuck_transfers(self.store, older_than)]

    # -- the steps --------------------------------------------------------------------------

    def _debit(self, tid: str) -> Transfer:
        def attempt() -> Transfer:
            transfer = self.transfers.load(transfer_stream(tid))
            if transfer.status != "requested":
                return transfer  # another process did this step
            source = self.accounts.load(transfer.source)
            try:
                source.withdraw(transfer.amount, transfer_id=tid, currency=transfer.currency)
            except InvariantViolation as exc:
                transfer.fail(_reason(exc), stage="debit", refunded=False)
                self._save([transfer], tid, "debit")
                return transfer
            transfer.mark_debited()
            self._save([source, transfer], tid, "debit")
            return transfer

        return self._stepped(retry_on_conflict(attempt, self.max_attempts))

    def _credit(self, tid: str) -> Transfer:
        def attempt() -> Transfer:
            transfer = self.transfers.load(transfer_stream(tid))
            if transfer.status != "debited":
                return transfer
            target = self.accounts.load(transfer.target)
            try:
                target.deposit(transfer.amount, transfer_id=tid, currency=transfer.currency)
            except InvariantViolation as exc:
                return self._compensate(transfer, _reason(exc))
            transfer.complete()
            self._save([target, transfer], tid, "credit")
            return transfer

        return self._stepped(retry_on_conflict(attempt, self.max_attempts))

    def _compensate(self, transfer: Transfer, reason: str) -> Transfer:
        """Gives the debited money back to the source and records the failure, atomically."""
        source = self.accounts.load(transfer.source)
        source.refund(transfer.amount, transfer.transfer_id, reason)
        transfer.fail(reason, stage="credit", refunded=True)
        self._save([source, transfer], transfer.transfer_id, "compensate")
        return transfer

    def _save(self, aggregates: list[Aggregate], tid: str, step: str) -> None:
        save_all(self.store, aggregates, command_id=command_id_for(tid, step), correlation_id=tid,
                 metadata={"step": step})

    def _stepped(self, transfer: Transfer) -> Transfer:
        if self.after_step is not None:
            self.after_step(transfer.transfer_id, transfer.status)
        return transfer


def continue_transfer(store: Store, transfer_id: str) -> Transfer:
    """Finishes a transfer that a crash (or anything else) left pending."""
    return TransferService(store).resume(transfer_id)


@dataclass(frozen=True, slots=True)
class StuckTransfer:
    """A transfer that is still pending: requested, or debited and not credited."""

    transfer_id: str
    status: str
    source: str
    target: str
    amount: int
    requested_at: datetime
    last_step_at: datetime


_PENDING_STREAMS = (
    "SELECT DISTINCT stream_id FROM stoic_events WHERE type = ? AND stream_id NOT IN "
    "(SELECT stream_id FROM stoic_events WHERE type IN (?, ?)) ORDER BY stream_id"
)


def stuck_transfers(store: Store, older_than: timedelta = timedelta(minutes=5)) -> list[StuckTransfer]:
    """Transfers requested at least ``older_than`` ago (by the store's clock) that
    neither completed nor failed, oldest first: the ones a crash left behind."""
    now = store.now()
    found = []
    for (stream_id,) in store.query(_PENDING_STREAMS, ("TransferRequested", "TransferCompleted", "TransferFailed")):
        events = store.read_stream(stream_id)
        transfer = Transfer.from_events(stream_id, events)
        if transfer.status in PENDING and now - events[0].recorded_at >= older_than:
            found.append(StuckTransfer(
                transfer.transfer_id, transfer.status, transfer.source, transfer.target, transfer.amount,
                events[0].recorded_at, events[-1].recorded_at))
    return sorted(found, key=lambda s: s.requested_at)
