"""The public API is exactly what ``stoic.__all__`` lists (httpx test_exported_members).
Changing it is a decision: update EXPECTED here in the same change."""

from __future__ import annotations

import subprocess
import sys

import stoic

EXPECTED = [
    "ALL",
    "ANY",
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
    "NO_STREAM",
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
    "applies",
    "command",
    "connect",
    "handles",
    "handles_all",
    "load_app",
    "__version__",
]


def test_all_is_exactly_the_expected_list() -> None:
    assert sorted(stoic.__all__) == sorted(EXPECTED)
    assert len(stoic.__all__) == len(set(stoic.__all__))


def test_every_exported_name_exists() -> None:
    for name in stoic.__all__:
        assert getattr(stoic, name, None) is not None, name


def test_exported_objects_come_from_stoic() -> None:
    for name in stoic.__all__:
        member = getattr(stoic, name)
        module = getattr(member, "__module__", None)
        if module is not None and callable(member):
            assert module.startswith("stoic"), (name, module)


def test_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from stoic import *", namespace)
    assert {k for k in namespace if k != "__builtins__"} == set(EXPECTED)


def test_import_stoic_needs_no_optional_driver() -> None:
    # psycopg is an optional extra: ``import stoic`` must work without it.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('psycopg', 'psycopg_pool'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import stoic\n"
        "s = stoic.connect('sqlite://:memory:')\n"
        "s.append('a', [stoic.NewEvent('E')])\n"
        "print(s.head())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
