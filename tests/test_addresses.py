"""Change addresses as users write them (issue 13, items 4 and 5).

A routine's argument list matches in any spelling PostgreSQL would accept for the same signature; a ``must`` that
matches nothing names the closest reported address, for every kind; the most specific ``rows:`` key wins.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shadow.changes import Change, matches, routine_name
from shadow.judge import judge
from shadow.plan import Comparison, Expectation, RowRule
from tests.conftest import write_plan

REPORTED = "public.get_customer_balance(integer,timestamp with time zone)"


@pytest.mark.parametrize("written", [
    "public.get_customer_balance(integer, timestamp with time zone)",
    "public.get_customer_balance(int, timestamptz)",
    "public.get_customer_balance( INT4 ,TIMESTAMP WITH TIME ZONE )",
    "public.get_customer_balance(p_customer_id integer, p_effective_date timestamptz)",
    "public.get_customer_balance(IN p_customer_id int, p_date timestamptz DEFAULT now(), OUT balance numeric)",
    "public.get_customer_balance(integer, timestamp(3) with time zone)",
    "public.get_customer_balance(*)",
    "public.get_customer_balance(int, *)",
])
def test_a_function_address_matches_however_its_arguments_are_spelled(written):
    change = Change("add", "function", REPORTED)
    assert matches(f"add function {written}", change)
    assert matches(f"* * {written}", change)


@pytest.mark.parametrize(("written", "reported"), [
    ("public.f(float8, bool, varchar(20), char(3), decimal(10, 2), int8, int2, float4)",
     "public.f(double precision,boolean,character varying,character,numeric,bigint,smallint,real)"),
    ("public.f(timestamp, time, timetz, bit varying(4), interval day to second)",
     "public.f(timestamp without time zone,time without time zone,time with time zone,bit varying,interval)"),
    ('public.f(int[], text [], VARIADIC xs integer[])', "public.f(integer[],text[],integer[])"),
    ('public.f("char", "Ünïcode"."Status", public."mood", Public.Mood)',
     'public.f("char","Ünïcode"."Status",public.mood,public.mood)'),
    ("public.f(a int DEFAULT 1, b text = 'x, y', OUT c int, INOUT d text)", "public.f(integer,text,text)"),
    ('"Ünïcode"."Re(port)"(int)', '"Ünïcode"."Re(port)"(integer)'),
    ("public.f()", "public.f()"),
])
def test_argument_lists_are_put_in_regprocedure_spelling(written, reported):
    assert routine_name(written) == reported
    assert routine_name(reported) == reported
    assert matches(f"alter procedure {written}", Change("alter", "procedure", reported))


def test_an_int_argument_does_not_match_a_bigint_one():
    assert not matches("add function public.f(int)", Change("add", "function", "public.f(bigint)"))
    assert not matches("add function public.f(timestamp)", Change("add", "function", "public.f(timestamp with time zone)"))


@pytest.mark.parametrize(("must", "changes", "suggested"), [
    ("add column public.users.email_verfied", [Change("add", "column", "public.users.email_verified")],
     "add column public.users.email_verified"),
    ("add function public.get_customer_balance(integer, timestamp)", [Change("add", "function", REPORTED)],
     f"add function {REPORTED}"),
    ("add index public.users_email_idx", [Change("add", "index", "public.users_email_key"),
                                          Change("insert", "rows", "public.users", {"count": 2})],
     "add index public.users_email_key"),
    ("add object invoices/2026/a.pdf", [Change("add", "object", "invoices/2026/a.pdf.gz")],
     "add object invoices/2026/a.pdf.gz"),
    ("modify file k8s/deploy.yml", [Change("modify", "file", "k8s/deploy.yaml")], "modify file k8s/deploy.yaml"),
    ("add column public.user.email", [Change("add", "table", "public.users",
                                             children=[Change("add", "column", "public.users.email")])],
     "add column public.users.email"),  # nested changes are candidates too
])
def test_a_must_that_matches_nothing_names_the_closest_reported_address(must, changes, suggested):
    verdict = judge("t", changes, Expectation(must=(must,), may=("* * *",), declared=True), None)[0]
    assert not verdict.ok
    assert verdict.message == f"required change did not happen; did you mean `{suggested}`?"


def test_a_must_far_from_everything_reported_suggests_nothing():
    verdict = judge("t", [Change("drop", "table", "public.legacy")],
                    Expectation(must=("add column public.users.email_verified",), declared=True), None)[0]
    assert verdict.message == "required change did not happen"


def _rows(*rules: tuple[str, dict[str, str]]) -> tuple[RowRule, ...]:
    return tuple(RowRule(table, {k: Comparison(v.split()[0], int(v.split()[1])) for k, v in counts.items()}, 1)
                 for table, counts in rules)


UNCHANGED = {"inserted": "== 0", "updated": "== 0", "deleted": "== 0"}


@pytest.mark.parametrize("exact_first", [True, False])
def test_the_most_specific_rows_key_wins_in_either_order(exact_first):
    changes = [Change("insert", "rows", "public.rental_by_category", {"count": 16}),
               Change("update", "rows", "public.film", {"count": 2})]
    rules = [("public.rental_by_category", {"inserted": "== 16"}), ("public.*", UNCHANGED),
             ("public.rental*", {"inserted": ">= 100"})]
    expectation = Expectation(may=("* rows *",), rows=_rows(*(rules if exact_first else rules[::-1])), declared=True)
    verdicts = {(v.subject, v.ok) for v in judge("t", changes, expectation, None) if v.rule == "rows"}
    assert verdicts == {
        ("public.rental_by_category inserted", True),  # the exact key, not public.* nor public.rental*
        ("public.film inserted", True), ("public.film updated", False), ("public.film deleted", True),  # public.*
        ("public.rental* inserted", False),  # a glob that judges no table is judged once, on 0
    }


def test_of_two_globs_the_longer_literal_wins_and_equally_specific_ones_both_apply():
    changes = [Change("delete", "rows", "audit.log_2024", {"count": 5}),
               Change("update", "rows", "audit.logins", {"count": 1})]
    rules = _rows(("audit.*", UNCHANGED), ("audit.lo*", {"deleted": "<= 3"}), ("audit.*24", {"deleted": "<= 10"}))
    verdicts = {(v.subject, v.ok) for v in judge("t", changes, Expectation(may=("* * *",), rows=rules, declared=True),
                                                 None) if v.rule == "rows"}
    # audit.lo* and audit.*24 both have 8 literal characters, audit.* has 6
    assert verdicts == {
        ("audit.log_2024 deleted", False), ("audit.log_2024 deleted", True),  # both of the equally specific
        ("audit.logins deleted", True),  # audit.lo* (audit.*24 does not match; audit.* is less specific)
        ("audit.* inserted", True), ("audit.* updated", True), ("audit.* deleted", True),  # judges nothing: on 0
    }


# -- end to end, on a real server --------------------------------------------------------------------------------

FUNCTIONS_SQL = """
CREATE FUNCTION public.get_customer_balance(p_customer_id int, p_effective_date timestamptz DEFAULT now(),
                                            OUT balance numeric, OUT late_fees numeric)
