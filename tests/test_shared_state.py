"""Several runners, one state: journal, run records, approvals, liveness and locks on a real PostgreSQL server
(``SHADOW_STATE_URL``), checkpoints on moto's S3 server (``SHADOW_STORE_URL``). Each runner is a separate ``shadow``
process with its own working directory and state dir, as two CI machines would be."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapters.postgres.cluster import LocalCluster
from adapters.postgres.binaries import find_binaries
from tests.conftest import CliResult, ProdDb, run_cli, start_cli, write_plan
from tests.writer import Writer

APPROVED_PLAN = """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: migrate.sql}
expect: {app: {must: ["add column public.users.nickname"]}}
policy: {approval: required}
"""

# Autocommit writes with a pause between them: a kill in the pause leaves production half changed.
SLOW_MIGRATE = """
import os, time, psycopg
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("INSERT INTO audit_log (happened_at, message) VALUES ('2031-01-01', 'step1')")
    time.sleep(float(os.environ.get("PAUSE", "0")))
    conn.execute("UPDATE users SET full_name = 'step2' WHERE id <= 5")
"""
SLOW_PLAN = """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {command: "%s slow.py", env: {PAUSE: "${PAUSE}"}}
expect: {app: {may: ["insert rows public.audit_log", "update rows public.users"]}}
""" % sys.executable

INSERT_PLAN = """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: insert.sql}
expect: {app: {may: ["insert rows public.audit_log"]}}
"""


@pytest.fixture(scope="session")
def state_server() -> Iterator[LocalCluster]:
    """A PostgreSQL server of its own for shared state, so a test can restart it without touching production."""
    with LocalCluster(label="test-state", binaries=find_binaries()[-1]) as cluster:
        yield cluster


@pytest.fixture
def state_url(state_server: LocalCluster) -> Iterator[str]:
    name = "state_" + uuid.uuid4().hex[:10]
    dsn = state_server.create_database(name)
    yield dsn
    with state_server.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def store_url(s3_server: str) -> str:
    import boto3

    name = "store-" + uuid.uuid4().hex[:12]
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=name)
    return f"s3://{name}/checkpoints"


class Runner:
    """One machine: its own working directory and state dir; the shared state and store from the environment."""

    def __init__(self, root: Path, name: str, env: dict[str, str]) -> None:
        self.cwd = root / name
        self.cwd.mkdir()
        self.state = self.cwd / ".shadow"
        self.env = {"PAUSE": "0"} | env

    def __call__(self, *args: str, cwd: Path | None = None, **env: str) -> CliResult:
        return run_cli(*args, state=self.state, cwd=cwd or self.cwd, env=self.env | env, timeout=600)

    def start(self, *args: str, cwd: Path | None = None, **env: str) -> Any:
        return start_cli(*args, state=self.state, cwd=cwd or self.cwd, env=self.env | env)

    def json(self, *args: str, cwd: Path | None = None, **env: str) -> Any:
        result = self(*args, "--json", cwd=cwd, **env)
        assert result.code in (0, 1), result.text
        return json.loads(result.out)


def _shared_env(state_url: str, s3_server: str | None = None, store_url: str | None = None) -> dict[str, str]:
    env = {"SHADOW_STATE_URL": state_url}
    if store_url:
        env |= {"SHADOW_STORE_URL": store_url, "AWS_ENDPOINT_URL": str(s3_server), "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    return env


def _state(state_url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(state_url, autocommit=True) as conn:
        return conn.execute(query).fetchall()  # type: ignore[arg-type]


def test_one_runner_plans_another_approves_applies_lists_and_audits(prod_db: ProdDb, state_url: str,
                                                                      tmp_path: Path) -> None:
    plans = tmp_path / "repo"
    plans.mkdir()
    write_plan(plans, APPROVED_PLAN, {"migrate.sql": "ALTER TABLE users ADD COLUMN nickname text;\n"})
    env = _shared_env(state_url) | {"APP_DATABASE_URL": prod_db.dsn}
    a, b = Runner(tmp_path, "a", env), Runner(tmp_path, "b", env)

    planned = a.json("plan", cwd=plans)
    assert planned["outcome"] == "awaiting_approval", planned
    run_id = planned["run_id"]
    assert not (b.state / "runs" / run_id).exists()

    listed = b.json("runs")
    assert [r["id"] for r in listed] == [run_id] and listed[0]["outcome"] == "awaiting_approval"
    shown = b("show", run_id)
    assert shown.code == 0 and "add column public.users.nickname" in shown.out, shown.text
    approved = b("approve", run_id, "--by", "ana")
    assert approved.code == 0, approved.text

    applied = b.json("apply", "--run", run_id)  # approved on one runner, applied from another
    assert applied["outcome"] == "applied", applied
    assert prod_db.scalar("SELECT count(*) FROM information_schema.columns WHERE column_name = 'nickname'") == 1

    audit = b.json("audit")
    assert audit["intact"] and audit["rows"] > 5 and "schema shadow" in audit["path"], audit
    commands = [r["command"] for r in b.json("runs")]
    assert sorted(commands) == ["apply", "approve", "plan"], commands
    # Nothing but the shared state carried it: b's state dir never held a journal.
    assert not (b.state / "journal.sqlite").exists() and not (a.state / "journal.sqlite").exists()
    # The state database's password is in no state file, shared row or report (production's neither).
    secrets = [psycopg.conninfo.conninfo_to_dict(url)["password"] for url in (state_url, prod_db.dsn)]
    kept = [p.read_bytes() for runner in (a, b) for p in runner.state.rglob("*") if p.is_file()]
    kept += [bytes(r[0]) for r in _state(state_url, "SELECT body FROM shadow.files")]
    kept += [str(r).encode() for table in ("run_starts", "run_ends", "step_starts", "step_ends", "notes")
             for r in _state(state_url, f"SELECT * FROM shadow.{table}")]
    assert kept and not [s for s in secrets for body in kept if str(s).encode() in body]


def test_an_edited_shared_journal_row_is_named_by_audit(prod_db: ProdDb, state_url: str, tmp_path: Path) -> None:
    write_plan(tmp_path, APPROVED_PLAN.replace("policy: {approval: required}\n", ""),
               {"migrate.sql": "ALTER TABLE users ADD COLUMN nickname text;\n"})
    runner = Runner(tmp_path, "a", _shared_env(state_url) | {"APP_DATABASE_URL": prod_db.dsn})
    assert runner("plan", cwd=tmp_path).code == 0
    assert runner.json("audit")["intact"]
    _state(state_url, "UPDATE shadow.run_ends SET summary = 'nothing to see' RETURNING 1")
    broken = runner("audit", "--json")
    assert broken.code == 1, broken.text
    tampered = json.loads(broken.out)["tampered"]
    assert tampered["table"] == "run_ends" and "edited" in tampered["problem"], tampered
    with psycopg.connect(state_url, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION shadow.keep() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'")
        conn.execute("CREATE TRIGGER rewrite BEFORE INSERT ON shadow.run_ends FOR EACH ROW EXECUTE FUNCTION "
                     "shadow.keep()")
    trigger = json.loads(runner("audit", "--json").out)["tampered"]
    assert trigger["table"] == "rewrite" and "trigger" in trigger["problem"], trigger


def test_audit_reads_one_moment_while_another_runner_appends_and_names_what_can_hide_rows(
        state_url: str, tmp_path: Path) -> None:
    """An audit while another runner keeps appending sees the rows and the head of one moment (read one after the
    other, the head could be ahead of the rows read: "rows at the end were deleted"); a redefined view, a rule or a
    row-level policy in the state schema — each can hide or rewrite journal rows — is named like a trigger."""
    from shadow.settings import Settings
    from shadow.statedb import PgJournal, StateDB

    runner = Runner(tmp_path, "a", _shared_env(state_url))
    assert runner.json("audit")["intact"]  # sets the schema up
    environ = {"SHADOW_STATE_URL": state_url}
    stop = threading.Event()
    appended = [0]

    def append() -> None:
        journal = PgJournal(StateDB(state_url, environ))
        try:
            while not stop.is_set():
                journal.note(f"busy {appended[0]}")
                appended[0] += 1
        finally:
            journal.close()

    writer = threading.Thread(target=append)
    writer.start()
    try:
        from shadow.audit import audit_settings

        settings = Settings.from_env(state_dir=tmp_path / "audit-state", environ=environ)
        results = [audit_settings(settings) for _ in range(20)]
    finally:
        stop.set()
        writer.join()
    assert appended[0] > 20
    assert [r.tampered for r in results if r.tampered] == []
    assert runner.json("audit")["intact"]
    for change, named, what in [
        ("CREATE OR REPLACE VIEW shadow.runs AS SELECT s.id, s.command, s.plan_path, s.plan_sha256, s.started_at, "
         "e.finished_at, e.outcome, e.summary FROM shadow.run_starts s LEFT JOIN shadow.run_ends e ON e.run_id = s.id "
         "WHERE s.command <> 'apply'", "runs", "view's definition"),
        ("CREATE POLICY hide ON shadow.run_starts USING (command <> 'apply')", "hide", "row-level policy"),
        ("CREATE RULE quiet AS ON INSERT TO shadow.notes WHERE NEW.text LIKE 'x%' DO INSTEAD NOTHING", "quiet", "rule"),
    ]:  # each named before what the case before it left (rules, then policies, then views are reported first)
        with psycopg.connect(state_url, autocommit=True) as conn:
            conn.execute(change)  # type: ignore[arg-type]
        broken = runner("audit", "--json")
        assert broken.code == 1, broken.text
        tampered = json.loads(broken.out)["tampered"]
        assert tampered["table"] == named and what in tampered["problem"], tampered


def test_the_state_schema_is_set_up_once_migrated_in_place_and_refused_by_an_older_shadow(
        state_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runners connecting first at once set the schema up once; a newer shadow's migration (a version 2 made
    for this test) runs in place and keeps the chain intact; the older shadow then refuses, naming both versions;
    SHADOW_STATE_SCHEMA keeps it all in a schema of its own."""
    from concurrent.futures import ThreadPoolExecutor

    from shadow import statedb
    from shadow.audit import audit_settings
    from shadow.errors import InfrastructureError
    from shadow.settings import Settings

    environ = {"SHADOW_STATE_URL": state_url, "SHADOW_STATE_SCHEMA": "team_a"}
    with ThreadPoolExecutor(2) as pool:
        for db in list(pool.map(lambda _: statedb.StateDB(state_url, environ), range(2))):
            db.close()
    assert _state(state_url, "SELECT value FROM team_a.meta WHERE key = 'schema_version'") == [("1",)]
    assert _state(state_url, "SELECT to_regclass('shadow.meta')") == [(None,)]  # the default schema: untouched
    journal = statedb.PgJournal(statedb.StateDB(state_url, environ))
    journal.note("written by version 1")
    journal.close()
    settings = Settings.from_env(environ=environ, state_dir="/nonexistent")
    monkeypatch.setattr(statedb, "MIGRATIONS", {**statedb.MIGRATIONS, 2: ["CREATE INDEX notes_at ON notes (at)"]})
    monkeypatch.setattr(statedb, "SCHEMA_VERSION", 2)
    statedb.StateDB(state_url, environ).close()  # the newer shadow connects: migrated in place
    assert _state(state_url, "SELECT value FROM team_a.meta WHERE key = 'schema_version'") == [("2",)]
    assert _state(state_url, "SELECT to_regclass('team_a.notes_at') IS NOT NULL") == [(True,)]
    upgraded = audit_settings(settings)
    assert upgraded.tampered is None and "written by version 1" in upgraded.notes, upgraded
    monkeypatch.undo()  # the older shadow again
    with pytest.raises(InfrastructureError, match=r"newer shadow.*version 2, this shadow knows up to 1"):
        statedb.StateDB(state_url, environ)


