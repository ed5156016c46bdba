"""Billing: a reference domain on Stoic's aggregates and projections.

- :mod:`~examples.billing.domain`: the ``Account`` aggregate and its rules;
- :mod:`~examples.billing.transfers`: transfers between accounts as a process
  with compensation, resumable after a crash;
- :mod:`~examples.billing.projections`: read models (balances, history, daily
  totals) and a notifier calling a flaky simulated service;
- :mod:`~examples.billing.workload`: concurrent clients driving a realistic mix;
- :mod:`~examples.billing.app`: the ``stoic.App`` for ``stoic worker``.
"""

from examples.billing.domain import Account, expected_balance, expected_balances
from examples.billing.transfers import StuckTransfer, Transfer, TransferService, continue_transfer, stuck_transfers

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
