"""Issue 15 item 4: an apply that cannot run in one transaction (``CREATE INDEX CONCURRENTLY``) keeps an undo
record too, so its rollback — ``shadow rollback``, the automatic undo of a failed apply, ``shadow recover`` after a
kill — puts back only the tables and objects it changed, never the whole database. Real PostgreSQL, the real CLI,
and a writer process (:mod:`tests.writer`) that keeps writing to another table throughout.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import ProdDb, table_digest, warnings_of, write_plan
from tests.writer import Writer

EVENTS = """
CREATE TABLE events (id bigserial PRIMARY KEY, note text NOT NULL);
INSERT INTO events (note) SELECT 'seed ' || g FROM generate_series(1, 50) g;
"""
MIGRATE = """UPDATE users SET full_name = upper(full_name) WHERE id <= 40;
CREATE INDEX CONCURRENTLY users_full_name_idx ON users (full_name);
"""
# Fails on production only: the shadow's server listens on another port.
FAILS_IN_PRODUCTION = "SELECT 1 / (current_setting('port') <> '{port}')::int;\n"
PLAN = """
version: 1
targets:
  app: {{kind: postgres, dsn: "{dsn}"}}
action:
  sql: migrate.sql
expect:
  app:
    must: [add index public.users_full_name_idx]
    may: [update rows public.users]
policy:
  rehearse_rollback: false
