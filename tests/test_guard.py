"""Two applies never interleave (a lock per target on this machine, an advisory lock in the database for two
machines), approval binds exactly what was rehearsed, and every plan proves its own undo on the shadow."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapters.postgres.target import PostgresTarget, _artifact
from shadow.settings import Settings
from snapshots import Store
from tests.conftest import ProdDb, start_cli, write_plan

HOLD = """
import os, pathlib, time, psycopg
pathlib.Path(os.environ["STARTED"]).write_text("x")
deadline = time.time() + 120
while not pathlib.Path(os.environ["RELEASE"]).exists() and time.time() < deadline:
    time.sleep(0.1)
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("INSERT INTO audit_log VALUES ('2031-01-02', %s)", [os.environ["WHO"]])
"""


def _plan(folder: Path, who: str) -> Path:
    return write_plan(folder, f"""
targets: {{app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}}}
action:
  command: "{sys.executable} hold.py"
  env: {{STARTED: "{folder}/started-{who}", RELEASE: "{folder}/release", WHO: "{who}"}}
expect: {{app: {{must: ["insert rows public.audit_log"]}}}}
policy: {{rehearse_rollback: false}}
""", {"hold.py": HOLD}, name=f"{who}.yaml")


def _shadow(tmp_path: Path, db: ProdDb, *args: str, state: str = "state") -> subprocess.Popen[str]:
    return start_cli(*args, state=tmp_path / state, cwd=tmp_path, env={"APP_DATABASE_URL": db.dsn})


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 90
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first apply never started its action"
        time.sleep(0.05)


@pytest.mark.parametrize("second_state", ["state", "other-machine"], ids=["same-state-dir", "two-machines"])
def test_two_applies_on_one_target_never_interleave(prod_db: ProdDb, tmp_path: Path, second_state: str) -> None:
    _plan(tmp_path, "first")
    _plan(tmp_path, "second")
    first = _shadow(tmp_path, prod_db, "apply", "-f", "first.yaml")
    _wait_for(tmp_path / "started-first", first)

    refused = _shadow(tmp_path, prod_db, "apply", "-f", "second.yaml", "--lock-timeout", "0", state=second_state)
    out, err = refused.communicate(timeout=120)
    assert refused.returncode == 3, out + err
    assert "holds" in err and "lock" in err and "--lock-timeout" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "started-second").exists(), "the refused apply must not have started"

    waiting = _shadow(tmp_path, prod_db, "apply", "-f", "second.yaml", "--lock-timeout", "120", state=second_state)
    time.sleep(3)
    assert waiting.poll() is None and not (tmp_path / "started-second").exists(), "the second apply must wait"
    (tmp_path / "release").write_text("go")
    out1, err1 = first.communicate(timeout=180)
    out2, err2 = waiting.communicate(timeout=180)
    assert first.returncode == 0, out1 + err1
    assert waiting.returncode == 0, out2 + err2
    assert "waiting up to 120 s" in err2
    assert prod_db.scalar("SELECT string_agg(message, ',' ORDER BY message) FROM audit_log "
                          "WHERE happened_at = '2031-01-02'") == "first,second"


# -- approval ------------------------------------------------------------------------------------------------

APPROVED_PLAN = """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: migrate.sql}
expect: {app: {must: ["add column public.users.nickname"]}}
policy: {approval: required}
"""


def test_approval_binds_the_rehearsal_and_apply_run_applies_exactly_it(prod_db: ProdDb, shadow_cli,
                                                                       tmp_path: Path) -> None:
    write_plan(tmp_path, APPROVED_PLAN, {"migrate.sql": "ALTER TABLE users ADD COLUMN nickname text;\n"})
    env = {"APP_DATABASE_URL": prod_db.dsn}
    before = prod_db.fingerprint()

    planned = shadow_cli("plan", "--json", env=env)
    assert planned.code == 0, planned.text
    run_id = json.loads(planned.out)["run_id"]
    assert json.loads(planned.out)["outcome"] == "awaiting_approval"

    unapproved = shadow_cli("apply", env=env)
    assert unapproved.code == 2 and "policy.approval is required" in unapproved.err
    early = shadow_cli("apply", "--run", run_id, env=env)
    assert early.code == 2 and "has not been approved" in early.err
    assert prod_db.fingerprint() == before

    approved = shadow_cli("approve", run_id, "--by", "ana", "--comment", "reviewed the diff", "--json", env=env)
    assert approved.code == 0, approved.text
    assert json.loads(approved.out)["binding"]["checkpoints"]["app"]

    # The action's file changed after the approval: refused, production untouched.
    (tmp_path / "migrate.sql").write_text("ALTER TABLE users ADD COLUMN nickname text; DROP TABLE audit_log;\n")
    changed = shadow_cli("apply", "--run", run_id, env=env)
    assert changed.code == 2 and "migrate.sql changed" in changed.err, changed.text
    (tmp_path / "migrate.sql").write_text("ALTER TABLE users ADD COLUMN nickname text;\n")

    # Production drifted after the approval in what the action writes: refused with the drift shown, nothing applied.
    # (A write elsewhere would not block it: see test_gateway's apply under a writer.)
    prod_db.execute("UPDATE users SET full_name = 'someone else' WHERE id = 1")
    drifted = shadow_cli("apply", "--run", run_id, "--json", env=env)
    assert drifted.code == 1, drifted.text
    report = json.loads(drifted.out)
    assert report["outcome"] == "refused" and "approved (drift" in report["reason"]
    app = next(t for t in report["targets"] if t["name"] == "app")
    assert any("public.users" in c["address"] for c in app["production_changes"]), app["production_changes"]
    assert prod_db.scalar("SELECT count(*) FROM information_schema.columns WHERE column_name = 'nickname'") == 0

    prod_db.execute("UPDATE users SET full_name = 'User 1' WHERE id = 1")  # the drift undone
    applied = shadow_cli("apply", "--run", run_id, "--json", env=env)
    assert applied.code == 0, applied.text
    verdicts = json.loads(applied.out)["expectations"]
    assert any(v["rule"] == "approval" and v["ok"] and "ana" in v["message"] for v in verdicts)
    assert prod_db.scalar("SELECT count(*) FROM information_schema.columns WHERE column_name = 'nickname'") == 1
    runs = json.loads(shadow_cli("runs", "--json").out)
    assert any(r["command"] == "approve" and "by ana: reviewed the diff" in (r["summary"] or "") for r in runs)


# -- rollback rehearsal --------------------------------------------------------------------------------------


def test_every_plan_rehearses_its_rollback_unless_turned_off(prod_db: ProdDb, shadow_cli, tmp_path: Path) -> None:
    body = """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: migrate.sql}
