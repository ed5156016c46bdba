"""stoic.failures.classify for driver errors: an error in the SQL itself is
permanent; a busy or locked database is transient."""

from __future__ import annotations

import sqlite3

import pytest

import stoic
from stoic.failures import Kind, classify


def real_sqlite_error(sql: str) -> sqlite3.OperationalError:
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(sql)
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError(f"{sql!r} did not fail")


@pytest.mark.parametrize("sql", ["INSERT INTO no_such_table VALUES (1)", "SELEC 1", "SELECT no_such_column"])
def test_sqlite_sql_errors_are_permanent(sql: str) -> None:
    assert classify(real_sqlite_error(sql)) is Kind.PERMANENT


def test_a_locked_sqlite_database_is_transient(tmp_path: object) -> None:
    path = f"{tmp_path}/locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        holder.execute("CREATE TABLE t (x INTEGER)")
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as info:
            waiter.execute("BEGIN IMMEDIATE")
    finally:
        holder.close()
        waiter.close()
    assert "locked" in str(info.value)
    assert classify(info.value) is Kind.TRANSIENT


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (stoic.LockNotAvailable("x"), Kind.TRANSIENT),
        (stoic.StoreUnavailable("x"), Kind.TRANSIENT),
        (TimeoutError(), Kind.TRANSIENT),
        (ConnectionResetError(), Kind.TRANSIENT),
        (stoic.InvalidEvent("x"), Kind.PERMANENT),
        (ValueError("x"), Kind.PERMANENT),
        (KeyError("x"), Kind.PERMANENT),
    ],
)
def test_builtin_classification(exc: BaseException, kind: Kind) -> None:
    assert classify(exc) is kind
