"""Transfers on every backend: completion, refusal at the debit, compensation
when the credit fails, crashes between steps (a hook that raises, and a real
process killed with SIGKILL) that leave the transfer resumable and listed as
stuck, and two processes driving one transfer that never do a step twice."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from tests.apps import ROOT, subprocess_env

import stoic
from stoic import InvariantViolation, Repository
from stoic.examples.billing.domain import DEFAULT_MAX_BALANCE, Account, expected_balance
from stoic.examples.billing.transfers import (
    StepHook,
    Transfer,
    TransferService,
    continue_transfer,
    stuck_transfers,
    transfer_stream,
)


class Crash(Exception):
    """A process dying between two steps (raised by a step hook)."""


def open_account(store: stoic.Store, name: str, balance: int = 0, currency: str = "EUR", **limits: int) -> None:
    repo = Repository(store, Account)
    repo.execute(name, lambda a: a.open(f"owner of {name}", currency, **limits))
    if balance:
        repo.execute(name, lambda a: a.deposit(balance))


def balance(store: stoic.Store, name: str) -> int:
    """The fold of the account's stream (and the aggregate agrees)."""
    events = store.read_stream(name)
    assert Account.from_events(name, events).balance == expected_balance(events)
    return expected_balance(events)


def transfer_events(store: stoic.Store, tid: str) -> list[str]:
    return [e.type for e in store.read_stream(transfer_stream(tid))]


def crash_after(status: str) -> StepHook:
    def hook(transfer_id: str, reached: str) -> None:
        if reached == status:
            raise Crash(f"killed after {status}")

    return hook


@pytest.fixture
def accounts(store: stoic.Store) -> stoic.Store:
    open_account(store, "account-a", 10_000)
    open_account(store, "account-b", 500)
    return store


def test_a_transfer_completes(accounts: stoic.Store) -> None:
    store = accounts
    transfer = TransferService(store).transfer("account-a", "account-b", 2_500, transfer_id="t1")
    assert (transfer.status, transfer.reason) == ("completed", None)
    assert (balance(store, "account-a"), balance(store, "account-b")) == (7_500, 3_000)
    assert transfer_events(store, "t1") == ["TransferRequested", "TransferDebited", "TransferCompleted"]
    withdrawn = store.read_stream("account-a")[-1]
    deposited = store.read_stream("account-b")[-1]
    assert (withdrawn.type, withdrawn.data) == ("Withdrawn", {"amount": 2_500, "currency": "EUR", "transfer_id": "t1"})
    assert (deposited.type, deposited.data["transfer_id"]) == ("Deposited", "t1")
    assert {e.metadata["correlation_id"] for e in (withdrawn, deposited)} == {"t1"}
    # each step is one transaction over two streams: adjacent positions
    debited, completed = store.read_stream(transfer_stream("t1"))[1:]
    assert (withdrawn.position + 1, deposited.position + 1) == (debited.position, completed.position)
    assert stuck_transfers(store, timedelta(0)) == []


def test_a_transfer_the_source_cannot_pay_fails_at_the_debit_and_moves_nothing(accounts: stoic.Store) -> None:
    store = accounts
    transfer = TransferService(store).transfer("account-b", "account-a", 501, transfer_id="t1")
    assert (transfer.status, transfer.stage, transfer.refunded) == ("failed", "debit", False)
    assert transfer.reason is not None and transfer.reason.startswith("min_balance")
    assert (balance(store, "account-a"), balance(store, "account-b")) == (10_000, 500)
    assert transfer_events(store, "t1") == ["TransferRequested", "TransferFailed"]


@pytest.mark.parametrize("why", ["closed", "max_balance", "missing", "currency"])
def test_a_transfer_whose_credit_fails_is_compensated(accounts: stoic.Store, why: str) -> None:
    store = accounts
    repo = Repository(store, Account)
    target = {"closed": "account-c", "max_balance": "account-c", "missing": "account-nobody",
              "currency": "account-c"}[why]
    if why == "closed":
        open_account(store, target)
        repo.execute(target, lambda a: a.close())
    elif why == "max_balance":
        open_account(store, target, 900, max_balance=1_000)
    elif why == "currency":
        open_account(store, target, currency="USD")
    transfer = TransferService(store).transfer("account-a", target, 2_000, transfer_id="t1")
    rule = {"closed": "account_open", "max_balance": "max_balance", "missing": "account_open",
            "currency": "currency"}[why]
    assert (transfer.status, transfer.stage, transfer.refunded) == ("failed", "credit", True)
    assert transfer.reason is not None and transfer.reason.startswith(rule)
    assert balance(store, "account-a") == 10_000  # refunded
    assert [(e.type, e.data["amount"]) for e in store.read_stream("account-a")[-2:]] == [
        ("Withdrawn", 2_000), ("TransferRefunded", 2_000)]
    assert transfer_events(store, "t1") == ["TransferRequested", "TransferDebited", "TransferFailed"]
    assert store.stream_version("account-nobody") == 0  # a missing account is not created
    if why == "max_balance":
        assert balance(store, target) == 900
    failed = Repository(store, Transfer).load(transfer_stream("t1"))
    assert (failed.status, failed.reason, failed.refunded) == ("failed", transfer.reason, True)


