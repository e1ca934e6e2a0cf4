"""End to end through the real CLI: plan, apply, rollback against a real PostgreSQL "production"."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import BOTH_BACKENDS, ProdDb, write_plan

pytestmark = BOTH_BACKENDS

SAFE_SQL = """
SET lock_timeout = '5s';
ALTER TABLE users ADD COLUMN email_verified boolean NOT NULL DEFAULT false;
UPDATE users SET email_verified = true WHERE id % 3 = 0;
"""

SAFE_PLAN = """
version: 1
targets:
  app:
    kind: postgres
    dsn: ${APP_DATABASE_URL}
action:
  sql: migrations/0042_add_email_verified.sql
expect:
  app:
    must:
      - add column public.users.email_verified
    may:
      - update rows public.users
    rows:
      public.orders: unchanged
    checks:
      - sql: select count(*) from public.users where email_verified is null
        equals: 0
policy:
  backend: auto
"""


def _env(db: ProdDb) -> dict[str, str]:
    return {"APP_DATABASE_URL": db.dsn}


def _safe(tmp_path: Path) -> Path:
    return write_plan(tmp_path, SAFE_PLAN, {"migrations/0042_add_email_verified.sql": SAFE_SQL})


def _column_exists(db: ProdDb, table: str, column: str) -> bool:
    return bool(db.scalar(f"SELECT count(*) FROM information_schema.columns WHERE table_name = '{table}' "
                          f"AND column_name = '{column}'"))


def test_plan_passes_for_a_safe_migration_and_never_writes_production(prod_db, shadow_cli, tmp_path):
    _safe(tmp_path)
    before = prod_db.fingerprint()
    r = shadow_cli("plan", env=_env(prod_db))
    assert r.code == 0, r.text
    assert "PASSED" in r.out
    assert prod_db.fingerprint() == before
    assert not _column_exists(prod_db, "users", "email_verified")
    run_id = r.out.split("run ")[-1].split()[0]
    report = json.loads((shadow_cli.state_dir / "runs" / run_id / "report.json").read_text())
    assert report["outcome"] == "passed" and report["format_version"] == 1
    addresses = [c["address"] for c in report["targets"][0]["changes"]]
    assert addresses == ["add column public.users.email_verified", "update rows public.users"]
    assert (shadow_cli.state_dir / "runs" / run_id / "report.md").read_text().startswith("# shadow plan")


def test_apply_changes_production_as_rehearsed(prod_db, shadow_cli, tmp_path):
    _safe(tmp_path)
    r = shadow_cli("apply", env=_env(prod_db))
    assert r.code == 0, r.text
    assert "APPLIED" in r.out
    assert _column_exists(prod_db, "users", "email_verified")
    assert prod_db.scalar("SELECT count(*) FROM users WHERE email_verified") == 166


def test_destructive_migration_is_caught_and_names_the_unexpected_drop(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, SAFE_PLAN.replace("0042_add_email_verified", "0043_tidy"), {
        "migrations/0043_tidy.sql": "ALTER TABLE users ADD COLUMN email_verified boolean DEFAULT false;\n"
                                    "ALTER TABLE orders DROP COLUMN placed_at;\n",
    })
    before = prod_db.fingerprint()
    r = shadow_cli("apply", env=_env(prod_db))
    assert r.code == 1, r.text
    assert "REFUSED" in r.out
    assert "drop column public.orders.placed_at" in r.out
    assert prod_db.fingerprint() == before


def test_rows_expectation_fails_when_counts_exceed_bounds(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, """
version: 1
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: purge.sql}
expect:
  app:
    may: [delete rows public.orders]
    rows:
      public.orders: {deleted: "<= 10"}
""", {"purge.sql": "DELETE FROM orders WHERE status = 'cancelled';"})
    r = shadow_cli("plan", env=_env(prod_db))
    assert r.code == 1, r.text
    assert "500 deleted, expected <= 10" in r.out


def test_rows_expectation_passes_within_bounds(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, """
version: 1
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: purge.sql}
expect:
  app:
    may: [delete rows public.orders]
    rows:
      public.orders: {deleted: "<= 10", inserted: 0, updated: 0}
      public.users: unchanged
