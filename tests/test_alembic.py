"""``shadow alembic`` on the real example project (examples/alembic): revisions rehearsed one by one on production's
copy, the faulty downgrade caught by the round trip with the rows it left behind — production only read, while an
application keeps writing to it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ROOT, ProdDb
from tests.writer import Writer

EXAMPLE = ROOT / "examples" / "alembic"


@pytest.fixture
def project(tmp_path: Path, empty_db: ProdDb) -> tuple[Path, ProdDb]:
    """The example copied, and production at revision 0002 with the shop's data (and an app table a writer uses)."""
    folder = tmp_path / "alembic"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "shadow.migrations.alembic_run", "-c", str(folder / "alembic.ini"),
                           "upgrade", "0002"], env={**os.environ, "DATABASE_URL": empty_db.dsn},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    empty_db.execute((folder / "seed.sql").read_text())
    empty_db.execute("CREATE TABLE app_events (id bigserial PRIMARY KEY, note text)")
    return folder, empty_db


def _run(shadow_cli, folder: Path, db: ProdDb, *extra: str):  # type: ignore[no-untyped-def]
    result = shadow_cli("alembic", "-c", str(folder / "alembic.ini"), "--json", *extra,
                        env={"DATABASE_URL": db.dsn})
    assert result.out.startswith("{"), result.text
    return result, json.loads(result.out)


def test_revisions_are_rehearsed_one_by_one_and_the_faulty_downgrade_is_caught(
        project: tuple[Path, ProdDb], shadow_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder, db = project
    shop = "SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM (SELECT * FROM invoices) t"
    before = (db.scalar(shop), db.scalar("SELECT md5(string_agg(c::text, ',' ORDER BY c::text)) FROM customers c"))
    with Writer(db.dsn, "app_events", tmp_path / "writes.log", every=0.02) as writer:
        result, report = _run(shadow_cli, folder, db)
    writer.assert_kept(db.dsn)
    assert result.code == 1, result.text
    assert report["start"] == "0002" and [r["revision"] for r in report["revisions"]] == ["0003", "0004"]
    r3, r4 = report["revisions"]
    assert r3["passed"] and r4["passed"], result.text
    assert r3["mode"] == "sql" and r3["expect"] == "0003_customer_tiers.py: shadow_expect"
    changes3 = [c["address"] for t in r3["run"]["targets"] for c in t["changes"]]
    assert "add column public.customers.tier" in changes3 and "update rows public.customers" in changes3
    assert not [c for c in changes3 if "invoices" in c]  # 0004's change is 0004's alone
    changes4 = [c["address"] for t in r4["run"]["targets"] for c in t["changes"]]
    assert "add column public.invoices.settled_at" in changes4 and "update rows public.invoices" in changes4
    # the lock trace names the revision: its SQL file and line
    locks = r3["run"]["action"]["rehearsal"]["locks"]
    assert {"relation": "public.customers", "mode": "ACCESS EXCLUSIVE"} in [
        {"relation": lk["relation"], "mode": lk["mode"]} for t in locks if t["statement"] == "0003.sql:5"
        for lk in t["locks"]], locks
    trip = report["round_trip"]
    assert trip["outcome"] == "failed"
    [left] = [c for t in trip["targets"] for c in t["changes"]]
    assert left["address"] == "update rows public.invoices"
    assert left["detail"]["count"] == db.scalar("SELECT count(*) FROM invoices WHERE status = 'paid'")
    row = left["detail"]["sample_rows"][0]
    assert row["before"]["status"] == "paid" and row["after"]["status"] == "settled"
    # production only read: its data and revision as they were (the writer's table is the writer's)
    assert (db.scalar(shop), db.scalar("SELECT md5(string_agg(c::text, ',' ORDER BY c::text)) FROM customers c")) == before
    assert db.scalar("SELECT version_num FROM alembic_version") == "0002"
    assert db.scalar("SELECT count(*) FROM information_schema.columns WHERE column_name = 'tier'") == 0

    # production's password is in no file shadow kept (the plans name the database through the environment)
    password = psycopg.conninfo.conninfo_to_dict(db.dsn)["password"]
    kept = [p for p in shadow_cli.state_dir.rglob("*") if p.is_file() and p.suffix in (".yaml", ".sql", ".json", ".md")]
    assert kept and not [p for p in kept if password in p.read_text(errors="replace")]

    text = shadow_cli("alembic", "-c", str(folder / "alembic.ini"), env={"DATABASE_URL": db.dsn})
    assert "left behind: update rows public.invoices" in text.out and '"status": "settled"' in text.out


def test_a_revision_that_breaks_its_expectation_is_refused_naming_the_change(
        project: tuple[Path, ProdDb], shadow_cli) -> None:  # type: ignore[no-untyped-def]
    folder, db = project
    revision = folder / "migrations" / "versions" / "0003_customer_tiers.py"
    revision.write_text(revision.read_text().replace('"updated": "<= 50"', '"updated": "<= 5"'))
    result, report = _run(shadow_cli, folder, db, "--no-round-trip")
    assert result.code == 1
    r3, r4 = report["revisions"]
    assert not r3["passed"] and r4["passed"]
    failed = [v for v in r3["run"]["expectations"] if not v["ok"]]
    assert [(v["rule"], v["subject"]) for v in failed] == [("rows", "public.customers updated")]
    assert failed[0]["message"].startswith("40 updated, expected <= 5")
    assert report["round_trip"] is None


def test_a_downgrade_that_restores_everything_passes_the_round_trip(
        project: tuple[Path, ProdDb], shadow_cli) -> None:  # type: ignore[no-untyped-def]
    folder, db = project
    revision = folder / "migrations" / "versions" / "0004_settle_invoices.py"
    revision.write_text(revision.read_text().replace(
        '    op.drop_column("invoices", "settled_at")',
        '    op.execute("UPDATE invoices SET status = \'paid\' WHERE status = \'settled\'")\n'
        '    op.drop_column("invoices", "settled_at")'))
    result, report = _run(shadow_cli, folder, db)
    assert result.code == 0, result.text
    assert report["passed"] and report["round_trip"]["outcome"] == "passed"


def test_bad_input_is_one_line(project: tuple[Path, ProdDb], shadow_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder, db = project
    missing = shadow_cli("alembic", "-c", str(tmp_path / "nope.ini"), env={"DATABASE_URL": db.dsn})
    assert missing.code == 2 and "no such Alembic config file" in missing.err and "Traceback" not in missing.err
    unknown = shadow_cli("alembic", "-c", str(folder / "alembic.ini"), "--to", "9999", env={"DATABASE_URL": db.dsn})
    assert unknown.code == 2 and "cannot go from 0002 to 9999" in unknown.err, unknown.text
    bad = folder / "migrations" / "versions" / "0003_customer_tiers.py"
    bad.write_text(bad.read_text().replace('"rows": {', '"rowz": {'))
    typo = shadow_cli("alembic", "-c", str(folder / "alembic.ini"), env={"DATABASE_URL": db.dsn})
    assert typo.code == 2 and "0003_customer_tiers.py: shadow_expect" in typo.err and "rowz" in typo.err, typo.text
