"""`shadow audit`: the journal's hash chain verifies untouched and names the first row edited, deleted or reordered."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from shadow.journal import Journal, row_hash
from tests.conftest import write_plan
from tests.inprocess import run_main

PLAN = """
version: 1
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: m.sql}
expect: {app: {may: [insert rows public.audit_log]}}
"""


def _journal(path: Path) -> None:
    """Two finished runs with steps, the second one's step ended twice (a retried restore)."""
    j = Journal(path)
    try:
        j.start_run("run-a", "plan", "/plans/shadow.yaml", "a" * 64)
        j.finish_run("run-a", "passed", "PASSED")
        j.start_run("run-b", "apply", "/plans/shadow.yaml", "b" * 64)
        first = j.begin_step("run-b", "apply", "app", "restore app from the checkpoint of run-b")
        j.end_step("run-b", first, "failed")
        second = j.begin_step("run-b", "restore", "app", "production 'app' must equal checkpoint of run-b")
        j.end_step("run-b", second, "failed")
        j.end_step("run-b", second, "done", {"attempts": 2})
        j.finish_run("run-b", "rolled_back", "ROLLED BACK")
    finally:
        j.close()


def _sql(path: Path, *statements: str) -> None:
    db = sqlite3.connect(path)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()


def _audit(state_dir: Path) -> tuple[int, dict]:  # type: ignore[type-arg]
    r = run_main(state_dir, "audit", "--json")
    assert "Traceback" not in r.text
    return r.code, json.loads(r.out)


def test_journal_of_a_real_plan_verifies(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, PLAN, {"m.sql": "INSERT INTO audit_log VALUES (now(), 'x');"})
    env = {"APP_DATABASE_URL": prod_db.dsn}
    assert shadow_cli("plan", "-q", env=env).code == 0
    r = shadow_cli("audit")
    assert r.code == 0, r.text
    assert "journal intact" in r.out
    code, model = _audit(shadow_cli.state_dir)
    assert code == 0 and model["intact"] and model["tampered"] is None
    assert model["rows"] == 2  # the run's start and its end (an apply's journal is audited in test_secrets)
    runs = sqlite3.connect(shadow_cli.state_dir / "journal.sqlite").execute("SELECT command, outcome FROM runs")
    assert runs.fetchall() == [("plan", "passed")]


def _reorder_steps(path: Path) -> None:
    _sql(path, "UPDATE step_starts SET seq = -1 WHERE run_id = 'run-b' AND seq = 1",
         "UPDATE step_starts SET seq = 1 WHERE run_id = 'run-b' AND seq = 2",
         "UPDATE step_starts SET seq = 2 WHERE run_id = 'run-b' AND seq = -1")


def _swap_links(path: Path) -> None:
    _sql(path, "UPDATE run_ends SET link = 100 WHERE link = 2",
         "UPDATE run_starts SET link = 2 WHERE link = 3",
         "UPDATE run_ends SET link = 3 WHERE link = 100")


