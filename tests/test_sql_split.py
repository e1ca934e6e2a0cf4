"""Splitting an SQL file into statements: dollar quotes, BEGIN ATOMIC bodies, line numbers, unterminated strings,
psql meta-commands. Pure logic (the lexical limits are in test_input_bounds.py), and once on a real server."""

from __future__ import annotations

import pytest

from shadow.errors import SqlError
from shadow.sqlsplit import split_sql
from tests.conftest import ProdDb


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


ATOMIC = """\
CREATE TABLE t (begin int, note text);
CREATE FUNCTION clamp_add(a int, b int) RETURNS int LANGUAGE sql
BEGIN ATOMIC
  SELECT CASE WHEN a > 0 THEN a ELSE 0 END + b;
END;
CREATE PROCEDURE two_rows() LANGUAGE sql
begin /* a comment between */ atomic
  INSERT INTO t VALUES (1, 'end; case');
  INSERT INTO t VALUES (2, E'it''s; begin atomic');
end;
BEGIN;
SELECT begin FROM t;
COMMIT;
SELECT t.begin, CASE WHEN true THEN 'x' END FROM t;
"""


def test_split_sql_keeps_a_begin_atomic_body_whole():
    statements = split_sql(ATOMIC, "atomic.sql")
    assert [s.line for s in statements] == [1, 2, 6, 11, 12, 13, 14]
    assert statements[1].text.endswith("END") and "END + b;" in statements[1].text
    assert statements[2].text.startswith("CREATE PROCEDURE") and statements[2].text.endswith("end")
    assert [s.text for s in statements[3:6]] == ["BEGIN", "SELECT begin FROM t", "COMMIT"]


def test_a_begin_atomic_body_split_by_shadow_runs_on_postgresql(prod_db: ProdDb):
    for statement in split_sql(ATOMIC, "atomic.sql"):
        prod_db.execute(statement.text)
    assert prod_db.scalar("SELECT clamp_add(-5, 3)") == 3
    prod_db.execute("CALL two_rows()")
    assert prod_db.scalar("SELECT string_agg(note, '|' ORDER BY begin) FROM t") == "end; case|it's; begin atomic"
