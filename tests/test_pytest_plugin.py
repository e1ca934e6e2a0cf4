"""The pytest plugin, tested the way pytest plugins are: with ``pytester``, running pytest in a subprocess that loads
the plugin through its ``pytest11`` entry point, against a real PostgreSQL server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEMO_SCHEMA, ProdDb

pytest_plugins = ["pytester"]

PASSING = """\
version: 1
targets:
  app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}
action:
  sql: backfill.sql
expect:
  app:
    must: ["update rows public.users"]
    rows:
      public.users: {updated: "<= 10", inserted: 0, deleted: 0}
    checks:
      - {sql: "SELECT count(*) FROM users WHERE full_name = 'Renamed'", equals: 3}
"""
BACKFILL = "UPDATE users SET full_name = 'Renamed' WHERE id <= 3;\n"

FAILING = """\
version: 1
targets:
  app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}
action:
  sql: wide.sql
expect:
  app:
    must: ["update rows public.users"]
    rows:
      public.users: {updated: "<= 10"}
"""
WIDE = "UPDATE users SET full_name = upper(full_name);\nCREATE INDEX users_name_idx ON users (full_name);\n"


def _outcomes(result: pytest.RunResult) -> dict[str, int]:
    return {k: v for k, v in result.parseoutcomes().items() if k in ("passed", "failed", "skipped", "errors")}


@pytest.fixture
def plans(pytester: pytest.Pytester, prod_db: ProdDb, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("APP_DATABASE_URL", prod_db.dsn)
    monkeypatch.setenv("SHADOW_STATE_DIR", str(pytester.path / ".shadow"))
    monkeypatch.delenv("SHADOW_TEST_WARM", raising=False)
    pytester.makefile(".yaml", shadow_backfill=PASSING, shadow_wide=FAILING)
    pytester.makefile(".sql", backfill=BACKFILL, wide=WIDE)
    return pytester


def test_plans_are_collected_as_tests_one_item_per_expectation(plans: pytest.Pytester, prod_db: ProdDb) -> None:
    before = prod_db.fingerprint()
    result = plans.runpytest_subprocess("--shadow", "-v", "-p", "no:cacheprovider")
    out = result.stdout.str()
    print(out)
    # shadow_backfill.yaml: rehearsal, must, nothing unexpected, rows, check, findings found by the rehearsal — pass
    for name in ("rehearsal", "app: must update rows public.users", "app: nothing unexpected",
                 "app: rows public.users", "findings found by the rehearsal"):
        assert f"shadow_backfill.yaml::{name} PASSED" in out
    assert "shadow_backfill.yaml::app: check SELECT count(*) FROM users WHERE full_name = 'Renamed' PASSED" in out
    # shadow_wide.yaml: the index is unexpected and 500 updates break the rows bound; must still passes
    assert "shadow_wide.yaml::app: must update rows public.users PASSED" in out
    assert "shadow_wide.yaml::app: nothing unexpected FAILED" in out
    assert "shadow_wide.yaml::app: rows public.users FAILED" in out
    assert "FAILED app: unexpected add index public.users_name_idx: not covered by must/may" in out
    assert "FAILED app: rows public.users updated: 500 updated, expected <= 10" in out
    assert "changes on app: add index public.users_name_idx, update rows public.users" in out
    # an UPDATE without WHERE is an error-level finding, its own item
    assert "shadow_wide.yaml::app: finding update-without-where at wide.sql:1 FAILED" in out
    assert "FAILED app: finding update-without-where at wide.sql:1" in out
    assert "shadow_wide.yaml::findings found by the rehearsal PASSED" in out
    assert "Traceback" not in out
    assert _outcomes(result) == {"passed": 9, "failed": 3}
    assert prod_db.fingerprint() == before  # rehearsed, never applied


def test_shadow_target_points_a_plan_elsewhere_and_ini_globs_collect(plans: pytest.Pytester, prod_db: ProdDb) -> None:
    plans.makefile(".yaml", migrations_check=PASSING.replace("${APP_DATABASE_URL}", "postgresql://nobody@127.0.0.1:1/x"))
    plans.makeini("[pytest]\nshadow_plans = migrations_*.yaml\n")
    result = plans.runpytest_subprocess("--shadow-target", f"app={prod_db.dsn}", "-p", "no:cacheprovider")
    assert _outcomes(result) == {"passed": 6}, result.stdout.str()  # only the ini's glob: no shadow_*.yaml

    result = plans.runpytest_subprocess("-p", "no:cacheprovider")
    out = result.stdout.str()
    assert _outcomes(result) == {"failed": 1, "skipped": 5}, out  # unreachable: the rehearsal item says so
    assert "the rehearsal could not run: target 'app': cannot connect to postgresql://nobody@127.0.0.1:1/x" in out


FINDINGS = """\
version: 1
targets:
  app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}