expect: {app: {must: ["add column public.users.nickname"], may: ["update rows public.users"]}}
"""
    write_plan(tmp_path, body, {"migrate.sql": "SET lock_timeout = '5s';\nSET statement_timeout = '30s';\n"
                                               "ALTER TABLE users ADD COLUMN nickname text;\n"
                                               "UPDATE users SET nickname = 'n' WHERE id > 0;\n"})
    env = {"APP_DATABASE_URL": prod_db.dsn}
    rehearsed = shadow_cli("plan", "--json", env=env)
    assert rehearsed.code == 0, rehearsed.text
    report = json.loads(rehearsed.out)
    undo = [v for v in report["expectations"] if v["rule"] == "rollback"]
    assert undo and undo[0]["ok"], report["expectations"]
    assert any(s["step"] == "rehearse rollback" for s in report["steps"])

    write_plan(tmp_path, body + "policy: {rehearse_rollback: false}\n")
    unrehearsed = shadow_cli("plan", "--json", env=env)
    report = json.loads(unrehearsed.out)
    assert not [v for v in report["expectations"] if v["rule"] == "rollback"]
    assert "the rollback is unrehearsed" in json.dumps(report["targets"])


def test_a_rollback_that_does_not_restore_the_checkpoint_is_caught(prod_db: ProdDb, tmp_path: Path) -> None:
    settings = Settings.from_env(state_dir=tmp_path / "state")
    store = Store(settings.store_dir)
    target = PostgresTarget("app", {"dsn": prod_db.dsn}, settings)
    older = target.checkpoint(store, "run-older")
    prod_db.execute("ALTER TABLE users ADD COLUMN nickname text")
    newer = target.checkpoint(store, "run-newer")
    with target.shadow(newer, store, "run-newer", "local") as shadow:
        assert shadow.rehearse_rollback() == []
        shadow.archive = store.open_verified(_artifact(older))
        problems = shadow.rehearse_rollback()
    assert problems and any("nickname" in p for p in problems), problems


def test_two_targets_in_one_database_share_its_advisory_lock(prod_db: ProdDb, shadow_cli, tmp_path: Path) -> None:
    write_plan(tmp_path, """
targets:
  app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}
  reporting: {kind: postgres, dsn: "${REPORTING_URL}"}
action: {command: "true"}
policy: {rehearse_rollback: false}
""")
    env = {"APP_DATABASE_URL": prod_db.dsn, "REPORTING_URL": prod_db.dsn + " application_name=reporting"}
    applied = shadow_cli("apply", "--lock-timeout", "2", env=env)
    assert applied.code == 0, applied.text
