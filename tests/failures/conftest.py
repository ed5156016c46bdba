"""Makes ``tests.apps`` importable however pytest is started (``pytest`` or
``python -m pytest``): worker subprocesses import it from the repository root too.
Resets the failure suite's module-level toggles before every test."""

import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ._support import Switch  # noqa: E402


@pytest.fixture(autouse=True)
def _reset_switches() -> None:
    Switch.reset_all()

