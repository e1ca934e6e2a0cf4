"""Captured row changes (adapters.postgres.capture) against the full comparison, on the same real changes.

Each case builds a database, clones it (as a shadow's pristine twin is cloned), marks it, lets an "action" write on
its own connection, then reads the change both ways: the captured way must give the same observation (fingerprint)
and the same row counts and key digests as the full one — and read only what it should.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from adapters import fingerprint_of
from adapters.postgres import capture
from adapters.postgres.observe import observe
from tests.conftest import write_plan

SCHEMA = """
CREATE TYPE mood AS ENUM ('ok', 'sad');
CREATE TABLE items (id int PRIMARY KEY, name text, price numeric, big text, m mood);
INSERT INTO items SELECT g, 'item ' || g, g * 1.5, CASE WHEN g % 50 = 0 THEN repeat('x', 5000) END,
                         CASE WHEN g % 2 = 0 THEN 'ok'::mood END FROM generate_series(1, 2000) g;
CREATE TABLE "Überschrift Tabelle" ("Schlüssel" text, at timestamptz, "wert.x" int,
                                    PRIMARY KEY ("Schlüssel", at));
INSERT INTO "Überschrift Tabelle" SELECT 'k' || g, timestamptz '2024-01-01 00:00+00' + g * interval '1 hour', g
FROM generate_series(1, 300) g;
CREATE TABLE logbook (line text, n int);
INSERT INTO logbook SELECT 'line ' || g, g FROM generate_series(1, 500) g;
CREATE TABLE payments (id int, month int, amount int, PRIMARY KEY (id, month)) PARTITION BY LIST (month);
CREATE TABLE payments_1 PARTITION OF payments FOR VALUES IN (1);
CREATE TABLE payments_2 PARTITION OF payments FOR VALUES IN (2);
INSERT INTO payments SELECT g, 1 + g % 2, g FROM generate_series(1, 1000) g;
CREATE TABLE untouched (id bigint PRIMARY KEY, v jsonb);
INSERT INTO untouched SELECT g, jsonb_build_object('g', g) FROM generate_series(1, 3000) g;
CREATE TABLE blobs (k bytea PRIMARY KEY, v int);
INSERT INTO blobs SELECT decode(md5(g::text), 'hex'), g FROM generate_series(1, 100) g;
"""


@dataclass
class Pair:
    shadow: str
    pristine: str
    dsn: str
    pristine_dsn: str


@pytest.fixture
def pair(empty_db) -> Iterator[Pair]:  # type: ignore[no-untyped-def]
    empty_db.execute(SCHEMA)
    pristine = "p_" + uuid.uuid4().hex[:10]
    with empty_db.server.connect() as conn:
        conn.execute(f'CREATE DATABASE "{pristine}" TEMPLATE "{empty_db.name}" STRATEGY FILE_COPY')
    yield Pair(empty_db.name, pristine, empty_db.dsn, empty_db.server.dsn(pristine))
    with empty_db.server.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{pristine}" WITH (FORCE)')


def both_ways(pair: Pair, action: str) -> tuple[dict, dict, dict, dict, dict]:  # type: ignore[type-arg]
    with psycopg.connect(pair.dsn, autocommit=True) as conn:
        mark = capture.mark(conn)
    assert mark is not None
    with psycopg.connect(pair.dsn, autocommit=True) as conn:  # the action, on its own connection
        conn.execute(action)
    with psycopg.connect(pair.pristine_dsn, autocommit=True) as conn:
        before = observe(conn)
    with psycopg.connect(pair.dsn, autocommit=True) as after, psycopg.connect(pair.pristine_dsn,
                                                                              autocommit=True) as pristine:
        captured = capture.observe_changes(after, pristine, before, mark)
        full = capture.observe_changes(after, pristine, before, None)
    return captured[0], captured[1], full[0], full[1], captured[2]


def assert_same(pair: Pair, action: str, **how: str) -> dict:  # type: ignore[type-arg]
    """The captured change equals the full one; ``how``: table (unqualified) → how it must have been read."""
    got_obs, got_rows, want_obs, want_rows, got_how = both_ways(pair, action)
    assert {t.split(".", 1)[1]: h for t, h in got_how.items() if t.split(".", 1)[1] in how} == how
    assert got_obs["data"] == want_obs["data"]
    assert fingerprint_of(got_obs) == fingerprint_of(want_obs)
    assert set(got_rows) == set(want_rows)
    for table, want in want_rows.items():
        got = got_rows[table]
        assert (got.inserted, got.updated, got.deleted, got.by_key) == (want.inserted, want.updated, want.deleted,
                                                                         want.by_key), table
        assert got.digests == want.digests, table
        if max(want.inserted, want.updated, want.deleted) <= 5:
            assert got.samples == want.samples, table
            assert got.sample_rows == want.sample_rows, table
    return want_rows


def test_updates_inserts_deletes_of_a_keyed_table(pair: Pair) -> None:
    rows = assert_same(pair, """
        UPDATE items SET price = price + 1 WHERE id IN (1, 2, 3);
        UPDATE items SET name = name WHERE id = 4;  -- a new row version, the same values: no update
        UPDATE items SET big = repeat('y', 6000) WHERE id = 50;
        INSERT INTO items VALUES (5001, 'new', 1), (5002, 'new', 2);
        DELETE FROM items WHERE id IN (10, 11);
        DELETE FROM items WHERE id = 12; INSERT INTO items SELECT 12, 'item 12', 18.0, NULL, 'ok';  -- back as it was
    """, items="captured", untouched="unchanged", logbook="unchanged")
    assert (rows["public.items"].inserted, rows["public.items"].updated, rows["public.items"].deleted) == (2, 4, 2)


def test_a_key_changed_by_an_update_is_a_delete_and_an_insert(pair: Pair) -> None:
    rows = assert_same(pair, "UPDATE items SET id = id + 10000 WHERE id <= 3", items="captured")
    assert (rows["public.items"].inserted, rows["public.items"].deleted) == (3, 3)


def test_partitions_rows_moving_between_them_and_unicode_names(pair: Pair) -> None:
    assert_same(pair, """
        UPDATE payments SET month = 3 - month WHERE id <= 4;
        UPDATE payments SET amount = -amount WHERE id BETWEEN 100 AND 120;
        DELETE FROM payments WHERE id = 999;
        UPDATE "Überschrift Tabelle" SET "wert.x" = 0 WHERE "Schlüssel" IN ('k1', 'k2');
        DELETE FROM "Überschrift Tabelle" WHERE "Schlüssel" = 'k3';
        UPDATE blobs SET v = -v WHERE v < 4;
    """, payments="captured", blobs="captured", items="unchanged", logbook="unchanged")
    # (the unicode table's name is quoted: checked through the rows it reports)


def test_a_table_without_a_key_a_changed_definition_and_a_rewrite(pair: Pair) -> None:
    assert_same(pair, """
        DELETE FROM logbook WHERE n < 5; INSERT INTO logbook VALUES ('extra', 1);
        ALTER TABLE items ADD COLUMN flag int DEFAULT 7;
        TRUNCATE blobs; INSERT INTO blobs VALUES ('\\x00', 1);
        CREATE TABLE fresh AS SELECT 1 AS a;
    """, logbook="full", items="full", blobs="full", fresh="full", payments="unchanged")


def test_a_primary_key_moved_to_other_columns_counts_the_full_way(pair: Pair) -> None:
    assert_same(pair, "ALTER TABLE blobs DROP CONSTRAINT blobs_pkey, ADD PRIMARY KEY (v);"
                      "UPDATE blobs SET v = v + 1000 WHERE v < 3", blobs="full", items="unchanged")


def test_a_changed_enum_counts_every_table_the_full_way(pair: Pair) -> None:
    rows = assert_same(pair, "ALTER TYPE mood RENAME VALUE 'ok' TO 'fine'; UPDATE items SET price = 0 WHERE id = 1",
                       items="full", untouched="full")
    assert rows["public.items"].updated == 1001  # the 1,000 whose value reads differently now, and id 1


def test_many_rows_and_a_large_delete(pair: Pair) -> None:
    assert_same(pair, "UPDATE items SET price = price * 2 WHERE id % 3 = 0; DELETE FROM items WHERE id > 1500",
                items="captured")


def test_nothing_written_reads_no_table(pair: Pair) -> None:
    """An action that only reads: every table's count and hash come from the pristine observation, none is read."""
    with psycopg.connect(pair.dsn, autocommit=True) as conn:
        mark = capture.mark(conn)
    assert mark is not None
    with psycopg.connect(pair.dsn, autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM items")
    with psycopg.connect(pair.pristine_dsn, autocommit=True) as conn:
        before = observe(conn)
    with psycopg.connect(pair.dsn, autocommit=True) as conn:
        scans = dict(conn.execute("SELECT relname, seq_scan FROM pg_stat_user_tables").fetchall())
    with psycopg.connect(pair.dsn, autocommit=True) as after, psycopg.connect(pair.pristine_dsn,
                                                                              autocommit=True) as pristine:
        got, rows, how = capture.observe_changes(after, pristine, before, mark)
    assert rows == {} and got["data"] == before["data"] and set(how.values()) == {"unchanged"}
    with psycopg.connect(pair.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        assert dict(conn.execute("SELECT relname, seq_scan FROM pg_stat_user_tables").fetchall()) == scans


def test_one_streaming_pass_counts_as_the_batches_do(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """When many buckets differ, the full comparison streams each side once; it counts what fetching the
    differing buckets batch by batch counts."""
    from adapters.postgres import rowdiff

    with psycopg.connect(pair.pristine_dsn, autocommit=True) as conn:
        before = observe(conn)
    with psycopg.connect(pair.dsn, autocommit=True) as conn:
        conn.execute("UPDATE items SET price = price + 1 WHERE id % 2 = 0; DELETE FROM items WHERE id % 7 = 0;"
                     "INSERT INTO items SELECT g, 'n' FROM generate_series(3001, 3100) g;"
                     "DELETE FROM logbook WHERE n % 3 = 0; INSERT INTO logbook VALUES ('x', 1), ('x', 1)")
        after = observe(conn)
    counted = {}
    for batch in (rowdiff.FETCH_BATCH_ROWS, 100):  # 100 rows a batch: several batches, so one streaming pass
        monkeypatch.setattr(rowdiff, "FETCH_BATCH_ROWS", batch)
        with psycopg.connect(pair.dsn, autocommit=True) as a, psycopg.connect(pair.pristine_dsn, autocommit=True) as b:
            counted[batch] = {t: rowdiff.count_rows(b, a, t, before, after) for t in ("public.items", "public.logbook")}
    batched, streamed = counted.values()
    for table in batched:
        want, got = batched[table], streamed[table]
        assert (got.inserted, got.updated, got.deleted, got.digests) == (want.inserted, want.updated, want.deleted,
                                                                         want.digests)
    assert (streamed["public.items"].inserted, streamed["public.items"].deleted) == (100, 285)


UNDONE_PLAN = """
version: 1
targets:
  app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}
action:
  sql: change.sql
expect:
  app:
    must: [add column public.users.nickname]
    may: ["* rows public.*", "alter sequence public.*"]
    rows:
      public.orders: {updated: 5, deleted: 1}
    checks:
      - sql: select count(*) from public.users where email = 'marker@example.com'
        equals: 1
"""
UNDONE_SQL = """
UPDATE orders SET total_cents = total_cents + 1 WHERE id <= 5;
DELETE FROM orders WHERE id = 6;
INSERT INTO users (email, full_name) VALUES ('marker@example.com', 'Marker');
ALTER TABLE users ADD COLUMN nickname text;
"""


def _rollback_verdict(shadow_cli, prod_db) -> dict:  # type: ignore[no-untyped-def]
    r = shadow_cli("plan", "--json", env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 0, r.text
    return next(v for v in json.loads(r.out)["expectations"] if v["rule"] == "rollback")


def test_the_rehearsal_undoes_its_own_change_as_a_rollback_will_and_never_leaks_into_the_next(
        prod_db, shadow_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An apply in one transaction is rolled back from its undo record: the rehearsal keeps the same record on
    the shadow and undoes it. A second plan of the same production sees none of the first one's rows (the
    marker row is there once, not twice)."""
    write_plan(tmp_path, UNDONE_PLAN, {"change.sql": UNDONE_SQL})
    for _ in range(2):
        verdict = _rollback_verdict(shadow_cli, prod_db)
        assert verdict["ok"] and verdict["message"].startswith("undoing the rehearsal's own change"), verdict
    assert prod_db.scalar("select count(*) from users where email = 'marker@example.com'") == 0


def test_a_statement_by_statement_action_rehearses_the_whole_restore(prod_db, shadow_cli,
                                                                    tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_plan(tmp_path, UNDONE_PLAN.replace("must: [add column public.users.nickname]",
                                             "must: [add index public.orders_total_idx]"),
               {"change.sql": UNDONE_SQL.replace("ALTER TABLE users ADD COLUMN nickname text;",
                                                 "CREATE INDEX CONCURRENTLY orders_total_idx ON orders (total_cents);")})
    verdict = _rollback_verdict(shadow_cli, prod_db)
    assert verdict["ok"] and verdict["message"].startswith("restoring the shadow from the checkpoint"), verdict


def test_production_undo_writes_column_by_column_under_the_session_search_path(prod_db, shadow_cli,
                                                                              tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The rollback the rehearsal proved: order 3 is cancelled, and putting back its total must not fire the
    ``UPDATE OF status`` trigger (whose function names ``audit_log`` unqualified) — nor fail if it did."""
    write_plan(tmp_path, UNDONE_PLAN, {"change.sql": UNDONE_SQL})
    env = {"APP_DATABASE_URL": prod_db.dsn}
    orders = "select md5(string_agg(o::text, ',' order by id)) from orders o"
    before = prod_db.scalar(orders)
    applied = shadow_cli("apply", "--json", env=env)
    assert applied.code == 0, applied.text
    rolled = shadow_cli("rollback", json.loads(applied.out)["run_id"], "--json", env=env)
    assert rolled.code == 0, rolled.text
    restore = json.loads(rolled.out)["targets"][0]["restore"]
    assert restore["mode"] == "undo" and restore["verified"], restore
    assert prod_db.scalar("select count(*) from audit_log") == 2
    assert prod_db.scalar("select count(*) from users where email = 'marker@example.com'") == 0
    assert prod_db.scalar(orders) == before


def test_the_full_comparison_sees_a_change_of_case_under_a_case_insensitive_collation(empty_db) -> None:  # type: ignore[no-untyped-def]
    """The full comparison hashes each column's text under "C": a case-insensitive (non-deterministic) column's
    change of case is an update; a column added NULL is none; a dropped column updates only rows that lose a value."""
    from adapters.postgres.rowdiff import count_rows

    empty_db.execute("CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false); "
                     "CREATE TABLE people (id int PRIMARY KEY, name text COLLATE ci, nick text, gone text); "
                     "INSERT INTO people SELECT g, 'Name ' || g, NULL, CASE WHEN g <= 4 THEN 'x' END "
                     "FROM generate_series(1, 50) g; "
                     "CREATE TABLE tags (name text COLLATE ci); INSERT INTO tags VALUES ('Red'), ('Blue')")
    copy = "c_" + uuid.uuid4().hex[:10]
    with empty_db.server.connect() as conn:
        conn.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{empty_db.name}" STRATEGY FILE_COPY')
    try:
        with psycopg.connect(empty_db.server.dsn(copy), autocommit=True) as conn:
            conn.execute("UPDATE people SET name = upper(name) WHERE id IN (7, 8); UPDATE tags SET name = 'RED' "
                         "WHERE name = 'Red' COLLATE \"C\"; ALTER TABLE people ADD COLUMN extra int; "
                         "ALTER TABLE people DROP COLUMN gone; UPDATE people SET nick = NULL")
        with psycopg.connect(empty_db.dsn, autocommit=True) as before_conn, \
                psycopg.connect(empty_db.server.dsn(copy), autocommit=True) as after_conn:
            before, after = observe(before_conn), observe(after_conn)
            people = count_rows(before_conn, after_conn, "public.people", before, after)
            tags = count_rows(before_conn, after_conn, "public.tags", before, after)
        assert (people.inserted, people.updated, people.deleted) == (0, 6, 0), people
        assert people.updated_by_drop == 4 and set(people.samples["update"]) <= {"[1]", "[2]", "[3]", "[4]", "[7]", "[8]"}
        assert (tags.inserted, tags.updated, tags.deleted) == (1, 0, 1), tags  # no key: the old row went, a new came
    finally:
        with empty_db.server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')


@pytest.mark.parametrize("changed", ["all", "few"])
def test_a_probe_of_the_buckets_decides_the_passes_and_the_counts_stay_exact(empty_db, changed) -> None:  # type: ignore[no-untyped-def]
    """A table large enough to be probed (40,000 rows: 256 buckets): when most rows changed every bucket is
    streamed at once, when few changed only theirs — the counts, keys and digests are the same either way (checked
    against the per-key truth), with and without a key."""
    from adapters.postgres import rowdiff

    empty_db.execute("CREATE TABLE big (id int PRIMARY KEY, v int, note text); "
                     "INSERT INTO big SELECT g, g, 'n' || g FROM generate_series(1, 40000) g; "
                     "CREATE TABLE bag (v int, note text); INSERT INTO bag SELECT g % 30000, 'n' FROM "
                     "generate_series(1, 40000) g")
    copy = "c_" + uuid.uuid4().hex[:10]
    with empty_db.server.connect() as conn:
        conn.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{empty_db.name}" STRATEGY FILE_COPY')
    where = "" if changed == "all" else " WHERE v % 5000 = 0"
    try:
        with psycopg.connect(empty_db.server.dsn(copy), autocommit=True) as conn:
            conn.execute(f"UPDATE big SET note = note || '!'{where}")
            conn.execute("DELETE FROM big WHERE id IN (3, 4); INSERT INTO big VALUES (50001, 1, 'new')")
            conn.execute(f"UPDATE bag SET note = 'm'{where}")
        found: list[int] = []
        real = rowdiff._RowHashes.differing_buckets

        def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            found.append(len(out := real(self, *args, **kwargs)))
            return out

        rowdiff._RowHashes.differing_buckets = spy  # type: ignore[method-assign]
        try:
            with psycopg.connect(empty_db.dsn, autocommit=True) as before_conn, \
                    psycopg.connect(empty_db.server.dsn(copy), autocommit=True) as after_conn:
                before, after = observe(before_conn), observe(after_conn)
                big = rowdiff.count_rows(before_conn, after_conn, "public.big", before, after, keys=True)
                bag = rowdiff.count_rows(before_conn, after_conn, "public.bag", before, after)
        finally:
            rowdiff._RowHashes.differing_buckets = real  # type: ignore[method-assign]
        updated = 40000 - 2 if changed == "all" else 8  # ids 5000, 10000 … 40000
        assert (big.inserted, big.updated, big.deleted) == (1, updated, 2), big
        assert sorted(big.keys["delete"]) == ["[3]", "[4]"] and big.keys["insert"] == ["[50001]"]
        assert big.digests["delete"] == format((rowdiff.key_hash("[3]") + rowdiff.key_hash("[4]"))
                                                % rowdiff.DIGEST_MOD, "x")
        bag_changed = 40000 if changed == "all" else 8
        assert (bag.inserted, bag.updated, bag.deleted) == (bag_changed, 0, bag_changed), bag  # no key: out, in
        if changed == "all":  # the probe saw most buckets differ: every bucket is read, no second hashing pass
            assert found == [rowdiff.bucket_count(40001), rowdiff.bucket_count(40000)]
        else:  # the probe saw few: only the buckets that differ are read
            assert max(found) < 16, found
    finally:
        with empty_db.server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')
