"""Warm checkpoints (issue 16, ``policy.warm``; adapters.postgres.warm): a checkpoint restored once and cloned per run.

Every test runs the real CLI against a real production database; the warm servers it keeps are real servers
(local clusters, or containers for the docker case) and are discarded at the end of each test.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from adapters.postgres import warm, warm_golden
from shadow.gc import gc
from shadow.settings import Settings
from tests.conftest import BOTH_BACKENDS, ProdDb, start_cli, warnings_of, write_plan
from tests.writer import Writer

PLAN = """
version: 1
targets:
  app: {{kind: postgres, dsn: "{dsn}"}}
action:
  {action}
expect:
  app:
    may: [{may}]
policy:
  warm: 10m
"""

# Fails when anything an earlier rehearsal wrote is still there: the marker row, the marker table.
LEAK_GUARD = """
DO $$ BEGIN
  IF EXISTS (SELECT 1 FROM users WHERE email = 'marker@example.com') THEN RAISE EXCEPTION 'a rehearsal leaked its row'; END IF;
  IF to_regclass('public.marker') IS NOT NULL THEN RAISE EXCEPTION 'a rehearsal leaked its table'; END IF;
END $$;
"""
MARKER_SQL = LEAK_GUARD + """
INSERT INTO users (email, full_name) VALUES ('marker@example.com', 'Marker');
CREATE TABLE marker (id int);
"""
MARKER_MAY = "insert rows public.users, add table public.marker"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """The CLI's state dir; every warm server kept in it is discarded afterwards (they outlive the CLI)."""
    folder = tmp_path / "state"
    yield folder
    warm.reap(folder / "warm" / "postgres", everything=True)


def _plan(tmp_path: Path, db: ProdDb, sql: str, may: str) -> Path:
    return write_plan(tmp_path, PLAN.format(dsn=db.dsn, action="sql: migrate.sql", may=may), {"migrate.sql": sql})


def _run(shadow_cli, *args: str, env: dict[str, str] | None = None) -> dict:  # type: ignore[no-untyped-def]
    result = shadow_cli(*args, "--json", env=env)
    assert result.out.startswith("{"), result.text
    report = json.loads(result.out)
    report["_code"], report["_text"] = result.code, result.text
    return report


def _warm_info(report: dict) -> dict:
    [target] = report["targets"]
    return target["checkpoint"]["warm"]


def _entries(state: Path) -> list[warm.Entry]:
    return warm.entries(state / "warm" / "postgres")


@BOTH_BACKENDS
def test_a_second_plan_rehearses_on_a_clone_of_the_warm_checkpoint_and_sees_nothing_of_the_first(
        prod_db: ProdDb, shadow_cli, tmp_path: Path, state: Path, backend: str):
    """The marker row and table the first rehearsal wrote are not in the second's shadow (the leak guard raises
    otherwise), the second takes no checkpoint of its own, and both pass with the same change set."""
    plan = _plan(tmp_path, prod_db, MARKER_SQL, MARKER_MAY)
    first = _run(shadow_cli, "plan", "-f", str(plan))
    assert first["_code"] == 0, first["_text"]
    assert _warm_info(first)["reused"] is False
    [entry] = _entries(state)
    assert entry.backend == backend and (entry.container if backend == "docker" else entry.root)
    assert oct(os.stat(state / "warm" / "postgres" / f"{entry.key}.json").st_mode & 0o777) == "0o600"  # it holds a password

    runs = [_run(shadow_cli, "plan", "-f", str(plan)) for _ in range(2)]
    for report in runs:
        assert report["_code"] == 0, report["_text"]
        info = _warm_info(report)
        assert info["reused"] is True and info["run_id"] == first["run_id"], info
        assert "rehearsed on the warm checkpoint" in warnings_of(report)
        [target] = report["targets"]
        assert sorted(c["address"] for c in target["changes"]) == ["add table public.marker",
                                                                    "insert rows public.users"]
        verdicts = {v["rule"]: v for v in report["expectations"]}
        assert verdicts["fidelity"]["ok"] and verdicts["rollback"]["ok"], verdicts
    assert prod_db.scalar("SELECT count(*) FROM users WHERE email = 'marker@example.com'") == 0
    [still] = _entries(state)
    assert still.run == first["run_id"] and still.used > entry.used