def test_a_plans_state_key_keeps_its_runs_in_the_state_database(prod_db: ProdDb, state_url: str,
                                                                 tmp_path: Path) -> None:
    """`state: {url: "${VAR}"}` in the plan: its runs are journaled in the state database with no SHADOW_STATE_URL
    set; `rollback RUN -f PLAN` finds the run there; the environment's setting wins; a password written in the
    file is refused naming the key."""
    write_plan(tmp_path, APPROVED_PLAN.replace("policy: {approval: required}\n", "")
               + 'state: {url: "${TEAM_STATE}"}\n', {"migrate.sql": "ALTER TABLE users ADD COLUMN nickname text;\n"})
    runner = Runner(tmp_path, "a", {"APP_DATABASE_URL": prod_db.dsn, "TEAM_STATE": state_url})
    applied = runner("apply", "-f", str(tmp_path / "shadow.yaml"), "--json")
    assert applied.code == 0, applied.text
    run_id = json.loads(applied.out)["run_id"]
    assert _state(state_url, f"SELECT command FROM shadow.run_starts WHERE id = '{run_id}'") == [("apply",)]
    assert not (runner.state / "journal.sqlite").exists()  # no journal in the local state dir
    shared = Runner(tmp_path, "b", _shared_env(state_url))  # another machine, the environment's setting
    assert run_id in [r["id"] for r in shared.json("runs")]
    rolled = runner("rollback", run_id, "-f", str(tmp_path / "shadow.yaml"), "--json")
    assert rolled.code == 0, rolled.text
    assert prod_db.scalar("SELECT count(*) FROM information_schema.columns WHERE column_name = 'nickname'") == 0
    (tmp_path / "secret.yaml").write_text(APPROVED_PLAN.replace("policy: {approval: required}\n", "")
                                          + 'state: {url: "postgresql://shadow:hunter2@127.0.0.1:1/state"}\n')
    refused = runner("plan", "-f", str(tmp_path / "secret.yaml"))
    assert refused.code == 2 and "state.url" in refused.err and "password" in refused.err, refused.text
    assert "hunter2" not in refused.text