def _edit_and_rehash(path: Path) -> None:
    """Edit a row and give it a matching row_hash: only the chain (the next row's prev_hash) can tell."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    row = dict(db.execute("SELECT * FROM step_starts WHERE link = 4").fetchone())
    row["undo"] = "nothing to undo"
    db.execute("UPDATE step_starts SET undo = ?, row_hash = ? WHERE link = 4",
               (row["undo"], row_hash("step_starts", row)))
    db.commit()
    db.close()


def _insert_forged(path: Path) -> None:
    db = sqlite3.connect(path)
    prev = db.execute("SELECT prev_hash FROM step_ends WHERE link = 5").fetchone()[0]
    row = {"link": 5, "prev_hash": prev, "at": 0.0, "text": "all good"}
    db.execute("INSERT INTO notes VALUES (5, ?, ?, 0.0, 'all good')", (prev, row_hash("notes", row)))
    db.commit()
    db.close()


CASES: list[tuple[str, Callable[[Path], None], dict[str, object], str]] = [
    ("change-a-value", lambda p: _sql(p, "UPDATE step_starts SET undo = 'nothing' WHERE link = 6"),
     {"table": "step_starts", "link": 6, "run_id": "run-b", "key": "seq 2"}, "does not match its row_hash"),
    ("change-an-outcome", lambda p: _sql(p, "UPDATE run_ends SET outcome = 'applied' WHERE run_id = 'run-b'"),
     {"table": "run_ends", "link": 9, "run_id": "run-b"}, "does not match its row_hash"),
    ("change-a-time", lambda p: _sql(p, "UPDATE run_starts SET started_at = started_at - 3600 WHERE id = 'run-a'"),
     {"table": "run_starts", "link": 1, "run_id": "run-a"}, "does not match its row_hash"),
    ("delete-a-row", lambda p: _sql(p, "DELETE FROM step_ends WHERE link = 7"),
     {"table": "step_ends", "link": 8, "run_id": "run-b", "key": "seq 2"}, "link 7 before it is missing"),
    ("delete-a-run", lambda p: _sql(p, "DELETE FROM run_starts WHERE id = 'run-b'"),
     {"table": "step_starts", "link": 4, "run_id": "run-b"}, "link 3 before it is missing"),
    ("delete-the-last-row", lambda p: _sql(p, "DELETE FROM run_ends WHERE link = 9"),
     {"table": "chain_head", "link": None}, "chain ends at link 8 but its head records link 9"),
    ("reorder-steps", _reorder_steps,
     {"table": "step_starts", "link": 4, "run_id": "run-b", "key": "seq 2"}, "does not match its row_hash"),
    ("reorder-links", _swap_links, {"table": "run_starts", "link": 2, "run_id": "run-b"}, "does not match its row_hash"),
    ("edit-and-rehash", _edit_and_rehash,
     {"table": "step_ends", "link": 5, "run_id": "run-b", "key": "seq 1"}, "prev_hash does not match"),
    ("insert-a-row", lambda p: _sql(p, "INSERT INTO notes SELECT 5, prev_hash, row_hash, 0, 'fine' FROM step_ends "
                                       "WHERE link = 5"),
     {"table": "notes", "link": 5}, "does not match its row_hash"),
    ("insert-a-forged-row", _insert_forged, {"table": "step_ends", "link": 5, "run_id": "run-b"}, "appears twice"),
    ("rows-outside-the-chain", lambda p: _sql(p, "CREATE TABLE extra (x)", "INSERT INTO extra VALUES (1)"),
     {"table": "extra", "link": None}, "not part of the journal"),
    ("view-redefined", lambda p: _sql(p, "DROP VIEW runs", "CREATE VIEW runs AS SELECT * FROM run_starts"),
     {"table": "runs", "link": None}, "view's definition"),
]


@pytest.mark.parametrize(("tamper", "expected", "problem"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_audit_names_the_first_tampered_row(tmp_path, tamper, expected, problem):
    path = tmp_path / "journal.sqlite"
    _journal(path)
    assert _audit(tmp_path)[0] == 0
    tamper(path)
    code, model = _audit(tmp_path)
    assert code == 1 and not model["intact"]
    found = model["tampered"]
    assert {k: found[k] for k in expected} == expected, found
    assert problem in found["problem"]
    r = run_main(tmp_path, "audit")
    assert r.code == 1 and "journal NOT intact" in r.out and found["message"] in " ".join(r.out.split())


def test_tampered_journal_fails_the_installed_command(shadow_cli):
    path = shadow_cli.state_dir / "journal.sqlite"
    _journal(path)
    _sql(path, "UPDATE run_ends SET outcome = 'applied' WHERE run_id = 'run-b'")
    r = shadow_cli("audit")
    assert r.code == 1 and "Traceback" not in r.text
    assert "run_ends link 9 (run run-b): its content does not match its row_hash" in " ".join(r.out.split())


def test_untouched_journal_verifies_and_reports_its_head(tmp_path):
    path = tmp_path / "journal.sqlite"
    _journal(path)
    code, model = _audit(tmp_path)
    last = sqlite3.connect(path).execute("SELECT row_hash FROM run_ends WHERE link = 9").fetchone()[0]
    assert code == 0 and model["rows"] == 9 and model["head"] == last


def test_each_row_hash_covers_its_content_and_the_previous_hash(tmp_path):
    path = tmp_path / "journal.sqlite"
    _journal(path)
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    first = dict(db.execute("SELECT * FROM run_starts WHERE link = 1").fetchone())
    second = dict(db.execute("SELECT * FROM run_ends WHERE link = 2").fetchone())
    assert first["prev_hash"] == "0" * 64 and second["prev_hash"] == first["row_hash"]
    content = {k: v for k, v in second.items() if k != "row_hash"}
    body = json.dumps(["run_ends", content], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert second["row_hash"] == hashlib.sha256(body.encode()).hexdigest()


V1_SCHEMA = """
CREATE TABLE runs (id TEXT PRIMARY KEY, command TEXT NOT NULL, plan_path TEXT NOT NULL, plan_sha256 TEXT NOT NULL,
                   started_at REAL NOT NULL, finished_at REAL, outcome TEXT, summary TEXT);
CREATE TABLE steps (run_id TEXT NOT NULL REFERENCES runs(id), seq INTEGER NOT NULL, target TEXT, step TEXT NOT NULL,
                    state TEXT NOT NULL, undo TEXT, detail TEXT, started_at REAL NOT NULL, ended_at REAL,
                    PRIMARY KEY (run_id, seq));
INSERT INTO runs VALUES ('old-1', 'apply', '/p/shadow.yaml', 'c', 100.0, 160.0, 'applied', 'APPLIED');
INSERT INTO runs VALUES ('old-2', 'plan', '/p/shadow.yaml', 'c', 200.0, NULL, NULL, NULL);
INSERT INTO steps VALUES ('old-1', 1, 'app', 'apply', 'done', 'restore app', '{}', 110.0, 150.0);
INSERT INTO steps VALUES ('old-2', 1, 'app', 'restore', 'started', 'restore app', '{}', 210.0, NULL);
"""


def test_old_journal_is_reported_then_migrated_into_the_chain(tmp_path):
    path = tmp_path / "journal.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.close()
    code, model = _audit(tmp_path)
    assert code == 1 and model["schema_version"] == 1
    assert "written before the hash chain" in model["tampered"]["problem"]
    runs = run_main(tmp_path, "runs", "--json")
    assert runs.code == 0, runs.text
    assert [(r["id"], r["outcome"]) for r in json.loads(runs.out)] == [("old-2", None), ("old-1", "applied")]
    code, model = _audit(tmp_path)
    assert code == 0, model
    assert model["rows"] == 7 and "migrated 2 runs and 2 steps" in model["notes"][0]
    steps = sqlite3.connect(path).execute("SELECT run_id, step, state, ended_at FROM steps ORDER BY run_id").fetchall()
    assert steps == [("old-1", "apply", "done", 150.0), ("old-2", "restore", "started", None)]


def test_audit_without_a_journal_is_bad_input(tmp_path):
    r = run_main(tmp_path / "state", "audit")
    assert r.code == 2 and "no journal at" in r.err and "Traceback" not in r.text
