"""Production never stands still (issue 15): plan and apply while an application keeps writing.

Every test here runs a real writer process (:mod:`tests.writer`) that commits inserts, updates and deletes —
consuming a sequence — while shadow works, and checks afterwards that every write it committed is still there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import ProdDb, report_of, table_digest, table_oid, warnings_of, write_plan
from tests.writer import Writer

EVENTS = "CREATE TABLE events (id bigserial PRIMARY KEY, note text NOT NULL);"

PLAN = """
version: 1
targets:
  app: {{kind: postgres, dsn: "{dsn}"}}
action:
  sql: migrate.sql
expect:
  app:
    may: [{may}]
policy:
  rehearse_rollback: {undo}
"""


@pytest.fixture
def live_db(prod_db: ProdDb) -> ProdDb:
    prod_db.execute(EVENTS)
    prod_db.execute("INSERT INTO events (note) SELECT 'seed ' || g FROM generate_series(1, 50) g")
    return prod_db


def _plan(tmp_path: Path, db: ProdDb, sql: str, may: str, undo: bool = False) -> Path:
    return write_plan(tmp_path, PLAN.format(dsn=db.dsn, may=may, undo=str(undo).lower()), {"migrate.sql": sql})


def test_a_checkpoint_taken_while_the_application_writes_restores_to_a_faithful_shadow(live_db: ProdDb, shadow_cli,
                                                                                        tmp_path: Path):
    """Sequences are not transactional: what pg_dump recorded for one is what the checkpoint says (item 1)."""
    plan = _plan(tmp_path, live_db, "ALTER TABLE users ADD COLUMN nickname text;\n",
                 "add column public.users.nickname", undo=True)
    with Writer(live_db.dsn, "events", tmp_path / "writes.jsonl", every=0.005) as writer:
        results = [shadow_cli("plan", "-f", str(plan), "--json") for _ in range(3)]
        writer.stop()
    for result in results:
        assert result.code == 0, result.text
        verdicts = {v["rule"]: v for v in json.loads(result.out)["expectations"]}
        assert verdicts["fidelity"]["ok"], verdicts["fidelity"]
    assert writer.assert_kept(live_db.dsn) > 20


def test_an_apply_goes_ahead_while_the_application_writes_to_another_table(live_db: ProdDb, shadow_cli,
                                                                            tmp_path: Path):
    """Writes the action neither read nor wrote are reported, never blocking; verification judges the
    migration's own effect, so the writer's rows are neither blamed on it nor lost (items 2 and 3)."""
    plan = _plan(tmp_path, live_db, "ALTER TABLE users ADD COLUMN nickname text;\n"
                                    "UPDATE users SET nickname = 'n' || id WHERE id <= 10;\n",
                 "add column public.users.nickname, update rows public.users")
    with Writer(live_db.dsn, "events", tmp_path / "writes.jsonl", every=0.005) as writer:
        result = shadow_cli("apply", "-f", str(plan), "--json")
        writer.stop()
    assert result.code == 0, result.text
    report = report_of(result)
    assert report["outcome"] == "applied"
    assert "production also changed since the checkpoint" in warnings_of(report)
    said = warnings_of(report)
    assert re.search(r"rows public\.events — [\d,]+ rows?", said), said  # with its count
    [target] = report["targets"]
    assert [c["address"] for c in target["production_changes"]] == ["add column public.users.nickname",
                                                                     "update rows public.users"]
    assert live_db.scalar("SELECT count(*) FROM users WHERE nickname IS NOT NULL") == 10
    assert writer.assert_kept(live_db.dsn) > 20


def test_a_backfill_of_the_table_the_application_writes_is_judged_on_its_own_rows(live_db: ProdDb, shadow_cli,
                                                                                  tmp_path: Path):
    """The writer inserts, updates and deletes its own rows of the very table the migration backfills: the
    transaction's own effect (10 rows) is what is compared, and every write of the writer stays."""
    plan = _plan(tmp_path, live_db, "UPDATE events SET note = note || ' (checked)' WHERE id <= 10;\n",
                 "update rows public.events")
    with Writer(live_db.dsn, "events", tmp_path / "writes.jsonl", every=0.005) as writer:
        result = shadow_cli("apply", "-f", str(plan), "--json")
        writer.stop()
    assert result.code == 0, result.text
    report = report_of(result)
    [target] = report["targets"]
    [change] = target["production_changes"]
    assert (change["address"], change["detail"]["count"]) == ("update rows public.events", 10)
    assert live_db.scalar("SELECT count(*) FROM events WHERE note LIKE '% (checked)'") == 10
    assert writer.assert_kept(live_db.dsn) > 20


