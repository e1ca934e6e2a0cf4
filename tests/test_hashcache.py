"""Kept content hashes (adapters.postgres.hashcache): a checkpoint reuses a table's hash only where MVCC proves its
rows unchanged since the checkpoint that computed it — and is then exactly what a full observation says.

Each case checkpoints a real database, changes it in one way (or not at all), checkpoints again with the kept
hashes, and compares that checkpoint's observation with a full one taken the same moment: same fingerprint, and
the tables reused are exactly the ones the change did not touch.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psycopg
import pytest

from adapters import fingerprint_of
from adapters.postgres.observe import observe
from shadow.settings import Settings
from snapshots import Store
from tests.conftest import ProdDb

SCHEMA = """
CREATE TYPE mood AS ENUM ('ok', 'sad');
CREATE TABLE items (id int PRIMARY KEY, name text, m mood);
INSERT INTO items SELECT g, 'item ' || g, CASE WHEN g % 2 = 0 THEN 'ok'::mood END FROM generate_series(1, 500) g;
CREATE TABLE logbook (line text, n int);
INSERT INTO logbook SELECT 'line ' || g, g FROM generate_series(1, 300) g;
CREATE TABLE payments (id int, month int, amount int, PRIMARY KEY (id, month)) PARTITION BY LIST (month);
CREATE TABLE payments_1 PARTITION OF payments FOR VALUES IN (1);
CREATE TABLE payments_2 PARTITION OF payments FOR VALUES IN (2);
INSERT INTO payments SELECT g, 1 + g % 2, g FROM generate_series(1, 400) g;
CREATE TABLE "Ünïcode tbl" (k text PRIMARY KEY, v jsonb);
INSERT INTO "Ünïcode tbl" SELECT 'k' || g, jsonb_build_object('g', g) FROM generate_series(1, 50) g;
CREATE MATERIALIZED VIEW totals AS SELECT month, sum(amount) AS s FROM payments GROUP BY month;
"""
ALL = {"public.items", "public.logbook", "public.payments", 'public."Ünïcode tbl"', "public.totals"}

CASES = {
    "nothing": ("", set()),
    "update": ("UPDATE items SET name = name || '!' WHERE id = 7", {"public.items"}),
    "insert": ("INSERT INTO logbook VALUES ('new', 0)", {"public.logbook"}),
    "delete": ("DELETE FROM logbook WHERE n = 3", {"public.logbook"}),
    "same count, other rows": ("DELETE FROM logbook WHERE n = 5; INSERT INTO logbook VALUES ('line 5', 5)",
                               {"public.logbook"}),
    "updated then deleted": ("UPDATE items SET name = 'x' WHERE id = 9; DELETE FROM items WHERE id = 9",
                             {"public.items"}),
    "a partition": ("UPDATE payments SET amount = amount + 1 WHERE id = 4", {"public.payments"}),
    "truncated and refilled alike": ("BEGIN; CREATE TEMP TABLE keep AS SELECT * FROM logbook; TRUNCATE logbook; "
                                     "INSERT INTO logbook SELECT * FROM keep; COMMIT", {"public.logbook"}),
    "enum label renamed": ("ALTER TYPE mood RENAME VALUE 'ok' TO 'fine'", ALL),
    "column added with a default": ("ALTER TABLE items ADD COLUMN flag int NOT NULL DEFAULT 1", {"public.items"}),
    "vacuum full": ("VACUUM FULL logbook", set()),
    "materialized view refreshed": ("UPDATE payments SET amount = 0 WHERE id = 1; REFRESH MATERIALIZED VIEW totals",
                                    {"public.payments", "public.totals"}),
    "unicode table": ("UPDATE \"Ünïcode tbl\" SET v = '{}' WHERE k = 'k1'", {'public."Ünïcode tbl"'}),
}


@pytest.fixture
def db(empty_db: ProdDb) -> ProdDb:
    empty_db.execute(SCHEMA)
    return empty_db


def _checkpoint(db: ProdDb, tmp_path: Path, run: str):  # type: ignore[no-untyped-def]
    settings = Settings.from_env(state_dir=tmp_path / "state")
    return db.target(settings).checkpoint(Store(settings.store_dir), run)


def _full(db: ProdDb) -> dict:
    with db.connect() as conn:
        return observe(conn)


@pytest.mark.parametrize("case", CASES)
def test_a_kept_hash_is_reused_only_for_tables_the_change_left_alone(db: ProdDb, tmp_path: Path, case: str):
    change, touched = CASES[case]
    first = _checkpoint(db, tmp_path, "20260101-000000-aaaaaa")
    assert first.meta["hashes"] == {"reused": 0, "hashed": len(ALL)}
    if change:
        db.execute(change)
    second = _checkpoint(db, tmp_path, "20260101-000001-bbbbbb")
    assert second.fingerprint == fingerprint_of(_full(db))
    assert second.meta["hashes"]["reused"] == len(ALL - touched), (second.meta["hashes"], touched)


def test_rows_committed_by_a_transaction_in_progress_at_the_kept_snapshot_are_seen(db: ProdDb, tmp_path: Path):
    """A transaction open while the first checkpoint ran commits afterwards: its row has an older xid than the
    second checkpoint's snapshot, yet the first did not see it — the kept hash must not be reused."""
    writer = psycopg.connect(db.dsn)
    writer.execute("INSERT INTO logbook VALUES ('late', 99)")  # open, uncommitted: its xid is in progress
    _checkpoint(db, tmp_path, "20260101-000000-aaaaaa")
    writer.commit()
    writer.close()
    second = _checkpoint(db, tmp_path, "20260101-000001-bbbbbb")
    assert second.observation["data"]["public.logbook"] == _full(db)["data"]["public.logbook"]
    assert second.observation["data"]["public.logbook"]["rows"] == 301


