"""stoic.stores.postgres.store.qmark_to_pyformat: handlers write ``?`` on every
backend; for psycopg a ``?`` outside quotes and comments becomes ``%s`` and every
``%`` is doubled (psycopg parses ``%`` everywhere once parameters are passed)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stoic.stores.postgres.store import qmark_to_pyformat


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT 1", "SELECT 1"),
        ("SELECT ?", "SELECT %s"),
        ("INSERT INTO t VALUES (?, ?, ?)", "INSERT INTO t VALUES (%s, %s, %s)"),
        ("SELECT * FROM t WHERE a=? AND b=?", "SELECT * FROM t WHERE a=%s AND b=%s"),
        # a ? inside single quotes, with '' escapes, stays a literal
        ("SELECT '?' , ?", "SELECT '?' , %s"),
        ("SELECT 'it''s ?' || ?", "SELECT 'it''s ?' || %s"),
        ("SELECT '' , ?", "SELECT '' , %s"),
        # ... and inside double-quoted identifiers
        ('SELECT "odd?col" FROM t WHERE x = ?', 'SELECT "odd?col" FROM t WHERE x = %s'),
        ('SELECT "a""?b" , ?', 'SELECT "a""?b" , %s'),
        # ... and inside -- comments, up to the end of the line
        ("SELECT ? -- why? because\n, ?", "SELECT %s -- why? because\n, %s"),
        ("SELECT 1 -- trailing ?", "SELECT 1 -- trailing ?"),
        # every % is doubled: operators, and inside quotes and comments too
        ("SELECT ? % 2", "SELECT %s %% 2"),
        ("SELECT '50%' , ?", "SELECT '50%%' , %s"),
        ("SELECT ? -- 100% sure\n", "SELECT %s -- 100%% sure\n"),
        ("SELECT x FROM t WHERE y LIKE '%?%' AND z = ?", "SELECT x FROM t WHERE y LIKE '%%?%%' AND z = %s"),
        ("SELECT '%s' , ?", "SELECT '%%s' , %s"),
        ("", ""),
    ],
)
def test_rewrites(query: str, expected: str) -> None:
    assert qmark_to_pyformat(query) == expected


def test_the_result_is_cached_and_stable() -> None:
    query = "SELECT ? FROM cached_query_test WHERE x = '?'"
    assert qmark_to_pyformat(query) is qmark_to_pyformat(query)


def undo(converted: str) -> str:
    """Reads the output back: every % starts a two-character token (%% or %s)."""
    return re.sub(r"%%|%s", lambda m: "%" if m.group(0) == "%%" else "?", converted)


sql_text = st.text(alphabet="ab ?%'\"-\n,()=", max_size=40)


@given(sql_text)
def test_the_rewrite_only_touches_placeholders_and_percent_signs(query: str) -> None:
    converted = qmark_to_pyformat(query)
    # No lone % is left for psycopg to misread ...
    assert re.fullmatch(r"(?:[^%]|%%|%s)*", converted)
    # ... and reading it back gives the query again: nothing else changed.
    assert undo(converted) == query


@given(st.text(alphabet="ab ,=()", max_size=30))
def test_without_quotes_or_comments_every_question_mark_is_a_placeholder(query: str) -> None:
    with_marks = query.replace("a", "?")
    assert qmark_to_pyformat(with_marks) == with_marks.replace("?", "%s")
