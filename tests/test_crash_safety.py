"""Nothing lost when shadow is killed: SIGKILL at every journal transition of apply and of rollback, then
`shadow recover`; production must end equal to the checkpoint or to the rehearsed outcome, never anything else.

Each kill point gets a production database recreated from one template under the same name, so fingerprints
(which include the database's name and owner) compare across points.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from adapters.docker import LABEL_RUN
from adapters.postgres.cluster import TEMP_PREFIX, read_labels
from tests.conftest import CliResult, ProdDb, cli_env, run_cli, start_cli, write_plan

# Autocommit writes in three steps: a kill between them leaves production half changed, so only a restore
# (not a transaction rollback) can put it back.
MIGRATE = """
import os, psycopg
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("ALTER TABLE users ADD COLUMN nickname text")
    conn.execute("UPDATE users SET nickname = lower(full_name)")
    conn.execute("INSERT INTO audit_log (happened_at, message) VALUES ('2026-11-26 00:00:00+00', 'nicknames')")
"""

PLAN = """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {command: "%s migrate.py"}
expect:
  app:
    must: ["add column public.users.nickname"]
    may: ["insert rows public.audit_log", "update rows public.users"]
""" % sys.executable


class Production:
    """One database name, recreated from a template before every kill point."""

    def __init__(self, db: ProdDb) -> None:
        self.server, self.template, self.name = db.server, db.name, db.name + "_k"
        self.dsn = db.server.dsn(self.name)
        self.db = ProdDb(db.server, self.name, self.dsn)

    def reset(self) -> None:
        with self.server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.name}" TEMPLATE "{self.template}"')

    def fingerprint(self) -> str:
        return self.db.fingerprint()

    def drop(self) -> None:
        with self.server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@pytest.fixture
def production(prod_db: ProdDb) -> Iterator[Production]:
    prod = Production(prod_db)
    prod.reset()
    yield prod
    prod.drop()


def shadow(tmp_path: Path, prod: Production, *args: str, env: dict[str, str] | None = None,
           state: str = "state") -> CliResult:
    return run_cli(*args, state=tmp_path / state, cwd=tmp_path, env={"APP_DATABASE_URL": prod.dsn, **(env or {})})


def transitions(tmp_path: Path, prod: Production, *args: str) -> list[str]:
    trace = tmp_path / "trace.txt"
    trace.unlink(missing_ok=True)
    done = shadow(tmp_path, prod, *args, env={"SHADOW_FAULT_TRACE": str(trace)})
    assert done.code == 0, done.out + done.err
    return [line.split("\t", 1)[1] for line in trace.read_text().splitlines()]


def killed_then_recovered(tmp_path: Path, prod: Production, point: int, *args: str) -> str:
    killed = shadow(tmp_path, prod, *args, env={"SHADOW_FAULT_KILL_AT": str(point)})
    assert killed.code == -signal.SIGKILL, (point, killed.code, killed.err)
    recovered = shadow(tmp_path, prod, "recover")
    assert recovered.code == 0, (point, recovered.out + recovered.err)
    assert "Traceback" not in recovered.err
    return recovered.out


def clusters_of(state: Path) -> list[Path]:
    """Shadow clusters labelled with a run of this state dir, still in the temp dir."""
    runs = {p.name for p in (state / "runs").glob("*")}
    return [root for root in Path(tempfile.gettempdir()).glob(TEMP_PREFIX + "*")
            if (read_labels(root) or {}).get(LABEL_RUN) in runs]


@pytest.mark.cold  # asserts that nothing outlives the run, or counts fault points of a cold run
def test_sigkill_at_every_transition_of_apply_then_recover(production: Production, tmp_path: Path,
                                                           evidence: Callable[[str], None]) -> None:
    write_plan(tmp_path, PLAN, {"migrate.py": MIGRATE})
    checkpoint = production.fingerprint()
    points = transitions(tmp_path, production, "apply")
    rehearsed = production.fingerprint()
    assert rehearsed != checkpoint
    assert any(p.startswith("begin apply") for p in points) and "phase applied" in points

    outcomes, left_running = {}, 0
    for point in range(1, len(points) + 1):
        production.reset()
        state = f"state{point}"
        killed = shadow(tmp_path, production, "apply", env={"SHADOW_FAULT_KILL_AT": str(point)}, state=state)
        assert killed.code == -signal.SIGKILL, (points[point - 1], killed.err)
        if point == len(points) // 2:  # new work on the target waits for `shadow recover`
            refused = shadow(tmp_path, production, "plan", state=state)
            assert refused.code == 3 and "shadow recover" in refused.err, refused.err
        left_running += bool(clusters_of(tmp_path / state))
        recovered = shadow(tmp_path, production, "recover", state=state)
        assert recovered.code == 0 and "Traceback" not in recovered.err, recovered.err
        assert clusters_of(tmp_path / state) == [], "recover leaves no shadow of the run it settled"
        now = production.fingerprint()
        assert now in (checkpoint, rehearsed), f"killed at {points[point - 1]!r}: production is neither"
        outcomes[points[point - 1]] = "checkpoint" if now == checkpoint else "rehearsed"
        assert shadow(tmp_path, production, "recover", state=state).out.startswith("nothing to recover")
    evidence(f"covered {len(points)} kill points of apply: " +
          ", ".join(f"{p} → {o}" for p, o in outcomes.items()))
    assert set(outcomes.values()) == {"checkpoint", "rehearsed"}
    assert left_running, "no kill point left a shadow running: the leftover check proves nothing"


def test_sigkill_at_every_transition_of_rollback_then_recover(production: Production, tmp_path: Path,
                                                              evidence: Callable[[str], None]) -> None:
    write_plan(tmp_path, PLAN, {"migrate.py": MIGRATE})
    checkpoint = production.fingerprint()
    applied = shadow(tmp_path, production, "apply", "--json")
    assert applied.code == 0, applied.err
    import json

    run_id = json.loads(applied.out)["run_id"]
    rehearsed = production.fingerprint()
    points = transitions(tmp_path, production, "rollback", run_id)
    assert production.fingerprint() == checkpoint

    outcomes = {}
    for point in range(1, len(points) + 1):
        # Production as the apply left it, under the same name: dump-free, by re-running the migration.
        production.reset()
        with psycopg.connect(production.dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE users ADD COLUMN nickname text")
            conn.execute("UPDATE users SET nickname = lower(full_name)")
        assert production.fingerprint() != checkpoint
        killed = shadow(tmp_path, production, "rollback", run_id, "--force",
                        env={"SHADOW_FAULT_KILL_AT": str(point)})
        assert killed.code == -signal.SIGKILL, (points[point - 1], killed.err)
        recovered = shadow(tmp_path, production, "recover")
        assert recovered.code == 0 and "Traceback" not in recovered.err, recovered.err
        now = production.fingerprint()
        changed = now != checkpoint
        if changed:  # killed before the restore began: production is as the apply left it, untouched by us
            with psycopg.connect(production.dsn) as conn:
                assert conn.execute("SELECT count(*) FROM users WHERE nickname IS NOT NULL").fetchone()[0] > 0
        outcomes[points[point - 1]] = "applied state" if changed else "checkpoint"
    evidence(f"covered {len(points)} kill points of rollback: " +
          ", ".join(f"{p} → {o}" for p, o in outcomes.items()))
    assert "checkpoint" in outcomes.values()
    assert rehearsed != checkpoint


def test_unrecovered_run_blocks_new_work_until_recover(production: Production, tmp_path: Path) -> None:
    write_plan(tmp_path, PLAN, {"migrate.py": MIGRATE})
    checkpoint = production.fingerprint()
    points = transitions(tmp_path, production, "apply")
    production.reset()
    mid_apply = next(i for i, p in enumerate(points, 1) if p.startswith("begin apply")) + 1
    killed = shadow(tmp_path, production, "apply", env={"SHADOW_FAULT_KILL_AT": str(mid_apply)})
    assert killed.code == -signal.SIGKILL, killed.out + killed.err

    for verb in (("plan",), ("apply",)):
        refused = shadow(tmp_path, production, *verb)
        assert refused.code == 3, refused.err
        assert "was killed while applying" in refused.err and "shadow recover" in refused.err

    recovered = shadow(tmp_path, production, "recover", "--json")
    import json

    rows = json.loads(recovered.out)
    assert [r["outcome"] for r in rows] == ["rolled_back"] and rows[0]["was"] == "applying"
    assert production.fingerprint() == checkpoint
    runs = json.loads(shadow(tmp_path, production, "runs", "--json").out)
    assert {r["outcome"] for r in runs} >= {"rolled_back", "recovered"}
    assert shadow(tmp_path, production, "plan").code == 0



ONE_TRANSACTION = """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: migrate.sql}
expect: {app: {must: ["add column public.users.nickname"], may: ["update rows public.users"]}}
"""
MIGRATE_SQL = """SET lock_timeout = '5s';
SET statement_timeout = '60s';
ALTER TABLE users ADD COLUMN nickname text;
UPDATE users SET nickname = lower(full_name) WHERE id > 0;
"""


def test_recover_asks_the_server_whether_a_one_transaction_apply_committed(production: Production,
                                                                           tmp_path: Path) -> None:
    write_plan(tmp_path, ONE_TRANSACTION, {"migrate.sql": MIGRATE_SQL})
    points = transitions(tmp_path, production, "apply")
    began = [i for i, p in enumerate(points, 1) if p == "phase applying"]
    assert len(began) == 2, points  # the phase, then the transaction's id once it began
    ended = points.index("end apply app") + 1

    production.reset()
    killed = shadow(tmp_path, production, "apply", env={"SHADOW_FAULT_KILL_AT": str(began[1])}, state="open")
    assert killed.code == -signal.SIGKILL, killed.err
    with psycopg.connect(production.dsn, autocommit=True) as conn:  # the application keeps writing
        conn.execute("INSERT INTO audit_log VALUES ('2031-05-05', 'written after the kill')")
    recovered = shadow(tmp_path, production, "recover", "--json", state="open")
    assert recovered.code == 0, recovered.err
    import json

    (row,) = json.loads(recovered.out)
    assert row["outcome"] == "rolled_back" and "nothing was restored" in row["summary"], row
    with psycopg.connect(production.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE message = 'written after the kill'").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM information_schema.columns "
                            "WHERE column_name = 'nickname'").fetchone()[0] == 0

    production.reset()
    killed = shadow(tmp_path, production, "apply", env={"SHADOW_FAULT_KILL_AT": str(ended)}, state="committed")
    assert killed.code == -signal.SIGKILL, killed.err
    recovered = shadow(tmp_path, production, "recover", "--json", state="committed")
    (row,) = json.loads(recovered.out)
    assert row["outcome"] == "applied" and "committed" in row["summary"], row
    with psycopg.connect(production.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE nickname IS NOT NULL").fetchone()[0] > 0


# -- an action that keeps writing after shadow is killed ------------------------------------------------------
# step1 on every target at once, PAUSE/4 after the action starts; then a grandchild that left the action's session
# (setsid, its parent gone) writes PAUSE/2 later and the action itself PAUSE later. In the rehearsal every write
# lands (deterministically, before the action exits). Killed in production before step1 is visible or once it is,
# no later write may ever land — not after `recover`.
PAUSE = 4.0
LAST_WRITE = PAUSE * 1.25  # after the action started
WRITER = r'''
import os, subprocess, sys, time
import psycopg

PAUSE = float(sys.argv[1])
KINDS = sys.argv[2].split(",")

def write(step, row):
    if "postgres" in KINDS:
        with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
            conn.execute("UPDATE users SET full_name = full_name || %s WHERE id = %s", [" " + step, row])
    if "s3" in KINDS:
        import boto3
        boto3.client("s3").put_object(Bucket=os.environ["SHADOW_ASSETS_BUCKET"], Key=f"invoices/{step}.txt", Body=step)
    if "git" in KINDS:
        subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", step], check=True)
        subprocess.run(["git", "push", "-q", "origin", "HEAD"], check=True)

time.sleep(PAUSE / 4)
write("step1", 1)
if os.fork() == 0:          # leaves the action's session; orphaned at once, so re-parented
    os.setsid()
    if os.fork() == 0:
        time.sleep(PAUSE / 2)
        write("late", 2)
    os._exit(0)
time.sleep(PAUSE)
write("step2", 1)
'''


def _orphan_plan(tmp_path: Path, kinds: list[str], s3_server: str = "", bucket_name: str = "",
                 isolation: bool = False) -> None:
    targets, expect = [], []
    if "postgres" in kinds:
        targets.append('  app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}')
        expect.append('  app: {may: ["update rows public.users"]}')
    if "s3" in kinds:
        targets.append(f'  assets: {{kind: s3, bucket: {bucket_name}, prefix: invoices/, endpoint_url: "{s3_server}"}}')
        expect.append('  assets: {may: ["add object *"]}')
    if "git" in kinds:
        targets.append(f'  config: {{kind: git, path: "{tmp_path / "repo" / "working copy"}", rollback: reset}}')
        expect.append('  config: {may: ["move ref *"]}')
    python = "python3" if isolation else sys.executable
    script = "writer.py" if isolation else '"$SHADOW_PLAN_DIR/writer.py"' if "git" in kinds else "writer.py"
    action = [f"  command: '{python} {script} {PAUSE} {','.join(kinds)}'",
              "  env: {GIT_AUTHOR_NAME: a, GIT_AUTHOR_EMAIL: a@example.com, GIT_COMMITTER_NAME: a, "
              "GIT_COMMITTER_EMAIL: a@example.com}"]
    if isolation:
        action.append("  isolation: container\n  image: shadow-test/action:latest")
    write_plan(tmp_path, "targets:\n" + "\n".join(targets) + "\naction:\n" + "\n".join(action) + "\nexpect:\n"
               + "\n".join(expect) + "\n", {"writer.py": WRITER})


def _marked_processes(run_id: str) -> list[int]:
    from shadow.warden import marked

    return [int(p) for p in os.listdir("/proc") if p.isdigit() and marked(int(p), run_id)]


def _step1_in(prod: Production, running: str | None = None) -> Callable[[], bool]:
    """Whether step1 reached the Postgres target (and, with ``running``, a statement containing that text runs)."""
    def reached() -> bool:
        with psycopg.connect(prod.dsn) as conn:
            return conn.execute("SELECT full_name FROM users WHERE id = 1").fetchone()[0].endswith(" step1") and (
                running is None or conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> "
                    "pg_backend_pid() AND position(%s in query) > 0", [running]).fetchone()[0] > 0)
    return reached


def _before_first_write(state: Path, written: Callable[[], bool]) -> Callable[[], bool]:
    """Whether production's action runs (the run is applying, a process of it runs writer.py) and has not
    written yet (``written``: whether step1 is visible)."""
    def reached() -> bool:
        for run_json in state.glob("runs/*/run.json"):
            record = json.loads(run_json.read_text())
            if record.get("phase") != "applying":
                continue
            for pid in _marked_processes(record["run_id"]):
                try:
                    runs_writer = b"writer.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if runs_writer:
                    assert not written(), "step1 was visible before the kill point before the first write"
                    return True
        return False
    return reached


def _kill_mid_action(tmp_path: Path, prod: Production | None, also_warden: bool, backend: str = "local",
                     extra_env: dict[str, str] | None = None, running: str | None = None,
                     reached: Callable[[], bool] | None = None) -> str:
    """Start `shadow apply`, SIGKILL it once ``reached`` says so (by default: once step1 reached the Postgres
    target, and with ``running``, once a statement containing that text runs there) — and the warden too, when
    asked; the run id."""
    env = {"APP_DATABASE_URL": prod.dsn} if prod is not None else {}
    if reached is None:
        assert prod is not None
        reached = _step1_in(prod, running)
    proc = start_cli("apply", state=tmp_path / "state", cwd=tmp_path, backend=backend,
                     env={**env, **(extra_env or {})}, stdout=subprocess.DEVNULL, text=False)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            if reached():
                break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.05)
        else:
            raise AssertionError("the kill point was never reached")
        (run_dir,) = (tmp_path / "state" / "runs").iterdir()
        record = json.loads((run_dir / "run.json").read_text())
        wardens = [a["session"] for a in record.get("actions", [])]
        proc.send_signal(signal.SIGKILL)
        if also_warden:  # as an OOM kill of both would: only `recover` is left to stop the action
            for pid in wardens:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    finally:
        proc.kill()
        proc.wait()
    return run_dir.name


AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
BEFORE_STEP1, AFTER_STEP1 = "before its first write", "after its first write"
ORPHAN_CASES = [pytest.param(["postgres"], False, BEFORE_STEP1, id="postgres-before-step1"),
                pytest.param(["postgres"], True, BEFORE_STEP1, id="postgres-before-step1-warden-killed-too"),
                pytest.param(["postgres"], False, AFTER_STEP1, id="postgres"),
                pytest.param(["postgres"], True, AFTER_STEP1, id="postgres-warden-killed-too"),
                pytest.param(["postgres", "s3", "git"], False, AFTER_STEP1, id="postgres+s3+git"),
                pytest.param(["postgres", "s3", "git"], True, AFTER_STEP1, id="postgres+s3+git-warden-killed-too")]


@pytest.mark.parametrize(("kinds", "also_warden", "kill_point"), ORPHAN_CASES)
def test_a_killed_apply_leaves_no_action_writing_after_recover(production: Production, tmp_path: Path,
                                                               kinds: list[str], also_warden: bool, kill_point: str,
                                                               request: pytest.FixtureRequest,
                                                               evidence: Callable[[str], None]) -> None:
    from tests.gitrepos import git, make_repo

    client = name = repo = s3_server = None
    if "s3" in kinds:
        client, name = request.getfixturevalue("bucket")
        s3_server = request.getfixturevalue("s3_server")
        client.put_object(Bucket=name, Key="invoices/0.txt", Body=b"checkpointed")
    if "git" in kinds:
        repo = make_repo(tmp_path / "repo", {"README": "hello"})
    _orphan_plan(tmp_path, kinds, s3_server or "", name or "")
    checkpoint = production.fingerprint()
    remote_before = repo.remote_head() if repo else None

    def objects() -> list[str]:
        assert client is not None
        return sorted(o["Key"] for o in client.list_objects_v2(Bucket=name, Prefix="invoices/").get("Contents", []))

    step1 = _step1_in(production)
    reached = _before_first_write(tmp_path / "state", step1) if kill_point == BEFORE_STEP1 else step1
    run_id = _kill_mid_action(tmp_path, production, also_warden, extra_env=AWS, reached=reached)
    recovered = shadow(tmp_path, production, "recover", "--json", env=AWS)
    assert recovered.code == 0 and "Traceback" not in recovered.err, recovered.err
    (row,) = json.loads(recovered.out)
    assert row["outcome"] == "rolled_back", row
    assert _marked_processes(run_id) == [], "an action process outlived recover"

    time.sleep(LAST_WRITE + 2)  # past the moment the orphans would have written
    ended = {"postgres": "checkpoint" if production.fingerprint() == checkpoint else "CHANGED"}
    if client is not None:
        ended["s3"] = "checkpoint" if objects() == ["invoices/0.txt"] else f"CHANGED {objects()}"
    if repo is not None:
        log = git(repo.remote, "log", "--format=%s", "main").splitlines()
        ended["git"] = ("checkpoint" if repo.remote_head() == remote_before and "step2" not in log
                        else f"CHANGED {log}")
    evidence(f"killed mid-action, {kill_point} ({'+'.join(kinds)}, warden {'killed' if also_warden else 'alive'}); "
             f"after recover and {LAST_WRITE + 2:g} s: " + ", ".join(f"{k} → {v}" for k, v in ended.items()))
    assert set(ended.values()) == {"checkpoint"}, ended


@pytest.mark.parametrize("also_warden", [False, True], ids=["warden-alive", "warden-killed-too"])
def test_a_killed_apply_leaves_no_isolated_action_container(production: Production, tmp_path: Path,
                                                            also_warden: bool, evidence: Callable[[str], None]) -> None:
    from tests.conftest import docker_or_skip

    docker_or_skip()
    from adapters.docker import LABEL_RUN, client

    _orphan_plan(tmp_path, ["postgres"], isolation=True)
    checkpoint = production.fingerprint()
    # Production as the action's container reaches it (host network during apply).
    run_id = _kill_mid_action(tmp_path, production, also_warden, backend="docker")
    recovered = shadow(tmp_path, production, "recover", "--json", env={"SHADOW_BACKEND": "docker"})
    assert recovered.code == 0 and "Traceback" not in recovered.err, recovered.err
    docker = client()
    try:
        assert docker.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"}) == []
    finally:
        docker.close()
    time.sleep(LAST_WRITE + 2)
    now = production.fingerprint()
    evidence(f"isolated action killed mid-apply (warden {'killed' if also_warden else 'alive'}): production → "
             f"{'checkpoint' if now == checkpoint else 'CHANGED'}")
    assert now == checkpoint


@pytest.mark.parametrize("also_warden", [False, True], ids=["warden-alive", "warden-killed-too"])
@pytest.mark.parametrize("kind", ["s3", "git"])
def test_a_killed_apply_on_s3_or_git_alone_leaves_no_action_writing_after_recover(
        tmp_path: Path, kind: str, also_warden: bool, request: pytest.FixtureRequest,
        evidence: Callable[[str], None]) -> None:
    # S3 and git tell the run's own writes from other writers': recover undoes the run's own writes from the
    # records it kept, instead of restoring the checkpoint — with nothing of the action left to write again.
    from tests.gitrepos import git, make_repo

    if kind == "s3":
        client, bucket = request.getfixturevalue("bucket")
        s3_server = request.getfixturevalue("s3_server")
        client.put_object(Bucket=bucket, Key="invoices/0.txt", Body=b"checkpointed")

        def now() -> object:
            listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
            return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}

        def step1() -> bool:
            return "invoices/step1.txt" in [o["Key"] for o in client.list_objects_v2(
                Bucket=bucket, Prefix="invoices/").get("Contents", [])]
        _orphan_plan(tmp_path, ["s3"], s3_server, bucket)
    else:
        repo = make_repo(tmp_path / "repo", {"README": "hello"})

        def now() -> object:
            return git(repo.remote, "for-each-ref", "--format=%(objectname) %(refname)")

        def step1() -> bool:
            return "step1" in git(repo.remote, "log", "--format=%s", "main").splitlines()
        _orphan_plan(tmp_path, ["git"])
    checkpoint = now()

    run_id = _kill_mid_action(tmp_path, None, also_warden, extra_env=AWS, reached=step1)
    assert now() != checkpoint, "step1 is in production when shadow is killed"
    recovered = run_cli("recover", "--json", state=tmp_path / "state", cwd=tmp_path, env=AWS)
    assert recovered.code == 0 and "Traceback" not in recovered.err, recovered.err
    (row,) = json.loads(recovered.out)
    assert row["outcome"] == "rolled_back", row
    assert _marked_processes(run_id) == [], "an action process outlived recover"
    settled = now()
    time.sleep(LAST_WRITE + 2)  # past the moment the orphans would have written
    later = now()
    ended = "checkpoint" if settled == later == checkpoint else f"CHANGED: {later!r}"
    evidence(f"killed mid-action, {AFTER_STEP1} ({kind} alone, warden {'killed' if also_warden else 'alive'}); "
             f"after recover and {LAST_WRITE + 2:g} s: {kind} → {ended}")
    assert ended == "checkpoint"


SLOW_SQL = """VACUUM users;
UPDATE users SET full_name = full_name || ' step1' WHERE id = 1;
UPDATE users SET full_name = full_name || ' slow' WHERE id = 2 AND pg_sleep(%g) IS NOT NULL;
""" % PAUSE


def test_recover_ends_the_statement_production_still_runs_for_a_killed_apply(production: Production,
                                                                              tmp_path: Path) -> None:
    # VACUUM makes the action run statement by statement (autocommit): the slow UPDATE would commit on its own
    # after the client is gone, unless recover ends its session first.
    write_plan(tmp_path, """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: slow.sql}