def test_policy_drift_strict_refuses_any_write_since_the_checkpoint(live_db: ProdDb, shadow_cli, tmp_path: Path):
    plan = _plan(tmp_path, live_db, "ALTER TABLE users ADD COLUMN nickname text;\n",
                 "add column public.users.nickname")
    plan.write_text(plan.read_text().replace("policy:\n", "policy:\n  drift: strict\n"))
    with Writer(live_db.dsn, "events", tmp_path / "writes.jsonl", every=0.005) as writer:
        result = shadow_cli("apply", "-f", str(plan), "--json")
        writer.stop()
    assert result.code == 1, result.text
    report = report_of(result)
    assert report["outcome"] == "refused" and "policy.drift is strict" in report["reason"]
    assert live_db.scalar("SELECT count(*) FROM information_schema.columns WHERE column_name = 'nickname'") == 0
    writer.assert_kept(live_db.dsn)


def test_an_apply_that_cannot_run_in_one_transaction_goes_ahead_while_another_table_is_written(
        live_db: ProdDb, shadow_cli, tmp_path: Path):
    """Its undo record puts back only what it changed (tests/test_stmt_undo.py), so the writer's table moving
    meanwhile is no reason to refuse it."""
    plan = _plan(tmp_path, live_db, "CREATE INDEX CONCURRENTLY users_name_idx ON users (full_name);\n",
                 "add index public.users_name_idx")
    with Writer(live_db.dsn, "events", tmp_path / "writes.jsonl", every=0.005) as writer:
        result = shadow_cli("apply", "-f", str(plan), "--json")
        writer.stop()
    assert result.code == 0, result.text
    assert "cannot run in a transaction" in report_of(result)["action"]["production"]["mode"]
    assert live_db.scalar("SELECT to_regclass('public.users_name_idx') IS NOT NULL") is True
    writer.assert_kept(live_db.dsn)


def test_an_apply_that_cannot_run_in_one_transaction_on_a_table_being_written_is_rehearsed_again_then_refused(
        live_db: ProdDb, shadow_cli, tmp_path: Path):
    """The index build reads the very table the writer keeps writing: the rehearsal cannot predict it, so the run
    rehearses once more on a fresh checkpoint; production moved again meanwhile, so it is refused, naming what
    moved — nothing applied, every write kept."""
    plan = _plan(tmp_path, live_db, "CREATE INDEX CONCURRENTLY events_note_idx ON events (note);\n",
                 "add index public.events_note_idx")
    with Writer(live_db.dsn, "events", tmp_path / "writes.jsonl", every=0.005) as writer:
        result = shadow_cli("apply", "-f", str(plan), "--json")
        writer.stop()
    assert result.code == 1, result.text
    report = report_of(result)
    assert report["outcome"] == "refused", report["reason"]
    assert "moved again while shadow rehearsed on a fresh checkpoint" in report["reason"], report["reason"]
    assert "public.events" in report["reason"], report["reason"]
    assert "rehearsed twice" in warnings_of(report)
    assert live_db.scalar("SELECT to_regclass('public.events_note_idx') IS NULL") is True
    assert writer.assert_kept(live_db.dsn) > 10