LANGUAGE sql AS $$ SELECT 1.0::numeric, 0.0::numeric $$;
CREATE PROCEDURE public.close_day(d date, INOUT n int8 DEFAULT 0) LANGUAGE plpgsql AS $$ BEGIN n := 1; END $$;
CREATE TABLE public.film (id int PRIMARY KEY, title varchar(100), rating_score float8);
"""


def test_a_plan_names_functions_as_they_were_written(empty_db, shadow_cli, tmp_path: Path):
    plan = write_plan(tmp_path, f"""
version: 1
targets:
  app: {{kind: postgres, dsn: "{empty_db.dsn}"}}
action:
  sql: functions.sql
expect:
  app:
    must:
      - add function public.get_customer_balance(p_customer_id INT, p_effective_date TIMESTAMPTZ DEFAULT now(), OUT balance numeric, OUT late_fees numeric)
      - add procedure public.close_day(date, bigint)
      - add table public.flim
    may: [add column public.film.*, add constraint public.film.*, add index public.film_pkey]
policy: {{rehearse_rollback: false}}
""", {"functions.sql": FUNCTIONS_SQL})
    result = shadow_cli("plan", "-f", str(plan), "--json")
    assert result.code == 1, result.text
    verdicts = {v["subject"]: v for v in json.loads(result.out)["expectations"] if v["rule"] == "must"}
    assert [v["ok"] for v in verdicts.values()] == [True, True, False]
    assert verdicts["add table public.flim"]["message"] == (
        "required change did not happen; did you mean `add table public.film`?")
    changes = [c["address"] for t in json.loads(result.out)["targets"] for c in t["changes"]]
    assert "add function public.get_customer_balance(integer,timestamp with time zone)" in changes


def test_an_object_may_be_named_by_its_key_alone():
    change = Change("add", "object", "prod-assets/reports/feb.csv")
    assert matches("add object reports/*", change)
    assert matches("add object prod-assets/reports/*", change)
    assert not matches("add object raw/*", change)
    assert not matches("delete object reports/*", change)
