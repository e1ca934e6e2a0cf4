"""Apply and rollback refuse what would leave production wrong while shadow said it was fine: production changing
other rows than the rehearsal did, and a checkpoint restored over another database."""

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
