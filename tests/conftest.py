"""Shared fixtures: a fresh store per test on every backend.

PostgreSQL tests get their own schema (created by the store, dropped after).
With CI=true a missing PostgreSQL fails the tests instead of skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import stoic

PG_URL = os.environ.get("STOIC_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite-memory", "sqlite-file", "postgres"]
FILE_BACKENDS = ["sqlite-file", "postgres"]

_pg_checked: list[str | None] = []


def pg_unavailable() -> str | None:
    """Returns why PostgreSQL cannot be used, or None when it can (checked once)."""
    if not _pg_checked:
        try:
            import psycopg

            with psycopg.connect(PG_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _pg_checked.append(None)
        except Exception as exc:  # any failure means: no server for these tests
            _pg_checked.append(f"PostgreSQL at {PG_URL} is not available: {exc}")
    return _pg_checked[0]


def require_postgres() -> None:
    """Skips (or, with CI=true, fails) the calling test when PostgreSQL is down."""
    reason = pg_unavailable()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def new_pg_url() -> str:
    """Returns a URL naming a fresh, unused schema."""
    return f"{PG_URL}?schema=t_{uuid.uuid4().hex[:12]}"


def drop_pg_schema(url: str) -> None:
    import psycopg
    from psycopg import sql

    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def make_url(tmp_path: Path) -> Iterator[object]:
    """A factory: ``make_url(backend)`` returns a fresh database URL for that backend."""
    created: list[str] = []

    def make(backend: str) -> str:
        if backend == "sqlite-memory":
            return "sqlite://:memory:"
        if backend == "sqlite-file":
            return f"sqlite:///{tmp_path / f'stoic-{uuid.uuid4().hex[:8]}.db'}"
        if backend == "postgres":
            require_postgres()
            url = new_pg_url()
            created.append(url)
            return url
        raise ValueError(backend)

    yield make
    for url in created:
        drop_pg_schema(url)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(backend: str, make_url) -> Iterator[stoic.Store]:  # type: ignore[no-untyped-def]
    """A fresh store on each backend: SQLite in memory, SQLite file, PostgreSQL."""
    s = stoic.connect(make_url(backend))
    yield s
    s.close()


@pytest.fixture(params=FILE_BACKENDS)
def shared_url(request: pytest.FixtureRequest, make_url) -> str:  # type: ignore[no-untyped-def]
    """A fresh database URL that several processes can share (SQLite file, PostgreSQL)."""
    return str(make_url(request.param))
