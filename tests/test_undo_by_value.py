"""A table without a primary key is undone row by row, its rows matched by value (adapters.postgres.undo_multiset):
a rollback takes out what the run put in and puts back what it took out, and keeps every write others made to the
same table since — even rows equal to the run's own. Real PostgreSQL, the real CLI, and a writer process
(:mod:`tests.writer`) writing to the very table the run changes.
"""

from __future__ import annotations

import signal
from pathlib import Path

from adapters import Checkpoint
from shadow.settings import Settings
from snapshots import Store
from tests.conftest import ProdDb, report_of, write_plan
from tests.writer import Writer

PLAN = """
version: 1
targets:
  app: {{kind: postgres, dsn: "{dsn}"}}
action:
  sql: migrate.sql
expect:
  app:
    may: ["insert rows public.{table}", "delete rows public.{table}", "update rows public.{table}"]
"""

# Keyless, with duplicates: the writer's own rows (ids past the seed) are inserted, updated and deleted by id.
JOURNAL = """
CREATE TABLE journal (id bigserial, note text NOT NULL, amount numeric, at timestamptz DEFAULT '2026-01-01');
INSERT INTO journal (note, amount) SELECT 'seed ' || (g % 10), g % 3 FROM generate_series(1, 60) g;
INSERT INTO journal (id, note, amount) VALUES (0, 'twin', 1), (0, 'twin', 1), (0, 'twin', 1);
"""
CHANGE = """UPDATE journal SET note = note || ' (checked)', amount = amount + 0.5 WHERE id BETWEEN 1 AND 12;
DELETE FROM journal WHERE id BETWEEN 20 AND 25 OR note = 'twin' AND ctid = (SELECT min(ctid) FROM journal WHERE note = 'twin');
INSERT INTO journal (id, note, amount) VALUES (0, 'twin', 1), (-1, 'from the run', NULL), (-1, 'from the run', NULL);
"""


def _plan(tmp_path: Path, db: ProdDb, sql: str, table: str = "journal") -> Path:
    return write_plan(tmp_path, PLAN.format(dsn=db.dsn, table=table), {"migrate.sql": sql})


def _digest(db: ProdDb, where: str = "true", table: str = "journal") -> str:
    """The rows of ``table`` matching ``where``, as a multiset."""
    return str(db.scalar(f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {table} t "
                         f"WHERE {where}"))


PARTITIONED = """
CREATE TABLE readings (at date NOT NULL, v integer) PARTITION BY RANGE (at);
CREATE TABLE readings_2025 PARTITION OF readings FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE readings_2026 PARTITION OF readings FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO readings SELECT '2025-06-01'::date + g, g % 7 FROM generate_series(1, 400) g;
"""

SEEDED = "id <= 60"  # the seed rows and whatever the run wrote (its rows have ids 0 and -1); the writer's are above


def _apply(shadow_cli, plan: Path) -> str:  # type: ignore[no-untyped-def]
    applied = shadow_cli("apply", "-f", str(plan), "--json")
    assert applied.code == 0, applied.text
    report = report_of(applied)
    assert report["outcome"] == "applied", report["reason"]
    return str(report["run_id"])


def test_a_keyless_table_is_undone_row_by_row_while_the_application_writes_to_it(prod_db: ProdDb, shadow_cli,
                                                                                 tmp_path: Path) -> None:
    prod_db.execute(JOURNAL)
    before, oid = _digest(prod_db, SEEDED), prod_db.scalar("SELECT 'journal'::regclass::oid")
    with Writer(prod_db.dsn, "journal", tmp_path / "writes.jsonl", every=0.01) as writer:
        run_id = _apply(shadow_cli, _plan(tmp_path, prod_db, CHANGE))
        assert _digest(prod_db, SEEDED) != before
        rolled = shadow_cli("rollback", run_id, "--json")
        writer.stop()
    assert rolled.code == 0, rolled.text
    report = report_of(rolled)
    assert report["outcome"] == "restored", report["reason"]
    restore = report["targets"][0]["restore"]
    assert restore["mode"] == "undo" and restore["verified"], restore
    assert restore["done"] == ["public.journal: 14 row(s) deleted, 18 re-inserted (no primary key: matched by their "
                               "values)"], restore["done"]
    assert _digest(prod_db, SEEDED) == before
    assert prod_db.scalar("SELECT 'journal'::regclass::oid") == oid  # not re-created
    assert writer.assert_kept(prod_db.dsn) > 20  # every write of the application to the same table is kept


