"""Migrations: applying them all gives exactly schema.sql; re-opening applies
nothing; a newer schema is refused; and several processes starting on one fresh
database at the same moment all succeed (one of them migrates)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

import stoic
from stoic.stores._common import load_migrations, split_statements

BACKEND_PACKAGE = {"sqlite": "stoic.stores.sqlite", "postgresql": "stoic.stores.postgres"}
Query = Callable[[str], list[tuple[Any, ...]]]


def schema_sql(dialect: str) -> str:
    return resources.files(BACKEND_PACKAGE[dialect]).joinpath("schema.sql").read_text()


def normalise(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip()


# -- SQLite -------------------------------------------------------------------------------


def sqlite_schema(q: Query) -> dict[str, Any]:
    """Tables (columns, keys, foreign keys), indexes (columns, uniqueness, partial
    WHERE) and triggers/views, read through PRAGMAs so that comments and
    whitespace of the CREATE statements do not matter."""
    described: dict[str, Any] = {}
    objects = q("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
    for kind, name, table, sql in sorted(objects):
        if kind == "table":
            described[f"table {name}"] = {
                "columns": [tuple(r[1:6]) for r in q(f"PRAGMA table_xinfo({name})")],
                "foreign_keys": sorted(tuple(r[2:]) for r in q(f"PRAGMA foreign_key_list({name})")),
                "indexes": sorted(
                    (r[1], r[2], r[3], r[4], tuple(c[2] for c in q(f"PRAGMA index_info({r[1]})")))
                    for r in q(f"PRAGMA index_list({name})")
                ),
            }
        elif kind == "index":
            where = normalise(sql.split(" WHERE ", 1)[1]) if sql and " WHERE " in sql else None
            described[f"index {name}"] = (table, where)
        else:
            described[f"{kind} {name}"] = (table, normalise(sql or ""))
    return described


@pytest.mark.parametrize("backend", ["sqlite-memory", "sqlite-file"])
def test_sqlite_migrations_give_schema_sql(backend: str, make_url: Callable[[str], str]) -> None:
    import sqlite3

    store = stoic.connect(make_url(backend))
    try:
        migrated = sqlite_schema(lambda sql: store.query(sql))
        applied = store.query("SELECT version, name FROM stoic_schema_migrations ORDER BY version")
        version = store.schema_version()  # type: ignore[attr-defined]
    finally:
        store.close()
    reference = sqlite3.connect(":memory:")
    try:
        reference.executescript(schema_sql("sqlite"))
        expected = sqlite_schema(lambda sql: reference.execute(sql).fetchall())
    finally:
        reference.close()

    assert migrated == expected
    assert "table stoic_events" in migrated and "table stoic_schema_migrations" in migrated
    migrations = load_migrations("stoic.stores.sqlite")
    assert applied == [(m.version, m.name) for m in migrations]
    assert version == len(migrations)


# -- PostgreSQL ---------------------------------------------------------------------------


def pg_schema(conn: Any, schema: str) -> dict[str, Any]:
    """Columns, constraints, indexes, triggers and functions of one schema, with
    the schema's own name taken out of their definitions."""

    def rows(sql: str) -> list[tuple[Any, ...]]:
        found = conn.execute(sql, (schema,)).fetchall()
        return [
            tuple(str(v).replace(f"{schema}.", "<schema>.") if isinstance(v, str) else v for v in r)
            for r in found
        ]

    return {
        "columns": rows(
            "SELECT table_name, ordinal_position, column_name, data_type, udt_name, is_nullable, "
            "column_default, character_maximum_length, is_identity, identity_generation "
            "FROM information_schema.columns WHERE table_schema = %s ORDER BY table_name, ordinal_position"
        ),
        "constraints": rows(
            "SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid) FROM pg_constraint k "
            "JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s ORDER BY 1, 2"
        ),
        "indexes": rows(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %s ORDER BY 1, 2"
        ),
        "sequences": rows(
            "SELECT sequence_name, data_type, start_value, increment FROM information_schema.sequences "
            "WHERE sequence_schema = %s ORDER BY 1"
        ),
        "triggers": rows(
            "SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND NOT t.tgisinternal ORDER BY 1, 2"
        ),
        "functions": rows(
            "SELECT p.proname, pg_get_function_identity_arguments(p.oid), md5(p.prosrc) FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s ORDER BY 1, 2"
        ),
        "tables": rows(
            "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = %s ORDER BY 1"
        ),
    }


