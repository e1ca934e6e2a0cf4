"""``shadow django`` on the real example project (examples/django): unapplied migrations rehearsed one by one on
production's copy (a RunPython one as a command, a RunSQL one as SQL with its lock trace), the round trip through
their reverses — production only read, while an application keeps writing to it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, ProdDb
from tests.writer import Writer

EXAMPLE = ROOT / "examples" / "django"
STATE = "SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM (SELECT * FROM {}) t"


@pytest.fixture
def project(tmp_path: Path, empty_db: ProdDb) -> tuple[Path, ProdDb]:
    """The example copied, and production at billing.0002 with the shop's data (and a table a writer uses)."""
    pytest.importorskip("django")
    folder = tmp_path / "django"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, str(folder / "manage.py"), "migrate", "billing", "0002"],
                          env={**os.environ, "DATABASE_URL": empty_db.dsn}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    empty_db.execute((folder / "seed.sql").read_text())
    empty_db.execute("CREATE TABLE app_events (id bigserial PRIMARY KEY, note text)")
    return folder, empty_db


def _run(shadow_cli, folder: Path, db: ProdDb, *extra: str):  # type: ignore[no-untyped-def]
    result = shadow_cli("django", "--manage", str(folder / "manage.py"), "--json", *extra,
                        env={"DATABASE_URL": db.dsn})
    assert result.out.startswith("{"), result.text
    return result, json.loads(result.out)


def _state(db: ProdDb) -> tuple[object, ...]:
    return (db.scalar(STATE.format("customers")), db.scalar(STATE.format("invoices")),
            db.scalar(STATE.format("django_migrations")))


def test_migrations_are_rehearsed_one_by_one_and_the_round_trip_passes(
        project: tuple[Path, ProdDb], shadow_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder, db = project
    before = _state(db)
    with Writer(db.dsn, "app_events", tmp_path / "writes.log", every=0.02) as writer:
        result, report = _run(shadow_cli, folder, db)
    writer.assert_kept(db.dsn)
    assert result.code == 0, result.text
    assert report["start"] == "billing.0002_invoice"
    m3, m4 = report["revisions"]
    assert (m3["revision"], m3["mode"]) == ("billing.0003_customer_tier", "online")  # RunPython: only running shows
    assert (m4["revision"], m4["mode"]) == ("billing.0004_settle_invoices", "sql")
    changes4 = [c["address"] for t in m4["run"]["targets"] for c in t["changes"]]
    assert changes4 == ["add column public.invoices.settled_at", "update rows public.invoices"]
    locks = m4["run"]["action"]["rehearsal"]["locks"]
    assert any(t["statement"].startswith("billing.0004_settle_invoices.sql:") for t in locks), locks
    assert report["round_trip"]["outcome"] == "passed"
    assert _state(db) == before  # production only read


def test_a_migration_that_breaks_its_expectation_is_refused_naming_the_change(
        project: tuple[Path, ProdDb], shadow_cli) -> None:  # type: ignore[no-untyped-def]
    folder, db = project
    migration = folder / "billing" / "migrations" / "0004_settle_invoices.py"
    migration.write_text(migration.read_text().replace('"updated": "<= 500"', '"updated": "<= 5"'))
    result, report = _run(shadow_cli, folder, db, "--no-round-trip")
    assert result.code == 1
    m3, m4 = report["revisions"]
    assert m3["passed"] and not m4["passed"]
    [failed] = [v for v in m4["run"]["expectations"] if not v["ok"]]
    paid = db.scalar("SELECT count(*) FROM invoices WHERE status = 'paid'")
    assert (failed["rule"], failed["subject"]) == ("rows", "public.invoices updated")
    assert failed["message"].startswith(f"{paid} updated, expected <= 5")


def test_a_reverse_that_forgets_the_data_is_caught_with_the_rows_it_left(
        project: tuple[Path, ProdDb], shadow_cli) -> None:  # type: ignore[no-untyped-def]
    folder, db = project
    migration = folder / "billing" / "migrations" / "0004_settle_invoices.py"
    migration.write_text(migration.read_text().replace(
        "reverse_sql=\"UPDATE invoices SET status = 'paid' WHERE status = 'settled'\"",
        "reverse_sql=migrations.RunSQL.noop"))
    result, report = _run(shadow_cli, folder, db)
    assert result.code == 1, result.text
    failed = [(v["rule"], v["subject"]) for v in report["round_trip"]["expectations"] if not v["ok"]]
    assert failed == [("unexpected", "update rows public.invoices")]  # Django's own sequence moving is allowed
    left = {c["address"]: c for t in report["round_trip"]["targets"] for c in t["changes"]}["update rows public.invoices"]
    row = left["detail"]["sample_rows"][0]
    assert row["before"]["status"] == "paid" and row["after"]["status"] == "settled"


def test_bad_input_is_one_line(project: tuple[Path, ProdDb], shadow_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder, db = project
    missing = shadow_cli("django", "--manage", str(tmp_path / "nope.py"), env={"DATABASE_URL": db.dsn})
    assert missing.code == 2 and "no such manage.py" in missing.err and "Traceback" not in missing.err
    migration = folder / "billing" / "migrations" / "0004_settle_invoices.py"
    migration.write_text(migration.read_text().replace('shadow_expect = {', 'shadow_expect = dict(**{', 1)
                         .replace('    "rows": {"public.invoices": {"updated": "<= 500", "inserted": 0, "deleted": 0}},\n}',
                                  '    "rows": {"public.invoices": {"updated": "<= 500", "inserted": 0, "deleted": 0}},\n})'))
    computed = shadow_cli("django", "--manage", str(folder / "manage.py"), env={"DATABASE_URL": db.dsn})
    assert computed.code == 2 and "0004_settle_invoices.py:5: shadow_expect must be a literal" in computed.err, \
        computed.text
