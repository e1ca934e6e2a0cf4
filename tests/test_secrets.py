"""Secrets planted in the DSN, the data and the environment reach no report, no log line and no journal row."""

from __future__ import annotations

import json
import secrets
import sqlite3
from pathlib import Path

import pytest

from shadow import reports
from tests.conftest import ProdDb, write_plan
from tests.inprocess import run_main

PLAN = """
version: 1
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: m.sql}
expect:
  app:
    may: [update rows public.users]
    rows: {public.users: {updated: 1}}
"""
SQL = "UPDATE users SET full_name = upper(full_name) WHERE id = 1;\n"


def _journal_dump(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
        return "\n".join(f"{name}: {row!r}" for name in names for row in db.execute(f'SELECT * FROM "{name}"'))
    finally:
        db.close()


def _state_files(state: Path) -> dict[str, bytes]:
    """Every file shadow wrote, except checkpoint artifacts (which hold production's data by design)."""
    return {str(p): p.read_bytes() for p in state.rglob("*")
            if p.is_file() and "objects" not in p.relative_to(state).parts and not p.name.startswith("journal.sqlite")}


@pytest.fixture
def planted(prod_db: ProdDb) -> dict[str, str]:
    planted = {
        "dsn password": "dsnpw" + secrets.token_hex(8),
        "api_token value": "tok_live_" + secrets.token_hex(8),
        "AWS_SECRET_ACCESS_KEY": "awssecret" + secrets.token_hex(8),
        "MY_TOKEN": "mytoken" + secrets.token_hex(8),
    }
    role = f"owner_{prod_db.name}"
    prod_db.execute(f"""
        CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{planted["dsn password"]}';
        ALTER TABLE users ADD COLUMN api_token text;
        UPDATE users SET api_token = '{planted["api_token value"]}' WHERE id = 1;
    """)
    planted["dsn"] = prod_db.server.dsn(prod_db.name, user=role, password=planted["dsn password"])
    return planted


def test_no_secret_reaches_a_report_a_log_line_or_the_journal(planted, shadow_cli, tmp_path):
    write_plan(tmp_path, PLAN, {"m.sql": SQL})
    env = {"APP_DATABASE_URL": planted["dsn"], "AWS_SECRET_ACCESS_KEY": planted["AWS_SECRET_ACCESS_KEY"],
           "MY_TOKEN": planted["MY_TOKEN"]}
    assert planted["dsn password"] in planted["dsn"]
    outputs: dict[str, str] = {}
    run_ids = []
    for verb, *flags in (("plan",), ("apply", "--json")):
        r = shadow_cli(verb, *flags, env=env)
        assert r.code == 0, r.text
        outputs[f"{verb} stdout"], outputs[f"{verb} stderr"] = r.out, r.err
        run_ids.append(json.loads(r.out)["run_id"] if flags else r.out.split("run ")[-1].split()[0])
    state = shadow_cli.state_dir
    for run_id in run_ids:
        for fmt in reports.FORMATS:
            shown = run_main(state, "show", run_id, "--format", fmt, env=env)
            assert shown.code == 0, shown.text
            outputs[f"show {run_id} {fmt}"] = shown.text
    for verb in (("runs", "--json"), ("runs",), ("audit", "--json")):
        r = run_main(state, *verb, env=env)
        assert r.code == 0, r.text
        outputs[" ".join(verb)] = r.text
    outputs["journal"] = _journal_dump(state / "journal.sqlite")
    files = _state_files(state)
    assert {Path(f).name for f in files} >= {"report.json", "report.md"}
    sample_rows = [o for o in outputs.values() if "USER 1" in o]
    assert sample_rows, "the reports should show the updated row, so the data secret had a chance to leak"

    for name in ("dsn password", "AWS_SECRET_ACCESS_KEY", "MY_TOKEN"):
        value = planted[name]
        assert not [where for where, text in outputs.items() if value in text], name
        assert not [path for path, data in files.items() if value.encode() in data], name
    value = planted["api_token value"]
    assert any("[redacted]" in text for text in outputs.values())
    assert not [where for where, text in outputs.items() if value in text]
    assert not [path for path, data in files.items() if value.encode() in data]


def test_a_wrong_password_is_not_echoed(planted, shadow_cli, tmp_path, prod_db):
    write_plan(tmp_path, PLAN, {"m.sql": SQL})
    wrong = "wrongpw" + secrets.token_hex(8)
    dsn = planted["dsn"].replace(planted["dsn password"], wrong)
    before = prod_db.fingerprint()
    r = run_main(shadow_cli.state_dir, "plan", env={"APP_DATABASE_URL": dsn}, cwd=tmp_path)
    assert r.code == 3, r.text
    assert "password authentication failed" in r.text and "Traceback" not in r.text
    assert wrong not in r.text and planted["dsn password"] not in r.text
    assert prod_db.fingerprint() == before


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
