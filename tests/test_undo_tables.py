"""Issue 15 item 4: a table whose rows cannot be undone one by one is put back whole from the checkpoint — that
table alone, in the undo's one transaction — not the whole database. Real PostgreSQL, the real CLI, and a writer
process (:mod:`tests.writer`) that keeps writing to another table throughout.

A keyless table is undone row by row, its rows matched by value (tests/test_undo_by_value.py), unless the run
changed more of its rows than SHADOW_UNDO_BY_VALUE_ROWS: these tests set it to 0, so that their keyless tables
take the whole-table way.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters import Checkpoint
from shadow.settings import Settings
from snapshots import Store
from tests.conftest import CliResult, ProdDb, report_of, table_digest, table_oid, warnings_of, write_plan
from tests.writer import Writer

# Keyless, with a quoted unicode name, an identity column, a generated column and duplicate rows.
LEDGER = '''
CREATE TABLE events (id bigserial PRIMARY KEY, note text NOT NULL);
INSERT INTO events (note) SELECT 'seed ' || g FROM generate_series(1, 50) g;
CREATE TABLE "Kassenbuch ü" (
    n          bigint GENERATED ALWAYS AS IDENTITY,
    "Betrag €" integer NOT NULL,
    note       text,
    doubled    integer GENERATED ALWAYS AS ("Betrag €" * 2) STORED
);
INSERT INTO "Kassenbuch ü" ("Betrag €", note) SELECT g % 7, 'row ' || (g % 5) FROM generate_series(1, 300) g;
INSERT INTO "Kassenbuch ü" (n, "Betrag €", note) OVERRIDING SYSTEM VALUE VALUES (1, 3, 'twin'), (1, 3, 'twin');
'''
LEDGER_TABLE = 'public."Kassenbuch ü"'
CHANGE_LEDGER = '''UPDATE "Kassenbuch ü" SET note = 'changed' WHERE "Betrag €" = 3;
DELETE FROM "Kassenbuch ü" WHERE "Betrag €" = 5;
INSERT INTO "Kassenbuch ü" ("Betrag €", note) VALUES (99, 'new'), (3, 'twin');
UPDATE users SET full_name = 'x' WHERE id <= 3;
'''
LEDGER_MAY = [f"update rows {LEDGER_TABLE}", f"delete rows {LEDGER_TABLE}", f"insert rows {LEDGER_TABLE}",
              "update rows public.users"]

PLAN = """
version: 1
targets:
  app: {{kind: postgres, dsn: "{dsn}"}}
action:
  sql: migrate.sql
expect:
  app:
    may:
{may}
policy:
  rehearse_rollback: false
"""


WHOLE = {"SHADOW_UNDO_BY_VALUE_ROWS": "0"}  # keyless tables put back whole, never row by row by value


@pytest.fixture
def shadow_cli(shadow_cli):  # type: ignore[no-untyped-def]
    """The suite's CLI, with keyless tables put back whole (:data:`WHOLE`)."""
    def run(*args: str, env: dict[str, str] | None = None, **kw: object) -> CliResult:
        return shadow_cli(*args, env=WHOLE | (env or {}), **kw)  # type: ignore[no-any-return]
    run.state_dir = shadow_cli.state_dir  # type: ignore[attr-defined]
    return run


@pytest.fixture
def ledger_db(prod_db: ProdDb) -> ProdDb:
    prod_db.execute(LEDGER)
    return prod_db


def _plan(tmp_path: Path, db: ProdDb, sql: str, may: list[str]) -> Path:
    lines = "\n".join(f"      - {json.dumps(m)}" for m in may)
    return write_plan(tmp_path, PLAN.format(dsn=db.dsn, may=lines), {"migrate.sql": sql})


def _apply(shadow_cli, plan: Path) -> str:  # type: ignore[no-untyped-def]
    applied = shadow_cli("apply", "-f", str(plan), "--json")
    assert applied.code == 0, applied.text
    return str(report_of(applied)["run_id"])