""", {"purge.sql": "DELETE FROM orders WHERE id <= 7;"})
    r = shadow_cli("plan", env=_env(prod_db))
    assert r.code == 0, r.text


def test_check_expectation_failing_is_reported_with_actual_value(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, SAFE_PLAN.replace("equals: 0", "equals: 5"),
               {"migrations/0042_add_email_verified.sql": SAFE_SQL})
    r = shadow_cli("plan", env=_env(prod_db))
    assert r.code == 1, r.text
    assert "returned 0, expected 5" in r.out


def test_must_expectation_fails_when_the_change_does_not_happen(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, SAFE_PLAN.replace("- add column public.users.email_verified",
                                           "- add column public.users.email_verified\n      - add index public.*"),
               {"migrations/0042_add_email_verified.sql": SAFE_SQL})
    r = shadow_cli("plan", env=_env(prod_db))
    assert r.code == 1
    assert "add index public.*" in r.out and "did not happen" in r.out


FAILING_IN_PROD = """
import os, sys, psycopg
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("INSERT INTO audit_log VALUES (now(), 'batch 1 of 2')")
    conn.execute("UPDATE orders SET total_cents = total_cents + 1 WHERE id <= 100")
    if os.environ["PGPORT"] == os.environ["FAIL_ON_PORT"] and os.environ["PGDATABASE"] == os.environ["FAIL_ON_DB"]:
        sys.exit("connection reset while writing batch 2")
    conn.execute("INSERT INTO audit_log VALUES (now(), 'batch 2 of 2')")
"""


def _command_plan(tmp_path: Path, db: ProdDb, script: str, extra_env: str = "") -> None:
    write_plan(tmp_path, f"""
version: 1
targets:
  app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}
action:
  command: "{sys.executable} backfill.py"
  env:
    FAIL_ON_PORT: "{db.server.port}"
    FAIL_ON_DB: "{db.name}"
{extra_env}
expect:
  app:
    may: [insert rows public.audit_log, update rows public.orders]
""", {"backfill.py": script})


def test_apply_rolls_back_when_the_action_fails_halfway_on_production(prod_db, shadow_cli, tmp_path):
    _command_plan(tmp_path, prod_db, FAILING_IN_PROD)
    before = prod_db.fingerprint()
    r = shadow_cli("apply", env=_env(prod_db))
    assert r.code == 1, r.text
    assert "ROLLED BACK" in r.out
    assert "connection reset while writing batch 2" in r.out
    assert prod_db.fingerprint() == before
    assert prod_db.scalar("SELECT count(*) FROM audit_log") == 2


DIVERGING = """
import os, psycopg
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    n = 3 if os.environ["PGPORT"] == os.environ["FAIL_ON_PORT"] else 1
    for i in range(n):
        conn.execute("INSERT INTO audit_log VALUES (now(), 'hello')")
