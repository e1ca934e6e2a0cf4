"""Splitting an SQL file into statements: dollar quotes, line numbers, unterminated strings, psql meta-commands.
Pure logic (the lexical limits are in test_input_bounds.py)."""

from __future__ import annotations

import pytest

from shadow.errors import SqlError
from shadow.sqlsplit import split_sql


def test_split_sql_keeps_dollar_quoted_bodies_and_line_numbers():
    src = (
        "-- header\nCREATE TABLE a (x int);\n\n"
        "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\n"
        "INSERT INTO a VALUES (';');\n"
        "SELECT 'no trailing semicolon'"
    )
    statements = split_sql(src, "m.sql")
    assert [s.line for s in statements] == [2, 4, 5, 6]
    assert statements[1].text.endswith("LANGUAGE sql")
    assert "SELECT 1;" in statements[1].text
    assert statements[2].text == "INSERT INTO a VALUES (';')"


def test_split_sql_reports_unterminated_string_with_file():
    with pytest.raises(SqlError) as err:
        split_sql("SELECT 1;\nSELECT 'oops;\n", "bad.sql")
    assert "bad.sql" in str(err.value)


def test_split_sql_refuses_psql_meta_commands():
    with pytest.raises(SqlError, match="meta-commands"):
        split_sql("SELECT 1;\n\\connect other\n", "m.sql")