def test_rows_equal_to_others_are_taken_out_once_for_each_run(prod_db: ProdDb, shadow_cli, tmp_path: Path) -> None:
    """Two runs insert the row the shop already holds twice; each rollback takes out one: the shop's two stay."""
    same = "INSERT INTO audit_log VALUES ('2026-01-02', 'shop opened');\n"
    plan = _plan(tmp_path, prod_db, same, table="audit_log")
    first, second = _apply(shadow_cli, plan), _apply(shadow_cli, plan)
    count = "SELECT count(*) FROM audit_log WHERE message = 'shop opened'"
    assert prod_db.scalar(count) == 4
    for run_id, left in ((first, 3), (second, 2)):
        rolled = shadow_cli("rollback", run_id, "--json")
        assert rolled.code == 0 and report_of(rolled)["outcome"] == "restored", rolled.text
        assert prod_db.scalar(count) == left


def test_a_row_the_run_inserted_and_someone_deleted_is_a_conflict_unless_forced(prod_db: ProdDb, shadow_cli,
                                                                                tmp_path: Path) -> None:
    prod_db.execute(JOURNAL)
    before = _digest(prod_db, SEEDED)
    run_id = _apply(shadow_cli, _plan(tmp_path, prod_db, CHANGE))
    prod_db.execute("DELETE FROM journal WHERE note = 'from the run' AND ctid = "
                    "(SELECT min(ctid) FROM journal WHERE note = 'from the run')")
    as_left = _digest(prod_db)
    refused = shadow_cli("rollback", run_id, "--json")
    assert refused.code == 1, refused.text
    report = report_of(refused)
    assert report["outcome"] == "refused" and "ROLLBACK REFUSED, production untouched" in report["reason"]
    assert "table public.journal: 1 row value(s) the run inserted were deleted since" in report["reason"]
    assert _digest(prod_db) == as_left  # nothing of the undo happened
    forced = shadow_cli("rollback", run_id, "--force", "--json")
    assert forced.code == 0, forced.text
    assert _digest(prod_db, SEEDED) == before  # the one row left of the run's two is taken out


def test_a_second_undo_of_the_same_run_does_nothing(prod_db: ProdDb, shadow_cli, tmp_path: Path) -> None:
    """Counts cannot tell an undo that ran from others' writes: the undo's transaction is asked instead."""
    prod_db.execute(JOURNAL)
    before = _digest(prod_db)
    run_id = _apply(shadow_cli, _plan(tmp_path, prod_db, CHANGE))
    assert report_of(shadow_cli("rollback", run_id, "--json"))["outcome"] == "restored"
    assert _digest(prod_db) == before
    settings = Settings.from_env(state_dir=str(shadow_cli.state_dir))
    store = Store(settings.store_dir)
    record = store.read_undo(run_id, "app")
    assert record is not None and "public.journal" in record["multisets"] and not record["restore_tables"]
    checkpoint = Checkpoint.from_dict(store.read_manifest(run_id, "app"))
    conflicts, done, problems = prod_db.target(settings).undo(record, checkpoint, force=False)
    assert (conflicts, problems) == ([], []) and done[0].startswith("already undone by transaction"), done
    assert _digest(prod_db) == before


