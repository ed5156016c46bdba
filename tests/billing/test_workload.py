"""A concurrent workload, then the projections: on every backend the Balances
read model equals the fold of the account streams, every movement is in the
history once, the daily totals add up, and money is conserved (transfers and
their compensations net to zero)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import stoic
from stoic.examples.billing.app import app
from stoic.examples.billing.domain import MONEY_EVENTS, Account, expected_balances, signed_amount
from stoic.examples.billing.transfers import stuck_transfers
from stoic.examples.billing.workload import run_workload


def test_after_a_workload_the_read_models_equal_the_fold_and_the_books_balance(store: stoic.Store) -> None:
    report = run_workload(store, accounts=16, operations=240, clients=4, seed=7)
    assert report.opened == 16
    assert report.deposits and report.withdrawals and report.transfers_completed
    assert report.transfers_compensated and report.transfers_refused  # the mix has every outcome
    assert report.refused["min_balance"] and report.refused["max_balance"]
    head = store.head()
    assert stoic.Runner(store, app).run_until_caught_up() == {p.name: head for p in app.projections}

    events = list(store.iter_all())
    accounts = {e.stream_id for e in events if e.type == "AccountOpened"}
    assert accounts == set(report.accounts)  # missing accounts were never created by a failed credit

    # Balances == the fold of every account stream (and the aggregate's own state)
    model = {a: (int(b), status, owner, currency) for a, b, status, owner, currency in store.query(
        "SELECT account, balance, status, owner, currency FROM billing_balances")}
    folded = {}
    for account in accounts:
        aggregate = Account.from_events(account, store.read_stream(account))
        folded[account] = (aggregate.balance, aggregate.status, aggregate.owner, aggregate.currency)
    assert model == folded
    assert {a: b for a, (b, *_) in model.items()} == expected_balances(events)

    # the history holds each money movement once, by position
    movements = [e for e in events if e.type in MONEY_EVENTS]
    history = store.query("SELECT position, account, type, amount, transfer_id FROM billing_transactions "
                          "ORDER BY position")
    assert [(int(p), a, t, int(m), tid) for p, a, t, m, tid in history] == [
        (e.position, e.stream_id, e.type, e.data["amount"], e.data.get("transfer_id")) for e in movements]

    # the accounting equation, per currency: balances = deposits + refunds - withdrawals
    totals = {(c, int(d), int(w), int(r), int(n)) for c, d, w, r, n in store.query(
        "SELECT currency, SUM(deposits), SUM(withdrawals), SUM(refunds), SUM(count) FROM billing_daily_totals "
        "GROUP BY currency")}
    for currency, deposits, withdrawals, refunds, count in totals:
        in_currency = [b for b, _, _, c in model.values() if c == currency]
        assert sum(in_currency) == deposits + refunds - withdrawals
        assert count == sum(1 for e in movements if e.data["currency"] == currency)

    # money is conserved: only deposits and withdrawals outside transfers change the total
    outside = sum(signed_amount(e) for e in movements if "transfer_id" not in e.data)
    assert sum(b for b, *_ in model.values()) == outside

    # every transfer finished: completed, refused at the debit, or compensated
    outcomes = Counter(e.type for e in events if e.type in ("TransferCompleted", "TransferFailed"))
    requested = sum(1 for e in events if e.type == "TransferRequested")
    assert requested == outcomes["TransferCompleted"] + outcomes["TransferFailed"]
    assert outcomes["TransferCompleted"] == report.transfers_completed
    assert outcomes["TransferFailed"] == report.transfers_compensated + report.transfers_refused
    assert sum(1 for e in events if e.type == "TransferRefunded") == report.transfers_compensated
    assert stuck_transfers(store, timedelta(0)) == []


def test_a_second_workload_on_the_same_store_continues_the_read_models(store: stoic.Store) -> None:
    runner = stoic.Runner(store, app)
    run_workload(store, accounts=6, operations=60, clients=2, seed=1, prefix="x")
    runner.run_until_caught_up()
    run_workload(store, accounts=6, operations=60, clients=3, seed=2, prefix="y")
    runner.run_until_caught_up()
    model = {a: int(b) for a, b in store.query("SELECT account, balance FROM billing_balances")}
    assert model == expected_balances(store.iter_all())
    assert len(model) == 12
