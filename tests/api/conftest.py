"""Fixtures of the HTTP API suite.

``world``: a store (every backend, through the ``store`` fixture) holding the
events of :mod:`._support`, processed once by the app of :func:`._support.make_app`
(so there are retrying and dead failures), and a TestClient over the real app
with the admin token :data:`._support.TOKEN`. Makes ``tests.apps`` importable
however pytest is started.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import stoic  # noqa: E402

from ._support import Broken, World, append_world, make_app, make_client  # noqa: E402


@pytest.fixture
def world(store: stoic.Store) -> Iterator[World]:
    broken = Broken()
    app = make_app(broken)
    positions = append_world(store)
    stoic.Runner(store, app).run_until_caught_up(timeout=30)
    with make_client(store, app) as client:
        yield World(store, app, broken, client, positions)