def test_a_state_database_of_a_newer_shadow_is_refused_and_an_empty_one_is_set_up(state_url: str,
                                                                                   tmp_path: Path) -> None:
    runner = Runner(tmp_path, "a", _shared_env(state_url))
    assert runner.json("runs") == []  # an empty database: the schema is created (version 1)
    assert _state(state_url, "SELECT value FROM shadow.meta WHERE key = 'schema_version'") == [("1",)]
    _state(state_url, "UPDATE shadow.meta SET value = '99' WHERE key = 'schema_version' RETURNING 1")
    refused = runner("runs")
    assert refused.code == 3, refused.text
    assert "newer shadow" in refused.err and "version 99" in refused.err and "Traceback" not in refused.text
    unreachable = Runner(tmp_path, "b", _shared_env("postgresql://shadow:secret-pw@127.0.0.1:1/state"))("runs")
    assert unreachable.code == 3 and "unreachable" in unreachable.err, unreachable.text
    assert "secret-pw" not in unreachable.text and "Traceback" not in unreachable.text
    malformed = Runner(tmp_path, "c", _shared_env("host=127.0.0.1 port=1 password=secret-pw sslmod=x"))("runs")
    assert malformed.code == 2 and "SHADOW_STATE_URL is not a PostgreSQL connection string" in malformed.err
    assert "secret-pw" not in malformed.text and "Traceback" not in malformed.text