expect: {app: {may: ["update rows public.users"]}}
policy: {allow: [update-without-where]}
""", {"slow.sql": SLOW_SQL})
    checkpoint = production.fingerprint()
    # Killed while the slow statement runs (not in the moment between step1's commit and its start, when the
    # action's session is idle and ends with its client).
    run_id = _kill_mid_action(tmp_path, production, also_warden=False, running="' slow'")
    with psycopg.connect(production.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                            [f"shadow action {run_id}"]).fetchone()[0] == 1, "the slow statement runs on"
    recovered = shadow(tmp_path, production, "recover")
    assert recovered.code == 0, recovered.err
    assert "ended 1 session(s) the killed run left running" in recovered.err + recovered.out
    time.sleep(LAST_WRITE + 1)
    with psycopg.connect(production.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE full_name LIKE '%slow'").fetchone()[0] == 0
    assert production.fingerprint() == checkpoint


def _killed_once_its_action_was_recorded(tmp_path: Path, prod: Production, state: str) -> tuple[Path, str]:
    """A migration's apply SIGKILLed once production's action is recorded, before it was let go; the run's record
    (to stage what recover finds there) and production's checkpoint fingerprint."""
    write_plan(tmp_path, PLAN, {"migrate.py": MIGRATE})
    points = transitions(tmp_path, prod, "apply")
    prod.reset()
    checkpoint = prod.fingerprint()
    recorded = [i for i, p in enumerate(points, 1) if p == "action recorded"]
    assert len(recorded) == 2, points  # the rehearsal's action, then production's
    killed = shadow(tmp_path, prod, "apply", env={"SHADOW_FAULT_KILL_AT": str(recorded[1])}, state=state)
    assert killed.code == -signal.SIGKILL, killed.err
    (run_json,) = (tmp_path / state / "runs").glob("*/run.json")
    return run_json, checkpoint