action:
  sql: [upper.sql, events.sql]
expect:
  app:
    must: ["update rows public.users"]
"""


def test_each_error_level_finding_is_its_own_item_failing_even_when_the_rehearsal_cannot_run(
        plans: pytest.Pytester, prod_db: ProdDb) -> None:
    # Production has a partitioned table: only the checkpoint tells the linter so (its finding is the rehearsal's),
    # and PostgreSQL refuses the CONCURRENTLY index on it, so the rehearsal stops there.
    prod_db.execute("CREATE TABLE events (id int, at date) PARTITION BY RANGE (at);\n"
                    "CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');")
    plans.makefile(".yaml", shadow_findings=FINDINGS)
    plans.makefile(".sql", upper="UPDATE users SET full_name = upper(full_name);\n",
                   events="TRUNCATE events_2026;\nCREATE INDEX CONCURRENTLY events_at_idx ON events (at);\n")
    result = plans.runpytest_subprocess("--shadow", "-v", "-p", "no:cacheprovider", "shadow_findings.yaml")
    out = result.stdout.str()
    assert "shadow_findings.yaml::rehearsal FAILED" in out, out
    assert 'cannot create index on partitioned table "events" concurrently' in out
    assert "shadow_findings.yaml::app: finding update-without-where at upper.sql:1 FAILED" in out
    assert "FAILED app: finding update-without-where at upper.sql:1: UPDATE users without WHERE" in out
    assert "shadow_findings.yaml::app: finding truncate at events.sql:1 FAILED" in out
    assert "FAILED app: finding truncate at events.sql:1: TRUNCATE events_2026" in out
    for name in ("findings found by the rehearsal", "app: must update rows public.users", "app: nothing unexpected"):
        assert f"shadow_findings.yaml::{name} SKIPPED" in out
    assert "Traceback" not in out
    assert _outcomes(result) == {"failed": 3, "skipped": 3}


def test_a_finding_the_collection_did_not_see_fails_the_rehearsals_findings_item(plans: pytest.Pytester) -> None:
    # the SQL changes after pytest collected the plan: the run's lint finds what the collection's could not
    plans.makeconftest("""
from pathlib import Path

def pytest_collection_finish(session):
    with open(Path(session.config.rootpath, "backfill.sql"), "a") as sql:
        sql.write("\\nDELETE FROM audit_log;\\n")
