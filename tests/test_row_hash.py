"""Row hashes are versioned: a run keeps its checkpoint's row hash to the end, so a run made by an older shadow
(row hash 1, a jsonb object per row) is applied, verified and undone exactly by a newer one (row hash 2, a hash
per column of its text; row hash 3, some types hashed by their own function) — and two never meet in one
comparison."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from adapters.postgres.observe import ROW_HASH, current_row_hash, hashing_like, observe, row_hash_of
from shadow.errors import ShadowError
from tests.conftest import ProdDb, write_plan

PLAN = """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: m.sql}
expect: {app: {may: [add column public.users.nick, update rows public.users]}}
"""
SQL = "ALTER TABLE users ADD COLUMN nick text;\nUPDATE users SET nick = 'n' WHERE id <= 20;\n"


def _kept_row_hash(state: Path) -> int:
    (kept,) = (state / "hashes").glob("*.json")
    return int(json.loads(kept.read_text())["row_hash"])


def test_the_two_row_hashes_differ_and_hash_the_same_content(prod_db: ProdDb) -> None:
    """Both versions see a changed value and ignore a NULL column; they never agree with each other, which is why
    a run must keep one (a comparison across them would report every table changed)."""
    with psycopg.connect(prod_db.dsn, autocommit=True) as conn:
        new = observe(conn)
        with hashing_like({"row_hash": 2}):
            two = observe(conn)
        with hashing_like({}):  # an observation from before `row_hash` existed: 1
            old = observe(conn)
        versions = (new, two, old)
        conn.execute("ALTER TABLE users ADD COLUMN nick text")  # NULL everywhere: no row's hash moves
        for made in versions:
            with hashing_like(made):
                assert observe(conn)["data"]["public.users"]["hash"] == made["data"]["public.users"]["hash"]
        conn.execute("UPDATE users SET full_name = 'user 7' WHERE id = 7")  # only the case of one letter
        for made in versions:
            with hashing_like(made):
                assert observe(conn)["data"]["public.users"]["hash"] != made["data"]["public.users"]["hash"]
    assert (new["row_hash"], two["row_hash"], old["row_hash"], ROW_HASH, current_row_hash()) == (3, 2, 1, 3, 3)
    assert len({v["data"]["public.users"]["hash"] for v in versions}) == 3  # users.id is a bigint: hashed natively
    assert new["data"]["public.users"]["rows"] == old["data"]["public.users"]["rows"] == 500


def test_a_checkpoint_from_a_newer_shadow_is_refused_by_name() -> None:
    with pytest.raises(ShadowError, match="newer shadow"):
        row_hash_of({"row_hash": ROW_HASH + 1})


@pytest.mark.cold  # the last plan must take a checkpoint of its own, not reuse the warm one of the older run
@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_run_applied_by_the_older_row_hash_is_undone_by_the_newer(prod_db: ProdDb, shadow_cli,
                                                                    tmp_path: Path) -> None:
    """Applied before an upgrade, rolled back after it: the undo record's row hashes and the verification are
    read as the run's checkpoint was hashed, so only the run's own change is undone and the others' writes stay."""
    write_plan(tmp_path, PLAN, {"m.sql": SQL})
    old = {"APP_DATABASE_URL": prod_db.dsn, "SHADOW_ROW_HASH": "1"}  # shadow as it hashed before row hash 2
    new = {"APP_DATABASE_URL": prod_db.dsn}
    before = prod_db.fingerprint()

    applied = shadow_cli("apply", "--json", env=old)
    assert applied.code == 0, applied.text
    assert json.loads(applied.out)["outcome"] == "applied"
    assert prod_db.scalar("SELECT count(*) FROM users WHERE nick = 'n'") == 20
    assert _kept_row_hash(shadow_cli.state_dir) == 1

    prod_db.execute("INSERT INTO audit_log VALUES (now(), 'after the apply')")  # the application goes on
    prod_db.execute("UPDATE users SET full_name = 'Someone' WHERE id = 400")    # also in the run's table
    rolled = shadow_cli("rollback", json.loads(applied.out)["run_id"], "--json", env=new)
    assert rolled.code == 0, rolled.text
    assert prod_db.scalar("SELECT count(*) FROM information_schema.columns WHERE column_name = 'nick'") == 0
    assert prod_db.scalar("SELECT count(*) FROM audit_log WHERE message = 'after the apply'") == 1
    assert prod_db.scalar("SELECT full_name FROM users WHERE id = 400") == "Someone"
    prod_db.execute("DELETE FROM audit_log WHERE message = 'after the apply'")
    prod_db.execute("UPDATE users SET full_name = 'User 400' WHERE id = 400")
    assert prod_db.fingerprint() == before

    # The next plan is the newer shadow's own: it does not reuse the older run's kept hashes, and keeps its own.
    replanned = shadow_cli("plan", "--json", env=new)
    assert replanned.code == 0, replanned.text
    assert _kept_row_hash(shadow_cli.state_dir) == ROW_HASH


# Row hash 3 hashes these natively; each pair prints differently, so the content hash must tell them apart.
NATIVE_PAIRS = [
    ("smallint", "1", "2"), ("integer", "-1", "1"), ("bigint", "9007199254740993", "9007199254740992"),
    ("oid", "4294967295", "1"), ("uuid", "'00000000-0000-0000-0000-000000000001'", "'00000000-0000-0000-0000-000000000002'"),
    ("timestamp", "'2026-01-01 00:00:00'", "'2026-01-01 00:00:00.000001'"),
    ("timestamptz", "'2026-03-29 01:30:00+00'", "'2026-03-29 01:30:00+01'"),
    ("time", "'00:00:00'", "'00:00:00.000001'"), ("char(3)", "'ab'", "'abc'"),
    # stay text: their hash functions equate values that print differently
    ("numeric", "1.0", "1.00"), ("float8", "0", "'-0'"), ("interval", "'1 day'", "'24 hours'"),
    ("jsonb", """'{"a": 1.0}'""", """'{"a": 1.00}'"""), ("int[]", "'{1,2}'", "'[2:3]={1,2}'"),
]


@pytest.mark.parametrize("column_type, one, other", NATIVE_PAIRS, ids=[p[0] for p in NATIVE_PAIRS])
def test_row_hash_3_tells_apart_every_two_values_that_print_differently(empty_db: ProdDb, column_type: str,
                                                                        one: str, other: str) -> None:
    """Also under a domain, and with the session in another time zone (observing pins UTC)."""
    empty_db.execute(f"CREATE DOMAIN d AS {column_type}; CREATE TABLE t (v {column_type}, w d)")
    with psycopg.connect(empty_db.dsn, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'Europe/Paris'")
        hashes = []
        for value in (one, other):
            conn.execute(f"TRUNCATE t; INSERT INTO t VALUES ({value}, {value})")
            printed = conn.execute("SELECT v::text, w::text FROM t").fetchone()
            data = observe(conn)["data"]["public.t"]
            hashes.append(data["hash"])
        assert printed is not None
        assert hashes[0] != hashes[1], (column_type, printed)
