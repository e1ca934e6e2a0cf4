"""What a user reads (issue 13, items 6–10 and 12–14): verdict lines, refusals in change addresses, steps that
found a problem, `shadow runs`, connection errors, definition diffs and wording — through the real CLI against a
real PostgreSQL production."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from tests.conftest import ProdDb, write_plan

SAFE_PLAN = """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: migrate.sql}
expect: {app: {must: ["add column public.users.nickname"]}}
"""
SAFE_SQL = "ALTER TABLE users ADD COLUMN nickname text;\n"


def _env(db: ProdDb) -> dict[str, str]:
    return {"APP_DATABASE_URL": db.dsn}


def _run_id(out: str) -> str:
    return out.split("run ")[-1].split()[0]


def _report(shadow_cli, run_id: str) -> dict:  # type: ignore[no-untyped-def]
    return json.loads((shadow_cli.state_dir / "runs" / run_id / "report.json").read_text())


def _steps(report: dict) -> dict[str, dict]:
    return {f"{s['step']} {s['target'] or ''}".strip(): s for s in report["steps"]}


# -- item 6: drift after approval --------------------------------------------------------------------------------
def test_drift_after_approval_is_reported_in_the_plain_applys_addresses_and_printed(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, SAFE_PLAN.replace("expect:", "policy: {approval: required}\nexpect:"),
               {"migrate.sql": SAFE_SQL})
    planned = shadow_cli("plan", "--json", env=_env(prod_db))
    run_id = json.loads(planned.out)["run_id"]
    assert shadow_cli("approve", run_id, "--by", "alice", env=_env(prod_db)).code == 0
    prod_db.execute("INSERT INTO users (email, full_name) VALUES ('late@example.com', 'Late Writer')")

    r = shadow_cli("apply", "--run", run_id, env=_env(prod_db))
    assert r.code == 1, r.text
    # One inserted row, counted: not `alter sequence … last_value` and an uncounted `update rows`.
    assert "production app changed:" in r.out
    assert "insert rows public.users — 1 row (+1 implied)" in r.out
    report = _report(shadow_cli, _run_id(r.out))
    changed = report["targets"][0]["production_changes"]
    assert [c["address"] for c in changed] == ["insert rows public.users"]
    assert changed[0]["detail"]["count"] == 1
    assert [c["address"] for c in changed[0]["implied"]] == ["alter sequence public.users_id_seq"]
    assert _steps(report)["drift check app"]["state"] == "problem"
    assert not _column_exists(prod_db)


def _column_exists(db: ProdDb) -> bool:
    return bool(db.scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' "
                          "AND column_name = 'nickname'"))


# -- item 7 (+ 14): rollback refusals ----------------------------------------------------------------------------
def test_rollback_refusal_speaks_in_change_addresses_not_diff_internals(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, SAFE_PLAN, {"migrate.sql": SAFE_SQL})
    applied = shadow_cli("apply", env=_env(prod_db))
    assert applied.code == 0, applied.text
    prod_db.execute("CREATE INDEX users_late_idx ON users (full_name); "
                    "INSERT INTO audit_log VALUES (now(), 'a write after the apply')")

    r = shadow_cli("rollback", _run_id(applied.out), "--full", env=_env(prod_db))  # the whole checkpoint
    assert r.code == 1, r.text
    assert "root[" not in r.text and "dictionary item" not in r.text
    assert "add index public.users_late_idx" in r.out
    assert "update rows public.audit_log — content changed (rows: 2 → 3)" in r.out
    # Item 14: a rollback refusal does not talk about applying.
    assert "REFUSED — nothing was restored; production was left as it is" in r.out
    assert "nothing was applied" not in r.out
    md = (shadow_cli.state_dir / "runs" / _run_id(r.out) / "report.md").read_text()
    assert "root[" not in md and "`add index public.users_late_idx`" in md
    assert _column_exists(prod_db)


def test_rollback_of_a_run_already_rolled_back_says_so_in_one_line(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, SAFE_PLAN, {"migrate.sql": SAFE_SQL})
    applied = shadow_cli("apply", env=_env(prod_db))
    run_id = _run_id(applied.out)
    first = shadow_cli("rollback", run_id, env=_env(prod_db))
    assert first.code == 0, first.text
    again = shadow_cli("rollback", run_id, env=_env(prod_db))
    assert again.code == 2, again.text
    lines = again.err.strip().splitlines()
    assert len(lines) == 1, again.err
    assert f"run {run_id} was already rolled back by run {_run_id(first.out)}" in lines[0]
    assert again.out == ""


# -- item 8: the headline of a failed one-transaction apply ----------------------------------------------------
def test_failed_one_transaction_apply_headline_says_production_was_never_changed(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, SAFE_PLAN, {"migrate.sql": SAFE_SQL + f"""
DO $$ BEGIN
  IF current_setting('port')::int = {prod_db.server.port} THEN RAISE EXCEPTION 'disk quota exceeded'; END IF;