def test_sigkill_at_every_transition_of_a_rollback_by_value_then_recover(prod_db: ProdDb, shadow_cli,
                                                                        tmp_path: Path) -> None:
    """Killed anywhere, `shadow recover` ends at the checkpoint or as the apply left it — never with the run's
    rows taken out twice (a kill after the undo committed, before the rollback recorded it)."""
    prod_db.execute(JOURNAL)
    before = _digest(prod_db)
    run_id = _apply(shadow_cli, _plan(tmp_path, prod_db, CHANGE))
    applied = _digest(prod_db)
    template = prod_db.name + "_applied"
    with prod_db.server.connect() as conn:
        conn.execute(f'CREATE DATABASE "{template}" TEMPLATE "{prod_db.name}"')
    trace = tmp_path / "trace.txt"
    assert shadow_cli("rollback", run_id, env={"SHADOW_FAULT_TRACE": str(trace)}).code == 0
    points = [line.split("\t", 1)[1] for line in trace.read_text().splitlines()]
    marker = Store(Settings.from_env(state_dir=str(shadow_cli.state_dir)).store_dir).root / "applied" / run_id
    ended = {}
    try:
        for point in range(1, len(points) + 1):
            with prod_db.server.connect() as conn:  # production as the apply left it, for every kill point
                conn.execute(f'DROP DATABASE "{prod_db.name}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{prod_db.name}" TEMPLATE "{template}"')
            (marker / "app.undone.json").unlink(missing_ok=True)  # that undo's transaction was on the old copy
            killed = shadow_cli("rollback", run_id, "--force", env={"SHADOW_FAULT_KILL_AT": str(point)})
            assert killed.code == -signal.SIGKILL, (points[point - 1], killed.text)
            recovered = shadow_cli("recover")
            assert recovered.code == 0 and "Traceback" not in recovered.err, (points[point - 1], recovered.text)
            now = _digest(prod_db)
            assert now in (before, applied), points[point - 1]  # never half undone, never twice
            ended[points[point - 1]] = "checkpoint" if now == before else "applied"
    finally:
        with prod_db.server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
    print("\n" + ", ".join(f"{p} → {o}" for p, o in ended.items()))
    assert all(o == "checkpoint" for p, o in list(ended.items())[points.index("begin undo app"):]), ended
    assert "applied" in ended.values(), ended


def test_a_keyless_partitioned_table_is_undone_by_value_across_its_partitions(prod_db: ProdDb, shadow_cli,
                                                                              tmp_path: Path) -> None:
    """Rows the run moved between partitions go back where they were; rows others added since stay."""
    prod_db.execute(PARTITIONED)
    where = "v <> 7"  # the rows another session adds after the apply have v = 7
    before = _digest(prod_db, where, "readings")
    placed = "SELECT string_agg(tableoid::regclass || '=' || n, ',' ORDER BY 1) FROM " \
             "(SELECT tableoid, count(*) n FROM readings WHERE v <> 7 GROUP BY 1) c"
    counts = prod_db.scalar(placed)
    run_id = _apply(shadow_cli, _plan(tmp_path, prod_db, "UPDATE readings SET at = at + 200 WHERE v = 1 AND "
                                                         "at < '2025-09-01';\nDELETE FROM readings WHERE v = 2;\n",
                                      table="readings"))
    prod_db.execute("INSERT INTO readings VALUES ('2025-03-03', 7), ('2026-03-03', 7)")
    rolled = shadow_cli("rollback", run_id, "--json")
    assert rolled.code == 0, rolled.text
    assert report_of(rolled)["targets"][0]["restore"]["mode"] == "undo"
    assert (_digest(prod_db, where, "readings"), prod_db.scalar(placed)) == (before, counts)
    assert prod_db.scalar("SELECT count(*) FROM readings WHERE v = 7") == 2


def test_a_keyless_table_referencing_a_keyed_one_is_undone_in_foreign_key_order(prod_db: ProdDb, shadow_cli,
                                                                                tmp_path: Path) -> None:
    """The run adds a user and a keyless row referencing it: the row goes before the user it references."""
    prod_db.execute("CREATE TABLE user_log (user_id bigint NOT NULL REFERENCES users (id), note text)")
    before = (_digest(prod_db, table="users"), _digest(prod_db, table="user_log"))
    sql = ("INSERT INTO users (email, full_name) VALUES ('new@example.com', 'New');\n"
           "INSERT INTO user_log SELECT id, 'joined' FROM users WHERE email = 'new@example.com';\n")
    plan = write_plan(tmp_path, PLAN.format(dsn=prod_db.dsn, table="user_log").replace(
        '"update rows public.user_log"]', '"update rows public.user_log", "insert rows public.users"]'),
        {"migrate.sql": sql})
    rolled = shadow_cli("rollback", _apply(shadow_cli, plan), "--json")
    assert rolled.code == 0, rolled.text
    assert report_of(rolled)["targets"][0]["restore"]["mode"] == "undo"
    assert (_digest(prod_db, table="users"), _digest(prod_db, table="user_log")) == before