def test_an_apply_waits_for_a_lock_a_bounded_time_and_says_so(live_db: ProdDb, shadow_cli, tmp_path: Path):
    """A long read holds a lock the migration needs: the apply gives up after policy.lock_timeout, rolls back,
    retries policy.lock_retries times, reports each wait — and never queues every other query behind it."""
    plan = _plan(tmp_path, live_db, "ALTER TABLE users ADD COLUMN nickname text;\n",
                 "add column public.users.nickname")
    plan.write_text(plan.read_text().replace("policy:\n", "policy:\n  lock_timeout: 200ms\n  lock_retries: 1\n"))
    with live_db.connect() as reader:
        reader.autocommit = False
        reader.execute("SELECT count(*) FROM users")  # a long read: ACCESS SHARE on users until it ends
        result = shadow_cli("apply", "-f", str(plan), "--json")
        reader.rollback()
    assert result.code == 1, result.text
    report = report_of(result)
    assert report["outcome"] == "rolled_back"
    assert "waited 0.2 s for a lock" in report["reason"] and "production is busy" in report["reason"]
    assert "retry 1 of 1" in warnings_of(report)
    assert live_db.scalar("SELECT count(*) FROM information_schema.columns WHERE column_name = 'nickname'") == 0


def test_a_serialisation_failure_rolls_back_and_is_tried_again_keeping_the_concurrent_write(
        prod_db: ProdDb, shadow_cli, tmp_path: Path):
    """The apply's REPEATABLE READ transaction changes a row another session changed and committed after the
    transaction's snapshot: PostgreSQL refuses it (a serialisation failure). Nothing of the attempt is applied; the
    transaction is tried again on a new snapshot, the wait is reported — and the other session's write is kept,
    the apply's change made on top of it."""
    import threading
    import time

    plan = _plan(tmp_path, prod_db, "SELECT pg_sleep(1.5);\n"
                                    "UPDATE users SET full_name = full_name || ' (checked)' WHERE id = 1;\n",
                 "update rows public.users")
    seen: dict[str, object] = {}

    def other_session() -> None:
        """Once the apply's transaction sleeps on production (its snapshot taken), change the same row."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if prod_db.scalar(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{prod_db.name}' "
                              "AND state = 'active' AND query LIKE '%pg_sleep(1.5)%' AND pid <> pg_backend_pid()"):
                prod_db.execute("UPDATE users SET full_name = 'Renamed meanwhile' WHERE id = 1")
                seen["at"] = time.monotonic()
                return
            time.sleep(0.02)

    thread = threading.Thread(target=other_session, daemon=True)
    thread.start()
    result = shadow_cli("apply", "-f", str(plan), "--json")
    thread.join(5)
    assert "at" in seen, "the apply's transaction was never seen sleeping on production"
    assert result.code == 0, result.text
    report = report_of(result)
    assert report["outcome"] == "applied", report["reason"]
    assert "could not be serialised with this transaction" in warnings_of(report), warnings_of(report)
    assert "rolled back, trying again" in warnings_of(report) and "retry 1 of" in warnings_of(report)
    assert prod_db.scalar("SELECT full_name FROM users WHERE id = 1") == "Renamed meanwhile (checked)"


def test_a_checkpoint_is_written_once_and_the_applied_state_kept_beside_it(prod_db: ProdDb, shadow_cli,
                                                                           tmp_path: Path):
    """What production observed after the apply is its own record; the checkpoint's manifest is never edited."""
    plan = _plan(tmp_path, prod_db, "ALTER TABLE users ADD COLUMN nickname text;\n",
                 "add column public.users.nickname")
    result = shadow_cli("apply", "-f", str(plan), "--json")
    assert result.code == 0, result.text
    run_id = report_of(result)["run_id"]
    store = shadow_cli.state_dir / "snapshots"
    manifest = json.loads((store / "manifests" / run_id / "app.json").read_text())
    assert "after_apply" not in manifest
    applied = json.loads((store / "applied" / run_id / "app.json").read_text())
    assert applied["fingerprint"] == prod_db.fingerprint() != manifest["fingerprint"]
    rolled = shadow_cli("rollback", run_id, "--json")
    assert rolled.code == 0, rolled.text
    assert prod_db.fingerprint() == manifest["fingerprint"]


# -- item 4: undo only what the run did ----------------------------------------------------------------------

