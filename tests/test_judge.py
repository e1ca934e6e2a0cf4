"""Pure logic: plan loading, SQL splitting, change matching and nesting, judging. No services needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.postgres.diff import nest
from shadow.changes import Change, matches
from shadow.errors import PlanError, SqlError
from shadow.judge import compare_change_sets, judge
from shadow.plan import Expectation, load_plan, parse_comparison
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


def test_plan_interpolates_environment_and_defaults(tmp_path: Path):
    (tmp_path / "m.sql").write_text("SELECT 1;")
    plan_file = tmp_path / "p.yaml"
    plan_file.write_text(
        "version: 1\ntargets:\n  db:\n    kind: postgres\n    dsn: ${DB_URL}\n"
        "action:\n  sql: m.sql\n  env: {MODE: '${MODE:-dry}', FLAG: true}\n  timeout: 90s\n"
    )
    plan = load_plan(plan_file, {"DB_URL": "postgresql://u@h/db"})
    assert plan.targets[0].options["dsn"] == "postgresql://u@h/db"
    assert plan.action.env == {"MODE": "dry", "FLAG": "true"}
    assert plan.action.timeout == 90
    assert plan.action.sql_target == "db"
    assert not plan.expect["db"].declared


def test_plan_collects_every_problem_with_lines(tmp_path: Path):
    plan_file = tmp_path / "p.yaml"
    plan_file.write_text("version: 2\ntargets:\n  db: {kind: postgres, dsn: x, colour: red}\naction: {}\nextra: 1\n")
    with pytest.raises(PlanError) as err:
        load_plan(plan_file, {})
    problems = err.value.problems
    assert any("p.yaml:1: version" in p for p in problems)
    assert any("p.yaml:3: targets.db.colour" in p for p in problems)
    assert any("p.yaml:5: extra" in p for p in problems)
    assert any("action" in p for p in problems)


def test_plan_sql_action_needs_target_when_several_postgres_targets(tmp_path: Path):
    (tmp_path / "m.sql").write_text("SELECT 1;")
    plan_file = tmp_path / "p.yaml"
    plan_file.write_text("targets:\n  a: {kind: postgres, dsn: 'host=x'}\n  b: {kind: postgres, dsn: 'host=y'}\n"
                         "action: {sql: m.sql}\n")
    with pytest.raises(PlanError, match="needs `target:`"):
        load_plan(plan_file, {})


def test_plan_accepts_addresses_of_every_postgres_kind(tmp_path: Path):
    (tmp_path / "m.sql").write_text("SELECT 1;")
    addresses = ["add rule public.orders.redirect", "add publication app_pub", "alter statistics public.s1",
                 "drop collation public.c", "add event_trigger e", "alter default_privileges shadow"]
    plan_file = tmp_path / "p.yaml"
    plan_file.write_text("targets:\n  db: {kind: postgres, dsn: 'host=x'}\naction: {sql: m.sql}\n"
                         "expect:\n  db:\n    must: [" + ", ".join(addresses) + "]\n    may: [add gadget public.x]\n")
    with pytest.raises(PlanError) as err:
        load_plan(plan_file, {})
    # the made-up kind is refused (so addresses are checked at all), the real ones are not
    assert len(err.value.problems) == 1
    assert "expect.db.may.0: 'add gadget public.x': unknown kind 'gadget'" in err.value.problems[0]


@pytest.mark.parametrize(("text", "actual", "holds"), [
    (0, 0, True), (0, 1, False), ("<= 10", 10, True), ("<= 10", 11, False), (">= 1", 0, False), ("!= 3", 2, True),
])
def test_row_comparisons(text, actual, holds):
    cmp = parse_comparison(text)
    assert cmp is not None and cmp.holds(actual) is holds


def test_address_globs_match_op_kind_and_name():
    change = Change("add", "column", "public.users.email_verified")
    assert matches("add column public.users.*", change)
    assert matches("* column public.users.email_verified", change)
    assert not matches("drop column public.users.*", change)
    assert not matches("add column public.orders.*", change)


def test_nest_puts_implied_changes_under_their_cause():
    before = {"table": {}, "column": {}, "index": {}, "constraint": {}, "sequence": {}}
    after = {
        "table": {"public.t": {}},
        "column": {"public.t.id": {}},
        "constraint": {"public.t.t_pkey": {"on": "public.t"}},
        "index": {"public.t_pkey": {"table": "public.t", "constraint": "t_pkey"}},
        "sequence": {"public.t_id_seq": {"owned_by": "public.t.id", "used_by": ["public.t"]}},
    }
    flat = [Change("add", "table", "public.t"), Change("add", "column", "public.t.id"),
            Change("add", "constraint", "public.t.t_pkey"), Change("add", "index", "public.t_pkey"),
            Change("add", "sequence", "public.t_id_seq"), Change("insert", "rows", "public.t", {"count": 3})]
    top = nest(flat, before, after)
    assert [c.address for c in top] == ["add table public.t"]
    tree = {c.address: [k.address for k in c.children] for c in top[0].walk()}
    assert tree["add constraint public.t.t_pkey"] == ["add index public.t_pkey"]
    assert tree["add column public.t.id"] == ["add sequence public.t_id_seq"]
    assert "insert rows public.t" in tree["add table public.t"]


def test_judge_flags_unexpected_and_missing_changes():
    changes = [Change("add", "column", "public.u.x"), Change("drop", "table", "public.legacy")]
    verdicts = judge("db", changes, Expectation(must=("add column public.u.x", "add index public.*"),
                                                 may=(), declared=True), None)
    failed = {(v.rule, v.subject) for v in verdicts if not v.ok}
    assert failed == {("must", "add index public.*"), ("unexpected", "drop table public.legacy")}


def test_judge_without_expectations_treats_every_change_as_unexpected():
    verdicts = judge("db", [Change("insert", "rows", "public.t", {"count": 2})], Expectation(), None)
    assert [v.ok for v in verdicts] == [False]
    assert "no `expect`" in verdicts[0].message


def test_compare_change_sets_reports_count_and_address_divergence():
    shadow_side = [Change("insert", "rows", "public.t", {"count": 1}), Change("add", "column", "public.t.x")]
    prod_side = [Change("insert", "rows", "public.t", {"count": 3})]
    problems = compare_change_sets(shadow_side, prod_side)
    assert "rehearsed but not in production: add column public.t.x" in problems
    assert "insert rows public.t: rehearsal 1, production 3" in problems
