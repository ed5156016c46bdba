"""Billing: a reference domain on Stoic's aggregates and projections.

- :mod:`~stoic.examples.billing.domain`: the ``Account`` aggregate and its rules;
- :mod:`~stoic.examples.billing.transfers`: transfers between accounts as a process
  with compensation, resumable after a crash;
- :mod:`~stoic.examples.billing.projections`: read models (balances, history, daily
  totals) and a notifier calling a flaky simulated service;
- :mod:`~stoic.examples.billing.workload`: concurrent clients driving a realistic mix;
- :mod:`~stoic.examples.billing.app`: the ``stoic.App`` for ``stoic worker``.
"""

from stoic.examples.billing.domain import Account, expected_balance, expected_balances
from stoic.examples.billing.transfers import (
    StuckTransfer,
    Transfer,
    TransferService,
    continue_transfer,
    stuck_transfers,
)

__all__ = [
    "Account",
    "StuckTransfer",
    "Transfer",
    "TransferService",
    "continue_transfer",
    "expected_balance",
    "expected_balances",
    "stuck_transfers",
]