def test_rollback_undoes_only_the_runs_own_change_while_the_application_writes(live_db: ProdDb, shadow_cli,
                                                                                tmp_path: Path):
    """The apply keeps the rows it changed and the objects it added; rollback puts back exactly those, in one
    transaction, while the writer keeps writing: its rows stay, untouched tables keep their OIDs."""
    users = table_digest(live_db, "users")
    orders_oid, events_oid = table_oid(live_db, "orders"), table_oid(live_db, "events")
    plan = _plan(tmp_path, live_db, "ALTER TABLE users ADD COLUMN nickname text;\n"
                                    "UPDATE users SET full_name = upper(full_name), nickname = 'n' WHERE id <= 10;\n"
                                    "DELETE FROM orders WHERE id IN (SELECT id FROM orders WHERE user_id = 500);\n"
                                    "INSERT INTO users (email, full_name) VALUES ('new@example.com', 'New');\n",
                 "add column public.users.nickname, update rows public.users, insert rows public.users, "
                 "delete rows public.orders")
    orders = table_digest(live_db, "orders")
    with Writer(live_db.dsn, "events", tmp_path / "writes.jsonl", every=0.005) as writer:
        applied = shadow_cli("apply", "-f", str(plan), "--json")
        assert applied.code == 0, applied.text
        run_id = report_of(applied)["run_id"]
        assert live_db.scalar("SELECT count(*) FROM users WHERE nickname IS NOT NULL") == 10
        rolled = shadow_cli("rollback", run_id, "--json")
        writer.stop()
    assert rolled.code == 0, rolled.text
    report = report_of(rolled)
    assert report["outcome"] == "restored" and "other sessions' writes since were kept" in report["reason"]
    assert table_digest(live_db, "users") == users and table_digest(live_db, "orders") == orders
    assert live_db.scalar("SELECT count(*) FROM information_schema.columns WHERE column_name = 'nickname'") == 0
    # untouched tables stay
    assert (table_oid(live_db, "orders"), table_oid(live_db, "events")) == (orders_oid, events_oid)
    assert writer.assert_kept(live_db.dsn) > 20


def _statistics(db: ProdDb, table: str) -> tuple[object, ...]:
    """What the planner knows of ``table``: its OID, size estimates, per-column statistics and when it was analyzed."""
    return tuple(db.scalar(sql) for sql in (
        f"SELECT '{table}'::regclass::oid",
        f"SELECT (reltuples, relpages)::text FROM pg_class WHERE oid = '{table}'::regclass",
        f"SELECT md5(string_agg((staattnum, stadistinct, stanullfrac)::text, ',' ORDER BY staattnum)) "
        f"FROM pg_statistic WHERE starelid = '{table}'::regclass",
        f"SELECT last_analyze::text FROM pg_stat_user_tables WHERE relid = '{table}'::regclass"))


def test_a_rollback_leaves_untouched_tables_statistics_as_they_were(live_db: ProdDb, shadow_cli, tmp_path: Path):
    """The undo of a run's own change touches nothing else: an untouched table keeps its OID and every statistic
    the planner has of it (the whole-checkpoint restore, ``--full``, re-creates it and loses them: the check can
    tell)."""
    live_db.execute("ANALYZE orders")
    before = _statistics(live_db, "orders")
    assert all(v is not None for v in before), before
    plan = _plan(tmp_path, live_db, "ALTER TABLE users ADD COLUMN nickname text;\n"
                                    "UPDATE users SET nickname = 'n' WHERE id <= 5;\n",
                 "add column public.users.nickname, update rows public.users")
    with Writer(live_db.dsn, "events", tmp_path / "writes.jsonl", every=0.005) as writer:
        applied = shadow_cli("apply", "-f", str(plan), "--json")
        assert applied.code == 0, applied.text
        rolled = shadow_cli("rollback", report_of(applied)["run_id"], "--json")
        writer.stop()
    assert rolled.code == 0 and report_of(rolled)["outcome"] == "restored", rolled.text
    assert _statistics(live_db, "orders") == before
    assert writer.assert_kept(live_db.dsn) > 0
    again = shadow_cli("apply", "-f", str(plan), "--json")
    assert again.code == 0, again.text
    full = shadow_cli("rollback", report_of(again)["run_id"], "--full", "--json")
    assert full.code == 0, full.text
    after_full = _statistics(live_db, "orders")
    assert after_full[0] != before[0] and after_full[3] is None  # re-created: a new OID, never analyzed