def test_an_action_cannot_reach_the_golden_database_through_the_shadows_address(prod_db: ProdDb, shadow_cli,
                                                                                 tmp_path: Path, state: Path):
    """A command action that connects to the golden database by name (same server, same credentials) is
    refused; the next rehearsal is as clean as the first."""
    script = tmp_path / "reach.py"
    script.write_text(
        "import os, psycopg\n"
        "from psycopg.conninfo import conninfo_to_dict, make_conninfo\n"
        "params = conninfo_to_dict(os.environ['SHADOW_APP_URL'])\n"
        "golden = params['dbname'] + '__shadow_golden'\n"
        "try:\n"
        "    with psycopg.connect(make_conninfo(**{**params, 'dbname': golden}), autocommit=True) as c:\n"
        "        c.execute(\"INSERT INTO users (email, full_name) VALUES ('marker@example.com', 'M')\")\n"
        "    print('REACHED')\n"
        "except psycopg.Error as exc:\n"
        "    print('REFUSED', exc)\n"
        "with psycopg.connect(os.environ['SHADOW_APP_URL'], autocommit=True) as c:\n"
        f"    c.execute({LEAK_GUARD!r})\n"
        f"open({str(tmp_path / 'urls')!r}, 'a').write(os.environ['SHADOW_APP_URL'] + '\\n')\n")
    body = PLAN.format(dsn=prod_db.dsn, action=f'command: "{sys.executable} {script}"', may="")
    plan = write_plan(tmp_path, body)
    reports = [_run(shadow_cli, "plan", "-f", str(plan)) for _ in range(2)]
    for report in reports:
        assert report["_code"] == 0, report["_text"]
    assert _warm_info(reports[1])["reused"] is True
    log = (state / "runs" / reports[1]["run_id"] / "action-rehearsal.log").read_text()
    assert "REFUSED" in log and "REACHED" not in log, log
    # The action ran as the shadow server's superuser here (production's user is the test cluster's): what it
    # learnt in one run opens nothing once the next run leased the server.
    first_url = (tmp_path / "urls").read_text().splitlines()[0]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(first_url, connect_timeout=5)


def test_an_action_that_changes_the_servers_roles_discards_the_warm_copy(prod_db: ProdDb, shadow_cli,
                                                                         tmp_path: Path, state: Path):
    """A role is not in any database: a clone would not reset it, so the next run would find it already there
    (while production does not). The warm copy is discarded instead of lent out — and a cold run whose action
    did that keeps nothing warm."""
    role = "warm_role_" + os.urandom(3).hex()
    harmless = _plan(tmp_path / "a", prod_db, "UPDATE users SET full_name = full_name WHERE id = 1;\n",
                     "update rows public.users")
    creates = _plan(tmp_path / "b", prod_db, f"CREATE ROLE {role};\n", "")
    assert _run(shadow_cli, "plan", "-f", str(harmless))["_code"] == 0
    on_warm = _run(shadow_cli, "plan", "-f", str(creates))
    assert on_warm["_code"] == 0 and _warm_info(on_warm)["reused"] is True, on_warm["_text"]
    after = _run(shadow_cli, "plan", "-f", str(harmless))
    assert after["_code"] == 0, after["_text"]
    info = _warm_info(after)
    assert info["reused"] is False and "changed the warm server's roles" in info["why"], info
    cold = _run(shadow_cli, "plan", "-f", str(creates))
    assert cold["_code"] == 0, cold["_text"]  # CREATE ROLE did not fail: the role did not leak
    assert _warm_info(cold)["reused"] is True  # the harmless run kept a fresh copy …
    last = _run(shadow_cli, "plan", "-f", str(harmless))
    assert _warm_info(last)["reused"] is False, _warm_info(last)  # … which the role's run spoiled again