"""


def test_apply_rolls_back_when_production_diverges_from_shadow(prod_db, shadow_cli, tmp_path):
    _command_plan(tmp_path, prod_db, DIVERGING)
    before = prod_db.fingerprint()
    r = shadow_cli("apply", env=_env(prod_db))
    assert r.code == 1, r.text
    assert "ROLLED BACK" in r.out
    assert "insert rows public.audit_log: rehearsal 1, production 3" in r.out
    assert prod_db.fingerprint() == before


def test_rollback_restores_production_after_a_successful_apply(prod_db, shadow_cli, tmp_path):
    _safe(tmp_path)
    before = prod_db.fingerprint()
    applied = shadow_cli("apply", env=_env(prod_db))
    assert applied.code == 0, applied.text
    run_id = applied.out.split("run ")[-1].split()[0]
    assert prod_db.fingerprint() != before
    r = shadow_cli("rollback", run_id, env=_env(prod_db))
    assert r.code == 0, r.text
    assert "RESTORED" in r.out
    assert prod_db.fingerprint() == before
    assert not _column_exists(prod_db, "users", "email_verified")


def test_a_full_rollback_refuses_when_production_changed_since_the_apply_and_an_undo_keeps_the_write(
        prod_db, shadow_cli, tmp_path):
    _safe(tmp_path)
    applied = shadow_cli("apply", env=_env(prod_db))
    run_id = applied.out.split("run ")[-1].split()[0]
    prod_db.execute("INSERT INTO audit_log VALUES (now(), 'a write after the apply')")
    r = shadow_cli("rollback", run_id, "--full", env=_env(prod_db))
    assert r.code == 1, r.text
    assert "changed since run" in r.out
    assert _column_exists(prod_db, "users", "email_verified")
    undone = shadow_cli("rollback", run_id, env=_env(prod_db))  # only the run's own change: the write stays
    assert undone.code == 0, undone.text
    assert not _column_exists(prod_db, "users", "email_verified")
    assert prod_db.scalar("SELECT count(*) FROM audit_log WHERE message = 'a write after the apply'") == 1
    forced = shadow_cli("rollback", run_id, "--full", "--force", env=_env(prod_db))  # the whole checkpoint: it goes
    assert forced.code == 0, forced.text
    assert prod_db.scalar("SELECT count(*) FROM audit_log WHERE message = 'a write after the apply'") == 0


def test_rollback_of_a_plan_run_is_refused_as_bad_input(prod_db, shadow_cli, tmp_path):
    _safe(tmp_path)
    planned = shadow_cli("plan", env=_env(prod_db))
    run_id = planned.out.split("run ")[-1].split()[0]
    r = shadow_cli("rollback", run_id, env=_env(prod_db))
    assert r.code == 2
    assert "was not applied" in r.err


def test_runs_and_show_list_and_render_reports(prod_db, shadow_cli, tmp_path):
    _safe(tmp_path)
    planned = shadow_cli("plan", env=_env(prod_db))
    run_id = planned.out.split("run ")[-1].split()[0]
    listed = shadow_cli("runs", "--json")
    assert listed.code == 0
    rows = json.loads(listed.out)
    assert rows[0]["id"] == run_id and rows[0]["outcome"] == "passed"
    md = shadow_cli("show", run_id)
    assert md.code == 0 and "add column public.users.email_verified" in md.out
    js = shadow_cli("show", run_id, "--format", "json")
    assert json.loads(js.out)["run_id"] == run_id
    assert shadow_cli("show", "no-such-run").code == 2


def test_plan_json_output_is_machine_readable(prod_db, shadow_cli, tmp_path):
    _safe(tmp_path)
    r = shadow_cli("plan", "--json", env=_env(prod_db))
    assert r.code == 0
    model = json.loads(r.out)
    assert model["outcome"] == "passed"
    assert all(v["ok"] for v in model["expectations"])


def test_password_never_appears_in_output_reports_or_journal(prod_db, shadow_cli, tmp_path):
    password = prod_db.server.password
    assert password in prod_db.dsn
    _safe(tmp_path)
    r = shadow_cli("apply", env=_env(prod_db))
    assert r.code == 0, r.text
    assert password not in r.text
    for path in shadow_cli.state_dir.rglob("*"):
        if path.is_file() and "objects" not in path.parts:
            assert password.encode() not in path.read_bytes(), path


def test_command_action_gets_a_scrubbed_environment_pointing_at_the_shadow(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, f"""
version: 1
targets: {{app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}}}
action:
  command: "{sys.executable} -c 'import os, json; json.dump(dict(os.environ), open(\\"env.json\\", \\"w\\"))'"
  env: {{GREETING: hello}}
""")
    r = shadow_cli("plan", env={**_env(prod_db), "MY_PROD_SECRET": "s3cr3t"})
    assert r.code == 0, r.text
    seen = json.loads((tmp_path / "env.json").read_text())
    assert "MY_PROD_SECRET" not in seen and "APP_DATABASE_URL" not in seen
    assert seen["GREETING"] == "hello"
    assert seen["SHADOW_APP_URL"] == seen["DATABASE_URL"]
    assert seen["PGPORT"] != str(prod_db.server.port)
    assert set(seen) <= {"PATH", "HOME", "LANG", "TZ", "GREETING", "SHADOW_APP_URL", "DATABASE_URL", "PGHOST",
                         "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PWD", "SHLVL", "_", "OLDPWD",
                         "SHADOW_RUN_ID", "PGAPPNAME"}
    run_id = json.loads(shadow_cli("runs", "--json").out)[0]["id"]  # the run's mark, and its sessions' name
    assert seen["SHADOW_RUN_ID"] == run_id and seen["PGAPPNAME"] == f"shadow action {run_id}"


def test_rehearsal_runs_as_productions_role_and_hits_the_same_permission_errors(prod_db, shadow_cli, tmp_path):
    role = f"app_{prod_db.name}"
    prod_db.execute(f"""
        CREATE ROLE {role} LOGIN PASSWORD 'app-pass';
        GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
        GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {role};
        GRANT UPDATE ON users TO {role};
    """)
    dsn = f"postgresql://{role}:app-pass@127.0.0.1:{prod_db.server.port}/{prod_db.name}"
    write_plan(tmp_path, """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: m.sql}
