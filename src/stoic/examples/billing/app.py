"""The billing application for ``stoic worker``.

``--app stoic.examples.billing.app:app`` runs the three read models;
``--app stoic.examples.billing.app:flaky_app`` adds the notifier, whose simulated
service fails at the rate ``BILLING_FAILURE_RATE`` (default 0.1) — to watch
retries, failure records and the circuit breaker in ``stoic status``.
"""

from __future__ import annotations

import os
from typing import Any

import stoic
from stoic.examples.billing.projections import (
    Balances,
    DailyTotals,
    FlakyNotifier,
    SimulatedService,
    TransactionHistory,
)

READ_MODELS = (Balances, TransactionHistory, DailyTotals)

app = stoic.App(projections=list(READ_MODELS), name="billing")


def make_app(
    failure_rate: float = 0.0, *, seed: int = 0, service: SimulatedService | None = None, **notifier: Any
) -> stoic.App:
    """The read models plus a FlakyNotifier whose service fails at ``failure_rate``
    (or the given ``service``); ``notifier`` passes failure settings
    (``retry_policy``, ``retry_schedule``, ``breaker_policy``, ``batch_size``)."""
    flaky = FlakyNotifier(service or SimulatedService(failure_rate, seed), **notifier)
    return stoic.App(projections=[*READ_MODELS, flaky], name="billing")


def flaky_app() -> stoic.App:
    """``make_app`` with the failure rate from ``BILLING_FAILURE_RATE``."""
    return make_app(float(os.environ.get("BILLING_FAILURE_RATE", "0.1")))