END $$;
"""})
    before = prod_db.fingerprint()
    r = shadow_cli("apply", env=_env(prod_db))
    assert r.code == 1, r.text
    assert "ROLLED BACK — the transaction was rolled back; production was never changed" in r.out
    assert "restored to the checkpoint" not in r.out
    md = (shadow_cli.state_dir / "runs" / _run_id(r.out) / "report.md").read_text()
    assert "**ROLLED BACK — the transaction was rolled back; production was never changed**" in md
    html = (shadow_cli.state_dir / "runs" / _run_id(r.out) / "report.html").read_text()
    assert "restored to the checkpoint" not in html and "production was never changed" in html
    # Item 9: the apply step found a problem; it is not marked ✓.
    assert re.search(r"✗ apply app \(\d+\.\d s\): the action failed on production", r.err), r.err
    assert "✓ apply" not in r.err
    assert prod_db.fingerprint() == before


def test_the_readme_lists_every_verdict_line():
    from shadow.outcome import Outcome
    from shadow.reports import verdict_line

    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    undo = {"mode": "undo", "verified": True, "conflicts": []}
    models = [{"outcome": "refused", "command": "rollback"},
              {"outcome": "rolled_back", "targets": [{"restore": {"transaction": "rolled back", "verified": True}}]},
              {"outcome": "rolled_back", "targets": [{"restore": {"needed": False, "verified": True}}]},
              {"outcome": "rolled_back", "targets": [{"restore": undo}]},
              {"outcome": "restored", "targets": [{"restore": undo}]}]
    lines = [o.verdict for o in Outcome if " — " in o.verdict] + [verdict_line(m) for m in models]
    missing = [line for line in lines if f"`{line}`" not in readme and f"`{line.split(' — ')[1]}`" not in readme]
    assert not missing, missing


# -- item 9: steps that found a problem -------------------------------------------------------------------------
DIVERGING = """
import os, psycopg
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    n = 3 if os.environ["PGPORT"] == os.environ["PROD_PORT"] else 1
    for i in range(n):
        conn.execute("INSERT INTO audit_log VALUES (now(), 'hello')")
"""


def test_steps_that_found_a_problem_are_not_marked_done(prod_db, shadow_cli, tmp_path):
    import sys

    write_plan(tmp_path, f"""
targets: {{app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}}}
action:
  command: "{sys.executable} backfill.py"
  env: {{PROD_PORT: "{prod_db.server.port}"}}
