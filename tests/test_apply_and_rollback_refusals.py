"""Regressions found in review: each one a way production could end up wrong while shadow said it was fine."""

from __future__ import annotations

import json

from tests.conftest import write_plan

PLAN = """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: m.sql}
expect: {app: {may: [delete rows public.orders, "* rows public.audit_log"]}}
"""


def test_production_deleting_other_rows_than_the_rehearsal_diverges(prod_db, shadow_cli, tmp_path):
    # Same count, different rows: on production's port the DELETE picks other ids.
    write_plan(tmp_path, PLAN, {"m.sql": f"""
        DELETE FROM orders WHERE id IN (SELECT id FROM orders
          ORDER BY CASE WHEN current_setting('port')::int = {prod_db.server.port} THEN -id ELSE id END LIMIT 3);
    """})
    before = prod_db.fingerprint()
    r = shadow_cli("apply", "--json", env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 1, r.text
    report = json.loads(r.out)
    assert any("3 in both, but not the same rows" in d for d in report["divergence"])
    assert prod_db.fingerprint() == before


def test_deferred_constraint_failure_is_reported_as_bad_sql_not_a_crash(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, PLAN, {"m.sql": """
        CREATE TABLE notes (id int PRIMARY KEY, order_id bigint REFERENCES orders (id) DEFERRABLE INITIALLY DEFERRED);
        INSERT INTO notes VALUES (1, 999999);
    """})
    r = shadow_cli("plan", env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 2, r.text
    assert "deferred constraint failed" in r.err and "Traceback" not in r.text


def test_targets_whose_variables_collide_are_refused(shadow_cli, tmp_path):
    write_plan(tmp_path, """
targets:
  billing-db: {kind: postgres, dsn: "host=a"}
  billing_db: {kind: postgres, dsn: "host=b"}
action: {command: "true"}
""")
    r = shadow_cli("plan")
    assert r.code == 2 and "both become SHADOW_BILLING_DB_*" in r.err


def test_percent_encoded_password_is_redacted_from_action_logs(empty_db, shadow_cli, tmp_path):
    role = f"pw_{empty_db.name}"
    empty_db.execute(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD 'S3cr3t/p@ss:word'")
    dsn = f"postgresql://{role}:S3cr3t%2Fp%40ss%3Aword@127.0.0.1:{empty_db.server.port}/{empty_db.name}"
    # Succeeds on the shadow, prints production's URL (password percent-encoded) and fails on production.
    write_plan(tmp_path, f"""
targets: {{app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}}}
action: {{command: 'echo $SHADOW_APP_URL; test "$PGPORT" != "{empty_db.server.port}"'}}
""")
    r = shadow_cli("apply", env={"APP_DATABASE_URL": dsn})
    assert r.code == 1, r.text
    assert "ROLLED BACK" in r.out and "***@127.0.0.1" in r.out
    for text in [r.text] + [p.read_text() for p in shadow_cli.state_dir.rglob("*.log")]:
        assert "S3cr3t" not in text


def test_rollback_refuses_to_restore_a_checkpoint_over_another_database(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: m.sql}
expect: {app: {may: ["* rows public.audit_log"]}}
""", {"m.sql": "INSERT INTO audit_log VALUES (now(), 'x');"})
    applied = shadow_cli("apply", "--json", env={"APP_DATABASE_URL": prod_db.dsn})
    assert applied.code == 0, applied.text
    other = prod_db.server.create_database(prod_db.name + "_other")
    r = shadow_cli("rollback", json.loads(applied.out)["run_id"], "--force", env={"APP_DATABASE_URL": other})
    assert r.code == 2, r.text
    assert "restoring one over the other is refused" in r.err