""")
    result = plans.runpytest_subprocess("--shadow", "-v", "-p", "no:cacheprovider", "shadow_backfill.yaml")
    out = result.stdout.str()
    assert "shadow_backfill.yaml::findings found by the rehearsal FAILED" in out, out
    assert "FAILED app: finding delete-without-where at backfill.sql:2: DELETE FROM audit_log without WHERE" in out
    assert "shadow_backfill.yaml::app: nothing unexpected FAILED" in out  # the rows it deleted
    assert "shadow_backfill.yaml::rehearsal PASSED" in out
    assert _outcomes(result) == {"passed": 4, "failed": 2}


def test_items_the_rehearsal_never_judged_are_skipped_not_passed(plans: pytest.Pytester) -> None:
    plans.makefile(".yaml", shadow_cmd='''\
version: 1
targets:
  app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}
action: {command: "false"}
expect:
  app:
    must: ["update rows public.users"]
''')
    result = plans.runpytest_subprocess("--shadow", "-v", "-rs", "-p", "no:cacheprovider", "shadow_cmd.yaml")
    out = result.stdout.str()
    assert "shadow_cmd.yaml::rehearsal FAILED" in out, out
    assert "the action failed on the shadow" in out
    for name in ("app: must update rows public.users", "app: nothing unexpected"):
        assert f"shadow_cmd.yaml::{name} SKIPPED" in out
    assert "not judged: the action failed on the shadow: the command exited with status 1" in out
    assert "findings" not in out  # no SQL, nothing to find
    assert _outcomes(result) == {"failed": 1, "skipped": 2}


def test_a_bad_plan_is_one_failing_item_naming_the_place(plans: pytest.Pytester) -> None:
    plans.makefile(".yaml", shadow_bad="version: 1\ntargets:\n  app: {kind: postgres}\naction:\n  sql: nope.sql\n")
    result = plans.runpytest_subprocess("--shadow", "-p", "no:cacheprovider", "shadow_bad.yaml")
    out = result.stdout.str()
    assert _outcomes(result) == {"failed": 1}, out
    assert "shadow_bad.yaml:3" in out and "Traceback" not in out


SHADOW_DB_TESTS = '''
import os
from pathlib import Path

import pytest

@pytest.mark.shadow_db(schema="schema.sql")
def test_writes(shadow_db):
    with shadow_db.connect() as conn:
        conn.execute("INSERT INTO users (email, full_name) VALUES ('x@example.com', 'X')")
    assert shadow_db.scalar("SELECT count(*) FROM users") == 1

@pytest.mark.shadow_db(schema="schema.sql")
def test_gets_a_fresh_copy(shadow_db):
    assert shadow_db.scalar("SELECT count(*) FROM users") == 0

@pytest.mark.shadow_db(dump="seed.sql")
def test_from_a_dump(shadow_db):
    assert shadow_db.scalar("SELECT count(*) FROM seeded") == 2

@pytest.mark.shadow_db(schema="schema.sql")
def test_rehearse(shadow_db, rehearse, tmp_path):
    with shadow_db.connect() as conn:
        conn.execute("INSERT INTO users (email, full_name) SELECT 'u' || g || '@x', 'U' FROM generate_series(1, 5) g")
    good = rehearse(sql="migrate.sql", expect={"must": ["add column public.users.nickname"],
                                               "may": ["update rows public.users"],
                                               "rows": {"public.users": {"updated": 5}}}, on=shadow_db)
    assert good.passed, good.explain()
    assert Path(good.report_dir).is_relative_to(tmp_path)  # the test's own, never the state dir
    assert not Path(os.environ["SHADOW_STATE_DIR"]).exists()
    bad = rehearse(sql="migrate.sql", expect={"must": ["add column public.users.nickname"]}, on=shadow_db)
    assert not bad.passed
    assert "FAILED app: unexpected update rows public.users" in bad.explain(), bad.explain()
    assert shadow_db.scalar("SELECT count(*) FROM information_schema.columns WHERE column_name = 'nickname'") == 0
'''


def test_shadow_db_clones_a_template_per_test_and_rehearse_judges(pytester: pytest.Pytester,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHADOW_STATE_DIR", str(pytester.path / ".shadow"))
    monkeypatch.delenv("SHADOW_TEST_WARM", raising=False)
    pytester.makefile(".sql", schema=DEMO_SCHEMA.read_text().split("INSERT INTO users (email")[0],  # no rows
                      seed="CREATE TABLE seeded (id int);\nINSERT INTO seeded VALUES (1), (2);\n",
                      migrate="ALTER TABLE users ADD COLUMN nickname text;\nUPDATE users SET nickname = full_name WHERE true;\n")
    pytester.makepyfile(test_db=SHADOW_DB_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    assert _outcomes(result) == {"passed": 4}, result.stdout.str()


def test_a_checkpoint_is_a_shadow_db_source(pytester: pytest.Pytester, prod_db: ProdDb,
                                            monkeypatch: pytest.MonkeyPatch, shadow_cli) -> None:  # type: ignore[no-untyped-def]
    plan = pytester.path / "shadow.yaml"
    plan.write_text(PASSING)
    (pytester.path / "backfill.sql").write_text(BACKFILL)
    ran = shadow_cli("plan", "--json", "-f", str(plan), env={"APP_DATABASE_URL": prod_db.dsn})
    assert ran.code == 0, ran.text
    run_id = json.loads(ran.out)["run_id"]
    monkeypatch.setenv("SHADOW_STATE_DIR", str(shadow_cli.state_dir))
    users = prod_db.scalar("SELECT count(*) FROM users")
    pytester.makepyfile(test_cp=f'''
import pytest

@pytest.mark.shadow_db(checkpoint="{run_id}")
def test_checkpoint(shadow_db):
    assert shadow_db.scalar("SELECT count(*) FROM users") == {users}
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert _outcomes(result) == {"passed": 1}, result.stdout.str()


XDIST_TESTS = '''
import json, os, pytest
from pathlib import Path

@pytest.mark.parametrize("i", range(6))
@pytest.mark.shadow_db(schema="schema.sql")
def test_db(shadow_db, i):
    with shadow_db.connect() as conn:
        conn.execute("CREATE TABLE mine (i int)")
        conn.execute("INSERT INTO mine VALUES (%s)", [i])
    port = shadow_db.server.port
    (Path(os.environ["SEEN_DIR"]) / f"{i}.json").write_text(json.dumps({"worker": os.environ.get("PYTEST_XDIST_WORKER"),
                                               "port": port, "db": shadow_db.name}))
'''


def test_xdist_workers_share_no_database_and_no_port(pytester: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("xdist")
    monkeypatch.setenv("SHADOW_STATE_DIR", str(pytester.path / ".shadow"))
    seen_dir = pytester.path / "seen"
    seen_dir.mkdir()
    monkeypatch.setenv("SEEN_DIR", str(seen_dir))
    pytester.makefile(".sql", schema="CREATE TABLE base (id int);\n")
    pytester.makepyfile(test_x=XDIST_TESTS)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    assert _outcomes(result) == {"passed": 6}, result.stdout.str()
    seen = [json.loads(p.read_text()) for p in seen_dir.glob("*.json")]
    assert len(seen) == 6
    workers = {s["worker"] for s in seen}
    assert len(workers) == 2, seen
    ports = {w: {s["port"] for s in seen if s["worker"] == w} for w in workers}
    assert all(len(p) == 1 for p in ports.values()) and len(set().union(*ports.values())) == 2, ports
    assert len({(s["port"], s["db"]) for s in seen}) == 6


def test_under_xdist_each_plan_file_is_rehearsed_once(plans: pytest.Pytester, prod_db: ProdDb) -> None:
    pytest.importorskip("xdist")
    before = prod_db.fingerprint()

    def rehearsed() -> list[str]:
        return sorted(Path(json.loads(p.read_text())["plan_path"]).name
                      for p in (plans.path / ".shadow" / "runs").glob("*/run.json"))

    # --dist load (what -n means) may hand one file's items to both workers; each plan is still rehearsed once
    result = plans.runpytest_subprocess("--shadow", "-n", "2", "-v", "-p", "no:cacheprovider")
    out = result.stdout.str()
    assert _outcomes(result) == {"passed": 9, "failed": 3}, out  # as without -n
    for name in ("app: nothing unexpected", "app: rows public.users",
                 "app: finding update-without-where at wide.sql:1"):
        assert f"FAILED shadow_wide.yaml::{name}" in out
    assert "PASSED shadow_wide.yaml::app: must update rows public.users" in out
    assert "PASSED shadow_backfill.yaml::app: rows public.users" in out
    assert rehearsed() == ["shadow_backfill.yaml", "shadow_wide.yaml"]

    # --dist each: both workers run every item, and still one rehearsal per plan (per test run)
    result = plans.runpytest_subprocess("--shadow", "-n", "2", "--dist", "each", "-p", "no:cacheprovider")
    assert _outcomes(result) == {"passed": 18, "failed": 6}, result.stdout.str()
    assert rehearsed() == ["shadow_backfill.yaml"] * 2 + ["shadow_wide.yaml"] * 2
    assert prod_db.fingerprint() == before


def test_loading_the_plugin_imports_nothing_heavy() -> None:
    """A project that installs shadow but does not use the plugin pays for pytest and the standard library only
    (the time it adds is measured in benchmarks/bench_plugin_import.py)."""
    probe = ("import sys; import pytest; before = set(sys.modules); import shadow.pytest_plugin; "
             "print('\\n'.join(sorted(set(sys.modules) - before)))")
    added = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    heavy = [m for m in added if m.split(".")[0] in ("psycopg", "sqlglot", "boto3", "botocore", "docker", "yaml",
                                                     "git", "deepdiff", "mcp", "rich", "click", "adapters",
                                                     "snapshots", "testcontainers")
             or (m.startswith("shadow.") and m != "shadow.pytest_plugin")]
    assert heavy == [], heavy
    assert "shadow.pytest_plugin" in added


def test_the_plugin_is_registered_through_its_entry_point() -> None:
    from importlib.metadata import entry_points

    [entry] = [e for e in entry_points(group="pytest11") if e.name == "shadow"]
    assert entry.value == "shadow.pytest_plugin"
    assert Path(entry.load().__file__).name == "pytest_plugin.py"


def test_an_alembic_project_is_one_item_per_revision_and_the_round_trip(
        pytester: pytest.Pytester, empty_db: ProdDb, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import shutil

    from tests.conftest import ROOT

    folder = pytester.path / "shop"
    shutil.copytree(ROOT / "examples" / "alembic", folder, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "shadow.migrations.alembic_run", "-c", str(folder / "alembic.ini"),
                           "upgrade", "0002"], env={**os.environ, "DATABASE_URL": empty_db.dsn},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    empty_db.execute((folder / "seed.sql").read_text())
    monkeypatch.setenv("SHADOW_STATE_DIR", str(pytester.path / ".shadow"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    result = pytester.runpytest_subprocess("--shadow-alembic", "shop/alembic.ini", "--shadow-target",
                                           f"app={empty_db.dsn}", "-v", "-p", "no:cacheprovider")
    out = result.stdout.str()
    assert "shop/alembic.ini::revision 0003 PASSED" in out, out
    assert "shop/alembic.ini::revision 0004 PASSED" in out
    assert "shop/alembic.ini::round trip FAILED" in out
    assert "migrating back to 0002 left a trace" in out and '"status": "settled"' in out
    assert _outcomes(result) == {"passed": 2, "failed": 1}


def test_a_revision_applied_between_collection_and_run_fails_clearly(
        pytester: pytest.Pytester, empty_db: ProdDb, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import shutil

    from tests.conftest import ROOT

    folder = pytester.path / "shop"
    shutil.copytree(ROOT / "examples" / "alembic", folder, ignore=shutil.ignore_patterns("__pycache__"))
    upgrade = [sys.executable, "-m", "shadow.migrations.alembic_run", "-c", str(folder / "alembic.ini"), "upgrade"]
    done = subprocess.run([*upgrade, "0002"], env={**os.environ, "DATABASE_URL": empty_db.dsn},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    empty_db.execute((folder / "seed.sql").read_text())
    monkeypatch.setenv("SHADOW_STATE_DIR", str(pytester.path / ".shadow"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    # someone deploys 0003 to production after pytest collected it as pending
    pytester.makeconftest(f"""
