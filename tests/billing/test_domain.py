"""The Account aggregate without a database: every rule refuses with nothing
recorded, transfer steps are idempotent, refunds are never refused, and the
fold used for reconciliation agrees with the aggregate."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stoic import InvariantViolation
from stoic.examples.billing.domain import DEFAULT_MAX_BALANCE, Account, expected_balance


def opened(overdraft_limit: int = 0, max_balance: int = DEFAULT_MAX_BALANCE, balance: int = 0) -> Account:
    account = Account("account-1")
    account.open("Ada", "EUR", overdraft_limit=overdraft_limit, max_balance=max_balance)
    if balance:
        account.deposit(balance)
    return account


def refused(account: Account, rule: str, action: str, *args: object, **kwargs: object) -> None:
    """Asserts the command is refused for ``rule`` and changes nothing."""
    before = (account.snapshot(), account.pending)
    with pytest.raises(InvariantViolation) as caught:
        getattr(account, action)(*args, **kwargs)
    assert caught.value.rule == rule, caught.value
    assert (caught.value.aggregate, caught.value.stream_id) == ("Account", "account-1")
    assert (account.snapshot(), account.pending) == before


def test_open_records_the_terms() -> None:
    account = opened(overdraft_limit=500, max_balance=10_000)
    assert (account.status, account.owner, account.currency, account.balance) == ("open", "Ada", "EUR", 0)
    (event,) = account.pending
    assert (event.type, dict(event.data)) == (
        "AccountOpened", {"owner": "Ada", "currency": "EUR", "overdraft_limit": 500, "max_balance": 10_000})


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"owner": " ", "currency": "EUR"}, "owner"),
        ({"owner": "Ada", "currency": "euro"}, "currency"),
        ({"owner": "Ada", "currency": "EUR", "overdraft_limit": -1}, "limits"),
        ({"owner": "Ada", "currency": "EUR", "max_balance": 0}, "limits"),
    ],
)
def test_open_refuses_bad_terms(kwargs: dict[str, object], rule: str) -> None:
    refused(Account("account-1"), rule, "open", **kwargs)


def test_an_account_opens_once() -> None:
    refused(opened(), "already_opened", "open", "Bob", "EUR")


def test_withdrawals_stop_at_the_overdraft_limit() -> None:
    plain = opened(balance=1_000)
    refused(plain, "min_balance", "withdraw", 1_001)
    plain.withdraw(1_000)
    assert plain.balance == 0
    overdrawn = opened(overdraft_limit=500, balance=1_000)
    overdrawn.withdraw(1_500)
    assert overdrawn.balance == -500
    refused(overdrawn, "min_balance", "withdraw", 1)


def test_deposits_stop_at_the_max_balance() -> None:
    account = opened(max_balance=10_000, balance=9_000)
    refused(account, "max_balance", "deposit", 1_001)
    account.deposit(1_000)
    assert account.balance == 10_000


@pytest.mark.parametrize("amount", [0, -5, 1.5, True, "10", 10**16])
def test_amounts_are_positive_integer_cents(amount: object) -> None:
    account = opened(balance=100)
    refused(account, "positive_amount", "deposit", amount)
    refused(account, "positive_amount", "withdraw", amount)


def test_a_new_or_closed_account_refuses_money() -> None:
    refused(Account("account-1"), "account_open", "deposit", 10)
    account = opened(balance=100)
    refused(account, "zero_balance", "close")
    account.withdraw(100)
    account.close()
    assert account.status == "closed"
    refused(account, "account_open", "deposit", 10)
    refused(account, "account_open", "withdraw", 10)
    refused(account, "account_open", "close")


def test_a_movement_in_another_currency_is_refused() -> None:
    refused(opened(balance=100), "currency", "deposit", 10, currency="USD")


def test_transfer_steps_are_applied_once_per_transfer() -> None:
    account = opened(balance=1_000)
    assert account.withdraw(300, transfer_id="t-1") is True
    assert account.withdraw(300, transfer_id="t-1") is False  # a repeat of the step: nothing recorded
    assert account.deposit(50, transfer_id="t-2") is True
    assert account.deposit(50, transfer_id="t-2") is False
    assert (account.balance, len(account.pending)) == (750, 4)
    assert account.transfers == {"t-1": {"debit": 300}, "t-2": {"credit": 50}}


def test_a_refund_must_match_a_debit_and_is_applied_once() -> None:
    account = opened(balance=1_000)
    refused(account, "refund_matches_debit", "refund", 300, "t-1", "target closed")
    account.withdraw(300, transfer_id="t-1")
    refused(account, "refund_matches_debit", "refund", 299, "t-1", "target closed")
    assert account.refund(300, "t-1", "target closed") is True
    assert account.refund(300, "t-1", "target closed") is False
    assert account.balance == 1_000
    assert dict(account.pending[-1].data) == {"amount": 300, "currency": "EUR", "transfer_id": "t-1",
                                              "reason": "target closed"}


def test_a_refund_is_never_refused_for_a_limit_or_a_closed_account() -> None:
    account = opened(max_balance=1_000, balance=1_000)
    account.withdraw(600, transfer_id="t-1")
    account.deposit(600)  # back at the max while the transfer is in flight
    account.refund(600, "t-1", "target over its max")
    assert account.balance == 1_600  # over the max: the money had to come back
    refused(account, "max_balance", "deposit", 1)
    account.withdraw(100)  # money may still leave; the headroom shrinks with it
    assert (account.balance, account.refund_headroom) == (1_500, 500)
    refused(account, "max_balance", "deposit", 1)
    account.withdraw(900)
    account.deposit(400)  # below the max again: ordinary rules
    refused(account, "max_balance", "deposit", 1)

    closing = opened(balance=300)
    closing.withdraw(300, transfer_id="t-2")
    closing.close()
    closing.refund(300, "t-2", "target missing")
    assert (closing.status, closing.balance) == ("closed", 300)


operations = st.lists(
    st.tuples(st.sampled_from(["deposit", "withdraw", "transfer_out", "refund"]), st.integers(1, 4_000)),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(operations, st.sampled_from([0, 1_000]), st.sampled_from([5_000, DEFAULT_MAX_BALANCE]))
def test_the_reconciliation_fold_equals_the_aggregate_and_rebuilding_equals_living(
    ops: list[tuple[str, int]], overdraft: int, max_balance: int
) -> None:
    account = opened(overdraft_limit=overdraft, max_balance=max_balance)
    debits: list[tuple[str, int]] = []
    for number, (action, amount) in enumerate(ops):
        try:
            if action == "transfer_out":
                account.withdraw(amount, transfer_id=f"t-{number}")
                debits.append((f"t-{number}", amount))
            elif action == "refund":
                if debits:
                    account.refund(debits[-1][1], debits.pop()[0], "failed")
            else:
                getattr(account, action)(amount)
        except InvariantViolation as exc:
            assert exc.rule in ("min_balance", "max_balance")
        assert account.balance >= -overdraft
    events = account.pending
    assert expected_balance(events) == account.balance
    rebuilt = Account.from_events("account-1", events)
    assert rebuilt.snapshot() == {**account.snapshot(), "version": len(events)}