def test_recover_refuses_when_it_cannot_make_sure_the_action_stopped(production: Production, tmp_path: Path) -> None:
    run_json, checkpoint = _killed_once_its_action_was_recorded(tmp_path, production, "far")
    record = json.loads(run_json.read_text())
    for identity in record["actions"]:
        identity["host"] = "build-7.example"  # as if the action ran on another machine
    run_json.write_text(json.dumps(record))

    refused = shadow(tmp_path, production, "recover", state="far")
    assert refused.code == 3, refused.out + refused.err
    assert "its action ran on build-7.example" in refused.err and "Traceback" not in refused.err
    assert "production was left as it is" in refused.err
    assert production.fingerprint() == checkpoint
    assert shadow(tmp_path, production, "plan", state="far").code == 3  # still unsettled: new work waits


def test_recover_refuses_while_a_recorded_action_process_would_not_stop(production: Production,
                                                                        tmp_path: Path) -> None:
    from shadow.warden import read_proc

    run_json, checkpoint = _killed_once_its_action_was_recorded(tmp_path, production, "stuck")
    # The action's recorded session is another user's process, and recover runs without the power to signal
    # other users' processes (no CAP_KILL), as an operator who is not root would: SIGKILL fails with EPERM.
    other = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "300"],
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while (proc := read_proc(other.pid)) is None or proc.session != other.pid:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        record = json.loads(run_json.read_text())
        record["actions"] = [{**record["actions"][-1], "session": other.pid, "start": proc.start}]
        run_json.write_text(json.dumps(record))
        argv = ["setpriv", "--bounding-set=-kill", "--inh-caps=-kill", sys.executable, "-m", "shadow.cli",
                "--state-dir", str(tmp_path / "stuck"), "recover"]
        refused = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                                 env=cli_env("local", {"APP_DATABASE_URL": production.dsn}))
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert "Traceback" not in refused.stderr and "internal error" not in refused.stderr, refused.stderr
        assert f"processes {other.pid} would not stop" in refused.stderr, refused.stderr
        assert "production was left as it is" in refused.stderr
        assert other.poll() is None
        assert production.fingerprint() == checkpoint
        assert shadow(tmp_path, production, "plan", state="stuck").code == 3  # still unsettled: new work waits
    finally:
        other.kill()
        other.wait()
    settled = shadow(tmp_path, production, "recover", state="stuck")  # once it is gone, recover settles the run
    assert settled.code == 0, settled.err
    assert production.fingerprint() == checkpoint