def test_a_keyless_table_is_put_back_from_the_checkpoint_while_the_application_writes_another(
        ledger_db: ProdDb, shadow_cli, tmp_path: Path):
    """Only the keyless table's data comes from the checkpoint; the keyed table is undone row by row; the writer's
    table keeps every write; no table is re-created (same OIDs)."""
    ledger, users = table_digest(ledger_db, LEDGER_TABLE), table_digest(ledger_db, "users")
    oids = {t: table_oid(ledger_db, t) for t in (LEDGER_TABLE, "users", "orders", "events")}
    plan = _plan(tmp_path, ledger_db, CHANGE_LEDGER, LEDGER_MAY)
    with Writer(ledger_db.dsn, "events", tmp_path / "writes.jsonl", every=0.005) as writer:
        run_id = _apply(shadow_cli, plan)
        assert table_digest(ledger_db, LEDGER_TABLE) != ledger
        rolled = shadow_cli("rollback", run_id, "--json")
        writer.stop()
    assert rolled.code == 0, rolled.text
    report = report_of(rolled)
    assert report["outcome"] == "restored", report["reason"]
    assert (table_digest(ledger_db, LEDGER_TABLE), table_digest(ledger_db, "users")) == (ledger, users)
    assert ledger_db.scalar('SELECT count(*) FROM "Kassenbuch ü" WHERE doubled <> "Betrag €" * 2') == 0
    assert {t: table_oid(ledger_db, t) for t in oids} == oids
    assert writer.assert_kept(ledger_db.dsn) > 20
    [target] = report["targets"]
    restore = target["restore"]
    assert restore["mode"] == "tables" and restore["verified"]
    assert f"{LEDGER_TABLE} is put back whole from the checkpoint because {LEDGER_TABLE} has no primary key" \
        in restore["why"]
    assert any(d.startswith(f"{LEDGER_TABLE}: put back from the checkpoint") for d in restore["done"])
    assert any(d.startswith("public.users: 0 row(s) deleted, 3 put back") for d in restore["done"])
    assert "not every table could be undone row by row" in warnings_of(report)
    assert "whole checkpoint" not in warnings_of(report)


def test_a_keyless_table_written_to_since_the_apply_is_a_conflict_and_force_overwrites_it(
        ledger_db: ProdDb, shadow_cli, tmp_path: Path):
    ledger = table_digest(ledger_db, LEDGER_TABLE)
    run_id = _apply(shadow_cli, _plan(tmp_path, ledger_db, CHANGE_LEDGER, LEDGER_MAY))
    ledger_db.execute('INSERT INTO "Kassenbuch ü" ("Betrag €", note) VALUES (42, \'someone else\')')
    as_they_left = table_digest(ledger_db, LEDGER_TABLE)
    refused = shadow_cli("rollback", run_id, "--json")
    assert refused.code == 1, refused.text
    report = report_of(refused)
    assert report["outcome"] == "refused"
    assert "ROLLBACK REFUSED, production untouched" in report["reason"]
    assert f"table {LEDGER_TABLE}: written to by someone since the apply" in report["reason"]
    assert report["targets"][0]["restore"]["untouched"] is True
    assert table_digest(ledger_db, LEDGER_TABLE) == as_they_left  # production untouched, the users' undo too
    assert ledger_db.scalar("SELECT count(*) FROM users WHERE full_name = 'x'") == 3
    forced = shadow_cli("rollback", run_id, "--force", "--json")
    assert forced.code == 0, forced.text
    said = warnings_of(report_of(forced))
    assert f"--force overwrote what others wrote since the apply: table {LEDGER_TABLE}" in said
    assert report_of(forced)["targets"][0]["restore"]["mode"] == "tables"
    assert table_digest(ledger_db, LEDGER_TABLE) == ledger
    assert ledger_db.scalar("SELECT count(*) FROM users WHERE full_name = 'x'") == 0


def test_a_second_undo_finds_the_table_already_put_back(ledger_db: ProdDb, shadow_cli, tmp_path: Path):
    """The undo is idempotent (what `shadow recover` relies on): a table already as the checkpoint is no
    conflict."""

    ledger = table_digest(ledger_db, LEDGER_TABLE)
    run_id = _apply(shadow_cli, _plan(tmp_path, ledger_db, CHANGE_LEDGER, LEDGER_MAY))
    assert shadow_cli("rollback", run_id, "--json").code == 0
    settings = Settings.from_env(state_dir=str(shadow_cli.state_dir))
    store = Store(settings.store_dir)  # the undo reads the checkpoint's archive from the settings' store
    record = store.read_undo(run_id, "app")
    assert record is not None and LEDGER_TABLE in record["restore_tables"]
    checkpoint = Checkpoint.from_dict(store.read_manifest(run_id, "app"))
    conflicts, done, problems = ledger_db.target(settings).undo(record, checkpoint, force=False)
    assert (conflicts, done, problems) == ([], [], [])
    assert table_digest(ledger_db, LEDGER_TABLE) == ledger


PARTITIONED = '''
CREATE TABLE readings (at date NOT NULL, v integer) PARTITION BY RANGE (at);
CREATE TABLE readings_2025 PARTITION OF readings FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE readings_2026 PARTITION OF readings FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO readings SELECT '2025-06-01'::date + g, g % 10 FROM generate_series(1, 400) g;
'''