expect: {app: {may: [update rows public.users]}}
""", {"m.sql": "UPDATE users SET full_name = upper(full_name) WHERE id < 5;\n"})
    allowed = shadow_cli("plan", env={"APP_DATABASE_URL": dsn})
    assert allowed.code == 0, allowed.text
    (tmp_path / "m.sql").write_text("ALTER TABLE orders ADD COLUMN note text;\n")
    denied = shadow_cli("plan", env={"APP_DATABASE_URL": dsn})
    assert denied.code == 2, denied.text
    assert "must be owner of table orders" in denied.err
    assert "app-pass" not in denied.text


def test_rollback_refuses_a_corrupt_checkpoint_and_changes_nothing(prod_db, shadow_cli, tmp_path):
    _safe(tmp_path)
    applied = shadow_cli("apply", env=_env(prod_db))
    run_id = applied.out.split("run ")[-1].split()[0]
    after_apply = prod_db.fingerprint()
    store = shadow_cli.state_dir / "snapshots"
    manifest = json.loads((store / "manifests" / run_id / "app.json").read_text())
    (artifact,) = [p for p in (store / "objects").rglob("*") if p.name == manifest["artifacts"]["dump"]["sha256"]]
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    r = shadow_cli("rollback", run_id, "--full", env=_env(prod_db))  # the undo record would not need the dump
    assert r.code == 3, r.text
    assert "corrupt" in r.err and "nothing was restored" in r.err
    assert "Traceback" not in r.text
    assert prod_db.fingerprint() == after_apply
    report = json.loads(shadow_cli("show", "--format", "json", json.loads(shadow_cli("runs", "--json").out)[0]["id"]).out)
    assert report["outcome"] == "refused"  # refused before writing: settled, nothing for recover to do


def test_role_filtered_by_row_level_security_is_refused_rather_than_miscounted(prod_db, shadow_cli, tmp_path):
    role = f"rls_{prod_db.name}"
    prod_db.execute(f"""
        CREATE ROLE {role} LOGIN PASSWORD 'rls-pass';
        GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
        GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {role};
        ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
        CREATE POLICY only_first_user ON orders TO {role} USING (user_id = 1);
    """)
    dsn = f"postgresql://{role}:rls-pass@127.0.0.1:{prod_db.server.port}/{prod_db.name}"
    write_plan(tmp_path, "targets: {app: {kind: postgres, dsn: '${APP_DATABASE_URL}'}}\naction: {sql: m.sql}\n",
               {"m.sql": "SELECT 1;"})
    r = shadow_cli("plan", env={"APP_DATABASE_URL": dsn})
    assert r.code == 3, r.text
    assert "row-level security" in r.err


def test_a_damaged_undo_record_falls_back_to_restoring_the_checkpoint(prod_db, shadow_cli, tmp_path):
    _safe(tmp_path)
    before = prod_db.fingerprint()
    applied = shadow_cli("apply", env=_env(prod_db))
    run_id = applied.out.split("run ")[-1].split()[0]
    store = shadow_cli.state_dir / "snapshots"
    undo = json.loads((store / "manifests" / run_id / "app.undo.json").read_text())["undo"]
    (artifact,) = [p for p in (store / "objects").rglob("*") if p.name == undo["sha256"]]
    artifact.write_bytes(artifact.read_bytes()[:-1] + b"!")
    r = shadow_cli("rollback", run_id, "--json", env=_env(prod_db))
    assert r.code == 0, r.text
    [target] = json.loads(r.out)["targets"]
    assert any("the undo record of 'app' is damaged" in w for w in target["warnings"])
    assert prod_db.fingerprint() == before
