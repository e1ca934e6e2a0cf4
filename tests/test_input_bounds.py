"""Bounded input: the SQL splitter follows PostgreSQL's lexical rules in linear time; static analysis reads at most
MAX_ANALYSED_STATEMENT of one statement and MAX_ANALYSED_TOTAL of an action's SQL and says what it left out; SQL
files outside the plan's folder are recorded and never quoted. Pure logic and the real CLI, no services."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shadow.errors import SqlError
from shadow.lint import lint
from shadow.plan import load_plan
from shadow.sqlsplit import MAX_ANALYSED_STATEMENT, MAX_ANALYSED_TOTAL, split_sql
from tests.conftest import CliResult, run_cli

ROOT = Path(__file__).resolve().parent.parent


def shadow(cwd: Path, *args: str) -> CliResult:
    return run_cli(*args, state=cwd / "state", cwd=cwd, backend=None, env={"NO_COLOR": "1"}, timeout=120)


# --- splitting: PostgreSQL's lexical rules ------------------------------------------------------------------------


def test_split_follows_postgres_quoting_rules() -> None:
    src = ("SELECT 'C:\\'; SELECT E'it\\'s; still';\n"  # backslash is plain in '…', an escape in E'…'
           "SELECT $fn$ ; $x$ ; $fn$; SELECT \"a;b\" FROM t$1; /* outer /* inner ; */ still ; */ SELECT 3;\n"
           "  -- a comment ; before\n  SELECT 4 -- and after ;\n;")
    statements = split_sql(src, "m.sql")
    assert [s.text for s in statements] == [
        "SELECT 'C:\\'", "SELECT E'it\\'s; still'", "SELECT $fn$ ; $x$ ; $fn$", 'SELECT "a;b" FROM t$1',
        "SELECT 3", "SELECT 4"]
    assert [(s.line, s.column) for s in statements] == [(1, 1), (1, 15), (2, 1), (2, 27), (2, 84), (4, 3)]


@pytest.mark.parametrize(("src", "what", "line"), [
    ("SELECT 1;\nSELECT 'x;\n", "a quoted string", 2),
    ("SELECT 1;\n\nSELECT \"x;\n", "a quoted identifier", 3),
    ("SELECT $b$ body;\n", "a dollar-quoted string ($b$)", 1),
    ("SELECT 1; /* a /* b */\n", "a /* comment", 1),
    ("SELECT E'x\\';\n", "a quoted string", 1),
])
def test_an_unclosed_quote_or_comment_names_its_line_and_quotes_nothing(src: str, what: str, line: int) -> None:
    with pytest.raises(SqlError) as err:
        split_sql(src, "m.sql")
    assert err.value.line == line and f"{what} opened on this line is never closed" in str(err.value)
    assert "SELECT" not in str(err.value)


# --- the bounds -----------------------------------------------------------------------------------------------------


def test_a_statement_over_the_bound_is_an_info_finding_and_later_statements_are_still_analysed() -> None:
    big = "INSERT INTO t VALUES " + ", ".join(["(1, 'x')"] * (MAX_ANALYSED_STATEMENT // 8))
    statements = split_sql(f"{big};\nDROP TABLE users;\n", "m.sql")
    found = lint(statements)
    assert [(f.id, f.severity, f.line) for f in found][:2] == [("statement-too-large", "info", 1),
                                                               ("drop-table", "error", 2)]
    assert "this INSERT is 160 KiB, more than the 128 KiB" in found[0].message
    assert "the rehearsal still runs it" in found[0].message
    assert len(found[0].statement) <= 2000  # a report never carries the whole statement


def test_sql_past_the_total_bound_is_one_info_finding_naming_what_was_left_out() -> None:
    literal = "SELECT '" + "x" * 100_000 + "'"  # quick for sqlglot: the bound is met in a few statements
    fit = MAX_ANALYSED_TOTAL // 100_010
    src = ";\n".join([literal] * (fit + 1)) + ";\n" + "DROP TABLE users;\n" * 20_000
    found = lint(split_sql(src, "m.sql"))
    assert [(f.id, f.line) for f in found] == [("analysis-limit", fit + 1)]
    assert "this statement and the 20,000 after it" in found[0].message


def test_a_plans_files_share_one_total_bound(tmp_path: Path) -> None:
    literal = "SELECT '" + "x" * 100_000 + "';\n"
    (tmp_path / "1.sql").write_text(literal * (MAX_ANALYSED_TOTAL // 100_000 - 1))
    (tmp_path / "2.sql").write_text(literal * 2 + "DROP TABLE users;\n")
    r = shadow(tmp_path, "lint", "1.sql", "2.sql")
    assert r.code == 0, r.out + r.err
    assert "2.sql:2 info analysis-limit" in r.out and "drop-table" not in r.out


def test_cli_lints_a_huge_insert_and_many_statements_without_crashing(tmp_path: Path) -> None:
    # Scaled down from the issue (59 MB, 6M tuples; 50 MB, 810,035 statements): 6 MB and 200,000 statements.
    (tmp_path / "big.sql").write_text("INSERT INTO t VALUES " + ", ".join(f"({i}, 'x{i}')" for i in range(500_000))
                                      + ";\nDROP TABLE users;\n")
    fit = MAX_ANALYSED_TOTAL // 100_010  # statements of a 100 KB literal: quick for sqlglot
    (tmp_path / "many.sql").write_text(("SELECT '" + "x" * 100_000 + "';\n") * (fit + 1)
                                       + "".join(f"INSERT INTO t VALUES ({i}, 'a');\n" for i in range(200_000)))
    r = shadow(tmp_path, "lint", "big.sql")
    assert r.code == 1 and "Traceback" not in r.err, r.err
    assert "big.sql:1 info statement-too-large this INSERT is" in r.out
    assert "big.sql:2 error drop-table" in r.out  # the statements after it are still analysed
    r = shadow(tmp_path, "lint", "many.sql")
    assert r.code == 0, r.err
    assert f"many.sql:{fit + 1} info analysis-limit" in r.out and "the 200,000 after it" in r.out


def test_telling_whether_a_huge_statement_needs_autocommit_takes_one_pass() -> None:
    # Each statement is checked for what cannot run in a transaction block, even one too large to analyse. Two
    # shapes took time quadratic in their length on main: a list of DETACH PARTITIONs (2 MB: about ten minutes)
    # and a literal full of "/*" (900 KB: over five minutes). In one pass each takes well under a second; the
    # child process's deadline is what fails on a quadratic scan.
    import subprocess
    import sys

    code = (
        "from shadow.sqlsplit import Statement, forces_autocommit\n"
        "detach = 'ALTER TABLE t ' + ', '.join(f'DETACH PARTITION p{i}' for i in range(100_000))\n"
        "comments = \"SELECT '\" + '/* ' * 300_000 + \"'\"\n"
        "print(forces_autocommit(Statement(text=detach, line=1, file='a.sql')),\n"
        "      forces_autocommit(Statement(text=detach + ' CONCURRENTLY', line=1, file='a.sql')),\n"
        "      forces_autocommit(Statement(text=comments, line=1, file='a.sql')))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.stdout.split() == ["False", "True", "False"], r.stderr


# --- SQL files outside the plan's folder --------------------------------------------------------------------------


def test_sql_files_outside_the_plans_folder_are_recorded_and_named_in_the_action(tmp_path: Path) -> None:
    plan_dir = tmp_path / "plan"
    (plan_dir / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere.sql").write_text("SELECT 1;")
    (plan_dir / "sub" / "inside.sql").write_text("SELECT 2;")
    os.symlink("../elsewhere.sql", plan_dir / "linked.sql")
    os.symlink("sub/inside.sql", plan_dir / "alias.sql")
    (plan_dir / "shadow.yaml").write_text(
        "targets: {app: {kind: postgres, dsn: 'postgresql://127.0.0.1/x'}}\n"
        f"action: {{sql: [sub/inside.sql, alias.sql, linked.sql, ../elsewhere.sql, {tmp_path}/elsewhere.sql]}}\n")
    action = load_plan(plan_dir / "shadow.yaml", {}).action
    real = (tmp_path / "elsewhere.sql").resolve()
    assert action.outside_files == (real, real, real)
    assert action.describe().endswith(f"(outside the plan's folder: {real}, {real}, {real})")
    assert action.sql_files[2] == plan_dir.resolve() / "linked.sql"  # as named: the symlink is read, not pinned


def test_only_sql_the_plans_folder_holds_is_quoted(tmp_path: Path) -> None:
    from shadow.sqlsplit import load_sql_files

    (tmp_path / "out").mkdir()
    (tmp_path / "in").mkdir()
    (tmp_path / "out" / "x.sql").write_text("SELECT 'TOPSECRET' FROM (;\n")
    (tmp_path / "in" / "x.sql").write_text("SELECT 'visible' FROM (;\n")
    os.symlink("../out/x.sql", tmp_path / "in" / "link.sql")
    folder = tmp_path / "in"
    quoted = {shown: st.quote for shown in ("x.sql", "link.sql", "../out/x.sql", str(tmp_path / "out" / "x.sql"))
              for st in load_sql_files([folder / shown], [shown])}
    assert quoted == {"x.sql": True, "link.sql": False, "../out/x.sql": False, str(tmp_path / "out" / "x.sql"): False}
    for shown in ("link.sql", "../out/x.sql"):
        with pytest.raises(SqlError) as err:
            lint(load_sql_files([folder / shown], [shown]))
        assert "TOPSECRET" not in str(err.value) and "(statement:" not in str(err.value)