def test_a_checkpoint_under_a_concurrent_writer_matches_its_dump(db: ProdDb, tmp_path: Path):
    """While a writer commits to ``logbook``, the second checkpoint's observation (kept hashes where they hold)
    is what a shadow restored from its dump observes: the fidelity check of a plan."""
    _checkpoint(db, tmp_path, "20260101-000000-aaaaaa")
    stop, wrote = threading.Event(), threading.Event()

    def write() -> None:
        with db.connect() as conn:
            n = 0
            while not stop.is_set():
                n += 1
                conn.execute("INSERT INTO logbook VALUES ('w', %s)", [n])
                conn.execute("DELETE FROM logbook WHERE n = %s", [n // 2])
                wrote.set()

    thread = threading.Thread(target=write)
    thread.start()
    assert wrote.wait(30)  # the writer has committed before the checkpoint's snapshot: logbook must be hashed
    try:
        second = _checkpoint(db, tmp_path, "20260101-000001-bbbbbb")
    finally:
        stop.set()
        thread.join()
    assert second.meta["hashes"]["reused"] == len(ALL) - 1
    from adapters.postgres.cluster import LocalCluster
    from adapters.postgres.restore import restore_into_empty
    from adapters.postgres.binaries import binaries_for

    settings = Settings.from_env(state_dir=tmp_path / "state")
    archive = Store(settings.store_dir).open_verified(_artifact(second))
    with LocalCluster("hashcache-test", binaries=db.server.binaries) as server:
        dsn = server.create_database("copy")
        restore_into_empty(binaries_for(db.server.binaries.major), dsn, archive, observation=second.observation,
                           run_id=second.run_id)
        with psycopg.connect(dsn, autocommit=True) as conn:
            restored = observe(conn)
    assert restored["data"] == second.observation["data"]


def _artifact(checkpoint):  # type: ignore[no-untyped-def]
    from snapshots import Artifact

    dump = checkpoint.artifacts["dump"]
    return Artifact(dump["sha256"], int(dump["size"]))


def test_kept_hashes_of_another_server_incarnation_are_not_reused(db: ProdDb, tmp_path: Path):
    """Transaction ids restart their meaning with the server (failover, point-in-time recovery, a recreated
    cluster): kept hashes name the incarnation they were read in."""
    _checkpoint(db, tmp_path, "20260101-000000-aaaaaa")
    kept = next((tmp_path / "state" / "hashes").glob("*.json"))
    data = json.loads(kept.read_text())
    data["origin"] = "2001-01-01 00:00:00+00 1"
    kept.write_text(json.dumps(data))
    second = _checkpoint(db, tmp_path, "20260101-000001-bbbbbb")
    assert second.meta["hashes"]["reused"] == 0
    third = _checkpoint(db, tmp_path, "20260101-000002-cccccc")
    assert third.meta["hashes"]["reused"] == len(ALL)
    assert oct(kept.stat().st_mode & 0o777) == "0o600"