"""
UNTOUCHED = ("orders", "audit_log", "events")


def _plan(tmp_path: Path, db: ProdDb, sql: str) -> Path:
    db.execute(EVENTS)
    return write_plan(tmp_path, PLAN.format(dsn=db.dsn), {"migrate.sql": sql})


def _oids(db: ProdDb) -> dict[str, int]:
    return {t: int(db.scalar(f"SELECT '{t}'::regclass::oid")) for t in ("users",) + UNTOUCHED}  # type: ignore[arg-type]


def _index(db: ProdDb) -> object:
    return db.scalar("SELECT to_regclass('public.users_full_name_idx')")


def test_rollback_of_a_statement_by_statement_apply_puts_back_only_its_table_and_index(
        prod_db: ProdDb, shadow_cli, tmp_path: Path) -> None:
    plan = _plan(tmp_path, prod_db, MIGRATE)
    users, orders, oids = table_digest(prod_db, "users"), table_digest(prod_db, "orders"), _oids(prod_db)
    with Writer(prod_db.dsn, "events", tmp_path / "writes.jsonl", every=0.005) as writer:
        applied = shadow_cli("apply", "-f", str(plan), "--json")
        assert applied.code == 0, applied.text
        report = json.loads(applied.out)
        assert "cannot run in a transaction" in report["action"]["production"]["mode"], report["action"]
        assert _index(prod_db) is not None and table_digest(prod_db, "users") != users
        rolled = shadow_cli("rollback", report["run_id"], "--json")
        writer.stop()
    assert rolled.code == 0, rolled.text
    back = json.loads(rolled.out)
    assert back["outcome"] == "restored", back["reason"]
    assert _index(prod_db) is None
    assert (table_digest(prod_db, "users"), table_digest(prod_db, "orders")) == (users, orders)
    assert _oids(prod_db) == oids  # nothing re-created: no pg_restore over production
    assert writer.assert_kept(prod_db.dsn) > 20
    restore = back["targets"][0]["restore"]
    assert restore["mode"] == "tables" and restore["verified"], restore
    assert "public.users is put back whole from the checkpoint because the apply did not run in one transaction" \
        in restore["why"]
    assert "dropped index public.users_full_name_idx" in restore["done"]
    assert "whole checkpoint" not in warnings_of(back)


def test_a_statement_by_statement_apply_failing_in_production_is_undone_keeping_other_writes(
        prod_db: ProdDb, shadow_cli, tmp_path: Path) -> None:
    plan = _plan(tmp_path, prod_db, MIGRATE + FAILS_IN_PRODUCTION.format(port=prod_db.server.port))
    users, oids = table_digest(prod_db, "users"), _oids(prod_db)
    with Writer(prod_db.dsn, "events", tmp_path / "writes.jsonl", every=0.005) as writer:
        applied = shadow_cli("apply", "-f", str(plan), "--json")
        writer.stop()
    report = json.loads(applied.out)
    assert report["outcome"] == "rolled_back", report["reason"]
    assert "the action failed on production" in report["reason"] and "division by zero" in report["reason"]
    assert "other sessions' writes since were kept" in report["reason"]
    assert _index(prod_db) is None and table_digest(prod_db, "users") == users
    assert _oids(prod_db) == oids
    assert writer.assert_kept(prod_db.dsn) > 5
    restore = report["targets"][0]["restore"]
    assert restore["mode"] != "full" and restore["verified"], restore
    assert any(d.startswith("public.users: put back from the checkpoint") for d in restore["done"]), restore


@pytest.mark.cold  # asserts that nothing outlives the run, or counts fault points of a cold run
def test_an_apply_killed_between_its_statements_is_recovered_table_by_table(
        prod_db: ProdDb, shadow_cli, tmp_path: Path) -> None:
    """SIGKILL after the action ran on production (before its effect was read): `shadow recover` completes the
    pending record and puts back the table and the index — the writer's table and OIDs are kept."""
    plan = _plan(tmp_path, prod_db, MIGRATE)
    users, oids = table_digest(prod_db, "users"), _oids(prod_db)
    trace = tmp_path / "trace.txt"
    template = prod_db.name + "_before"
    with prod_db.server.connect() as conn:
        conn.execute(f'CREATE DATABASE "{template}" TEMPLATE "{prod_db.name}"')
    try:
        assert shadow_cli("apply", "-f", str(plan), env={"SHADOW_FAULT_TRACE": str(trace)}).code == 0
        points = [line.split("\t", 1)[1] for line in trace.read_text().splitlines()]
        kill_at = [i + 1 for i, p in enumerate(points) if p in ("end apply", "begin verify app")]
        assert kill_at, points
        for point in kill_at:
            with prod_db.server.connect() as conn:
                conn.execute(f'DROP DATABASE "{prod_db.name}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{prod_db.name}" TEMPLATE "{template}"')
            oids = _oids(prod_db)
            with Writer(prod_db.dsn, "events", tmp_path / f"writes{point}.jsonl", every=0.005) as writer:
                killed = shadow_cli("apply", "-f", str(plan), env={"SHADOW_FAULT_KILL_AT": str(point)})
                assert killed.code == -signal.SIGKILL, (points[point - 1], killed.text)
                assert _index(prod_db) is not None, points[point - 1]  # the action did run on production
                recovered = shadow_cli("recover")
                writer.stop()
            assert recovered.code == 0 and "Traceback" not in recovered.err, recovered.text
            assert "whole" not in recovered.text and "restored to the checkpoint" not in recovered.text, \
                recovered.text
            assert _index(prod_db) is None and table_digest(prod_db, "users") == users, points[point - 1]
            assert _oids(prod_db) == oids, points[point - 1]
            writer.assert_kept(prod_db.dsn)
    finally:
        with prod_db.server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')


