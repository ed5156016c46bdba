"""The account: money in integer cents, and the rules every decision must keep.

Events of an account stream (``account-…``):

- ``AccountOpened {owner, currency, overdraft_limit, max_balance}``
- ``Deposited {amount, currency, transfer_id?}``
- ``Withdrawn {amount, currency, transfer_id?}``
- ``TransferRefunded {amount, currency, transfer_id, reason}`` — a compensation
- ``AccountClosed {}``

Rules (``InvariantViolation.rule``): ``min_balance`` (the balance never goes
below ``-overdraft_limit``), ``max_balance`` (money paid in never takes the
balance above ``max_balance``), ``account_open`` (only an open account takes
deposits and withdrawals), ``positive_amount``, ``currency``,
``already_opened``, ``owner``, ``limits``, ``zero_balance`` (to close),
``refund_matches_debit``.

A refund is a compensation and is never refused for a limit or a closed
account: the money has to go back. A refund that takes the balance above
``max_balance`` leaves *headroom* (the excess it created) that only shrinks as
money leaves, so later withdrawals from such an account are still allowed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Final

from stoic import Aggregate, applies, command
from stoic.aggregate import Event

ACCOUNT_PREFIX: Final = "account-"
DEFAULT_MAX_BALANCE: Final = 100_000_000  #: cents (1,000,000.00)
MAX_AMOUNT: Final = 10**15  #: the largest amount one event may carry, cents
MONEY_IN: Final = frozenset({"Deposited", "TransferRefunded"})
MONEY_OUT: Final = frozenset({"Withdrawn"})
MONEY_EVENTS: Final = MONEY_IN | MONEY_OUT
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def is_cents(value: object, *, allow_zero: bool = False) -> bool:
    """Whether ``value`` is an amount of cents: an int (not a bool) in range."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (0 if allow_zero else 1) <= value <= MAX_AMOUNT
    )


def signed_amount(event: Event) -> int:
    """What a money event does to its account's balance (0 for other events)."""
    if event.type in MONEY_IN:
        return int(event.data["amount"])
    if event.type in MONEY_OUT:
        return -int(event.data["amount"])
    return 0


def expected_balance(events: Iterable[Event]) -> int:
    """The balance one account's events add up to: a pure fold to reconcile a
    read model against."""
    return sum(signed_amount(e) for e in events)


def expected_balances(events: Iterable[Any]) -> dict[str, int]:
    """``{account stream: balance}`` from stored events of any streams (accounts
    that were opened, including those with a zero balance)."""
    balances: dict[str, int] = defaultdict(int)
    for event in events:
        if event.type == "AccountOpened":
            balances[event.stream_id] += 0
        elif event.type in MONEY_EVENTS:
            balances[event.stream_id] += signed_amount(event)
    return dict(balances)


