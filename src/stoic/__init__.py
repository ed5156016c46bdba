"""Stoic: event processing that never fails silently.

An event store with a gap-free global order, and projections whose checkpoint
moves in the same transaction as their read model, on SQLite (embedded) or
PostgreSQL (several workers on several machines).
"""

from stoic.aggregate import Aggregate, Repository, applies, command
from stoic.errors import (
    ActionRefused,
    CircuitOpen,
    ConcurrencyError,
    ConfigurationError,
    DuplicateEventId,
    EventTooLarge,
    FailureNotFound,
    InvalidArgument,
    InvalidEvent,
    InvariantViolation,
    LeaseLost,
    LockNotAvailable,
    OperationTimeout,
    PermanentError,
    SchemaError,
    StoicError,
    StoreUnavailable,
    TransientError,
    UnknownProjection,
)
from stoic.events import ANY, NO_STREAM, AppendResult, NewEvent, RecordedEvent
from stoic.failures import BreakerPolicy, Classifier, Kind, OnError, RetryPolicy, RetrySchedule
from stoic.operations import Operations
from stoic.projection import ALL, App, Projection, handles, handles_all, load_app
from stoic.reconcile import CheckResult, Mismatch, ReconcileReport
from stoic.runner import Runner
from stoic.store import Store, Transaction, connect

__version__ = "0.1.0"

__all__ = [
    "ALL",
    "ANY",
    "NO_STREAM",
    "ActionRefused",
    "Aggregate",
    "App",
    "AppendResult",
    "BreakerPolicy",
    "CheckResult",
    "CircuitOpen",
    "Classifier",
    "ConcurrencyError",
    "ConfigurationError",
    "DuplicateEventId",
    "EventTooLarge",
    "FailureNotFound",
    "InvalidArgument",
    "InvalidEvent",
    "InvariantViolation",
    "Kind",
    "LeaseLost",
    "LockNotAvailable",
    "Mismatch",
    "NewEvent",
    "OnError",
    "OperationTimeout",
    "Operations",
    "PermanentError",
    "Projection",
    "ReconcileReport",
    "RecordedEvent",
    "Repository",
    "RetryPolicy",
    "RetrySchedule",
    "Runner",
    "SchemaError",
    "StoicError",
    "Store",
    "StoreUnavailable",
    "Transaction",
    "TransientError",
    "UnknownProjection",
    "__version__",
    "applies",
    "command",
    "connect",
    "handles",
    "handles_all",
    "load_app",
]
