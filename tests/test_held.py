"""The held snapshot (adapters.postgres.held): a warm shadow read as the action found it, without a second copy.

Real PostgreSQL: one session holds the snapshot, another plays the action, and what a reader of the snapshot sees
— and whether it may be used at all — is checked after each kind of change.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from adapters.postgres import held
from tests.conftest import ProdDb

SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok');
CREATE TYPE pair AS (a int, b text);
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, mood mood, p pair);
INSERT INTO items SELECT g, 'item ' || g, 'ok', ROW(g, 'x')::pair FROM generate_series(1, 200) g;
CREATE TABLE other (id int);
"""


@pytest.fixture
def checker(empty_db: ProdDb) -> Iterator[psycopg.Connection]:
    """The caller's own session on the shadow, which the held snapshot checks through."""
    with psycopg.connect(empty_db.dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def shop(empty_db: ProdDb, checker: psycopg.Connection) -> Iterator[tuple[ProdDb, held.Held]]:
    empty_db.execute(SCHEMA)
    admin = empty_db.server.dsn("postgres")
    snapshot = held.Held(empty_db.dsn, admin, checker)
    yield empty_db, snapshot
    snapshot.close()


def _names(snapshot: held.Held) -> list[tuple[int, str]]:
    with snapshot.reader() as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT id, name FROM items ORDER BY id")]


def test_rows_written_after_it_read_as_they_were_even_after_a_vacuum(shop: tuple[ProdDb, held.Held],
                                                                     checker: psycopg.Connection):
    db, snapshot = shop
    before = _names(snapshot)
    for statement in ("UPDATE items SET name = 'changed' WHERE id <= 10", "DELETE FROM items WHERE id > 190",
                      "INSERT INTO items VALUES (1000, 'new')", "ALTER TABLE items ADD COLUMN extra text DEFAULT 'd'",
                      "ALTER TYPE mood ADD VALUE 'glad'", "CREATE TABLE added (x int)", "VACUUM items"):
        db.execute(statement)
    assert snapshot.usable(checker)
    assert _names(snapshot) == before and len(before) == 200
    assert db.scalar("SELECT count(*) FROM items WHERE name = 'changed'") == 10  # and the shadow moved on


@pytest.mark.parametrize("change", [
    "TRUNCATE items",
    "ALTER TABLE items ALTER COLUMN name TYPE varchar(50)",  # a rewrite: a new storage file
    "VACUUM FULL items",
    "ALTER TABLE items DROP COLUMN name",
    "ALTER TABLE items RENAME TO goods",
    "ALTER TABLE items RENAME COLUMN name TO title",
    "ALTER TYPE mood RENAME VALUE 'ok' TO 'fine'",  # old rows read differently through today's catalog
    "ALTER TYPE pair ADD ATTRIBUTE c int",  # every pair value reads with one more field
    "DROP TABLE other",
])
def test_a_change_it_cannot_show_makes_it_unusable(shop: tuple[ProdDb, held.Held], checker: psycopg.Connection,
                                              change: str):
    db, snapshot = shop
    db.execute(change)
    assert not snapshot.usable(checker)
    assert snapshot.ended


def test_a_command_waiting_for_older_snapshots_ends_it_at_once(shop: tuple[ProdDb, held.Held],
                                                               checker: psycopg.Connection):
    """CREATE INDEX CONCURRENTLY waits for every older snapshot: the watcher ends the held one, so the action
    completes as it would without it (here: well within the time a hang would take)."""
    db, snapshot = shop
    done = threading.Event()

    def index() -> None:
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '20s'")
            conn.execute("CREATE INDEX CONCURRENTLY items_name ON items (name)")
        done.set()

    worker = threading.Thread(target=index)
    worker.start()
    worker.join(30)
    assert done.is_set(), "CREATE INDEX CONCURRENTLY hung on the held snapshot"
    assert snapshot.ended and not snapshot.usable(checker)
    assert db.scalar("SELECT count(*) FROM pg_index WHERE indexrelid = 'items_name'::regclass AND indisvalid") == 1


def test_its_session_holds_no_lock_an_alter_waits_for(shop: tuple[ProdDb, held.Held],
                                                      checker: psycopg.Connection):
    db, snapshot = shop
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '3s'")
        conn.execute("ALTER TABLE items ADD COLUMN note text")  # ACCESS EXCLUSIVE: raises if anything held a lock
    assert snapshot.usable(checker)


def test_the_databases_own_idle_timeout_does_not_end_it(empty_db: ProdDb, checker: psycopg.Connection):
    """Production's settings are given to the shadow's database: an idle-in-transaction timeout there must not end
    the held session while the action runs."""
    empty_db.execute(SCHEMA)
    empty_db.execute(f'ALTER DATABASE "{empty_db.name}" SET idle_in_transaction_session_timeout = 300')
    snapshot = held.Held(empty_db.dsn, empty_db.server.dsn("postgres"), checker)
    try:
        before = _names(snapshot)
        time.sleep(1)  # a held session idle in its transaction for longer than 300 ms
        empty_db.execute("UPDATE items SET name = 'changed'")
        assert snapshot.usable(checker) and _names(snapshot) == before
    finally:
        snapshot.close()


def test_it_adds_one_session_on_the_shadow_and_checks_through_the_callers(shop: tuple[ProdDb, held.Held],
                                                                         checker: psycopg.Connection):
    """An action meets the held session and the caller's own, nothing more (each check reuses the caller's)."""
    db, snapshot = shop
    assert snapshot.usable(checker)
    with psycopg.connect(db.server.dsn("postgres"), autocommit=True) as conn:
        pids = {r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [db.name])}
    assert pids == {snapshot.pid, checker.info.backend_pid}
