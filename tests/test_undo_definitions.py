"""Issue 15 item 4: a changed definition is undone on its own table, not by restoring the whole database.

A dropped or altered index, constraint or trigger is put back from the checkpoint's definition (the table keeps
its OID and rows); a table whose own definition changed (a column dropped or retyped, the table dropped) is
re-created from the checkpoint's archive — that table alone, with the views on it and the foreign keys that
reference it. Real PostgreSQL, the real CLI, and a writer process (:mod:`tests.writer`) writing to another table
throughout: every one of its writes is kept, and untouched tables keep their OIDs.
"""

from __future__ import annotations

import signal
from pathlib import Path

from tests.conftest import ProdDb, report_of, table_digest, table_oid, warnings_of, write_plan
from tests.writer import Writer

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
  allow: [drop-column, drop-table, drop-index, alter-column-type]
  rehearse_rollback: false
"""


def _plan(tmp_path: Path, db: ProdDb, sql: str, may: str) -> Path:
    return write_plan(tmp_path, PLAN.format(dsn=db.dsn, may=may), {"migrate.sql": sql})


def _columns(db: ProdDb, table: str) -> str:
    return str(db.scalar("SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position) "
                         f"FROM information_schema.columns WHERE table_name = '{table}'"))


def _definitions(db: ProdDb) -> str:
    """Every index, constraint, trigger and view definition of the database."""
    return str(db.scalar("""
        SELECT string_agg(d, E'\\n' ORDER BY d) FROM (
            SELECT pg_get_indexdef(indexrelid) d FROM pg_index WHERE indrelid::regclass::text NOT LIKE 'pg_%'
            UNION ALL SELECT conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid) || convalidated
                FROM pg_constraint WHERE connamespace = 'public'::regnamespace
            UNION ALL SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
            UNION ALL SELECT 'view ' || viewname || pg_get_viewdef(viewname::regclass) FROM pg_views
                WHERE schemaname = 'public') x"""))


def _events(db: ProdDb) -> None:
    db.execute("CREATE TABLE events (id bigserial PRIMARY KEY, note text NOT NULL);"
               "INSERT INTO events (note) SELECT 'seed ' || g FROM generate_series(1, 50) g")


def _apply_and_roll_back(db: ProdDb, shadow_cli, tmp_path: Path, sql: str, may: str,  # type: ignore[no-untyped-def]
                         *rollback: str) -> dict:  # type: ignore[type-arg]
    with Writer(db.dsn, "events", tmp_path / "writes.jsonl", every=0.005) as writer:
        applied = shadow_cli("apply", "-f", str(_plan(tmp_path, db, sql, may)), "--json")
        assert applied.code == 0, applied.text
        rolled = shadow_cli("rollback", report_of(applied)["run_id"], "--json", *rollback)
        writer.stop()
    assert rolled.code == 0, rolled.text
    assert writer.assert_kept(db.dsn) > 0
    return report_of(rolled)


def test_a_retyped_column_re_creates_its_table_alone_with_its_view_and_the_keys_to_it(prod_db: ProdDb, shadow_cli,
                                                                                      tmp_path: Path):
    _events(prod_db)
    users, columns, definitions = table_digest(prod_db, "users"), _columns(prod_db, "users"), _definitions(prod_db)
    orders_oid, events_oid = table_oid(prod_db, "orders"), table_oid(prod_db, "events")
    report = _apply_and_roll_back(prod_db, shadow_cli, tmp_path,
                                  "ALTER TABLE users ALTER COLUMN full_name TYPE varchar(200);\n",
                                  "alter column public.users.full_name")
    assert report["outcome"] == "restored", report
    assert "whole checkpoint" not in warnings_of(report)
    restore = report["targets"][0]["restore"]
    assert restore["mode"] == "tables" and "public.users is re-created from the checkpoint" in restore["why"]
    assert _columns(prod_db, "users") == columns and table_digest(prod_db, "users") == users
    assert _definitions(prod_db) == definitions  # its indexes, the key from orders, the view on it: all back
    assert (table_oid(prod_db, "orders"), table_oid(prod_db, "events")) == (orders_oid, events_oid)
    # Its identity did not go backwards: a new user gets a fresh id.
    prod_db.execute("INSERT INTO users (email, full_name) VALUES ('after@example.com', 'After')")


def test_a_dropped_column_comes_back_in_place_with_its_values(prod_db: ProdDb, shadow_cli, tmp_path: Path):
    _events(prod_db)
    orders, columns, definitions = table_digest(prod_db, "orders"), _columns(prod_db, "orders"), _definitions(prod_db)
    users_oid = table_oid(prod_db, "users")
    report = _apply_and_roll_back(prod_db, shadow_cli, tmp_path, "ALTER TABLE orders DROP COLUMN placed_at;\n",
                                  "drop column public.orders.placed_at")
    assert report["outcome"] == "restored", report
    assert _columns(prod_db, "orders") == columns and table_digest(prod_db, "orders") == orders
    assert _definitions(prod_db) == definitions and table_oid(prod_db, "users") == users_oid
    prod_db.execute("INSERT INTO orders (user_id, total_cents, placed_at) VALUES (1, 5, now())")  # serial moved on


def test_a_dropped_index_is_put_back_and_its_table_keeps_its_oid(prod_db: ProdDb, shadow_cli, tmp_path: Path):
    _events(prod_db)
    definitions, orders_oid = _definitions(prod_db), table_oid(prod_db, "orders")
    report = _apply_and_roll_back(prod_db, shadow_cli, tmp_path,
                                  "DROP INDEX orders_user_id_idx;\nALTER TABLE orders DROP CONSTRAINT "
                                  "orders_total_cents_check;\n",
                                  "drop index public.orders_user_id_idx, "
                                  "drop constraint public.orders.orders_total_cents_check")
    assert report["outcome"] == "restored" and report["targets"][0]["restore"]["mode"] == "undo", report
    assert _definitions(prod_db) == definitions and table_oid(prod_db, "orders") == orders_oid


def test_a_dropped_table_is_re_created_with_its_rows(prod_db: ProdDb, shadow_cli, tmp_path: Path):
    _events(prod_db)
    prod_db.execute("CREATE TABLE coupons (code text PRIMARY KEY, user_id bigint REFERENCES users (id), "
                    "cents int NOT NULL DEFAULT 100);"
                    "INSERT INTO coupons SELECT 'C' || g, g, g FROM generate_series(1, 40) g;"
                    "COMMENT ON TABLE coupons IS 'handed out'")
    coupons, definitions = table_digest(prod_db, "coupons"), _definitions(prod_db)
    report = _apply_and_roll_back(prod_db, shadow_cli, tmp_path, "DROP TABLE coupons;\n",
                                  "drop table public.coupons, delete rows public.coupons")
    assert report["outcome"] == "restored", report
    assert table_digest(prod_db, "coupons") == coupons and _definitions(prod_db) == definitions
    assert prod_db.scalar("SELECT obj_description('coupons'::regclass, 'pg_class')") == "handed out"


def test_a_re_created_table_written_to_since_the_apply_is_a_conflict(prod_db: ProdDb, shadow_cli, tmp_path: Path):
    applied = shadow_cli("apply", "-f", str(_plan(tmp_path, prod_db, "ALTER TABLE orders DROP COLUMN placed_at;\n",
                                                  "drop column public.orders.placed_at")), "--json")
    assert applied.code == 0, applied.text
    prod_db.execute("INSERT INTO orders (user_id, total_cents) VALUES (1, 777777)")
    refused = shadow_cli("rollback", report_of(applied)["run_id"], "--json")
    assert refused.code != 0 and "table public.orders: written to by someone since the apply" in refused.text
    assert prod_db.scalar("SELECT count(*) FROM orders WHERE total_cents = 777777") == 1  # nothing was undone
    forced = shadow_cli("rollback", report_of(applied)["run_id"], "--json", "--force")
    assert forced.code == 0, forced.text
    assert prod_db.scalar("SELECT count(*) FROM orders WHERE total_cents = 777777") == 0
    assert "placed_at" in _columns(prod_db, "orders")


def test_a_table_another_view_builds_on_in_turn_falls_back_to_the_whole_checkpoint_and_says_why(
        prod_db: ProdDb, shadow_cli, tmp_path: Path):
    prod_db.execute("CREATE VIEW top_revenue AS SELECT * FROM paid_revenue WHERE cents > 100")
    applied = shadow_cli("apply", "-f", str(_plan(tmp_path, prod_db, "ALTER TABLE users DROP COLUMN created_at;\n",
                                                  "drop column public.users.created_at")), "--json")
    assert applied.code == 0, applied.text
    rolled = shadow_cli("rollback", report_of(applied)["run_id"], "--json")
    assert rolled.code == 0, rolled.text
    warnings = warnings_of(report_of(rolled))
    assert "the whole checkpoint is restored: `drop column public.users.created_at` cannot be undone on its own: " \
           "re-creating public.users would drop" in warnings, warnings
    assert "created_at" in _columns(prod_db, "users")


def test_sigkill_at_every_transition_of_a_re_creating_rollback_then_recover(prod_db: ProdDb, shadow_cli,
                                                                           tmp_path: Path):
    """Killed anywhere, `shadow recover` finishes the undo that re-creates a table (or finds it done: it is one
    transaction, and a table already as the checkpoint had it is left alone); never half re-created."""
    orders, columns = table_digest(prod_db, "orders"), _columns(prod_db, "orders")
    users_oid = table_oid(prod_db, "users")
    applied = shadow_cli("apply", "-f", str(_plan(tmp_path, prod_db, "ALTER TABLE orders DROP COLUMN placed_at;\n",
                                                  "drop column public.orders.placed_at")), "--json")
    assert applied.code == 0, applied.text
    run_id = report_of(applied)["run_id"]
    template = prod_db.name + "_applied"
    with prod_db.server.connect() as conn:  # production as the apply left it, to start every kill point from
        conn.execute(f'CREATE DATABASE "{template}" TEMPLATE "{prod_db.name}"')
    trace = tmp_path / "trace.txt"
    assert shadow_cli("rollback", run_id, env={"SHADOW_FAULT_TRACE": str(trace)}).code == 0
    points = [line.split("\t", 1)[1] for line in trace.read_text().splitlines()]
    assert "begin undo app" in points, points
    ended = {}
    try:
        for point in range(1, len(points) + 1):
            with prod_db.server.connect() as conn:
                conn.execute(f'DROP DATABASE "{prod_db.name}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{prod_db.name}" TEMPLATE "{template}"')
            killed = shadow_cli("rollback", run_id, "--force", env={"SHADOW_FAULT_KILL_AT": str(point)})
            assert killed.code == -signal.SIGKILL, (points[point - 1], killed.text)
            recovered = shadow_cli("recover")
            assert recovered.code == 0 and "Traceback" not in recovered.err, (points[point - 1], recovered.text)
            back = _columns(prod_db, "orders") == columns
            assert not back or table_digest(prod_db, "orders") == orders, points[point - 1]  # never half re-created
            assert table_oid(prod_db, "users") == users_oid
            ended[points[point - 1]] = "checkpoint" if back else "applied"
    finally:
        with prod_db.server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
    assert all(o == "checkpoint" for p, o in list(ended.items())[points.index("begin undo app"):]), ended
    assert "applied" in ended.values(), ended


def test_a_quoted_unicode_table_with_identity_generated_columns_and_policies_is_re_created_exactly(
        prod_db: ProdDb, shadow_cli, tmp_path: Path):
    _events(prod_db)
    table = '"Kassenbuch ü"'
    prod_db.execute(f"""
        CREATE TABLE {table} (
            n bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            "Betrag €" integer NOT NULL CHECK ("Betrag €" > -1000),
            note text DEFAULT 'ohne',
            doubled integer GENERATED ALWAYS AS ("Betrag €" * 2) STORED,
            spare text);
        CREATE INDEX "Kassenbuch ü betrag" ON {table} ("Betrag €") WHERE note IS NOT NULL;
        COMMENT ON COLUMN {table}."Betrag €" IS 'in Cent';
        ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
        CREATE POLICY "nur positiv" ON {table} USING ("Betrag €" >= 0);
        CREATE TABLE belege (id int PRIMARY KEY, buch bigint REFERENCES {table} (n) ON DELETE CASCADE);
        INSERT INTO {table} ("Betrag €", note, spare) SELECT g, 'row ' || g, 's' FROM generate_series(1, 200) g;
        INSERT INTO belege SELECT g, g FROM generate_series(1, 50) g;""")
    rows, columns, definitions = table_digest(prod_db, table), _columns(prod_db, "Kassenbuch ü"), _definitions(prod_db)
    policy = prod_db.scalar("SELECT polname || pg_get_expr(polqual, polrelid) FROM pg_policy")
    report = _apply_and_roll_back(prod_db, shadow_cli, tmp_path, f"ALTER TABLE {table} DROP COLUMN spare;\n",
                                  '"drop column public.\\"Kassenbuch ü\\".spare"')
    assert report["outcome"] == "restored" and report["targets"][0]["restore"]["mode"] == "tables", report
    assert _columns(prod_db, "Kassenbuch ü") == columns and table_digest(prod_db, table) == rows
    assert _definitions(prod_db) == definitions
    assert prod_db.scalar("SELECT polname || pg_get_expr(polqual, polrelid) FROM pg_policy") == policy
    assert prod_db.scalar(f"SELECT col_description('{table}'::regclass, 2)") == "in Cent"
    prod_db.execute(f"INSERT INTO {table} (\"Betrag €\") VALUES (5)")  # the identity moved on, not backwards