expect: {{app: {{may: [insert rows public.audit_log]}}}}
""", {"backfill.py": DIVERGING})
    r = shadow_cli("apply", env=_env(prod_db))
    assert r.code == 1, r.text
    assert re.search(r"✗ verify app \(\d+\.\d s\): production did not change the way the shadow did", r.err), r.err
    assert "✓ verify app" not in r.err
    steps = _steps(_report(shadow_cli, _run_id(r.out)))
    assert steps["verify app"]["state"] == "problem"
    assert steps["apply"]["state"] == "done"
    folder = shadow_cli.state_dir / "runs" / _run_id(r.out)
    md = (folder / "report.md").read_text()
    assert "| verify | app |" in md and "found: production did not change the way the shadow did" in md
    # Item 8: a command cannot run in one transaction; only the run's own change was undone, not the checkpoint.
    undone = "ROLLED BACK — the run's own change was undone and verified; everyone else's writes were kept"
    assert undone in r.out and "restored to the checkpoint" not in r.out
    assert f"**{undone}**" in md and "restored to the checkpoint" not in md
    page = html.unescape((folder / "report.html").read_text())
    assert "the run's own change was undone and verified; everyone else's writes were kept" in page
    assert "restored to the checkpoint" not in page


def test_a_forced_undo_headline_says_it_overwrote_later_writes():
    from shadow.reports import verdict_line

    undo = {"needed": True, "mode": "undo", "verified": True, "done": ["public.users: 1 row(s) updated"],
            "conflicts": ["public.users (id)=(1) was changed again since", "public.orders (id)=(4) was deleted"]}
    line = verdict_line({"outcome": "restored", "command": "rollback", "targets": [{"restore": undo}]})
    assert line == ("RESTORED — the run's own change was undone and verified, overwriting others' later writes to 2 "
                    "row(s), table(s) or object(s) it had changed; every other write was kept")


# -- item 10: `shadow runs` never cuts run ids ------------------------------------------------------------------
def test_runs_prints_whole_run_ids_off_a_terminal(prod_db, shadow_cli, tmp_path):
    folder = tmp_path / ("a-folder-with-a-rather-long-name-" * 3)
    folder.mkdir()
    write_plan(folder, SAFE_PLAN, {"migrate.sql": SAFE_SQL})
    planned = shadow_cli("plan", "-f", str(folder / "shadow.yaml"), env=_env(prod_db))
    run_id = _run_id(planned.out)
    r = shadow_cli("runs")
    assert r.code == 0, r.text
    assert run_id in r.out, r.out
    assert "…" not in r.out.splitlines()[1]


# -- item 12: an unreachable DSN ----------------------------------------------------------------------------------
def test_unreachable_dsn_keeps_the_reason_on_one_line(shadow_cli, tmp_path):
    from adapters.postgres.cluster import free_port

    write_plan(tmp_path, SAFE_PLAN, {"migrate.sql": SAFE_SQL})
    r = shadow_cli("plan", env={"APP_DATABASE_URL": f"postgresql://app@127.0.0.1:{free_port()}/shop"})
    assert r.code == 3, r.text
    lines = [line for line in r.err.splitlines() if line.startswith("shadow: error:")]
    assert len(lines) == 1 and r.err.rstrip().endswith(lines[0]), r.err
    assert "cannot connect to postgresql://app@127.0.0.1:" in lines[0]
    assert "failed: Connection refused; Is the server running on that host" in lines[0]
    assert "  " not in lines[0] and "\t" not in lines[0]


@pytest.mark.parametrize("entry", ["execute", "execute_verified"])
def test_the_applys_own_connection_keeps_libpqs_reason_and_hint(entry):
    from adapters.postgres import execute
    from adapters.postgres.cluster import free_port
    from shadow.errors import TargetUnreachable

    port = free_port()  # nothing listens there: the OS refuses the connection
    dsn = f"host=127.0.0.1 port={port} dbname=shop user=app password=not-to-be-quoted connect_timeout=5"
    with pytest.raises(TargetUnreachable) as caught:
        if entry == "execute":
            execute.execute(dsn, [], 5, "app")
        else:
            execute.execute_verified(dsn, [], 5, "app", lambda conn, prepared: [])
    assert str(caught.value) == (f'target \'app\': cannot connect: connection to server at "127.0.0.1", port {port} '
                                 "failed: Connection refused; Is the server running on that host and accepting "
                                 "TCP/IP connections?")


# -- item 13: definition diffs and catalog codes ------------------------------------------------------------------
DEFINITIONS_SQL = """
CREATE OR REPLACE FUNCTION log_cancellation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_log VALUES (now(), 'order ' || NEW.id || ' was cancelled');
    RETURN NEW;