def test_a_keyless_partitioned_table_is_put_back_partition_by_partition(prod_db: ProdDb, shadow_cli,
                                                                          tmp_path: Path):
    """Its rows live in its partitions: each is brought back to the checkpoint, rows moved between them too."""
    prod_db.execute(PARTITIONED)
    readings = table_digest(prod_db, "readings")
    oids = {t: table_oid(prod_db, t) for t in ("readings", "readings_2025", "readings_2026")}
    counts = prod_db.scalar("SELECT string_agg(tableoid::regclass || '=' || n, ',' ORDER BY 1) FROM "
                            "(SELECT tableoid, count(*) n FROM readings GROUP BY 1) c")
    plan = _plan(tmp_path, prod_db, "UPDATE readings SET at = at + 200 WHERE v = 1 AND at < '2025-09-01';\nDELETE FROM readings WHERE v = 2;\n",
                 ["update rows public.readings", "delete rows public.readings", "insert rows public.readings"])
    run_id = _apply(shadow_cli, plan)
    rolled = shadow_cli("rollback", run_id, "--json")
    assert rolled.code == 0, rolled.text
    assert table_digest(prod_db, "readings") == readings
    assert prod_db.scalar("SELECT string_agg(tableoid::regclass || '=' || n, ',' ORDER BY 1) FROM "
                          "(SELECT tableoid, count(*) n FROM readings GROUP BY 1) c") == counts
    assert {t: table_oid(prod_db, t) for t in oids} == oids
    restore = report_of(rolled)["targets"][0]["restore"]
    assert restore["mode"] == "tables"
    assert {d.split(":")[0] for d in restore["done"]} == {"public.readings_2025", "public.readings_2026"}


def test_rollback_full_still_restores_the_whole_database(ledger_db: ProdDb, shadow_cli, tmp_path: Path):
    ledger, events_oid = table_digest(ledger_db, LEDGER_TABLE), table_oid(ledger_db, "events")
    run_id = _apply(shadow_cli, _plan(tmp_path, ledger_db, CHANGE_LEDGER, LEDGER_MAY))
    rolled = shadow_cli("rollback", run_id, "--full", "--json")
    assert rolled.code == 0, rolled.text
    assert "the whole checkpoint is restored: --full" in warnings_of(report_of(rolled))
    assert table_digest(ledger_db, LEDGER_TABLE) == ledger
    assert table_oid(ledger_db, "events") != events_oid  # an untouched table re-created: the whole dump was replayed


def test_a_definition_change_falls_back_to_the_whole_checkpoint_and_says_why(ledger_db: ProdDb, shadow_cli,
                                                                            tmp_path: Path):
    """A changed definition not on a table (a function) is undone only by the whole checkpoint (a table's own
    definition is re-created on its own: tests/test_undo_definitions.py)."""
    plan = _plan(tmp_path, ledger_db, "CREATE OR REPLACE FUNCTION log_cancellation() RETURNS trigger LANGUAGE plpgsql "
                                      "AS $$ BEGIN RETURN NEW; END $$;\n",
                 ["alter function public.log_cancellation()"])
    rolled = shadow_cli("rollback", _apply(shadow_cli, plan), "--json")
    assert rolled.code == 0, rolled.text
    assert ("the whole checkpoint is restored: `alter function public.log_cancellation()` cannot be undone object by "
            "object, nor by putting back one table") in warnings_of(report_of(rolled))
    assert "audit_log" in str(ledger_db.scalar("SELECT prosrc FROM pg_proc WHERE proname = 'log_cancellation'"))


@pytest.fixture
def ascii_db(pg_server) -> Iterator[ProdDb]:  # type: ignore[no-untyped-def]
    name = "prod_ascii_tables_" + uuid.uuid4().hex[:8]
    with pg_server.connect() as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'")
    db = ProdDb(pg_server, name, pg_server.dsn(name))
    db.execute(r"CREATE TABLE towns (name text PRIMARY KEY, people int);"
               r"INSERT INTO towns VALUES (E'K\xf8ge', 37000), (E'\xc5rhus', 285000), ('Oslo', 700000);"
               r"CREATE TABLE visits (id bigserial PRIMARY KEY, note text NOT NULL);")
    yield db
    with pg_server.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _hex_rows(db: ProdDb, table: str) -> list[str]:
    """The rows' bytes, whatever they are (psycopg hands SQL_ASCII text over as bytes)."""
    with db.connect() as conn:
        rows = conn.execute(f"SELECT encode(convert_to(t::text, 'SQL_ASCII'), 'hex') h FROM {table} t ORDER BY h")
        return [r[0].decode() if isinstance(r[0], bytes) else str(r[0]) for r in rows]


