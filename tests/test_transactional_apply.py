"""Transactional apply: an SQL action whose statements are all transactional runs in one transaction in
production, is compared with the rehearsal *inside* it, and is committed only on a match."""

from __future__ import annotations

import json
import sqlite3

from tests.conftest import BOTH_BACKENDS, ProdDb, write_plan

pytestmark = BOTH_BACKENDS

PLAN = """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: m.sql}
expect:
  app:
    may: [update rows public.users, add column public.users.*, add index public.*]
policy:
  allow: [update-without-where]   # the static finding is expected here
"""


def _run(shadow_cli, db: ProdDb, sql: str, tmp_path):  # type: ignore[no-untyped-def]
    write_plan(tmp_path, PLAN, {"m.sql": sql})
    r = shadow_cli("apply", "--json", env={"APP_DATABASE_URL": db.dsn})
    return r, json.loads(r.out) if r.out.startswith("{") else None


def test_divergence_inside_the_transaction_rolls_back_and_production_is_never_changed(prod_db, shadow_cli, tmp_path):
    before = prod_db.fingerprint()
    # On production's port the UPDATE hits 10 rows, on the shadow's 5: production diverges from the rehearsal.
    r, report = _run(shadow_cli, prod_db, f"""
        ALTER TABLE users ADD COLUMN flagged boolean;
        UPDATE users SET flagged = true
         WHERE id <= CASE WHEN current_setting('port')::int = {prod_db.server.port} THEN 10 ELSE 5 END;
    """, tmp_path)
    assert r.code == 1, r.text
    assert report["outcome"] == "rolled_back"
    assert "never changed" in report["reason"]
    assert any("update rows public.users: rehearsal 5, production 10" in d for d in report["divergence"])
    assert report["targets"][0]["restore"]["needed"] is False
    assert prod_db.fingerprint() == before
    steps = sqlite3.connect(shadow_cli.state_dir / "journal.sqlite").execute("SELECT step FROM steps").fetchall()
    assert ("restore",) not in steps


def test_statement_failing_only_in_production_leaves_it_unchanged(prod_db, shadow_cli, tmp_path):
    before = prod_db.fingerprint()
    r, report = _run(shadow_cli, prod_db, f"""
        UPDATE users SET full_name = upper(full_name);
        DO $$ BEGIN
          IF current_setting('port')::int = {prod_db.server.port} THEN RAISE EXCEPTION 'disk quota exceeded'; END IF;
        END $$;
    """, tmp_path)
    assert r.code == 1, r.text
    assert "disk quota exceeded" in report["reason"] and "never changed" in report["reason"]
    assert prod_db.fingerprint() == before


def test_matching_change_set_is_committed(prod_db, shadow_cli, tmp_path):
    r, report = _run(shadow_cli, prod_db, "ALTER TABLE users ADD COLUMN nick text; UPDATE users SET nick = 'n';",
                     tmp_path)
    assert r.code == 0, r.text
    assert report["action"]["production"]["mode"] == "one transaction, verified before COMMIT"
    assert prod_db.scalar("SELECT count(*) FROM users WHERE nick = 'n'") == 500


def test_non_transactional_statement_falls_back_and_says_which(prod_db, shadow_cli, tmp_path):
    r, report = _run(shadow_cli, prod_db, "CREATE INDEX CONCURRENTLY users_name_idx ON users (full_name);", tmp_path)
    assert r.code == 0, r.text
    mode = report["action"]["production"]["mode"]
    assert "m.sql:1 cannot run in a transaction" in mode and "CREATE INDEX CONCURRENTLY" in mode