def test_rollback_of_a_backfill_in_the_table_the_application_writes(live_db: ProdDb, shadow_cli, tmp_path: Path):
    before = {r[0]: r[1] for r in live_db.connect().execute("SELECT id, note FROM events WHERE id <= 10")}
    plan = _plan(tmp_path, live_db, "UPDATE events SET note = note || ' (checked)' WHERE id <= 10;\n",
                 "update rows public.events")
    with Writer(live_db.dsn, "events", tmp_path / "writes.jsonl", every=0.005) as writer:
        applied = shadow_cli("apply", "-f", str(plan), "--json")
        assert applied.code == 0, applied.text
        rolled = shadow_cli("rollback", report_of(applied)["run_id"], "--json")
        writer.stop()
    assert rolled.code == 0, rolled.text
    assert {r[0]: r[1] for r in live_db.connect().execute("SELECT id, note FROM events WHERE id <= 10")} == before
    assert writer.assert_kept(live_db.dsn) > 20


def test_a_row_changed_again_since_the_apply_is_a_conflict(prod_db: ProdDb, shadow_cli, tmp_path: Path):
    """Undoing over someone else's later write would lose it: refused, naming the row; --force overwrites it and
    says so."""
    plan = _plan(tmp_path, prod_db, "UPDATE users SET full_name = 'x' WHERE id <= 3;\n", "update rows public.users")
    applied = shadow_cli("apply", "-f", str(plan), "--json")
    assert applied.code == 0, applied.text
    run_id = report_of(applied)["run_id"]
    prod_db.execute("UPDATE users SET full_name = 'someone else' WHERE id = 2")
    refused = shadow_cli("rollback", run_id, "--json")
    assert refused.code == 1, refused.text
    assert "ROLLBACK REFUSED, production untouched" in report_of(refused)["reason"]
    assert "public.users row [2]" in report_of(refused)["reason"]
    assert prod_db.scalar("SELECT count(*) FROM users WHERE full_name = 'x'") == 2  # nothing was undone
    forced = shadow_cli("rollback", run_id, "--force", "--json")
    assert forced.code == 0, forced.text
    assert "--force overwrote" in warnings_of(report_of(forced))
    assert "later writes to 1 row(s), table(s) or object(s) the run had changed were overwritten" in report_of(
        forced)["reason"]
    assert prod_db.scalar("SELECT full_name FROM users WHERE id = 2") == "User 2"


def test_a_write_still_open_when_the_rollback_reads_the_row_is_waited_for_and_never_overwritten(
        prod_db: ProdDb, shadow_cli, tmp_path: Path):
    """The application's transaction updates a row the run updated and commits only while the rollback is already
    at work. The undo locks the run's rows before it reads them, so it waits for that transaction, then sees the
    application's value: a conflict, refused, the application's write kept (before the lock, the undo read the
    old value, its UPDATE waited for the row and then overwrote the application's committed write)."""
    import time

    from tests.conftest import start_cli

    plan = _plan(tmp_path, prod_db, "UPDATE users SET full_name = 'x' WHERE id <= 3;\n", "update rows public.users")
    applied = shadow_cli("apply", "-f", str(plan), "--json")
    assert applied.code == 0, applied.text
    run_id = report_of(applied)["run_id"]
    with prod_db.connect() as app:
        app.autocommit = False
        app.execute("UPDATE users SET full_name = 'the application' WHERE id = 2")  # open, not committed
        rollback = start_cli("rollback", run_id, "--json", state=tmp_path / "state", cwd=tmp_path)
        deadline = time.monotonic() + 60
        with prod_db.connect() as watch:  # until the rollback waits for the application's row
            while not watch.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                    "AND datname = current_database()").fetchone()[0]:  # type: ignore[index]
                assert rollback.poll() is None and time.monotonic() < deadline, rollback.communicate()
                time.sleep(0.05)
        app.commit()
        out, err = rollback.communicate(timeout=120)
    assert rollback.returncode == 1, out + err
    report = json.loads(out)
    assert "ROLLBACK REFUSED, production untouched" in report["reason"]
    assert "public.users row [2]" in report["reason"]
    assert prod_db.scalar("SELECT full_name FROM users WHERE id = 2") == "the application"
    assert prod_db.scalar("SELECT count(*) FROM users WHERE full_name = 'x'") == 2  # nothing was undone


