"""Row hashes are versioned: a run keeps its checkpoint's row hash to the end, so a run made by an older shadow
(row hash 1, a jsonb object per row) is applied, verified and undone exactly by a newer one (row hash 2, a hash
per column) — and the two never meet in one comparison."""

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
        with hashing_like({}):  # an observation from before `row_hash` existed: 1
            old = observe(conn)
        conn.execute("ALTER TABLE users ADD COLUMN nick text")  # NULL everywhere: no row's hash moves
        assert observe(conn)["data"]["public.users"]["hash"] == new["data"]["public.users"]["hash"]
        with hashing_like(old):
            assert observe(conn)["data"]["public.users"]["hash"] == old["data"]["public.users"]["hash"]
        conn.execute("UPDATE users SET full_name = 'user 7' WHERE id = 7")  # only the case of one letter
        assert observe(conn)["data"]["public.users"]["hash"] != new["data"]["public.users"]["hash"]
        with hashing_like(old):
            assert observe(conn)["data"]["public.users"]["hash"] != old["data"]["public.users"]["hash"]
    assert (new["row_hash"], old["row_hash"], ROW_HASH, current_row_hash()) == (2, 1, 2, 2)
    assert new["data"]["public.users"]["hash"] != old["data"]["public.users"]["hash"]
    assert new["data"]["public.users"]["rows"] == old["data"]["public.users"]["rows"] == 500


def test_a_checkpoint_from_a_newer_shadow_is_refused_by_name() -> None:
    with pytest.raises(ShadowError, match="newer shadow"):
        row_hash_of({"row_hash": 3})


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
    assert _kept_row_hash(shadow_cli.state_dir) == 2