def test_a_sql_ascii_database_puts_back_the_changed_table_not_the_whole_database(ascii_db: ProdDb, shadow_cli,
                                                                                  tmp_path: Path):
    """Its bytes cannot travel through the JSON record, but they travel through COPY unchanged."""
    towns = _hex_rows(ascii_db, "towns")
    visits_oid = table_oid(ascii_db, "visits")
    plan = _plan(tmp_path, ascii_db, "UPDATE towns SET people = people + 1 WHERE name <> 'Oslo';\n",
                 ["update rows public.towns"])
    run_id = _apply(shadow_cli, plan)
    ascii_db.execute("INSERT INTO visits (note) VALUES ('kept')")  # someone else's write to another table
    rolled = shadow_cli("rollback", run_id, "--json")
    assert rolled.code == 0, rolled.text
    assert _hex_rows(ascii_db, "towns") == towns
    assert (table_oid(ascii_db, "visits"), _hex_rows(ascii_db, "visits")) == (visits_oid, [b"(1,kept)".hex()])
    restore = report_of(rolled)["targets"][0]["restore"]
    assert restore["mode"] == "tables" and "the database is SQL_ASCII" in restore["why"]


def test_a_keyless_table_written_to_between_the_checkpoint_and_the_apply_is_a_conflict(
        prod_db: ProdDb, shadow_cli, tmp_path: Path):
    """The checkpoint does not hold what others wrote before the apply: putting the table back from it would lose
    those rows too, so that is refused like a write since the apply."""
    prod_db.execute("CREATE TABLE journal (id bigserial, note text NOT NULL);"  # no primary key
                    "INSERT INTO journal (note) SELECT 'seed ' || g FROM generate_series(1, 50) g")
    plan = write_plan(tmp_path, PLAN.format(dsn=prod_db.dsn, may="      - update rows public.journal\n"
                                                                  "      - insert rows public.journal\n"
                                                                  "      - delete rows public.journal"),
                      {"migrate.sql": "UPDATE journal SET note = note || ' (checked)' WHERE id <= 10;\n"})
    with Writer(prod_db.dsn, "journal", tmp_path / "writes.jsonl", every=0.01, inserts_only=True) as writer:
        run_id = _apply(shadow_cli, plan)
        writer.stop()
    refused = shadow_cli("rollback", run_id, "--json")
    assert refused.code == 1, refused.text
    assert "table public.journal: written to by someone between the checkpoint and the apply" in \
        report_of(refused)["reason"]
    assert prod_db.scalar("SELECT count(*) FROM journal WHERE note LIKE '% (checked)'") == 10  # untouched
    writer.assert_kept(prod_db.dsn)


def test_sigkill_at_every_transition_of_a_tables_rollback_then_recover(ledger_db: ProdDb, shadow_cli,
                                                                       tmp_path: Path):
    """Killed anywhere, `shadow recover` finishes the undo (or finds it done: it is one transaction and
    idempotent); production ends as the checkpoint, the keyless table's OID kept."""
    ledger, users = table_digest(ledger_db, LEDGER_TABLE), table_digest(ledger_db, "users")
    oid = table_oid(ledger_db, LEDGER_TABLE)
    run_id = _apply(shadow_cli, _plan(tmp_path, ledger_db, CHANGE_LEDGER, LEDGER_MAY))
    applied = (table_digest(ledger_db, LEDGER_TABLE), table_digest(ledger_db, "users"))
    template = ledger_db.name + "_applied"
    with ledger_db.server.connect() as conn:  # production as the apply left it, to start every kill point from
        conn.execute(f'CREATE DATABASE "{template}" TEMPLATE "{ledger_db.name}"')
    trace = tmp_path / "trace.txt"
    assert shadow_cli("rollback", run_id, env={"SHADOW_FAULT_TRACE": str(trace)}).code == 0
    points = [line.split("\t", 1)[1] for line in trace.read_text().splitlines()]
    assert "begin undo app" in points, points
    ended = {}
    try:
        for point in range(1, len(points) + 1):
            with ledger_db.server.connect() as conn:
                conn.execute(f'DROP DATABASE "{ledger_db.name}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{ledger_db.name}" TEMPLATE "{template}"')
            killed = shadow_cli("rollback", run_id, "--force", env={"SHADOW_FAULT_KILL_AT": str(point)})
            assert killed.code == -signal.SIGKILL, (points[point - 1], killed.text)
            recovered = shadow_cli("recover")
            assert recovered.code == 0 and "Traceback" not in recovered.err, (points[point - 1], recovered.text)
            now = (table_digest(ledger_db, LEDGER_TABLE), table_digest(ledger_db, "users"))
            assert now in ((ledger, users), applied), points[point - 1]  # never half undone
            assert table_oid(ledger_db, LEDGER_TABLE) == oid
            ended[points[point - 1]] = "checkpoint" if now == (ledger, users) else "applied"
    finally:
        with ledger_db.server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
    print("\n" + ", ".join(f"{p} → {o}" for p, o in ended.items()))
    # Killed before the rollback began its undo, production is as the apply left it (recover restores nothing);
    # from the undo's step on, recover finishes it.
    assert all(o == "checkpoint" for p, o in list(ended.items())[points.index("begin undo app"):]), ended
    assert "applied" in ended.values(), ended