def test_rollback_full_restores_the_whole_checkpoint(prod_db: ProdDb, shadow_cli, tmp_path: Path):
    plan = _plan(tmp_path, prod_db, "UPDATE users SET full_name = 'x' WHERE id <= 3;\n", "update rows public.users")
    applied = shadow_cli("apply", "-f", str(plan), "--json")
    assert applied.code == 0, applied.text
    checkpoint_oid = table_oid(prod_db, "users")
    rolled = shadow_cli("rollback", report_of(applied)["run_id"], "--full", "--json")
    assert rolled.code == 0, rolled.text
    assert "the whole checkpoint is restored: --full" in warnings_of(report_of(rolled))
    assert prod_db.scalar("SELECT count(*) FROM users WHERE full_name = 'x'") == 0
    assert table_oid(prod_db, "users") != checkpoint_oid  # the replayed dump re-created it


def test_a_backfill_whose_data_moved_on_is_judged_against_the_expectations_with_both_figures(
        live_db: ProdDb, shadow_cli, tmp_path: Path):
    """The application adds rows the backfill also updates between the checkpoint and the apply: production's
    count differs from the rehearsal's for a legitimate reason. The change must still happen, its count is judged
    against the plan's `rows:` expectation, and the report shows both figures (item 3)."""
    plan = write_plan(tmp_path, f"""
version: 1
targets:
  app: {{kind: postgres, dsn: "{live_db.dsn}"}}
action:
  sql: migrate.sql
expect:
  app:
    may: [update rows public.events]
    rows:
      public.events: {{updated: ">= 1", inserted: 0, deleted: 0}}
policy:
  rehearse_rollback: false
""", {"migrate.sql": "UPDATE events SET note = note || ' (checked)' WHERE note LIKE 'writer%';\n"})
    with Writer(live_db.dsn, "events", tmp_path / "writes.jsonl", every=0.01, inserts_only=True) as writer:
        result = shadow_cli("apply", "-f", str(plan), "--json")
        writer.stop()
    assert result.code == 0, result.text
    report = report_of(result)
    warning = warnings_of(report)
    assert "judged against the plan's expectations, not the rehearsal's count: update rows public.events: " \
           "rehearsal" in warning and "production" in warning
    [target] = report["targets"]
    [change] = target["production_changes"]
    assert change["detail"]["data_moved"] is True
    checked = live_db.scalar("SELECT count(*) FROM events WHERE note LIKE 'writer% (checked)'")
    assert checked == change["detail"]["count"]  # the transaction's own effect, exactly
    kept = {w["id"] for w in writer.writes()}
    assert live_db.scalar(f"SELECT count(*) FROM events WHERE id = ANY(ARRAY{sorted(kept)}::bigint[])") == len(kept)


def test_a_statement_by_statement_apply_waits_for_a_lock_a_bounded_time_too(live_db: ProdDb, shadow_cli,
                                                                           tmp_path: Path):
    plan = _plan(tmp_path, live_db, "ALTER TABLE users ADD COLUMN nickname text;\n"
                                    "CREATE INDEX CONCURRENTLY users_nickname_idx ON users (nickname);\n",
                 "add column public.users.nickname, add index public.users_nickname_idx")
    plan.write_text(plan.read_text().replace("policy:\n", "policy:\n  lock_timeout: 200ms\n  lock_retries: 1\n"))
    with live_db.connect() as reader:
        reader.autocommit = False
        reader.execute("SELECT count(*) FROM users")  # holds ACCESS SHARE on users until it ends
        result = shadow_cli("apply", "-f", str(plan), "--json")
        reader.rollback()
    assert result.code == 1, result.text
    report = report_of(result)
    assert report["outcome"] == "rolled_back" and "production is busy" in report["reason"]
    assert "retry 1 of 1" in warnings_of(report)
    assert live_db.scalar("SELECT count(*) FROM information_schema.columns WHERE column_name = 'nickname'") == 0


