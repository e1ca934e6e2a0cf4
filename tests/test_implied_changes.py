"""What PostgreSQL changes *because of* another change nests under that change (issue 13, items 1–3).

Against a real server: partitions several levels deep (and an inheritance child) get the parent's column, index,
keys, checks and triggers; a dropped column takes its index, its foreign key and (with CASCADE) its views; a dropped
column's non-NULL values are destroyed, which `rows:` must see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import json
from contextlib import ExitStack
from pathlib import Path

import psycopg
import pytest

from adapters.postgres.shadowcopy import PgShadow
from adapters.postgres.target import PostgresTarget
from shadow.changes import Change, walk
from snapshots import Store
from tests.conftest import ProdDb, write_plan

RUN_ID = "implied"

PAYMENTS = """
    CREATE SCHEMA "Ünïcode";
    CREATE TABLE customer (id int PRIMARY KEY, name text NOT NULL);
    INSERT INTO customer SELECT g, 'c' || g FROM generate_series(1, 20) g;
    CREATE TABLE "Ünïcode"."Pay Ment" (
        id int NOT NULL, paid date NOT NULL, customer_id int, amount numeric(8, 2), note varchar(100),
        PRIMARY KEY (id, paid)
    ) PARTITION BY RANGE (paid);
    -- two levels: a year partitioned by month, and a plain partition
    CREATE TABLE "Ünïcode"."Pay 2022" PARTITION OF "Ünïcode"."Pay Ment"
        FOR VALUES FROM ('2022-01-01') TO ('2023-01-01') PARTITION BY RANGE (paid);
    CREATE TABLE "Ünïcode"."Pay 2022-01" PARTITION OF "Ünïcode"."Pay 2022" FOR VALUES FROM ('2022-01-01') TO ('2022-02-01');
    CREATE TABLE "Ünïcode"."Pay 2022-02" PARTITION OF "Ünïcode"."Pay 2022" FOR VALUES FROM ('2022-02-01') TO ('2022-03-01');
    CREATE TABLE "Ünïcode".pay_2023 PARTITION OF "Ünïcode"."Pay Ment" FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
    CREATE INDEX pay_note_idx ON "Ünïcode"."Pay Ment" (note);
    INSERT INTO "Ünïcode"."Pay Ment"
        SELECT g, date '2022-01-01' + (g % 45), 1 + g % 20, g, CASE WHEN g % 3 = 0 THEN 'n' || g END
        FROM generate_series(1, 90) g;
    INSERT INTO "Ünïcode"."Pay Ment" VALUES (1000, '2023-05-05', 1, 10, 'late');

    -- inheritance (not partitioning): ALTER TABLE on the parent reaches the child too
    CREATE TABLE log_parent (id int, body text);
    CREATE TABLE log_child (extra text) INHERITS (log_parent);
"""


@pytest.fixture
def shadow_of(tmp_path: Path, backend: str) -> Iterator[Callable[[ProdDb], PgShadow]]:
    with ExitStack() as stack:

        def build(db: ProdDb) -> PgShadow:
            target: PostgresTarget = db.target()
            store = Store(tmp_path / "store")
            checkpoint = target.checkpoint(store, RUN_ID)
            sh = stack.enter_context(target.shadow(checkpoint, store, RUN_ID, backend))
            assert sh.fidelity == []
            return sh

        yield build


def run_in(sh: PgShadow, *statements: str) -> None:
    with psycopg.connect(sh.dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def tree(changes: list[Change]) -> dict[str, list[str]]:
    """Every change's address → the addresses nested directly under it."""
    return {c.address: sorted(k.address for k in c.children) for c in walk(changes)}


PAY, P22, P2201, P2202, P23 = ('"Ünïcode"."Pay Ment"', '"Ünïcode"."Pay 2022"', '"Ünïcode"."Pay 2022-01"',
                               '"Ünïcode"."Pay 2022-02"', '"Ünïcode".pay_2023')