END $$;
ALTER TABLE orders DISABLE TRIGGER orders_cancelled;
"""


def test_definition_changes_read_as_unified_diffs_and_codes_as_words(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: migrate.sql}
expect: {app: {must: ["alter function public.log_cancellation()", "alter trigger *"]}}
""", {"migrate.sql": DEFINITIONS_SQL})
    r = shadow_cli("plan", env=_env(prod_db))
    assert r.code == 0, r.text
    folder = shadow_cli.state_dir / "runs" / _run_id(r.out)
    md = (folder / "report.md").read_text()
    assert "- `alter function public.log_cancellation()` — definition changed:" in md
    assert "  ```diff" in md
    assert "  -    INSERT INTO audit_log VALUES (now(), 'order ' || NEW.id || ' cancelled');" in md
    assert "  +    INSERT INTO audit_log VALUES (now(), 'order ' || NEW.id || ' was cancelled');" in md
    assert "state: `enabled` → `disabled`" in md
    assert "enabled: `O`" not in md
    html = (folder / "report.html").read_text()
    assert ('<span class="add">+    INSERT INTO audit_log VALUES (now(), &#x27;order &#x27; || NEW.id || '
            '&#x27; was cancelled&#x27;);</span>') in html
    assert "<td>state</td><td><code>enabled</code></td><td><code>disabled</code></td>" in html


def test_a_long_definition_line_is_cut_where_it_changed():
    from shadow.reports.common import DIFF_LINE_CHARS, definition_diff

    before = "SELECT " + ", ".join(f"col{i}" for i in range(100)) + " FROM t"  # one line of 700 characters
    after = before.replace("col80,", "col80 AS renamed,")
    header, removed, added = definition_diff(before, after)
    assert header == "@@ -1 +1 @@"
    assert removed != added and "col80, col81" in removed and "col80 AS renamed, col81" in added
    assert removed.startswith("-…") and added.startswith("+…")  # what was left out is marked
    assert max(len(removed), len(added)) <= DIFF_LINE_CHARS
    assert removed.index("col80") == added.index("col80")  # both sides cut at the same place: they line up
    # A change past the cut near the end: both lines end with it, each marked as starting mid-line.
    _, removed, added = definition_diff("x" * 400 + " a", "x" * 400 + " b")
    assert removed.startswith("-…") and removed.endswith("x a") and added.endswith("x b")
    assert removed.count("…") == 1


# -- item 14: wording ---------------------------------------------------------------------------------------------
def test_applied_says_its_sentence_once_and_how_to_undo(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, SAFE_PLAN, {"migrate.sql": SAFE_SQL})
    r = shadow_cli("apply", env=_env(prod_db))
    assert r.code == 0, r.text
    assert r.out.count("production changed exactly as rehearsed") == 1, r.out
    assert f"undo with `shadow rollback {_run_id(r.out)}`" in r.out


def test_a_failed_rehearsal_reports_the_time_it_took(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, SAFE_PLAN, {"migrate.sql": "SELECT pg_sleep(0.4);\nSELECT * FROM no_such_table;\n"})
    r = shadow_cli("plan", env=_env(prod_db))
    assert r.code == 2, r.text
    run_id = sorted(p.name for p in (shadow_cli.state_dir / "runs").iterdir())[-1]
    report = _report(shadow_cli, run_id)
    assert report["action"]["rehearsal"]["seconds"] >= 0.4
    md = (shadow_cli.state_dir / "runs" / run_id / "report.md").read_text()
    assert re.search(r"action on rehearsal: FAILED in 0\.[4-9]\d s", md), md