def test_killed_apply_on_one_runner_is_recovered_by_another_and_rolled_back_from_it(
        prod_db: ProdDb, state_url: str, s3_server: str, store_url: str, tmp_path: Path) -> None:
    plans = tmp_path / "repo"
    plans.mkdir()
    write_plan(plans, SLOW_PLAN, {"slow.py": SLOW_MIGRATE})
    env = _shared_env(state_url, s3_server, store_url) | {"APP_DATABASE_URL": prod_db.dsn}
    a, b = Runner(tmp_path, "a", env), Runner(tmp_path, "b", env)
    before = prod_db.fingerprint()

    # A applies; it is SIGKILLed while its action is half done in production.
    proc = a.start("apply", cwd=plans, PAUSE="30")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (
            prod_db.scalar("SELECT count(*) FROM audit_log WHERE message = 'step1'") and proc.poll() is None):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert prod_db.scalar("SELECT count(*) FROM audit_log WHERE message = 'step1'") == 1

    # B sees the unfinished run, refuses new work on that target, and settles it.
    refused = b("apply", cwd=plans, PAUSE="0")
    assert refused.code != 0 and "shadow recover" in refused.text, refused.text
    recovered = b("recover", "--json", PAUSE="0")
    assert recovered.code == 0, recovered.text
    settled = json.loads(recovered.out)
    assert [s["outcome"] for s in settled] == ["rolled_back"], settled
    assert prod_db.fingerprint() == before

    # A applies again to the end; B rolls it back from A's checkpoint (which only the S3 store holds for B).
    applied = a.json("apply", cwd=plans, PAUSE="0")
    assert applied["outcome"] == "applied", applied
    assert prod_db.scalar("SELECT count(*) FROM users WHERE full_name = 'step2'") == 5
    rolled = b.json("rollback", applied["run_id"], cwd=plans)
    assert rolled["outcome"] == "restored", rolled
    assert prod_db.fingerprint() == before
    assert b.json("audit")["intact"]


def _on_host(name: str) -> Any:
    """A ``preexec_fn`` that puts the child in a UTS namespace of its own named ``name``: another machine, as far
    as anything that reads the host name can tell (root only, as the tests here run)."""
    import ctypes

    def enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x04000000) != 0 or libc.sethostname(name.encode(), len(name)) != 0:  # CLONE_NEWUTS
            raise OSError(ctypes.get_errno(), "cannot enter a UTS namespace")
    return enter


