"""Lock tracing in the rehearsal, and `policy.max_lock` failing a plan."""

from __future__ import annotations

import json

from tests.conftest import write_plan

REWRITE = """
SET lock_timeout = '5s';
ALTER TABLE users ALTER COLUMN full_name TYPE varchar(300);
SELECT pg_sleep(0.4);
"""
PLAN = """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: m.sql}
expect: {app: {may: [alter column public.users.full_name]}}
"""


def test_rehearsal_traces_locks_per_statement_and_table_rewrites(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, PLAN, {"m.sql": REWRITE})
    r = shadow_cli("plan", "--json", env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 0, r.text
    report = json.loads(r.out)
    trace = report["action"]["rehearsal"]["locks"]
    alter = next(step for step in trace if "ALTER TABLE" in step["text"])
    assert alter["statement"] == "m.sql:3"
    assert alter["rewrote"] == ["public.users"]
    held = {(lock["relation"], lock["mode"]): lock["seconds"] for lock in alter["locks"]}
    assert held[("public.users", "ACCESS EXCLUSIVE")] >= 0.4  # held until COMMIT, after the sleep
    md = shadow_cli("show", report["run_id"]).out
    assert "## Lock trace (rehearsal)" in md and "ACCESS EXCLUSIVE" in md


def test_max_lock_policy_fails_the_plan(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, PLAN + 'policy:\n  max_lock: {"ACCESS EXCLUSIVE": 100ms}\n', {"m.sql": REWRITE})
    r = shadow_cli("plan", env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 1, r.text
    assert "max_lock ACCESS EXCLUSIVE on public.users" in r.out
    assert "policy.max_lock allows 0.1 s" in r.out


def test_max_lock_with_an_unknown_mode_is_bad_input(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, PLAN + 'policy:\n  max_lock: {"EXTREMELY EXCLUSIVE": 1s}\n', {"m.sql": REWRITE})
    r = shadow_cli("plan", env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 2 and "unknown lock mode" in r.err