def test_partition_ddl_nests_under_the_parent_level_by_level(empty_db, shadow_of):
    empty_db.execute(PAYMENTS)
    sh = shadow_of(empty_db)
    run_in(
        sh,
        f"ALTER TABLE {PAY} ADD COLUMN refunded boolean",
        f"CREATE INDEX pay_customer_idx ON {PAY} (customer_id) WHERE amount > 5",  # partial: generated names below
        f"ALTER TABLE {PAY} ADD CONSTRAINT amount_positive CHECK (amount > 0)",
        f"ALTER TABLE {PAY} ADD CONSTRAINT pay_customer_fk FOREIGN KEY (customer_id) REFERENCES customer (id)",
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        f"CREATE TRIGGER pay_touch BEFORE UPDATE ON {PAY} FOR EACH ROW EXECUTE FUNCTION touch()",
        f"ALTER TABLE {PAY} ALTER COLUMN note TYPE varchar(200)",
        f'CREATE INDEX "Pay 2022-02 own" ON {P2202} (amount)',  # a partition's own index: not implied by anything
        "ALTER TABLE log_parent ADD COLUMN seen boolean",
    )
    changes = sh.changes()
    assert sorted(c.address for c in changes) == sorted([
        f"add column {PAY}.refunded",
        "add index \"Ünïcode\".pay_customer_idx",
        f"add constraint {PAY}.amount_positive",
        f"add constraint {PAY}.pay_customer_fk",
        "add function public.touch()",
        f"add trigger {PAY}.pay_touch",
        f"alter column {PAY}.note",
        'add index "Ünïcode"."Pay 2022-02 own"',
        "add column public.log_parent.seen",
    ])
    nested = tree(changes)
    for what in ("column", "constraint", "trigger"):
        name = {"column": "refunded", "constraint": "amount_positive", "trigger": "pay_touch"}[what]
        assert nested[f"add {what} {PAY}.{name}"] == sorted([f"add {what} {P22}.{name}", f"add {what} {P23}.{name}"])
        assert nested[f"add {what} {P22}.{name}"] == sorted([f"add {what} {P2201}.{name}", f"add {what} {P2202}.{name}"])
    assert nested[f"add constraint {PAY}.pay_customer_fk"] == sorted(
        [f"add constraint {P22}.pay_customer_fk", f"add constraint {P23}.pay_customer_fk"])
    # the partitions' copies of the partial index have generated names; they hang under the parent's, level by level
    index_tree = nested['add index "Ünïcode".pay_customer_idx']
    assert len(index_tree) == 2 and all(a.startswith('add index "Ünïcode".') for a in index_tree)
    year = next(a for a in index_tree if "2022" in a)
    assert len(nested[year]) == 2
    assert nested[f"alter column {PAY}.note"] == sorted([f"alter column {P22}.note", f"alter column {P23}.note"])
    assert nested[f"alter column {P22}.note"] == sorted([f"alter column {P2201}.note", f"alter column {P2202}.note"])
    assert nested["add column public.log_parent.seen"] == ["add column public.log_child.seen"]


def test_dropping_a_partitioned_column_nests_the_partitions_and_their_indexes(empty_db, shadow_of):
    empty_db.execute(PAYMENTS)
    sh = shadow_of(empty_db)
    run_in(sh, f"ALTER TABLE {PAY} DROP COLUMN note")
    changes = sh.changes()
    assert [c.address for c in changes] == [f"drop column {PAY}.note"]
    found = {c.address: c for c in walk(changes)}
    nested = tree(changes)
    assert f"drop column {P22}.note" in nested[f"drop column {PAY}.note"]
    assert f"drop column {P2201}.note" in nested[f"drop column {P22}.note"]
    assert 'drop index "Ünïcode".pay_note_idx' in nested[f"drop column {PAY}.note"]
    assert len(nested['drop index "Ünïcode".pay_note_idx']) == 2  # the partitions' copies
    # 30 of the 91 rows had a note: the drop destroyed them, and those rows are updated (implied by the drop)
    assert found[f"drop column {PAY}.note"].detail["destroyed_values"] == 31
    update = found[f"update rows {PAY}"]
    assert update.detail["count"] == 31 and update.detail["lost_values"] == 31
    assert f"update rows {PAY}" in nested[f"drop column {PAY}.note"]


DEMO_RENTAL = """
    CREATE TYPE rating AS ENUM ('G', 'PG', 'R');
    CREATE TABLE customer (id int PRIMARY KEY, name text NOT NULL);
    CREATE TABLE film (id int PRIMARY KEY, title text NOT NULL, rating rating, "Original Title" text);
    CREATE TABLE rental (
        id int PRIMARY KEY, customer_id int REFERENCES customer (id), film_id int REFERENCES film (id),
        returned boolean
    );
    CREATE INDEX idx_fk_customer_id ON rental (customer_id);
    CREATE INDEX idx_open ON rental (film_id) WHERE NOT returned;
    CREATE VIEW customer_rentals AS SELECT r.id, c.name FROM rental r JOIN customer c ON c.id = r.customer_id;
    CREATE STATISTICS rental_stats ON customer_id, film_id FROM rental;
    CREATE TABLE log (at int, what text, rating rating);  -- no primary key
    CREATE FUNCTION stars(r rating, boost int DEFAULT 0) RETURNS int LANGUAGE sql AS $$ SELECT 1 + boost $$;
    INSERT INTO customer SELECT g, 'c' || g FROM generate_series(1, 10) g;
    INSERT INTO film SELECT g, 'f' || g, CASE WHEN g % 2 = 0 THEN 'PG'::rating END,
                            CASE WHEN g <= 3 THEN 'Ø' || g END FROM generate_series(1, 10) g;
    INSERT INTO rental SELECT g, 1 + g % 10, 1 + g % 10, g % 4 = 0 FROM generate_series(1, 40) g;
    INSERT INTO log VALUES (1, 'a', 'G'), (1, 'a', 'G'), (2, 'b', NULL);
"""