def test_recover_refuses_when_no_docker_engine_answers_for_a_recorded_container(production: Production,
                                                                              tmp_path: Path) -> None:
    from adapters.postgres.cluster import free_port

    run_json, checkpoint = _killed_once_its_action_was_recorded(tmp_path, production, "blind")
    record = json.loads(run_json.read_text())
    record["actions"][-1]["container"] = "5b1e" * 16  # as if the action ran in a container (isolation: container)
    run_json.write_text(json.dumps(record))
    nobody_listens = f"tcp://127.0.0.1:{free_port()}"

    refused = shadow(tmp_path, production, "recover", env={"DOCKER_HOST": nobody_listens}, state="blind")
    assert refused.code == 3, refused.out + refused.err
    assert "Traceback" not in refused.err and "internal error" not in refused.err, refused.err
    assert "its action ran in a container, and shadow cannot make sure it stopped" in refused.err, refused.err
    assert "no Docker engine answers" in refused.err and "production was left as it is" in refused.err
    assert production.fingerprint() == checkpoint
    assert shadow(tmp_path, production, "plan", state="blind").code == 3  # still unsettled: new work waits


# An SQL migration that runs in one transaction: its apply keeps an undo record and its rollback undoes only the
# run's own rows and objects (issue 15, item 6).
UNDOABLE_SQL = """
ALTER TABLE users ADD COLUMN nickname text;
UPDATE users SET nickname = lower(full_name), full_name = upper(full_name) WHERE id <= 40;
DELETE FROM orders WHERE user_id = 7;
"""