def test_the_rehearsal_tells_lint_which_tables_are_partitioned(prod_db, shadow_cli, tmp_path):
    # Nothing in the SQL says payments is partitioned: the checkpoint does, and the hint must not be CONCURRENTLY.
    prod_db.execute("""
        CREATE TABLE payments (id bigint, paid_on date NOT NULL, amount numeric) PARTITION BY RANGE (paid_on);
        CREATE TABLE payments_2026 PARTITION OF payments FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
        INSERT INTO payments VALUES (1, '2026-03-01', 10);
    """)
    write_plan(tmp_path, """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: index.sql}
expect: {app: {may: ["add index public.*"]}}
""", {"index.sql": "SET lock_timeout = '2s';\nSET statement_timeout = '60s';\nCREATE INDEX payments_amount_idx ON payments (amount);\n"})
    r = shadow_cli("plan", "--json", env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 0, r.text
    (finding,) = [f for f in json.loads(r.out)["findings"] if f["id"] == "create-index-blocking"]
    assert "ON ONLY" in finding["hint"] and "takes no CREATE INDEX CONCURRENTLY" in finding["hint"], finding


def test_the_summary_table_counts_rows_a_dropped_column_updated(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: drop.sql}
expect: {app: {may: ["drop column public.users.full_name"]}}
policy: {allow: [drop-column]}
""", {"drop.sql": "SET lock_timeout = '2s';\nSET statement_timeout = '60s';\nALTER TABLE users DROP COLUMN full_name;\n"})
    r = shadow_cli("plan", env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 0, r.text
    # the 500 updated rows are implied by the drop (nested), and still counted in the table
    assert re.search(r"^│? *app *│? *1 *│? *\+0 ~500 -0 ", r.out, re.M), r.out


def test_restore_verification_speaks_in_change_addresses(prod_db, tmp_path):
    from snapshots import Store

    target = prod_db.target()
    checkpoint = target.checkpoint(Store(tmp_path / "store"), "20261202-000000-abcdef")
    prod_db.execute("CREATE INDEX users_late_idx ON users (created_at); "
                    "INSERT INTO audit_log VALUES ('2026-12-02', 'after the checkpoint')")
    problems = target.verify_restored(checkpoint)
    assert "add index public.users_late_idx" in problems
    assert any(p.startswith("update rows public.audit_log — content changed") for p in problems), problems
    assert not any("root[" in p for p in problems), problems


# -- a statement's own error that psycopg files as operational --------------------------------------------------
@pytest.mark.parametrize("sql, words, line", [
    # 55P04: a new enum value used in the transaction that added it
    ("CREATE TYPE mood AS ENUM ('ok');\nBEGIN;\nALTER TYPE mood ADD VALUE 'sad';\nSELECT 'sad'::mood;\nCOMMIT;\n",
     "unsafe use of new value", 4),
    # 54000: a value too big for a btree index entry
    ("CREATE TABLE big (v text);\nCREATE INDEX ON big (v);\n"
     "INSERT INTO big SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g;\n",
     "index row requires", 3),
    # 55000: currval before nextval in the session
    ("CREATE SEQUENCE s;\nSELECT currval('s');\n", "is not yet defined in this session", 2),
], ids=["enum value", "index row", "currval"])
def test_a_statements_own_error_filed_as_operational_is_a_rejected_statement_not_a_lost_connection(
        prod_db, shadow_cli, tmp_path, sql, words, line):
    write_plan(tmp_path, SAFE_PLAN, {"migrate.sql": sql})
    r = shadow_cli("plan", env=_env(prod_db))
    assert r.code == 2, r.text
    assert "lost the connection" not in r.text
    assert words in r.text and "the server rejected the statement" in r.text, r.text
    assert f"migrate.sql:{line}:" in r.text, r.text