def test_what_postgres_drops_with_a_column_is_implied_by_the_drop(empty_db, shadow_of):
    empty_db.execute(DEMO_RENTAL)
    sh = shadow_of(empty_db)
    run_in(sh, "ALTER TABLE rental DROP COLUMN customer_id CASCADE")  # takes the FK, the index, the stats, the view
    changes = sh.changes()
    assert [c.address for c in changes] == ["drop column public.rental.customer_id"]
    implied = {c.address for c in walk(changes)} - {"drop column public.rental.customer_id"}
    assert {"drop constraint public.rental.rental_customer_id_fkey", "drop index public.idx_fk_customer_id",
            "drop view public.customer_rentals", "drop statistics public.rental_stats",
            "update rows public.rental"} <= implied


def test_drop_cascade_of_a_table_and_a_type_nests_what_went_with_them(empty_db, shadow_of):
    empty_db.execute(DEMO_RENTAL)
    sh = shadow_of(empty_db)
    run_in(sh, "DROP TABLE customer CASCADE", "DROP TYPE rating CASCADE")
    changes = sh.changes()
    assert sorted(c.address for c in changes) == ["drop table public.customer", "drop type public.rating"]
    nested = {c.address for c in walk(changes)}
    assert {"drop constraint public.rental.rental_customer_id_fkey", "drop view public.customer_rentals",
            "drop column public.film.rating", "drop column public.log.rating",
            "drop function public.stars(public.rating,integer)"} <= nested


def test_a_dropped_columns_destroyed_values_are_counted_and_update_their_rows(empty_db, shadow_of):
    empty_db.execute(DEMO_RENTAL)
    sh = shadow_of(empty_db)
    run_in(sh, 'ALTER TABLE film DROP COLUMN "Original Title"', "ALTER TABLE film DROP COLUMN rating",
           "ALTER TABLE log DROP COLUMN rating", "ALTER TABLE rental DROP COLUMN returned",
           "UPDATE rental SET film_id = 5 WHERE id = 1")  # one row really updated as well
    changes = sh.changes()
    found = {c.address: c for c in walk(changes)}
    assert found['drop column public.film."Original Title"'].detail["destroyed_values"] == 3
    assert found["drop column public.film.rating"].detail["destroyed_values"] == 5
    # rows 2, 4, 6, 8, 10 lost a rating and 1, 2, 3 a title: 7 rows, none otherwise touched → implied by the drop
    film = found["update rows public.film"]
    assert film.detail["count"] == 7 and film.detail["lost_values"] == 7
    assert set(film.detail["sample_keys"]) < {"[1]", "[2]", "[3]", "[4]", "[6]", "[8]", "[10]"}
    assert "update rows public.film" not in [c.address for c in changes]
    # every rental lost `returned` (never NULL) and one was updated as well: a top-level update of all 40
    rental = found["update rows public.rental"]
    assert rental.detail == {**rental.detail, "count": 40, "lost_values": 39}
    assert "update rows public.rental" in [c.address for c in changes]
    # a table without a key: the two identical rows and the other each lost a value where it had one
    log = found["update rows public.log"]
    assert log.detail["count"] == 2 and log.detail["compared_as"] == "multiset (no primary key)"
    assert not [a for a in found if a.startswith(("insert rows", "delete rows"))]


def test_rows_unchanged_fails_when_a_dropped_column_destroyed_values(empty_db, shadow_cli, tmp_path):
    empty_db.execute(DEMO_RENTAL)
    plan = write_plan(tmp_path, f"""
version: 1
targets:
  app: {{kind: postgres, dsn: "{empty_db.dsn}"}}
action:
  sql: drop.sql
expect:
  app:
    may: [drop column public.film.*]
    rows:
      public.film: unchanged
      public.customer: unchanged
policy:
  allow: [drop-column]
  rehearse_rollback: false
""", {"drop.sql": "ALTER TABLE film DROP COLUMN rating;\n"})
    result = shadow_cli("plan", "-f", str(plan), "--json")
    assert result.code == 1, result.text
    report = json.loads(result.out)
    verdicts = {(v["rule"], v["subject"]): v for v in report["expectations"]}
    assert verdicts[("rows", "public.film updated")]["ok"] is False
    assert verdicts[("rows", "public.film updated")]["message"] == (
        "5 updated, expected 0 (5 of them lost values in dropped columns)")
    assert verdicts[("rows", "public.customer updated")]["ok"] is True