UNDOABLE_PLAN = """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: migrate.sql}
expect:
  app:
    must: ["add column public.users.nickname"]
    may: ["update rows public.users", "delete rows public.orders"]
policy: {rehearse_rollback: false}
"""


def test_sigkill_at_every_transition_of_an_undo_then_recover(production: Production, tmp_path: Path,
                                                             evidence: Callable[[str], None]) -> None:
    """Killed anywhere in a change-by-change rollback, `recover` finishes the undo: production ends at the
    checkpoint (the undo is one transaction and idempotent), never half undone."""
    write_plan(tmp_path, UNDOABLE_PLAN, {"migrate.sql": UNDOABLE_SQL})
    checkpoint = production.fingerprint()
    applied = shadow(tmp_path, production, "apply", "--json")
    assert applied.code == 0, applied.err
    import json

    run_id = json.loads(applied.out)["run_id"]
    rehearsed = production.fingerprint()
    points = transitions(tmp_path, production, "rollback", run_id)
    assert any(p.startswith("begin undo") for p in points), points
    assert production.fingerprint() == checkpoint

    outcomes = {}
    for point in range(1, len(points) + 1):
        production.reset()
        with psycopg.connect(production.dsn, autocommit=True) as conn:  # the applied state, by the same SQL
            conn.execute(UNDOABLE_SQL)
        assert production.fingerprint() == rehearsed
        killed = shadow(tmp_path, production, "rollback", run_id, "--force",  # it was rolled back before
                        env={"SHADOW_FAULT_KILL_AT": str(point)})
        assert killed.code == -signal.SIGKILL, (points[point - 1], killed.err)
        recovered = shadow(tmp_path, production, "recover")
        assert recovered.code == 0 and "Traceback" not in recovered.err, recovered.err
        now = production.fingerprint()
        assert now in (checkpoint, rehearsed), f"killed at {points[point - 1]!r}: production is neither"
        outcomes[points[point - 1]] = "checkpoint" if now == checkpoint else "applied state"
    evidence(f"covered {len(points)} kill points of an undo: " +
          ", ".join(f"{p} → {o}" for p, o in outcomes.items()))
    # Once the rollback has begun restoring, recover finishes the undo: never back to the applied state.
    begun = points.index("phase restoring")
    assert {outcomes[p] for p in points[begun:]} == {"checkpoint"}, outcomes