def test_a_bad_request_is_refused_and_a_repeated_one_is_a_no_op(accounts: stoic.Store) -> None:
    store = accounts
    service = TransferService(store)
    for source, target, amount, rule in [("account-a", "account-a", 5, "accounts"),
                                         ("account-a", "account-b", 0, "positive_amount")]:
        with pytest.raises(InvariantViolation) as caught:
            service.transfer(source, target, amount, transfer_id="bad")
        assert caught.value.rule == rule
    assert store.stream_version(transfer_stream("bad")) == 0
    service.transfer("account-a", "account-b", 100, transfer_id="t1")
    head = store.head()
    again = service.transfer("account-a", "account-b", 100, transfer_id="t1")
    assert again.status == "completed" and store.head() == head
    with pytest.raises(InvariantViolation, match="same_request"):
        service.transfer("account-a", "account-b", 999, transfer_id="t1")
    with pytest.raises(InvariantViolation, match="unknown_transfer"):
        service.resume("never")


@pytest.mark.parametrize("crash_at", ["requested", "debited"])
def test_a_crash_between_steps_leaves_a_stuck_transfer_that_resume_completes(
    accounts: stoic.Store, crash_at: str
) -> None:
    store = accounts
    with pytest.raises(Crash):
        TransferService(store, after_step=crash_after(crash_at)).transfer(
            "account-a", "account-b", 1_000, transfer_id="t1")
    debited = 1_000 if crash_at == "debited" else 0
    assert (balance(store, "account-a"), balance(store, "account-b")) == (10_000 - debited, 500)

    (stuck,) = stuck_transfers(store, older_than=timedelta(0))
    assert (stuck.transfer_id, stuck.status, stuck.source, stuck.target, stuck.amount) == (
        "t1", crash_at, "account-a", "account-b", 1_000)
    assert stuck.requested_at <= stuck.last_step_at
    assert stuck_transfers(store, older_than=timedelta(minutes=5)) == []  # not pending long enough yet

    done = continue_transfer(store, "t1")
    assert done.status == "completed"
    assert (balance(store, "account-a"), balance(store, "account-b")) == (9_000, 1_500)
    assert stuck_transfers(store, timedelta(0)) == []
    assert continue_transfer(store, "t1").status == "completed"  # resuming a finished transfer does nothing
    assert transfer_events(store, "t1") == ["TransferRequested", "TransferDebited", "TransferCompleted"]


def test_a_crash_after_the_debit_of_a_failing_transfer_is_compensated_on_resume(accounts: stoic.Store) -> None:
    store = accounts
    with pytest.raises(Crash):
        TransferService(store, after_step=crash_after("debited")).transfer(
            "account-a", "account-gone", 1_000, transfer_id="t1")
    assert balance(store, "account-a") == 9_000
    (resumed,) = TransferService(store).resume_stuck(timedelta(0))
    assert (resumed.status, resumed.refunded) == ("failed", True)
    assert balance(store, "account-a") == 10_000


def resume_twice_at_once(store: stoic.Store, tid: str) -> list[str]:
    """Two threads (think: the client and a sweeper) resume one transfer at the same moment."""
    go = threading.Barrier(2, timeout=10)
    results: list[str] = []
    errors: list[BaseException] = []

    def resume() -> None:
        try:
            go.wait()
            results.append(TransferService(store).resume(tid).status)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    return results


def test_two_processes_resuming_one_transfer_do_each_step_once(accounts: stoic.Store) -> None:
    store = accounts
    for n in range(3):
        tid = f"t{n}"
        with pytest.raises(Crash):
            TransferService(store, after_step=crash_after("requested")).transfer(
                "account-a", "account-b", 100, transfer_id=tid)
        assert resume_twice_at_once(store, tid) == ["completed", "completed"]
        assert transfer_events(store, tid) == ["TransferRequested", "TransferDebited", "TransferCompleted"]
    assert (balance(store, "account-a"), balance(store, "account-b")) == (9_700, 800)
    moved = [e for e in store.read_stream("account-a") if e.data.get("transfer_id")]
    assert len(moved) == 3


CRASHER = """
import sys, time
import stoic
from stoic.examples.billing.transfers import TransferService

def hook(transfer_id, status):
    if status == "debited":
        print("DEBITED", flush=True)
        time.sleep(60)  # SIGKILLed here, between the debit and the credit

store = stoic.connect(sys.argv[1])
TransferService(store, after_step=hook).transfer("account-a", "account-b", 4_000, transfer_id="killed")
"""


def test_a_process_killed_between_debit_and_credit_leaves_a_transfer_that_resume_completes(
    shared_url: str,
) -> None:
    with stoic.connect(shared_url) as store:
        open_account(store, "account-a", 10_000)
        open_account(store, "account-b", 0, max_balance=DEFAULT_MAX_BALANCE)
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, shared_url], cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == b"DEBITED", (line, proc.stderr.read() if proc.stderr else b"")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    with stoic.connect(shared_url) as store:
        assert (balance(store, "account-a"), balance(store, "account-b")) == (6_000, 0)
        (stuck,) = stuck_transfers(store, timedelta(0))
        assert (stuck.transfer_id, stuck.status) == ("killed", "debited")
        assert continue_transfer(store, "killed").status == "completed"
        assert (balance(store, "account-a"), balance(store, "account-b")) == (6_000, 4_000)
        assert stuck_transfers(store, timedelta(0)) == []