def test_production_moving_elsewhere_keeps_the_warm_copy_and_moving_under_the_action_rehearses_again(
        prod_db: ProdDb, shadow_cli, tmp_path: Path, state: Path):
    """A writer keeps committing to ``events`` (a table the action neither reads nor writes): the warm
    checkpoint is reused and the writes reported. Then production's ``users`` changes: the warm copy no longer
    predicts the action, so the run rehearses again on a fresh checkpoint — and sees the new row."""
    prod_db.execute("CREATE TABLE events (id bigserial PRIMARY KEY, note text NOT NULL)")
    prod_db.execute("INSERT INTO events (note) SELECT 'seed ' || g FROM generate_series(1, 50) g")
    plan = _plan(tmp_path, prod_db, "UPDATE users SET full_name = upper(full_name) WHERE true;\n", "update rows public.users")
    first = _run(shadow_cli, "plan", "-f", str(plan))
    assert first["_code"] == 0, first["_text"]
    with Writer(prod_db.dsn, "events", tmp_path / "writes.jsonl", every=0.01) as writer:
        time.sleep(0.5)
        second = _run(shadow_cli, "plan", "-f", str(plan))
        writer.stop()
    assert second["_code"] == 0, second["_text"]
    assert _warm_info(second)["reused"] is True
    assert "public.events" in warnings_of(second), warnings_of(second)
    writer.assert_kept(prod_db.dsn)

    before = {c["address"]: c for c in second["targets"][0]["changes"]}["update rows public.users"]["detail"]
    prod_db.execute("INSERT INTO users (email, full_name) VALUES ('new@example.com', 'new user')")
    third = _run(shadow_cli, "plan", "-f", str(plan))
    assert third["_code"] == 0, third["_text"]
    assert "rehearsed twice" in warnings_of(third) and "warm checkpoint" in warnings_of(third), warnings_of(third)
    assert _warm_info(third)["reused"] is False  # the second rehearsal took a fresh checkpoint
    after = {c["address"]: c for c in third["targets"][0]["changes"]}["update rows public.users"]["detail"]
    assert after["count"] == before["count"] + 1, (before, after)
    [entry] = _entries(state)
    assert entry.run == third["run_id"]  # the fresh checkpoint is the warm one now


def test_a_warm_apply_applies_and_rolls_back(prod_db: ProdDb, shadow_cli, tmp_path: Path, state: Path):
    """An apply rehearsed on the warm copy is verified in production like any other, and undone exactly."""
    plan = _plan(tmp_path, prod_db, "ALTER TABLE users ADD COLUMN nickname text;\n"
                                    "UPDATE users SET nickname = 'n' || id WHERE id <= 3;\n",
                 "add column public.users.nickname, update rows public.users")
    assert _run(shadow_cli, "plan", "-f", str(plan))["_code"] == 0
    fingerprint = prod_db.fingerprint()
    applied = _run(shadow_cli, "apply", "-f", str(plan))
    assert applied["_code"] == 0 and applied["outcome"] == "applied", applied["_text"]
    assert _warm_info(applied)["reused"] is True
    assert prod_db.scalar("SELECT count(nickname) FROM users") == 3
    rolled = _run(shadow_cli, "rollback", applied["run_id"])
    assert rolled["_code"] == 0, rolled["_text"]
    assert prod_db.fingerprint() == fingerprint


