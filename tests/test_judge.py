"""Judging change sets: address globs, row-count comparisons, implied changes nested under their cause, verdicts
on expectations, and the rehearsal compared with production. Pure logic."""

from __future__ import annotations

import pytest

from adapters.postgres.diff import nest
from shadow.changes import Change, matches
from shadow.judge import compare_change_sets, judge
from shadow.plan import Expectation, parse_comparison


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