def test_a_rollback_killed_inside_its_undo_transaction_is_finished_by_recover(production: Production,
                                                                             tmp_path: Path) -> None:
    """Tighter than a kill between steps: the undo's one transaction is open on production — some of its writes
    made, one waiting for a row another session holds — when shadow is SIGKILLed. Nothing of the half-done undo
    may stay (the transaction dies with its client), and `recover` finishes the undo: production at the
    checkpoint, the other session's row as it left it."""
    write_plan(tmp_path, UNDOABLE_PLAN, {"migrate.sql": UNDOABLE_SQL})
    checkpoint = production.fingerprint()
    applied = shadow(tmp_path, production, "apply", "--json")
    assert applied.code == 0, applied.err
    run_id = json.loads(applied.out)["run_id"]
    as_applied = production.fingerprint()
    with psycopg.connect(production.dsn) as locker:
        locker.execute("SELECT 1 FROM users WHERE id = 40 FOR UPDATE")  # a row the undo puts back; held open
        rollback = start_cli("rollback", run_id, state=tmp_path / "state", cwd=tmp_path,
                             env={"APP_DATABASE_URL": production.dsn})
        query = ("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock' "
                 "AND pid <> pg_backend_pid()")
        deadline = time.monotonic() + 120
        with psycopg.connect(production.dsn, autocommit=True) as watcher:
            while not watcher.execute(query, [production.name]).fetchone()[0]:  # type: ignore[index]
                assert rollback.poll() is None, rollback.communicate()
                assert time.monotonic() < deadline, "the undo never waited for the held row"
                time.sleep(0.05)
        rollback.kill()
        rollback.communicate()
        locker.rollback()
    assert production.fingerprint() == as_applied  # the killed undo's transaction left nothing
    recovered = shadow(tmp_path, production, "recover")
    assert recovered.code == 0 and "Traceback" not in recovered.err, recovered.out + recovered.err
    assert production.fingerprint() == checkpoint
    assert shadow(tmp_path, production, "recover").out.startswith("nothing to recover")