def test_gc_keeps_an_unexpired_warm_server_and_removes_an_expired_one(prod_db: ProdDb, shadow_cli,
                                                                      tmp_path: Path, state: Path):
    plan = _plan(tmp_path, prod_db, "UPDATE users SET full_name = full_name || '!' WHERE id = 1;\n",
                 "update rows public.users")
    assert _run(shadow_cli, "plan", "-f", str(plan))["_code"] == 0
    [entry] = _entries(state)
    settings = Settings.from_env(state_dir=state)
    assert not [r for r in gc(settings=settings).removed if r.id == entry.root]
    assert Path(str(entry.root)).is_dir()
    with psycopg.connect(entry.server().dsn(warm.ADMIN_DB)) as conn:
        conn.execute("SELECT 1")
    entry.used = time.time() - entry.keep - 1  # expired
    warm._write(state / "warm" / "postgres", entry)
    held = warm._lock(state / "warm" / "postgres", entry.key, blocking=False)  # a run still leases it
    try:
        assert not [r for r in gc(settings=settings).removed if r.kind == "warm" or r.id == entry.root]
        assert Path(str(entry.root)).is_dir()
    finally:
        os.close(held)
    removed = gc(settings=settings).removed
    assert [r for r in removed if r.kind == "warm"], removed
    assert not Path(str(entry.root)).exists() and _entries(state) == []
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(entry.server().dsn(warm.ADMIN_DB), connect_timeout=3)


def test_policy_warm_must_be_a_duration(prod_db: ProdDb, shadow_cli, tmp_path: Path):
    plan = _plan(tmp_path, prod_db, "SELECT 1;\n", "")
    plan.write_text(plan.read_text().replace("warm: 10m", "warm: soon"))
    result = shadow_cli("plan", "-f", str(plan))
    assert result.code == 2 and "policy.warm" in result.text and "Traceback" not in result.text, result.text