def _killed_at_step1(prod_db: ProdDb, proc: Any) -> None:
    """SIGKILL the apply ``proc`` once its action's first write (step1) is in production."""
    deadline = time.monotonic() + 240
    while not prod_db.scalar("SELECT count(*) FROM audit_log WHERE message = 'step1'"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


SLOW_SQL = ("INSERT INTO audit_log (happened_at, message) VALUES ('2031-01-01', 'step1');\n"
            "VACUUM audit_log;\n"  # statement by statement: production is half changed while it sleeps
            "SELECT pg_sleep(CASE WHEN inet_server_port() = {port} THEN 30 ELSE 0 END);\n"  # production
            "UPDATE users SET full_name = 'step2' WHERE id <= 5;\n")


def test_runner_a_on_another_host_plans_b_approves_and_applies_a_killed_mid_apply_b_recovers_and_rolls_back(
        prod_db: ProdDb, state_url: str, s3_server: str, store_url: str, tmp_path: Path) -> None:
    """The issue's flow in one piece, runner A on a host of another name: A plans, B approves and applies the
    approved run; A's next apply (an SQL action, statement by statement) is SIGKILLed with production half changed;
    B refuses new work on the target, settles A's run, and later rolls back A's applied run from A's checkpoint,
    which only the shared store holds for B."""
    approved_plans, slow_plans = tmp_path / "approved", tmp_path / "slow"
    approved_plans.mkdir()
    slow_plans.mkdir()
    write_plan(approved_plans, APPROVED_PLAN, {"migrate.sql": "ALTER TABLE users ADD COLUMN nickname text;\n"})
    write_plan(slow_plans, """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: slow.sql}
expect: {app: {may: ["insert rows public.audit_log", "update rows public.users"]}}
""", {"slow.sql": SLOW_SQL.format(port=prod_db.server.port)})
    env = _shared_env(state_url, s3_server, store_url) | {"APP_DATABASE_URL": prod_db.dsn}
    a, b = Runner(tmp_path, "a", env), Runner(tmp_path, "b", env)
    host_a = "runner-a-" + uuid.uuid4().hex[:6]

    def on_a(*args: str, cwd: Path) -> CliResult:
        return run_cli(*args, state=a.state, cwd=cwd, env=a.env, timeout=600, preexec_fn=_on_host(host_a))

    planned = on_a("plan", "--json", cwd=approved_plans)
    assert planned.code == 0, planned.text
    run_id = json.loads(planned.out)["run_id"]
    record = json.loads(_state(state_url, f"SELECT body FROM shadow.files WHERE run_id = '{run_id}' "
                                          "AND name = 'run.json'")[0][0])
    assert record["host"] == host_a and host_a != os.uname().nodename
    assert b("approve", run_id, "--by", "ana").code == 0
    assert b.json("apply", "--run", run_id)["outcome"] == "applied"
    before = prod_db.fingerprint()

    _killed_at_step1(prod_db, start_cli("apply", state=a.state, cwd=slow_plans, env=a.env,
                                        preexec_fn=_on_host(host_a)))

    refused = b("apply", cwd=slow_plans)
    assert refused.code == 3 and "shadow recover" in refused.text, refused.text
    recovered = b("recover", "--json")
    assert recovered.code == 0, recovered.text
    assert [s["outcome"] for s in json.loads(recovered.out)] == ["rolled_back"], recovered.out
    assert prod_db.fingerprint() == before  # step1 undone; the sleeping statement's session ended

    fast = tmp_path / "fast"
    fast.mkdir()
    write_plan(fast, """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: fast.sql}
expect: {app: {may: ["update rows public.users"]}}
""", {"fast.sql": "UPDATE users SET full_name = 'by a' WHERE id <= 3;\n"})
    done = on_a("apply", "--json", cwd=fast)
    assert done.code == 0, done.text
    assert prod_db.scalar("SELECT count(*) FROM users WHERE full_name = 'by a'") == 3
    rolled = b.json("rollback", json.loads(done.out)["run_id"], cwd=fast)
    assert rolled["outcome"] == "restored", rolled
    assert prod_db.scalar("SELECT count(*) FROM users WHERE full_name = 'by a'") == 0
    assert b.json("audit")["intact"]


def test_a_command_action_of_a_host_that_is_gone_is_settled_only_when_the_operator_says_so(
        prod_db: ProdDb, state_url: str, s3_server: str, store_url: str, tmp_path: Path) -> None:
    """Runner A (a host of another name) is killed while its command action is half done. From runner B, shadow
    cannot make sure a process on A stopped: recover refuses, naming A and how to go on. Once the operator says A
    is down for good (`--host-gone A`), B settles the run: production is back at the checkpoint."""
    plans = tmp_path / "repo"
    plans.mkdir()
    pause_in_production = SLOW_MIGRATE.replace(
        'time.sleep(float(os.environ.get("PAUSE", "0")))',
        'time.sleep(30 if conn.info.port == int(os.environ["PROD_PORT"]) else 0)')  # the rehearsal does not wait
    write_plan(plans, SLOW_PLAN.replace('env: {PAUSE: "${PAUSE}"}', f'env: {{PROD_PORT: "{prod_db.server.port}"}}'),
               {"slow.py": pause_in_production})
    env = _shared_env(state_url, s3_server, store_url) | {"APP_DATABASE_URL": prod_db.dsn}
    a, b = Runner(tmp_path, "a", env), Runner(tmp_path, "b", env)
    host_a = "runner-a-" + uuid.uuid4().hex[:6]
    before = prod_db.fingerprint()
    _killed_at_step1(prod_db, start_cli("apply", state=a.state, cwd=plans, env=a.env, preexec_fn=_on_host(host_a)))

    refused = b("recover", "--json")
    assert refused.code == 3, refused.text
    assert host_a in refused.err and f"--host-gone {host_a}" in refused.err and "Traceback" not in refused.text
    assert prod_db.scalar("SELECT count(*) FROM audit_log WHERE message = 'step1'") == 1  # left as it is
    other = b("recover", "--host-gone", "some-other-host")
    assert other.code == 3 and host_a in other.err, other.text
    settled = b("recover", "--json", "--host-gone", host_a)
    assert settled.code == 0, settled.text
    assert [s["outcome"] for s in json.loads(settled.out)] == ["rolled_back"], settled.out
    assert f"{host_a}, which the operator declared gone" in json.loads(settled.out)[0]["summary"]
    assert prod_db.fingerprint() == before
    journaled = [r for r in b.json("runs") if r["outcome"] == "rolled_back"]
    assert journaled and "--host-gone" in journaled[0]["summary"], journaled  # in the shared journal
    assert b.json("audit")["intact"]


def test_the_state_database_restarting_mid_run_fails_safe_and_the_next_run_is_clean(
        prod_db: ProdDb, state_server: LocalCluster, state_url: str, tmp_path: Path) -> None:
    plans = tmp_path / "repo"
    plans.mkdir()
    write_plan(plans, SLOW_PLAN, {"slow.py": SLOW_MIGRATE})
    runner = Runner(tmp_path, "a", _shared_env(state_url) | {"APP_DATABASE_URL": prod_db.dsn})
    before = prod_db.fingerprint()

    proc = runner.start("apply", cwd=plans, PAUSE="6")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not prod_db.scalar(
            "SELECT count(*) FROM audit_log WHERE message = 'step1'"):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    restarted = state_server._run([state_server.binaries.path("pg_ctl"), "restart", "-m", "fast", "-w", "-D",
                                   str(state_server.datadir), "-l", str(state_server.root / "server.log"),  # type: ignore[operator]
                                   "-o", f"-p {state_server.port}"], timeout=90)
    assert restarted.returncode == 0, restarted.stderr
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, out + err
    assert "state database" in err and "Traceback" not in err, err
    print(err.strip().splitlines()[-1])

    # Whatever the apply got to, production is either as it was or settled by recover once the state is back.
    recovered = runner("recover", "--json", PAUSE="0")
    assert recovered.code == 0, recovered.text
    assert prod_db.fingerprint() == before, json.loads(recovered.out or "[]")
    again = runner.json("apply", cwd=plans, PAUSE="0")
    assert again["outcome"] == "applied", again
    assert runner.json("audit")["intact"]


def test_two_runners_share_state_and_store_through_twenty_runs_on_two_targets(
        pg_server: LocalCluster, state_url: str, s3_server: str, store_url: str, tmp_path: Path, evidence: Any) -> None:
    schema = (Path(__file__).resolve().parent.parent / "examples" / "demo" / "schema.sql").read_text()
    dbs = []
    for label in ("x", "y"):
        name = f"prod_{label}_" + uuid.uuid4().hex[:8]
        db = ProdDb(pg_server, name, pg_server.create_database(name))
        # The runs write to a table with a key: each rollback undoes its own row and keeps the other runner's.
        # (A keyless table is put back whole, so a rollback refuses when the other runner wrote to it since.)
        db.execute(schema + "\nCREATE TABLE events (id bigserial PRIMARY KEY, note text);"
                            "\nCREATE TABLE notes (id bigserial PRIMARY KEY, runner text);")
        dbs.append(db)
        folder = tmp_path / f"plan_{label}"
        folder.mkdir()
        write_plan(folder, INSERT_PLAN.replace("APP_DATABASE_URL", f"{label.upper()}_DATABASE_URL")
                   .replace("public.audit_log", "public.notes"),
                   {"insert.sql": "INSERT INTO notes (runner) VALUES ('runner');\n"})
    env = _shared_env(state_url, s3_server, store_url) | {"X_DATABASE_URL": dbs[0].dsn, "Y_DATABASE_URL": dbs[1].dsn}
    a, b = Runner(tmp_path, "a", env), Runner(tmp_path, "b", env)
    counts = {"applied": 0, "restored": 0}
    problems: list[str] = []

    def work(runner: Runner, order: str) -> None:
        for label in order:
            done = runner("apply", "--json", "--lock-timeout", "300", cwd=tmp_path / f"plan_{label}")
            report = json.loads(done.out) if done.out.strip().startswith("{") else {}
            if report.get("outcome") != "applied":
                problems.append(f"apply {label}: {report.get('outcome')}: {report.get('reason')} {done.err[-1500:]}")
                continue
            counts["applied"] += 1
            back = runner("rollback", report["run_id"], "--json", "--lock-timeout", "300",
                          cwd=tmp_path / f"plan_{label}")
            told = json.loads(back.out) if back.out.strip().startswith("{") else {}
            if told.get("outcome") != "restored":
                problems.append(f"rollback {label}: {told.get('outcome')}: {told.get('reason')} "
                                f"{[t.get('warnings') for t in told.get('targets', [])]} "
                                f"{told.get('steps', [])[-3:]} {back.err[-1500:]}")
            else:
                counts["restored"] += 1

    writers = [Writer(db.dsn, "events", tmp_path / f"writes_{i}.jsonl", every=0.05) for i, db in enumerate(dbs)]
    for w in writers:
        w.__enter__()
    try:
        threads = [threading.Thread(target=work, args=(a, "xyxyx")), threading.Thread(target=work, args=(b, "yxyxy"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for w in writers:
            w.stop()
            w.__exit__(None, None, None)
    assert not problems, problems
    kept = [w.assert_kept(db.dsn) for w, db in zip(writers, dbs, strict=True)]

    # No two runs' production steps on one target overlapped in time.
    steps = _state(state_url, "SELECT s.run_id, s.target, s.started_at, s.ended_at, r.plan_path FROM shadow.steps s "
                              "JOIN shadow.runs r ON r.id = s.run_id WHERE s.undo IS NOT NULL ORDER BY s.started_at")
    by_target: dict[str, list[tuple[str, float, float]]] = {}
    for run_id, _target, started, ended, plan_path in steps:
        by_target.setdefault(Path(plan_path).parent.name, []).append((run_id, started, ended or started))
    for target, spans in by_target.items():
        for (run1, _s1, e1), (run2, s2, _e2) in zip(spans, spans[1:]):
            assert run1 == run2 or s2 >= e1, f"{target}: runs {run1} and {run2} wrote at the same time"
    runs = b.json("runs")
    unsettled = [r for r in runs if r["outcome"] not in ("applied", "restored")]
    assert not unsettled, unsettled
    assert b.json("audit")["intact"]
    for db in dbs:
        assert db.scalar("SELECT count(*) FROM notes") == 0
    evidence(f"two runners: {counts['applied']} applies and {counts['restored']} rollbacks on 2 targets, "
             f"{len(runs)} runs in the shared journal, writer rows kept: {kept}")
    assert counts == {"applied": 10, "restored": 10}
    for db in dbs:
        with pg_server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')


S3_TOUCH = """
import os, time
import boto3

s3 = boto3.client("s3")
bucket = os.environ["SHADOW_ASSETS_BUCKET"]
if os.environ.get("AWS_ENDPOINT_URL") == os.environ["PROD_S3"]:  # in production: say so if another run is in here
    try:
        s3.head_object(Bucket=bucket, Key="busy")
        with open(os.environ["OVERLAPS"], "a") as log:
            log.write(os.environ["RUNNER"] + "\\n")
    except s3.exceptions.ClientError:
        pass
s3.put_object(Bucket=bucket, Key="busy", Body=b"1")
time.sleep(0.4)
s3.delete_object(Bucket=bucket, Key="busy")
s3.put_object(Bucket=bucket, Key="result-" + os.environ["RUNNER"] + ".txt", Body=str(time.time()).encode())
"""


def test_two_runners_on_one_s3_target_take_turns_through_the_state_databases_lock(
        state_url: str, s3_server: str, bucket: tuple[Any, str], tmp_path: Path, evidence: Any) -> None:
    """An S3 bucket has no lock of its own: two runners sharing state exclude each other on it only through the
    state database's target lock. Each apply's action, in production, notes whether another run's action is in
    the bucket at the same time; none ever is, and every run settles."""
    client, name = bucket
    client.put_object(Bucket=name, Key="seed.txt", Body=b"seed")
    write_plan(tmp_path, f"""
targets: {{assets: {{kind: s3, bucket: {name}, endpoint_url: "{s3_server}"}}}}
action: {{command: "{sys.executable} touch.py", env: {{PROD_S3: "{s3_server}", OVERLAPS: "{tmp_path / 'overlaps'}",
          RUNNER: "${{RUNNER}}"}}}}
expect: {{assets: {{may: ["* object {name}/*"]}}}}
policy: {{rehearse_rollback: false}}
""", {"touch.py": S3_TOUCH})
    env = _shared_env(state_url) | {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                                    "AWS_DEFAULT_REGION": "us-east-1"}
    problems: list[str] = []
    counts = {"applied": 0, "restored": 0}

    def work(runner: Runner) -> None:
        for _ in range(3):
            done = runner("apply", "--json", "--lock-timeout", "300", cwd=tmp_path)
            report = json.loads(done.out) if done.out.strip().startswith("{") else {}
            if report.get("outcome") != "applied":
                problems.append(f"apply: {report.get('outcome')}: {report.get('reason')} {done.err[-1500:]}")
                continue
            counts["applied"] += 1
            back = runner("rollback", report["run_id"], "--json", "--lock-timeout", "300", cwd=tmp_path)
            told = json.loads(back.out) if back.out.strip().startswith("{") else {}
            if told.get("outcome") == "restored":
                counts["restored"] += 1
            else:
                problems.append(f"rollback: {told.get('outcome')}: {told.get('reason')} {back.err[-1500:]}")

    runners = [Runner(tmp_path, n, env | {"RUNNER": n}) for n in ("a", "b")]
    threads = [threading.Thread(target=work, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not problems, problems
    overlaps = (tmp_path / "overlaps").read_text().split() if (tmp_path / "overlaps").exists() else []
    assert overlaps == [], f"runs of {overlaps} found another run's action in the bucket at the same time"
    assert counts == {"applied": 6, "restored": 6}
    evidence(f"two runners on one S3 bucket: {counts['applied']} applies and {counts['restored']} rollbacks, "
             f"actions overlapping in the bucket: {len(overlaps)}")
    assert runners[1].json("audit")["intact"]
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=name).get("Contents", []))
    assert keys == ["seed.txt"], keys  # every run's own change undone


def test_a_run_alive_on_another_runner_blocks_gc_and_is_not_recovered(prod_db: ProdDb, state_url: str,
                                                                       s3_server: str, store_url: str,
                                                                       tmp_path: Path) -> None:
    plans = tmp_path / "repo"
    plans.mkdir()
    write_plan(plans, INSERT_PLAN, {"insert.sql": "INSERT INTO audit_log (happened_at, message) "
                                                  "VALUES ('2031-02-02', 'runner');\n"})
    env = _shared_env(state_url, s3_server, store_url) | {"APP_DATABASE_URL": prod_db.dsn}
    a, b = Runner(tmp_path, "a", env), Runner(tmp_path, "b", env)
    applied = a.json("apply", cwd=plans)
    assert applied["outcome"] == "applied", applied

    # Another machine's run, mid-apply: its record says so and its session holds its liveness lock.
    record = {"run_id": "20991231-000000-elsewh", "command": "apply", "plan_path": str(plans / "shadow.yaml"),
              "targets": {"app": prod_db.target().describe()}, "phase": "applying", "pid": 1,
              "host": "elsewhere"}
    with psycopg.connect(state_url, autocommit=True) as holder:
        holder.execute("INSERT INTO shadow.files (run_id, name, body, written_at) VALUES (%s, 'run.json', %s, 0)",
                       (record["run_id"], json.dumps(record).encode()))
        holder.execute("SELECT pg_advisory_lock(21321, hashtext(%s))", (record["run_id"],))
        refused = b("gc", "--checkpoints-older-than", "0")
        assert refused.code == 3 and f"run {record['run_id']} is running" in refused.err, refused.text
        assert b("recover", "--json").out.strip() in ("[]", ""), "a live run must not be settled"
    # Its session gone (the machine died): now it is a killed run that any runner must settle first.
    blocked = b("apply", cwd=plans)
    assert blocked.code == 3 and record["run_id"] in blocked.err and "elsewhere" in blocked.err, blocked.text

    pruned = b("gc", "--checkpoints-older-than", "0", "--json")
    assert pruned.code == 0, pruned.text
    rollback = b("rollback", applied["run_id"], cwd=plans)
    assert rollback.code != 0 and "pruned" in rollback.text, rollback.text


def test_gateways_on_two_runners_share_breaker_approvals_and_ledger(prod_db: ProdDb, state_url: str,
                                                                     tmp_path: Path) -> None:
    from shadow import gateway
    from shadow.approval import approve
    from shadow.settings import Settings
    from tests.test_gateway import GATEWAY

    prod_db.execute("CREATE TABLE notes (id bigserial PRIMARY KEY, note text)")
    path = tmp_path / "gateway.yaml"
    path.write_text(GATEWAY + 'state: {url: "${TEAM_STATE_URL}"}\n')  # the gateways find it in their file
    env = {"APP_DATABASE_URL": prod_db.dsn, "TEAM_STATE_URL": state_url}
    here = Settings.from_env(environ=env, state_dir=tmp_path / "a" / ".shadow")
    there = Settings.from_env(environ=env, state_dir=tmp_path / "b" / ".shadow")
    person = Settings.from_env(environ=env | {"SHADOW_STATE_URL": state_url}, state_dir=tmp_path / "p" / ".shadow")

    fragile = gateway.open(path, "fragile", here)
    for _ in range(3):
        assert fragile.propose({"sql": "DELETE FROM audit_log"})["verdict"] == "failed"
    assert gateway.open(path, "fragile", there).targets()["breaker"]["state"] == "open"  # the other runner's view
    listed = run_cli("agents", "-f", str(path), "--json", state=there.state_dir, cwd=tmp_path, env=env)
    rows = {r["actor"]: r for r in json.loads(listed.out)}
    assert rows["fragile"]["breaker"]["state"] == "open" and rows["fragile"]["failures"] == 3, listed.text
    reset = run_cli("agents", "reset", "fragile", "--by", "bob", state=person.state_dir, cwd=tmp_path,
                    env=env | {"SHADOW_STATE_URL": state_url})  # a person closes it from a third machine
    assert reset.code == 0, reset.text
    assert gateway.open(path, "fragile", here).targets()["breaker"]["state"] == "closed"  # seen by the first

    agent = gateway.open(path, "agent", here)
    proposed = agent.propose({"sql": "INSERT INTO notes (note) VALUES ('from an agent')"})
    assert proposed["verdict"] == "awaiting_approval", proposed
    approve(proposed["run_id"], "alice", settings=person)  # a person, on another machine
    applied = agent.apply(proposed["run_id"])
    assert applied["verdict"] == "applied", applied
    assert prod_db.scalar("SELECT count(*) FROM notes WHERE note = 'from an agent'") == 1
    assert Runner(tmp_path, "c", {"SHADOW_STATE_URL": state_url}).json("audit")["intact"]
    assert not (tmp_path / "a" / ".shadow" / "journal.sqlite").exists()  # the file's state, not the state dir's

    # A password written into the file itself is refused, naming the place.
    path.write_text(GATEWAY + 'state: {url: "postgresql://shadow:hunter2@127.0.0.1:1/state"}\n')
    refused = run_cli("agents", "-f", str(path), state=there.state_dir, cwd=tmp_path, env=env)
    assert refused.code == 2 and "state.url: holds a password" in refused.err, refused.text