def schema_of(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))["schema"]


def test_postgres_migrations_give_schema_sql(make_url: Callable[[str], str]) -> None:
    import psycopg
    from psycopg import sql

    migrated_url, reference_url = make_url("postgres"), make_url("postgres")
    store = stoic.connect(migrated_url)
    try:
        applied = store.query("SELECT version, name FROM stoic_schema_migrations ORDER BY version")
        version = store.schema_version()  # type: ignore[attr-defined]
    finally:
        store.close()
    migrated_schema, reference_schema = schema_of(migrated_url), schema_of(reference_url)
    conninfo = migrated_url.split("?", 1)[0]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(reference_schema)))
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(reference_schema)))
        for statement in split_statements(schema_sql("postgresql")):
            conn.execute(statement)  # type: ignore[call-overload]
        conn.execute("SET search_path TO public")
        migrated = pg_schema(conn, migrated_schema)
        expected = pg_schema(conn, reference_schema)

    for part in expected:
        assert migrated[part] == expected[part], part
    assert ("stoic_events", "BASE TABLE") in migrated["tables"]
    migrations = load_migrations("stoic.stores.postgres")
    assert applied == [(m.version, m.name) for m in migrations]
    assert version == len(migrations)


def test_every_backend_has_the_same_tables() -> None:
    def tables(dialect: str) -> set[str]:
        return set(re.findall(r"CREATE TABLE (\w+)", schema_sql(dialect), flags=re.IGNORECASE))

    assert tables("sqlite") == tables("postgresql")
    assert [m.name for m in load_migrations("stoic.stores.sqlite")] == [
        m.name for m in load_migrations("stoic.stores.postgres")
    ]


# -- re-opening and versions --------------------------------------------------------------


def test_reopening_applies_nothing_and_keeps_the_data(shared_url: str) -> None:
    first = stoic.connect(shared_url)
    first.append("acc", [stoic.NewEvent("Opened")])
    applied = first.query("SELECT version, name FROM stoic_schema_migrations ORDER BY version")
    first.close()

    second = stoic.connect(shared_url)
    try:
        assert second.query("SELECT version, name FROM stoic_schema_migrations ORDER BY version") == applied
        assert [e.type for e in second.read_all()] == ["Opened"]
    finally:
        second.close()


def test_a_newer_schema_is_refused(shared_url: str) -> None:
    store = stoic.connect(shared_url)
    store.query(
        "INSERT INTO stoic_schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
        (99, "from_the_future", 0 if store.dialect == "sqlite" else "2030-01-01T00:00:00Z"),
    )
    store.close()

    with pytest.raises(stoic.SchemaError) as info:
        stoic.connect(shared_url)
    assert "99" in str(info.value)
    assert isinstance(info.value, stoic.PermanentError)


# -- several processes at once ---------------------------------------------------------------

STARTER = textwrap.dedent(
    """
    import sys
    import stoic

    print("ready", flush=True)
    sys.stdin.readline()  # the gate: every process starts connecting at once
    store = stoic.connect(sys.argv[1])
    store.append("starter-" + sys.argv[2], [stoic.NewEvent("Started")])
    print(store.schema_version(), flush=True)
    store.close()
    """
)


def test_processes_starting_together_on_a_fresh_database_all_succeed(shared_url: str) -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, shared_url, str(i)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=60) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()

    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
    store = stoic.connect(shared_url)
    try:
        migrations = store.query("SELECT version FROM stoic_schema_migrations ORDER BY version")
        assert [v for (v,) in migrations] == list(range(1, store.schema_version() + 1))  # type: ignore[attr-defined]
        assert {out.strip() for out, _ in outputs} == {str(store.schema_version())}  # type: ignore[attr-defined]
        assert sorted(e.stream_id for e in store.read_all()) == ["starter-0", "starter-1", "starter-2"]
        assert [e.position for e in store.read_all()] == [1, 2, 3]
    finally:
        store.close()