def test_a_dropped_index_is_applied_while_production_moves_and_put_back_on_its_own(
        prod_db: ProdDb, shadow_cli, tmp_path: Path) -> None:
    """A dropped index is put back from the checkpoint's definition (adapters.postgres.undo_definitions), not by
    restoring the whole checkpoint: so a statement-by-statement apply of it goes ahead while production is written
    to, and its rollback keeps every write."""
    plan = _plan(tmp_path, prod_db, "DROP INDEX CONCURRENTLY orders_user_id_idx;\n")
    plan.write_text(plan.read_text().replace("must: [add index public.users_full_name_idx]",
                                             "must: [drop index public.orders_user_id_idx]")
                    .replace("policy:\n", "policy:\n  allow: [drop-index]\n"))
    oids = _oids(prod_db)
    with Writer(prod_db.dsn, "events", tmp_path / "writes.jsonl", every=0.005) as writer:
        result = shadow_cli("apply", "-f", str(plan), "--json")
        assert result.code == 0, result.text
        assert prod_db.scalar("SELECT to_regclass('public.orders_user_id_idx') IS NULL") is True
        rolled = shadow_cli("rollback", json.loads(result.out)["run_id"], "--json")
        writer.stop()
    assert rolled.code == 0, rolled.text
    assert "whole checkpoint" not in warnings_of(json.loads(rolled.out))
    assert prod_db.scalar("SELECT pg_get_indexdef('public.orders_user_id_idx'::regclass)") == (
        "CREATE INDEX orders_user_id_idx ON public.orders USING btree (user_id)")
    assert _oids(prod_db) == oids
    writer.assert_kept(prod_db.dsn)


WRITES_DURING = """
import os, psycopg
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("UPDATE users SET full_name = upper(full_name) WHERE id <= 40")
    if conn.info.port == int(os.environ["PROD_PORT"]):  # on production only: as if another session wrote meanwhile
        conn.execute("UPDATE users SET full_name = 'written meanwhile' WHERE id = 2")
"""
COMMAND_PLAN = """
version: 1
targets:
  app: {{kind: postgres, dsn: "{dsn}"}}
action:
  command: "{python} writes.py"
  env: {{PROD_PORT: "{port}"}}
expect:
  app:
    may: [update rows public.users]
policy:
  rehearse_rollback: false
"""


def test_a_table_written_during_a_statement_by_statement_apply_is_named_by_its_rollback(
        prod_db: ProdDb, shadow_cli, tmp_path: Path) -> None:
    """Such an apply keeps no rows one by one: its tables are put back whole. One that the apply left otherwise
    than the rehearsal did (same row counts, other values: another session wrote to it meanwhile — or the action
    is not deterministic, which the apply cannot tell apart) is named: the put-back may overwrite such a write."""
    plan = write_plan(tmp_path, COMMAND_PLAN.format(dsn=prod_db.dsn, python=sys.executable,
                                                   port=prod_db.server.port), {"writes.py": WRITES_DURING})
    users = table_digest(prod_db, "users")
    applied = shadow_cli("apply", "-f", str(plan), "--json")
    assert applied.code == 0, applied.text
    rolled = shadow_cli("rollback", json.loads(applied.out)["run_id"], "--json")
    assert rolled.code == 0, rolled.text
    assert ("public.users: the apply left it otherwise than the rehearsal did — another session wrote to it during "
            "the apply") in warnings_of(json.loads(rolled.out))
    assert table_digest(prod_db, "users") == users


def test_the_automatic_undo_of_a_failed_statement_by_statement_apply_reports_no_conflict_of_its_own_partial_work(
        prod_db: ProdDb, shadow_cli, tmp_path: Path) -> None:
    """A failed apply leaves its tables otherwise than the rehearsal (it did not finish): that is no sign of another
    writer, so its automatic undo puts them back without calling it an overwrite."""
    plan = write_plan(tmp_path, COMMAND_PLAN.format(dsn=prod_db.dsn, python=sys.executable,
                                                   port=prod_db.server.port),
                      {"writes.py": WRITES_DURING + "    if conn.info.port == int(os.environ['PROD_PORT']):\n"
                                                    "        raise SystemExit('the hook failed half way')\n"})
    users = table_digest(prod_db, "users")
    failed = shadow_cli("apply", "-f", str(plan), "--json")
    report = json.loads(failed.out)
    assert report["outcome"] == "rolled_back", report["reason"]
    assert "other sessions' writes since were kept" in report["reason"], report["reason"]
    assert "overwrote" not in warnings_of(report)
    assert table_digest(prod_db, "users") == users
