"""The ``stoic`` command line: a thin shell over the core.

Every command calls one core operation and formats its result; errors reach
the user as one clear line and a non-zero exit code (see ``common``).
"""

from __future__ import annotations

import sys

from stoic.cli import act, inspect, reconcile, run  # noqa: F401  (they register their commands)
from stoic.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``stoic`` command."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