import os, subprocess

def pytest_collection_finish(session):
    subprocess.run({upgrade + ["0003"]!r}, env={{**os.environ, "DATABASE_URL": {empty_db.dsn!r}}}, check=True)
""")
    result = pytester.runpytest_subprocess("--shadow-alembic", "shop/alembic.ini", "--shadow-target",
                                           f"app={empty_db.dsn}", "-v", "-p", "no:cacheprovider")
    out = result.stdout.str()
    assert "shop/alembic.ini::revision 0003 FAILED" in out, out
    assert ("0003 was pending when the tests were collected, but the rehearsal started from 0003 and did not "
            "rehearse it: production's migrations changed meanwhile — run the tests again") in out
    assert "shop/alembic.ini::revision 0004 PASSED" in out
    assert "Traceback" not in out and "ValueError" not in out


def test_shadow_db_on_the_docker_backend(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import docker_or_skip

    docker_or_skip()
    monkeypatch.setenv("SHADOW_STATE_DIR", str(pytester.path / ".shadow"))
    monkeypatch.setenv("SHADOW_PYTEST_PG_MAJOR", "15")
    pytester.makefile(".sql", schema="CREATE TABLE t (id int);\nINSERT INTO t VALUES (1);\n")
    pytester.makepyfile(test_d='''
import pytest

@pytest.mark.shadow_db(schema="schema.sql")
def test_in_a_container(shadow_db):
    assert shadow_db.scalar("SELECT count(*) FROM t") == 1
    assert type(shadow_db.server).__name__ == "ContainerServer"
''')
    result = pytester.runpytest_subprocess("--shadow-backend", "docker", "-p", "no:cacheprovider")
    assert _outcomes(result) == {"passed": 1}, result.stdout.str()


def test_a_django_project_is_one_item_per_migration_and_the_round_trip(
        pytester: pytest.Pytester, empty_db: ProdDb, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import shutil

    from tests.conftest import ROOT

    pytest.importorskip("django")
    folder = pytester.path / "site"
    shutil.copytree(ROOT / "examples" / "django", folder, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, str(folder / "manage.py"), "migrate", "billing", "0002"],
                          env={**os.environ, "DATABASE_URL": empty_db.dsn}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    empty_db.execute((folder / "seed.sql").read_text())
    monkeypatch.setenv("SHADOW_STATE_DIR", str(pytester.path / ".shadow"))
    monkeypatch.setenv("DATABASE_URL", empty_db.dsn)
    pytester.makeini("[pytest]\nshadow_django = site/manage.py\n")
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    out = result.stdout.str()
    assert "site/manage.py::migration billing.0003_customer_tier PASSED" in out, out
    assert "site/manage.py::migration billing.0004_settle_invoices PASSED" in out
    assert "site/manage.py::round trip PASSED" in out
    assert _outcomes(result) == {"passed": 3}