def test_an_undo_puts_rows_back_in_an_order_the_foreign_keys_accept(prod_db: ProdDb, shadow_cli, tmp_path: Path):
    """The run deleted a user's orders, then the user: the undo re-inserts the user before its orders (and would
    delete inserted orders before their user)."""
    users, orders = table_digest(prod_db, "users"), table_digest(prod_db, "orders")
    plan = _plan(tmp_path, prod_db, "DELETE FROM orders WHERE user_id = 7;\nDELETE FROM users WHERE id = 7;\n"
                                    "INSERT INTO users (email, full_name) VALUES ('n@example.com', 'N');\n"
                                    "INSERT INTO orders (user_id, total_cents, placed_at) "
                                    "SELECT max(id), 5, now() FROM users;\n",
                 "delete rows public.orders, delete rows public.users, insert rows public.users, "
                 "insert rows public.orders")
    applied = shadow_cli("apply", "-f", str(plan), "--json")
    assert applied.code == 0, applied.text
    rolled = shadow_cli("rollback", report_of(applied)["run_id"], "--json")
    assert rolled.code == 0, rolled.text
    assert (table_digest(prod_db, "users"), table_digest(prod_db, "orders")) == (users, orders)


def test_an_undo_keeps_what_others_built_since_and_refuses_to_drop_it_with_the_runs_column(
        prod_db: ProdDb, shadow_cli, tmp_path: Path):
    plan = _plan(tmp_path, prod_db, "ALTER TABLE users ADD COLUMN nickname text;\n",
                 "add column public.users.nickname")
    applied = shadow_cli("apply", "-f", str(plan), "--json")
    assert applied.code == 0, applied.text
    run_id = report_of(applied)["run_id"]
    prod_db.execute("CREATE INDEX users_nickname_idx ON users (nickname)")  # someone builds on the run's column
    refused = shadow_cli("rollback", run_id, "--json")
    assert refused.code == 1, refused.text
    assert "index public.users_nickname_idx built on it since" in report_of(refused)["reason"]
    prod_db.execute("DROP INDEX users_nickname_idx; CREATE INDEX users_name_idx ON users (full_name)")
    undone = shadow_cli("rollback", run_id, "--json")
    assert undone.code == 0, undone.text
    assert prod_db.scalar("SELECT to_regclass('public.users_name_idx') IS NOT NULL")  # theirs: kept
    assert prod_db.scalar("SELECT count(*) FROM information_schema.columns WHERE column_name = 'nickname'") == 0


def test_a_statement_production_rejects_with_an_operational_error_rolls_back_and_keeps_the_writers_rows(
        live_db: ProdDb, shadow_cli, tmp_path: Path):
    """A statement production alone rejects with an error psycopg files as operational (class 55: currval before
    nextval, here only on production's port) is the action failing, not a lost connection: its transaction is
    rolled back, production was never changed, and every row the application committed meanwhile stays."""
    port = live_db.server.port
    plan = _plan(tmp_path, live_db, "CREATE SEQUENCE s;\nALTER TABLE users ADD COLUMN nickname text;\n"
                 f"DO $$ BEGIN IF current_setting('port')::int = {port} THEN PERFORM currval('s'); END IF; END $$;\n",
                 "add column public.users.nickname, add sequence public.s")
    with Writer(live_db.dsn, "events", tmp_path / "writes.jsonl", every=0.005) as writer:
        result = shadow_cli("apply", "-f", str(plan), "--json")
        writer.stop()
    assert result.code == 1, result.text
    report = report_of(result)
    assert report["outcome"] == "rolled_back", report["reason"]
    assert "not yet defined in this session" in report["reason"] and "lost the connection" not in result.text
    assert "migrate.sql:3" in report["reason"] and "production was never changed" in report["reason"]
    assert live_db.scalar("SELECT count(*) FROM information_schema.columns WHERE column_name = 'nickname'") == 0
    assert live_db.scalar("SELECT count(*) FROM pg_class WHERE relname = 's'") == 0
    assert writer.assert_kept(live_db.dsn) > 5