class Account(Aggregate):
    """A bank account. Commands return True when they recorded an event and
    False when they were a repeat of a transfer step already applied."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self.status = "new"  # new, open, closed
        self.owner: str | None = None
        self.currency: str | None = None
        self.balance = 0
        self.overdraft_limit = 0
        self.max_balance = DEFAULT_MAX_BALANCE
        self.refund_headroom = 0  # excess over max_balance that refunds created and that is not spent yet
        self.transfers: dict[str, dict[str, int]] = {}  # transfer id -> {"debit"|"credit"|"refund": amount}

    # -- commands ---------------------------------------------------------------------

    @command
    def open(
        self, owner: str, currency: str, *, overdraft_limit: int = 0, max_balance: int = DEFAULT_MAX_BALANCE
    ) -> bool:
        """Opens the account; an overdraft limit lets the balance go below zero."""
        self.require(self.status == "new", "already_opened", f"the account is {self.status} already")
        self.require(isinstance(owner, str) and owner.strip(), "owner", "an account needs an owner")
        self.require(isinstance(currency, str) and _CURRENCY.match(currency), "currency",
                     f"currency must be an ISO code like 'EUR', got {currency!r}")
        self.require(is_cents(overdraft_limit, allow_zero=True) and is_cents(max_balance), "limits",
                     "overdraft_limit must be cents >= 0 and max_balance cents > 0")
        self.record("AccountOpened", {"owner": owner.strip(), "currency": currency,
                                      "overdraft_limit": overdraft_limit, "max_balance": max_balance})
        return True

    @command
    def deposit(self, amount: int, *, transfer_id: str | None = None, currency: str | None = None) -> bool:
        """Pays money in (as a transfer's credit when ``transfer_id`` is given)."""
        if transfer_id is not None and "credit" in self.transfers.get(transfer_id, {}):
            return False
        self._check_movement(amount, currency)
        self.record("Deposited", self._money(amount, transfer_id))
        return True

    @command
    def withdraw(self, amount: int, *, transfer_id: str | None = None, currency: str | None = None) -> bool:
        """Takes money out (as a transfer's debit when ``transfer_id`` is given)."""
        if transfer_id is not None and "debit" in self.transfers.get(transfer_id, {}):
            return False
        self._check_movement(amount, currency)
        self.record("Withdrawn", self._money(amount, transfer_id))
        return True

    @command
    def refund(self, amount: int, transfer_id: str, reason: str) -> bool:
        """Gives back a transfer's debit whose credit failed. Never refused for a
        limit or a closed account; refused only if it does not match a debit."""
        steps = self.transfers.get(transfer_id, {})
        if "refund" in steps:
            return False
        self.require(steps.get("debit") == amount, "refund_matches_debit",
                     f"transfer {transfer_id} debited {steps.get('debit')} here, not {amount}")
        self.record("TransferRefunded", {**self._money(amount, transfer_id), "reason": reason})
        return True

    @command
    def close(self) -> bool:
        """Closes an open account with a zero balance; it then refuses commands."""
        self._require_open()
        self.require(self.balance == 0, "zero_balance", f"the balance is {self.balance}, not 0")
        self.record("AccountClosed", {})
        return True

    def _check_movement(self, amount: int, currency: str | None) -> None:
        self._require_open()
        self.require(is_cents(amount), "positive_amount", f"amount must be cents > 0, got {amount!r}")
        self.require(currency is None or currency == self.currency, "currency",
                     f"the account holds {self.currency}, not {currency}")

    def _require_open(self) -> None:
        self.require(self.status == "open", "account_open", f"the account is {self.status}")

    def _money(self, amount: int, transfer_id: str | None) -> dict[str, Any]:
        data: dict[str, Any] = {"amount": amount, "currency": self.currency}
        if transfer_id is not None:
            data["transfer_id"] = transfer_id
        return data

    # -- rules --------------------------------------------------------------------------

    def check_invariants(self) -> None:
        if self.status == "new":
            return
        self.require(self.balance >= -self.overdraft_limit, "min_balance",
                     f"balance {self.balance} would be below {-self.overdraft_limit}")
        self.require(self.balance <= self.max_balance + self.refund_headroom, "max_balance",
                     f"balance {self.balance} would be above {self.max_balance}")

    # -- appliers -----------------------------------------------------------------------

    @applies("AccountOpened")
    def _opened(self, event: Event) -> None:
        self.status = "open"
        self.owner = event.data["owner"]
        self.currency = event.data["currency"]
        self.overdraft_limit = event.data["overdraft_limit"]
        self.max_balance = event.data["max_balance"]

    @applies("Deposited")
    def _deposited(self, event: Event) -> None:
        self.balance += event.data["amount"]
        self._step(event, "credit")

    @applies("Withdrawn")
    def _withdrawn(self, event: Event) -> None:
        self.balance -= event.data["amount"]
        excess = self.balance - self.max_balance
        self.refund_headroom = max(0, min(self.refund_headroom, excess))
        self._step(event, "debit")

    @applies("TransferRefunded")
    def _refunded(self, event: Event) -> None:
        self.balance += event.data["amount"]
        self.refund_headroom = max(self.refund_headroom, self.balance - self.max_balance, 0)
        self._step(event, "refund")

    @applies("AccountClosed")
    def _closed(self, event: Event) -> None:
        self.status = "closed"

    def _step(self, event: Event, step: str) -> None:
        transfer_id = event.data.get("transfer_id")
        if transfer_id is not None:
            self.transfers.setdefault(transfer_id, {})[step] = event.data["amount"]
