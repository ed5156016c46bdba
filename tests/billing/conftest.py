"""Makes ``stoic.examples.billing`` and ``tests.apps`` importable however pytest is
started (``pytest`` or ``python -m pytest``); subprocesses import them from the
repository root too."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