def test_a_killed_warm_run_leaves_nothing_for_the_next(prod_db: ProdDb, shadow_cli, tmp_path: Path, state: Path):
    """SIGKILL while the action writes on a clone: its lease dies with it, the next run drops the clones it left,
    and rehearses on a clean copy."""
    plan = _plan(tmp_path, prod_db, MARKER_SQL, MARKER_MAY)
    assert _run(shadow_cli, "plan", "-f", str(plan))["_code"] == 0
    started = tmp_path / "started"
    script = tmp_path / "slow.py"
    script.write_text(
        "import os, pathlib, time, psycopg\n"
        "with psycopg.connect(os.environ['SHADOW_APP_URL'], autocommit=True) as c:\n"
        "    c.execute(\"INSERT INTO users (email, full_name) VALUES ('marker@example.com', 'M')\")\n"
        f"pathlib.Path({str(started)!r}).write_text('x')\n"
        "time.sleep(120)\n")
    (tmp_path / "slow").mkdir()
    slow = write_plan(tmp_path / "slow", PLAN.format(dsn=prod_db.dsn, action=f'command: "{sys.executable} {script}"',
                                                     may="insert rows public.users"))
    proc = start_cli("plan", "-f", str(slow), state=state, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert started.exists(), proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = _run(shadow_cli, "plan", "-f", str(plan))
    assert again["_code"] == 0, again["_text"]
    assert _warm_info(again)["reused"] is True, _warm_info(again)


def test_spares_made_between_runs_are_what_the_next_run_rehearses_on(prod_db: ProdDb, shadow_cli, tmp_path: Path,
                                                                     state: Path):
    """A long-lived process (the gateway) clones the golden ahead, between runs: the next run renames that spare
    instead of copying (its pristine state is the shadow as the action found it: no twin), the server's fingerprint still matches (the lease does not discard it), and what an earlier
    rehearsal wrote is in none of them (the leak guard)."""
    plan = _plan(tmp_path, prod_db, MARKER_SQL, MARKER_MAY)
    assert _run(shadow_cli, "plan", "-f", str(plan))["_code"] == 0
    folder = state / "warm" / "postgres"
    [entry] = warm.entries(folder)
    spares = warm.spare_names(entry.database)

    def present() -> set[str]:
        [now] = warm.entries(folder)  # each lease gives the server's superuser a new password
        with now.server().connect(warm.ADMIN_DB) as conn:
            rows = conn.execute("SELECT datname, datallowconn FROM pg_database WHERE datname = ANY(%s)",
                                [spares]).fetchall()
        assert all(not allowed for _, allowed in rows)  # closed to connections, like the golden
        return {name for name, _ in rows}

    assert warm.prepare_spares(folder) == 1 and present() == set(spares)
    assert warm.prepare_spares(folder) == 0  # already there
    for _ in range(2):
        report = _run(shadow_cli, "plan", "-f", str(plan))
        assert report["_code"] == 0, report["_text"]
        assert _warm_info(report)["reused"] is True, report["_text"]
        assert present() == set()  # taken by the shadow
        [now] = warm.entries(folder)
        with now.server().connect(warm.ADMIN_DB) as conn:  # the lease's cheap verifier, and still SCRAM
            [(verifier,)] = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = current_user").fetchall()
        assert verifier.startswith(f"SCRAM-SHA-256${warm_golden.LEASE_ITERATIONS}:")
        [target] = report["targets"]
        assert sorted(c["address"] for c in target["changes"]) == ["add table public.marker", "insert rows public.users"]
        assert warm.prepare_spares(folder) == 1
    [still] = warm.entries(folder)
    assert still.run == entry.run  # never discarded for the spares


def test_a_run_that_comes_first_stops_the_spares_and_finds_nothing_half_made(prod_db: ProdDb, shadow_cli,
                                                                             tmp_path: Path, state: Path):
    """An interrupt cancels the copy under way: each spare is whole (closed to connections) or absent, and the
    next run leases the warm copy as usual."""
    import threading

    from adapters import Interrupt

    plan = _plan(tmp_path, prod_db, MARKER_SQL, MARKER_MAY)
    assert _run(shadow_cli, "plan", "-f", str(plan))["_code"] == 0
    folder = state / "warm" / "postgres"
    for delay in (0.0, 0.05, 0.15):
        interrupt = Interrupt()
        worker = threading.Thread(target=warm.prepare_spares, args=(folder, interrupt))
        worker.start()
        time.sleep(delay)
        interrupt.set()
        worker.join()
        [entry] = warm.entries(folder)
        with entry.server().connect(warm.ADMIN_DB) as conn:
            rows = conn.execute("SELECT datname, datallowconn FROM pg_database WHERE datname = ANY(%s)",
                                [warm.spare_names(entry.database)]).fetchall()
        assert all(not allowed for _, allowed in rows), rows
        report = _run(shadow_cli, "plan", "-f", str(plan))
        assert report["_code"] == 0 and _warm_info(report)["reused"] is True, report["_text"]


FALLBACK = "the rows as the action found them were read from a second"


@pytest.mark.cold  # its first run must not keep a copy warm (SHADOW_TEST_WARM): it is the plain cold case
@pytest.mark.parametrize("sql, may, fallback", [
    # rows written, a column added: the shadow itself, read as the action found it
    ("ALTER TABLE users ADD COLUMN nickname text;\nUPDATE users SET nickname = 'n' || id WHERE id <= 3;\n"
     "DELETE FROM audit_log WHERE message = 'shop opened';\n",
     "add column public.users.nickname, update rows public.users, delete rows public.audit_log", False),
    # waits for every older snapshot: said by its SQL, so the twin is made before the action
    ("UPDATE users SET full_name = upper(full_name) WHERE id <= 2;\n"
     "CREATE INDEX CONCURRENTLY users_full_name ON users (full_name);\n",
     "update rows public.users, add index public.users_full_name", False),
    # a new storage file: the old rows are not where the held snapshot would look (said by its SQL too)
    ("UPDATE users SET full_name = full_name || '!' WHERE id <= 2;\nVACUUM FULL users;\n",
     "update rows public.users", False),
    # an enum label renamed: every stored 'paid' reads differently through today's catalog
    ("ALTER TYPE order_status RENAME VALUE 'paid' TO 'settled';\n", "alter type public.order_status, "
     "update rows public.orders, alter view public.paid_revenue", False),
    # a TRUNCATE its SQL does not show: found unreadable after the action, the twin made then
    ("UPDATE users SET full_name = full_name || '?' WHERE id = 5;\n"
     "DO $$ BEGIN EXECUTE 'TRUN' || 'CATE audit_log'; END $$;\n",
     "update rows public.users, delete rows public.audit_log", True),
])
def test_a_rehearsal_counts_the_same_changes_whether_it_reads_the_shadow_as_it_was_or_a_second_copy(
        prod_db: ProdDb, shadow_cli, tmp_path: Path, state: Path, sql: str, may: str, fallback: bool):
    """A cold run that reads its shadow as the action found it (adapters.postgres.held), one that keeps a twin (to
    be kept warm), and a warm one count the same change set, row counts and key digests included; a second copy
    is made after the action only when the held snapshot cannot show the rows as they were, and the report says
    why."""
    plain = write_plan(tmp_path / "plain", PLAN.format(dsn=prod_db.dsn, action="sql: migrate.sql", may=may)
                       .replace("policy:\n  warm: 10m\n", ""), {"migrate.sql": sql})
    plan = _plan(tmp_path, prod_db, sql, may)
    runs = {"plain": _run(shadow_cli, "plan", "-f", str(plain)), "keeps": _run(shadow_cli, "plan", "-f", str(plan)),
            "warm": _run(shadow_cli, "plan", "-f", str(plan))}
    for how, report in runs.items():
        assert report["_code"] == 0, (how, report["_text"])
    assert _warm_info(runs["keeps"])["reused"] is False and _warm_info(runs["warm"])["reused"] is True

    def changes(report: dict) -> list[tuple[str, object]]:
        [target] = report["targets"]
        return sorted((c["address"], json.dumps({k: v for k, v in (c.get("detail") or {}).items()
                                                 if not k.startswith("sample")}, sort_keys=True))
                      for c in target["changes"])  # the sample rows shown are any few: the digest covers all

    assert changes(runs["plain"]) == changes(runs["keeps"]) == changes(runs["warm"]), changes(runs["plain"])
    assert len(changes(runs["plain"])) == len(may.split(", ")), changes(runs["plain"])
    for how in ("plain", "warm"):
        assert (FALLBACK in warnings_of(runs[how])) is fallback, (how, warnings_of(runs[how]))
        verdicts = {v["rule"]: v for v in runs[how]["expectations"]}
        assert verdicts["rollback"]["ok"] and verdicts["fidelity"]["ok"], verdicts


def test_the_lease_verifier_is_the_one_postgresql_computes_and_only_its_password_logs_in(empty_db: ProdDb):
    """``_verifier`` matches PostgreSQL's own SCRAM-SHA-256 verifier for the same salt and iterations, and a
    client logs in over SCRAM with the password behind a 1-iteration one (and not with another)."""
    role = "lease_" + empty_db.name
    with empty_db.server.connect() as conn:
        conn.execute(f"SET password_encryption = 'scram-sha-256'; CREATE ROLE {role} LOGIN PASSWORD 'pencil'")
        [(stored,)] = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role]).fetchall()
        iterations, salt = stored.split("$")[1].split(":")
        assert warm_golden._verifier("pencil", int(iterations), base64.b64decode(salt)) == stored
        conn.execute(f"ALTER ROLE {role} PASSWORD '{warm_golden._verifier('new one', 1)}'")
    try:
        dsn = empty_db.server.dsn(empty_db.name, user=role, password="new one")
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(empty_db.server.dsn(empty_db.name, user=role, password="pencil"))
    finally:
        with empty_db.server.connect() as conn:
            conn.execute(f"DROP ROLE {role}")
