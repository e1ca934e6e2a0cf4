"""A check query that fails on the shadow after the action is a failed expectation (issue 13, item 19).

The run still reports what the action changed and exits 1; only a check the server cannot parse is bad input (2).
"""

from __future__ import annotations

import json
from pathlib import Path

from shadow.errors import BadInput, CheckQueryFailed
from shadow.judge import judge
from shadow.plan import Check, Expectation
from tests.conftest import write_plan

PLAN = """
version: 1
targets:
  app: {{kind: postgres, dsn: "{dsn}"}}
action:
  sql: migrate.sql
expect:
  app:
    may: [drop column public.users.email]
    checks:
      - sql: {check}
        equals: 0
      - sql: select count(*) from public.users
        equals: 500
policy:
  allow: [drop-column]
  rehearse_rollback: false
"""


def test_a_check_that_errors_after_the_action_fails_the_plan_and_the_change_set_is_reported(prod_db, shadow_cli,
                                                                                             tmp_path: Path):
    plan = write_plan(tmp_path, PLAN.format(
        dsn=prod_db.dsn, check="select count(*) from public.users where email_verified is null"),
        {"migrate.sql": "ALTER TABLE users DROP COLUMN email;\n"})
    result = shadow_cli("plan", "-f", str(plan), "--json")
    assert result.code == 1, result.text
    report = json.loads(result.out)
    changes = [c["address"] for t in report["targets"] for c in t["changes"]]
    assert changes == ["drop column public.users.email"]
    checks = [v for v in report["expectations"] if v["rule"] == "check"]
    assert [v["ok"] for v in checks] == [False, True]  # the failing query does not stop the next check
    assert checks[0]["message"] == ('the query failed on the shadow after the action: column "email_verified" '
                                    'does not exist (SQLSTATE 42703); expected 0')
    # the terminal says the same
    text = shadow_cli("plan", "-f", str(plan))
    assert text.code == 1
    assert 'column "email_verified" does not exist' in " ".join(text.out.split())


def test_a_check_that_does_not_parse_is_bad_input(prod_db, shadow_cli, tmp_path: Path):
    plan = write_plan(tmp_path, PLAN.format(dsn=prod_db.dsn, check="selec count(*) from public.users"),
                      {"migrate.sql": "ALTER TABLE users DROP COLUMN email;\n"})
    result = shadow_cli("plan", "-f", str(plan))
    assert result.code == 2, result.text
    assert "syntax error" in result.err


def _raising(exc: Exception):  # type: ignore[no-untyped-def]
    def run(sql: str) -> object:
        raise exc
    return run


def test_judge_turns_a_refused_query_into_a_failed_check_and_leaves_other_bad_input_alone():
    """The adapter decides what a refused query is (it knows its server's error codes); the judge only reads it."""
    expectation = Expectation(checks=(Check("select 1/0", 1, 3),), declared=True)
    refused = CheckQueryFailed("check query failed on the shadow: division by zero",
                               "division by zero (SQLSTATE 22012)", target="app")
    [verdict] = judge("app", [], expectation, _raising(refused))
    assert (verdict.rule, verdict.ok) == ("check", False)
    assert "division by zero (SQLSTATE 22012)" in verdict.message
    try:
        judge("app", [], expectation, _raising(BadInput("check query failed on the shadow: syntax error")))
    except BadInput as exc:
        assert not isinstance(exc, CheckQueryFailed)
    else:
        raise AssertionError("a query that did not parse must stay bad input")

