"""A realistic mix of billing traffic from concurrent clients.

Clients share the accounts, so they collide on the same streams and go
through the repository's optimistic-concurrency retries. The mix includes
what a real system sees: deposits over an account's maximum, withdrawals
beyond the balance (refused), transfers from poor accounts (refused at the
debit), and transfers to closed, missing or other-currency accounts (debited,
then compensated).
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from stoic import InvariantViolation, Repository, Store
from stoic.examples.billing.domain import ACCOUNT_PREFIX, DEFAULT_MAX_BALANCE, Account
from stoic.examples.billing.transfers import TransferService

MAX_ATTEMPTS = 100  #: repository attempts per command: clients collide often on few accounts


@dataclass
class WorkloadReport:
    """What happened: counts of each outcome and the accounts used."""

    accounts: list[str] = field(default_factory=list)
    opened: int = 0
    closed: int = 0
    deposits: int = 0
    withdrawals: int = 0
    transfers_completed: int = 0
    transfers_compensated: int = 0  # debited, credit refused, refunded
    transfers_refused: int = 0  # refused at the debit: no money moved
    refused: Counter[str] = field(default_factory=Counter)  # command refusals by rule
    retries: int = 0  # repository attempts repeated after a conflict

    def merge(self, other: WorkloadReport) -> None:
        for name in ("opened", "closed", "deposits", "withdrawals", "transfers_completed",
                     "transfers_compensated", "transfers_refused", "retries"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.refused.update(other.refused)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accounts": len(self.accounts), "opened": self.opened, "closed": self.closed,
            "deposits": self.deposits, "withdrawals": self.withdrawals,
            "transfers_completed": self.transfers_completed,
            "transfers_compensated": self.transfers_compensated,
            "transfers_refused": self.transfers_refused, "refused": dict(self.refused), "retries": self.retries,
        }


class _Client:
    """One client thread: its own random stream, the shared accounts."""

    def __init__(self, store: Store, names: list[str], missing: list[str], seed: int, tag: str) -> None:
        self.accounts = Repository(store, Account, max_attempts=MAX_ATTEMPTS)
        self.transfers = TransferService(store, max_attempts=MAX_ATTEMPTS)
        self.names = names
        self.missing = missing
        self.rng = random.Random(seed)
        self.tag = tag
        self.report = WorkloadReport()
        self._count = 0

    def open(self, name: str) -> None:
        rng = self.rng
        currency = "USD" if rng.random() < 0.1 else "EUR"
        overdraft = 5_000 if rng.random() < 0.2 else 0
        max_balance = 20_000 if rng.random() < 0.15 else DEFAULT_MAX_BALANCE
        self.accounts.execute(name, lambda a: a.open(f"owner of {name}", currency, overdraft_limit=overdraft,
                                                     max_balance=max_balance))
        self.report.opened += 1
        if rng.random() < 0.1:
            self.accounts.execute(name, lambda a: a.close())
            self.report.closed += 1
        else:
            self._refusable(self._deposit, name, rng.randint(1_000, 30_000))

    def operate(self) -> None:
        rng, r = self.rng, self.rng.random()
        account = rng.choice(self.names)
        if r < 0.35:
            amount = rng.randint(50_000, 200_000) if rng.random() < 0.1 else rng.randint(100, 20_000)
            self._refusable(self._deposit, account, amount)
        elif r < 0.6:
            self._refusable(self._withdraw, account, rng.randint(100, 30_000))
        elif r < 0.97:
            pool = self.names + self.missing
            target = rng.choice([n for n in pool if n != account])
            self._refusable(self._transfer, account, target, rng.randint(100, 25_000))
        else:
            self._refusable(self._close, account)

    def _refusable(self, action: Any, *args: Any) -> None:
        try:
            action(*args)
        except InvariantViolation as exc:
            self.report.refused[exc.rule] += 1

    def _deposit(self, account: str, amount: int) -> None:
        self.accounts.execute(account, lambda a: a.deposit(amount))
        self.report.deposits += 1

    def _withdraw(self, account: str, amount: int) -> None:
        self.accounts.execute(account, lambda a: a.withdraw(amount))
        self.report.withdrawals += 1

    def _close(self, account: str) -> None:
        self.accounts.execute(account, lambda a: a.close())
        self.report.closed += 1

    def _transfer(self, source: str, target: str, amount: int) -> None:
        self._count += 1
        transfer = self.transfers.transfer(source, target, amount, transfer_id=f"{self.tag}-{self._count}")
        if transfer.status == "completed":
            self.report.transfers_completed += 1
        elif transfer.refunded:
            self.report.transfers_compensated += 1
        else:
            self.report.transfers_refused += 1

    def finish(self) -> WorkloadReport:
        self.report.retries = (self.accounts.retries + self.transfers.accounts.retries
                               + self.transfers.transfers.retries)
        return self.report


def run_workload(
    store: Store, accounts: int = 20, operations: int = 400, clients: int = 4, seed: int = 0, *, prefix: str = ""
) -> WorkloadReport:
    """Opens ``accounts`` accounts, then runs ``operations`` operations spread over
    ``clients`` threads sharing those accounts; returns what happened. Use a
    different ``prefix`` to run again on the same store."""
    names = [f"{ACCOUNT_PREFIX}{prefix}{i:04d}" for i in range(accounts)]
    missing = [f"{ACCOUNT_PREFIX}{prefix}missing-{i}" for i in range(max(1, accounts // 10))]
    workers = [_Client(store, names, missing, seed * 1_000 + i, f"{prefix}{seed}-{i}") for i in range(clients)]
    errors: list[BaseException] = []
    start = threading.Barrier(clients)

    def run(index: int, client: _Client) -> None:
        try:
            for name in names[index::clients]:
                client.open(name)
            start.wait(timeout=60)  # every account is open before anyone moves money
            for _ in range(operations // clients + (1 if index < operations % clients else 0)):
                client.operate()
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=run, args=(i, c), name=f"billing-client-{i}") for i, c in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:  # the first real error, not the broken barrier it caused in the others
        raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
    report = WorkloadReport(accounts=names)
    for client in workers:
        report.merge(client.finish())
    return report


class SteadyTraffic:
    """A trickle of operations on already-open accounts from a few client threads,
    until :meth:`stop`: keeps a demo's dashboard moving after the first burst."""

    def __init__(self, store: Store, accounts: list[str], clients: int = 2, rate: float = 20.0,
                 seed: int = 99) -> None:
        missing = [f"{ACCOUNT_PREFIX}missing-steady-{i}" for i in range(3)]
        self._clients = [_Client(store, accounts, missing, seed + i, f"steady-{seed}-{i}") for i in range(clients)]
        self._interval = clients / rate if rate > 0 else 1.0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(c,), name=f"billing-steady-{i}", daemon=True)
                         for i, c in enumerate(self._clients)]
        self.errors: list[BaseException] = []

    def _run(self, client: _Client) -> None:
        while not self._stop.wait(self._interval):
            try:
                client.operate()
            except Exception as exc:  # a demo's traffic must not die silently: keep the error
                self.errors.append(exc)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> WorkloadReport:
        """Stops the clients and returns what they did."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
        report = WorkloadReport()
        for client in self._clients:
            report.merge(client.finish())
        return report