def test_sigkill_at_every_transition_of_a_transactional_apply_keeps_its_undo(
        production: Production, tmp_path: Path, evidence: Callable[[str], None]) -> None:
    """The undo record is kept inside the apply's transaction, before COMMIT: wherever the apply is killed,
    production is at the checkpoint or has the change — and then `shadow rollback` undoes it change by change."""
    import json

    write_plan(tmp_path, UNDOABLE_PLAN, {"migrate.sql": UNDOABLE_SQL})
    checkpoint = production.fingerprint()
    points = transitions(tmp_path, production, "apply")
    rehearsed = production.fingerprint()
    outcomes = {}
    for point in range(1, len(points) + 1):
        production.reset()
        state = f"state{point}"
        killed = shadow(tmp_path, production, "apply", "--json", env={"SHADOW_FAULT_KILL_AT": str(point)},
                        state=state)
        assert killed.code == -signal.SIGKILL, (points[point - 1], killed.err)
        recovered = shadow(tmp_path, production, "recover", "--json", state=state)
        assert recovered.code == 0 and "Traceback" not in recovered.err, recovered.err
        now = production.fingerprint()
        assert now in (checkpoint, rehearsed), f"killed at {points[point - 1]!r}: production is neither"
        outcomes[points[point - 1]] = "checkpoint" if now == checkpoint else "applied"
        if now == rehearsed:
            run_id = next(p.name for p in (tmp_path / state / "runs").iterdir() if (p / "run.json").exists()
                          and json.loads((p / "run.json").read_text()).get("command") == "apply")
            rolled = shadow(tmp_path, production, "rollback", run_id, "--json", state=state)
            assert rolled.code == 0, (points[point - 1], rolled.out + rolled.err)
            assert "other sessions' writes since were kept" in json.loads(rolled.out)["reason"]
            assert production.fingerprint() == checkpoint
    evidence(f"covered {len(points)} kill points of a transactional apply: " +
          ", ".join(f"{p} → {o}" for p, o in outcomes.items()))
    assert set(outcomes.values()) == {"checkpoint", "applied"}
