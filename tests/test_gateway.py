"""The agent gateway against a real PostgreSQL production: scope and limits judged from the measured change set,
approval, drift, rate limits, the breaker, read-only queries on a copy, and secrets. Each test goes through both doors
(tests/gateway_door.py): the Python API (shadow.gateway) and ``shadow mcp`` as a subprocess driven by the ``mcp``
SDK's own stdio client. test_mcp.py adds what only MCP has: tool annotations, malformed calls, a killed server."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shadow import gateway, gc
from shadow.approval import approve
from shadow.audit import audit
from shadow.gateway import Refused
from shadow.settings import Settings
from tests.conftest import ProdDb, run_cli
from tests.gateway_door import DOORS, Doors, doors, undocumented
from tests.writer import Writer

SECRET_VALUE = "tok-SECRET-e5b1d2"

GATEWAY = """\
version: 1
targets:
  app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}
policy: {backend: local, warm: "off"}
agents:
  default:
    scope:
      app: {may: ["* rows public.orders", "* rows public.notes", "add index public.*", "add column public.*"],
            never: ["* * public.users*"]}
    limits: {rows: 600, rows_per_table: 400, drops: false, max_lock: {ACCESS EXCLUSIVE: 30s}}
    rate: {proposals: 30/10m, applies: 5/1h}
    breaker: {failures: 10, window: 30m}
    isolation: process
  auto-bot: {apply: within-limits}
  tight: {limits: {max_lock: {ACCESS EXCLUSIVE: 0}}, rate: {proposals: 2/1h}}
  fragile: {breaker: {failures: 3, window: 30m}}
"""


@pytest.fixture
def shop(prod_db: ProdDb) -> ProdDb:
    prod_db.execute("ALTER TABLE users ADD COLUMN api_token text; "
                    f"UPDATE users SET api_token = '{SECRET_VALUE}' WHERE id <= 3; "
                    "CREATE TABLE notes (id bigserial PRIMARY KEY, note text)")
    return prod_db


@pytest.fixture(params=DOORS)
def door(request: pytest.FixtureRequest) -> Iterator[Doors]:
    """The door a test's gateways are opened through: the Python API, or ``shadow mcp`` over stdio."""
    with doors(request.param) as opened:
        yield opened


@pytest.fixture
def gw_env(tmp_path: Path, shop: ProdDb, door: Doors) -> dict[str, Any]:
    path = tmp_path / "gateway.yaml"
    path.write_text(GATEWAY)
    env = {"APP_DATABASE_URL": shop.dsn}  # its password is the planted secret: in no answer
    settings = Settings.from_env(environ=env, state_dir=tmp_path / "state")
    return {"path": path, "env": env, "settings": settings, "db": shop, "state": tmp_path / "state", "door": door}


def open_gw(gw_env: dict[str, Any], actor: str = "agent") -> Any:
    """A gateway for ``actor`` through the test's door (a ``shadow.gateway.Gateway``, or an MCP client of one)."""
    door: Doors = gw_env["door"]
    return door.open(gw_env["path"], actor, gw_env["env"], gw_env["state"])


def password_of(dsn: str) -> str:
    found = re.search(r"password=(\S+)|://[^:/@]+:([^@]+)@", dsn)
    assert found, dsn
    return found.group(1) or found.group(2)


def no_secrets(answer: Any, dsn: str | None = None) -> None:
    text = json.dumps(answer)
    assert SECRET_VALUE not in text
    if dsn is not None:
        assert password_of(dsn) not in text


def test_propose_approve_apply_under_a_writer(gw_env: dict[str, Any], tmp_path: Path) -> None:
    db: ProdDb = gw_env["db"]
    gw = open_gw(gw_env)
    listed = gw.targets()
    assert listed["targets"] == [{"name": "app", "kind": "postgres"}] and listed["breaker"]["state"] == "closed"
    no_secrets(listed, gw_env["env"]["APP_DATABASE_URL"])
    answer = gw.propose({"sql": "UPDATE orders SET total_cents = total_cents + 1 WHERE id <= 10"},
                        {"app": {"must": ["update rows public.orders"], "rows": {"public.orders": {"updated": 10}}}},
                        "round up ten orders")
    assert answer["verdict"] == "awaiting_approval", answer
    assert [c["address"] for c in answer["changes"]["app"]] == ["update rows public.orders"]
    assert all(v["ok"] for v in answer["rules"]) and "shadow approve" in answer["next"]
    no_secrets(answer, gw_env["env"]["APP_DATABASE_URL"])
    run_id = answer["run_id"]
    with pytest.raises(Refused, match="awaits a person's approval"):
        gw.apply(run_id)
    assert gw.status(run_id)["rehearsal"] == "awaiting_approval"
    approve(run_id, "alice", settings=gw_env["settings"])
    assert gw.status(run_id)["approved_by"] == "alice"
    before = db.scalar("SELECT sum(total_cents) FROM orders WHERE id <= 10")
    with Writer(db.dsn, "notes", tmp_path / "writer.log") as writer:
        applied = gw.apply(run_id)
        time.sleep(0.3)
        writes = writer.stop()
    assert applied["verdict"] == "applied", applied
    assert db.scalar("SELECT sum(total_cents) FROM orders WHERE id <= 10") == int(before) + 10  # type: ignore[arg-type]
    assert writes and writer.assert_kept(db.dsn) > 0  # nothing the application committed meanwhile was lost
    status = gw.status(run_id)
    assert status["apply"] == "applied" and status["applied_run"] == applied["run_id"]
    rolled = gw.rollback(run_id)
    assert rolled["verdict"] == "restored", rolled
    assert db.scalar("SELECT sum(total_cents) FROM orders WHERE id <= 10") == before
    assert gw.status(run_id)["rollback"] == "restored"
    assert audit(gw_env["settings"].journal_path).intact


def test_scope_and_limits_are_judged_on_the_measured_changes(gw_env: dict[str, Any]) -> None:
    gw = open_gw(gw_env)
    fingerprint = gw_env["db"].fingerprint()
    hidden_drop = gw.propose({"sql": "DO $$ BEGIN EXECUTE 'DROP INDEX orders_user_id_' || 'idx'; END $$"})
    assert hidden_drop["verdict"] == "failed"
    assert any(v["rule"] == "limit" and v["subject"] == "drop index public.orders_user_id_idx" and "drops" in
               v["message"] for v in hidden_drop["rules"]), hidden_drop["rules"]
    # cancelling an order is in scope; the trigger's insert into audit_log is not
    trigger = gw.propose({"sql": "UPDATE orders SET status = 'cancelled' WHERE id = 1"})
    assert any(v["rule"] == "scope" and v["subject"] == "insert rows public.audit_log" and not v["ok"]
               for v in trigger["rules"]), trigger["rules"]
    never = gw.propose({"sql": "UPDATE users SET full_name = 'x' WHERE id = 1"})
    assert any(v["rule"] == "scope" and "public.users" in v["subject"] for v in never["rules"])
    per_table = gw.propose({"sql": "UPDATE orders SET total_cents = total_cents + 1 WHERE id <= 450"})
    assert any(v["subject"] == "rows public.orders" and "450 rows" in v["message"] and "400" in v["message"]
               for v in per_table["rules"]), per_table["rules"]
    assert gw_env["db"].fingerprint() == fingerprint  # nothing reached production
    for refused in (hidden_drop, trigger, never, per_table):
        assert not undocumented("propose", refused)


def test_total_rows_limit_and_command_that_deletes(gw_env: dict[str, Any]) -> None:
    gw = open_gw(gw_env, "auto-bot")
    total = gw.propose({"sql": "UPDATE orders SET total_cents = total_cents + 1 WHERE id <= 350; "
                               "INSERT INTO notes (note) SELECT 'n' || g FROM generate_series(1, 300) g"})
    assert any(v["subject"] == "rows" and "650 rows" in v["message"] and "600" in v["message"]
               for v in total["rules"]), total["rules"]
    command = gw.propose({"command": f"{sys.executable} delete.py", "files": {"delete.py": (
        "import os, psycopg\n"
        "with psycopg.connect(os.environ['DATABASE_URL'], autocommit=True) as c:\n"
        "    c.execute('DELETE FROM audit_log')\n")}})
    assert any(v["rule"] == "scope" and v["subject"] == "delete rows public.audit_log"
               for v in command["rules"]), command
    no_secrets(command, gw_env["env"]["APP_DATABASE_URL"])


def test_max_lock_limit(gw_env: dict[str, Any]) -> None:
    gw = open_gw(gw_env, "tight")
    answer = gw.propose({"sql": "ALTER TABLE orders ADD COLUMN note text DEFAULT 'x'"})
    assert answer["verdict"] == "failed"
    assert any(v["rule"] == "max_lock" and "ACCESS EXCLUSIVE on public.orders" in v["subject"]
               for v in answer["rules"]), answer["rules"]


def test_within_limits_applies_and_another_actor_cannot(gw_env: dict[str, Any]) -> None:
    bot = open_gw(gw_env, "auto-bot")
    answer = bot.propose({"sql": "INSERT INTO notes (note) VALUES ('from the bot')"})
    assert answer["verdict"] == "awaiting_approval"
    with pytest.raises(Refused, match="not a proposal of actor 'agent'"):
        open_gw(gw_env).apply(answer["run_id"])
    others = open_gw(gw_env).status(answer["run_id"])
    assert others == {"gateway_format": 1, "run_id": answer["run_id"], "state": "awaiting_approval",
                      "note": "not a run of actor 'agent': only its state is shown"}
    assert not undocumented("status", others)
    applied = bot.apply(answer["run_id"])
    assert applied["verdict"] == "applied", applied
    assert gw_env["db"].scalar("SELECT count(*) FROM notes WHERE note = 'from the bot'") == 1

    # The proposal's folder lives as long as a checkpoint made from it: then `shadow gc` prunes both.
    proposals = gw_env["state"] / "gateway" / "proposals"
    [folder] = list(proposals.iterdir())
    assert not [i for i in gc.prune_checkpoints(gw_env["settings"], 1).removed if i.kind == "proposal"]
    pruned = gc.prune_checkpoints(gw_env["settings"], 1, now=time.time() + 3 * 86400)
    assert [i.id for i in pruned.removed if i.kind == "proposal"] == [folder.name]
    assert not folder.exists()
    with pytest.raises(Refused) as refused:
        bot.rollback(applied["run_id"])
    print("rollback after prune:", refused.value)
    assert "pruned" in str(refused.value)


def test_drift_between_approval_and_apply_is_refused(gw_env: dict[str, Any]) -> None:
    db: ProdDb = gw_env["db"]
    gw = open_gw(gw_env)
    answer = gw.propose({"sql": "UPDATE orders SET total_cents = 1 WHERE id = 5"})
    approve(answer["run_id"], "alice", settings=gw_env["settings"])
    db.execute("UPDATE orders SET total_cents = 7 WHERE id = 5")  # someone else, after the approval
    applied = gw.apply(answer["run_id"])
    assert applied["verdict"] == "refused" and "approved" in applied["reason"], applied
    assert db.scalar("SELECT total_cents FROM orders WHERE id = 5") == 7


def test_breaker_opens_survives_a_restart_and_only_a_person_closes_it(gw_env: dict[str, Any]) -> None:
    gw = open_gw(gw_env, "fragile")
    for _ in range(3):
        assert gw.propose({"sql": "DELETE FROM audit_log"})["verdict"] == "failed"
    with pytest.raises(Refused, match="circuit breaker .* is open"):
        gw.propose({"sql": "INSERT INTO notes (note) VALUES ('x')"})
    again = open_gw(gw_env, "fragile")  # a new server process reads the same journal
    assert again.targets()["breaker"]["state"] == "open"
    with pytest.raises(Refused, match="circuit breaker"):
        again.apply("20260101-000000-abcdef")
    state = gw_env["state"]
    listed = run_cli("agents", "-f", str(gw_env["path"]), "--json", state=state, cwd=state.parent,
                     env=gw_env["env"])
    rows = {r["actor"]: r for r in json.loads(listed.out)}
    assert rows["fragile"]["breaker"]["state"] == "open" and rows["fragile"]["failures"] == 3, listed.text
    reset = run_cli("agents", "reset", "fragile", "--by", "bob", state=state, cwd=state.parent, env=gw_env["env"])
    assert reset.code == 0, reset.text
    assert open_gw(gw_env, "fragile").targets()["breaker"]["state"] == "closed"
    assert open_gw(gw_env, "fragile").propose({"sql": "INSERT INTO notes (note) VALUES ('x')"})["verdict"] == \
        "awaiting_approval"
    assert audit(gw_env["settings"].journal_path).intact


def test_rate_limit_says_when_the_next_call_is_allowed(gw_env: dict[str, Any]) -> None:
    gw = open_gw(gw_env, "tight")
    for _ in range(2):
        gw.propose({"sql": "INSERT INTO notes (note) VALUES ('x')"})
    with pytest.raises(Refused, match=r"rate limit: 2 propose calls .*\(allowed 2/1h\).*next is allowed at"):
        gw.propose({"sql": "INSERT INTO notes (note) VALUES ('x')"})


def test_query_runs_on_a_copy_with_caps_and_redaction(gw_env: dict[str, Any]) -> None:
    db: ProdDb = gw_env["db"]
    gw = open_gw(gw_env)
    where = gw.query("app", "SELECT inet_server_port() AS port, current_database() AS db")
    assert where["rows"][0] != [db.server.port, db.name], where  # answered by another server: a shadow
    capped = gw.query("app", "SELECT id, email FROM users ORDER BY id", limit=5)
    assert capped["row_count"] == 5 and capped["cut"] and "cut at 5 rows" in capped["note"]
    small = gw.query("app", "SELECT repeat('x', 500) FROM orders", max_bytes=2048)  # users: a secret column
    assert small["cut"] and small["row_count"] < 5
    secret = gw.query("app", "SELECT id, api_token FROM users WHERE id = 1")
    assert secret["rows"] == [[1, "[redacted]"]]
    no_secrets(secret, gw_env["env"]["APP_DATABASE_URL"])
    with pytest.raises(Refused, match="read-only"):
        gw.query("app", "DELETE FROM orders")
    with pytest.raises(Refused, match="exactly one statement"):
        gw.query("app", "SELECT 1; SELECT 2")
    described = gw.describe("app", "public.users*")
    assert described["tables"]["public.users"]["rows"] == 500
    assert "api_token" in described["tables"]["public.users"]["columns"]
    no_secrets(described, gw_env["env"]["APP_DATABASE_URL"])
    assert db.scalar("SELECT count(*) FROM orders") == 2000


BOUNDED = """\
version: 1
targets:
  app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}
policy: {backend: docker, warm: "off"}
agents:
  default:
    scope: {app: {may: ["* rows public.*"]}}
    isolation: container
    resources: {cpus: 1, memory: 64m, pids: 32, timeout: 8s}
"""


def test_an_isolated_command_is_bounded_in_memory_processes_and_time(tmp_path: Path, shop: ProdDb,
                                                                      door: Doors) -> None:
    from tests.conftest import docker_or_skip
    from tests.test_isolation import ACTION_IMAGE

    docker_or_skip()
    (tmp_path / "gateway.yaml").write_text(BOUNDED)
    env = {"APP_DATABASE_URL": shop.dsn, "SHADOW_ACTION_IMAGE": ACTION_IMAGE,
           **{k: os.environ[k] for k in ("SHADOW_POSTGRES_IMAGE",) if k in os.environ}}
    gw = door.open(tmp_path / "gateway.yaml", "agent", env, tmp_path / "s")
    fingerprint = shop.fingerprint()
    memory = gw.propose({"command": "python3 -c 'x = bytearray(512 * 1024 * 1024)'"})
    assert memory["verdict"] == "failed" and "more memory than action.limits.memory allows (64m" in memory["reason"]
    processes = gw.propose({"command": "python3 spawn.py", "files": {"spawn.py": (
        "import subprocess\nprocs = [subprocess.Popen(['sleep', '5']) for _ in range(100)]\n")}})
    assert processes["verdict"] == "failed" and "exited with status" in processes["reason"], processes["reason"]
    forever = gw.propose({"command": "sleep 600"})
    assert forever["verdict"] == "failed" and "timed out after 8 s" in forever["reason"], forever["reason"]
    assert shop.fingerprint() == fingerprint


def test_an_s3_target_is_scoped_by_key(tmp_path: Path, bucket: tuple[Any, str], s3_server: str,
                                       door: Doors) -> None:
    """One S3 case: a command writing inside its scope (``* object reports/*``) passes and applies after approval;
    one deleting outside it is refused from the measured change set."""
    client, name = bucket
    client.put_object(Bucket=name, Key="reports/jan.csv", Body=b"a,b\n")
    client.put_object(Bucket=name, Key="raw/keep.csv", Body=b"keep\n")
    (tmp_path / "gateway.yaml").write_text(f"""\
version: 1
targets:
  assets: {{kind: s3, bucket: "${{ASSETS_BUCKET}}", endpoint_url: "{s3_server}"}}
policy: {{backend: local, warm: "off"}}
agents:
  default: {{scope: {{assets: {{may: ["* object reports/*"]}}}}, isolation: process}}
""")
    env = {"ASSETS_BUCKET": name, **{k: os.environ[k] for k in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}}
    settings = Settings.from_env(environ=env, state_dir=tmp_path / "state")
    gw = door.open(tmp_path / "gateway.yaml", "agent", env, tmp_path / "state")
    script = ("import boto3, os, sys\ns3 = boto3.client('s3')\nb = os.environ['SHADOW_ASSETS_BUCKET']\n"
              "if sys.argv[1] == 'write':\n    s3.put_object(Bucket=b, Key='reports/feb.csv', Body=b'c,d\\n')\n"
              "else:\n    s3.delete_object(Bucket=b, Key='raw/keep.csv')\n")
    write = gw.propose({"command": f"{sys.executable} job.py write", "files": {"job.py": script}})
    assert write["verdict"] == "awaiting_approval", json.dumps(write, indent=1, default=str)[:4000]
    assert [c["address"] for c in write["changes"]["assets"]] == [f"add object {name}/reports/feb.csv"]
    delete = gw.propose({"command": f"{sys.executable} job.py delete", "files": {"job.py": script}})
    assert delete["verdict"] == "failed"
    assert {(v["rule"], v["subject"]) for v in delete["rules"] if not v["ok"]} == {
        ("scope", f"delete object {name}/raw/keep.csv"), ("limit", f"delete object {name}/raw/keep.csv")}
    approve(write["run_id"], "alice", settings=settings)
    assert gw.apply(write["run_id"])["verdict"] == "applied"
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=name)["Contents"]}
    assert keys == {"reports/jan.csv", "reports/feb.csv", "raw/keep.csv"}


def test_what_the_gateway_cannot_decide_is_refused_without_secrets(gw_env: dict[str, Any], tmp_path: Path) -> None:
    from adapters.postgres.cluster import free_port

    db: ProdDb = gw_env["db"]
    dsn = gw_env["env"]["APP_DATABASE_URL"]
    unreachable = re.sub(r"port=\d+", f"port={free_port()}", dsn)
    gw = open_gw({**gw_env, "env": {"APP_DATABASE_URL": unreachable}, "state": tmp_path / "other"})
    with pytest.raises(Refused) as refused:
        gw.propose({"sql": "INSERT INTO notes (note) VALUES ('x')"})
    assert "Connection refused" in str(refused.value) or "connect" in str(refused.value)
    assert password_of(dsn) not in str(refused.value)
    journal = gw_env["settings"].journal_path
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.mkdir()  # a journal that cannot be opened: nothing may happen unrecorded
    with pytest.raises(Refused, match="could not be recorded"):
        open_gw(gw_env).propose({"sql": "INSERT INTO notes (note) VALUES ('x')"})
    assert db.scalar("SELECT count(*) FROM notes") == 0


def test_a_warm_gateway_readies_the_next_shadow_between_calls(tmp_path: Path, shop: ProdDb) -> None:
    """After an answer the gateway clones the next shadow from the warm checkpoint; the next proposal takes it
    (and is as right as ever)."""
    from adapters.postgres import warm

    (tmp_path / "gateway.yaml").write_text(GATEWAY.replace('warm: "off"', 'warm: "10m"'))
    settings = Settings.from_env(environ={"APP_DATABASE_URL": shop.dsn}, state_dir=tmp_path / "state")
    gw = gateway.open(tmp_path / "gateway.yaml", "agent", settings)
    folder = warm.entries_dir(settings)

    def spares() -> int:
        [entry] = warm.entries(folder)
        with entry.server().connect(warm.ADMIN_DB) as conn:
            return int(conn.execute("SELECT count(*) FROM pg_database WHERE datname = ANY(%s)",
                                    [warm.spare_names(entry.database)]).fetchone()[0])

    for i in range(2):
        answer = gw.propose({"sql": f"INSERT INTO notes (note) VALUES ('n{i}')"})
        assert answer["verdict"] == "awaiting_approval", answer
        assert [c["address"] for c in answer["changes"]["app"]] == ["insert rows public.notes"]
        gw.close()
        assert spares() == len(warm.SPARE_SUFFIXES) == 1
    assert shop.scalar("SELECT count(*) FROM notes") == 0


def test_a_warm_proposal_whose_action_ends_every_other_session_is_still_judged_right(tmp_path: Path,
                                                                                       shop: ProdDb) -> None:
    """A warm rehearsal reads the shadow through one session of shadow's own, kept from before the action to its
    end; an action that ends it (and the held snapshot's) is rehearsed, measured and undone as any other."""
    (tmp_path / "gateway.yaml").write_text(GATEWAY.replace('warm: "off"', 'warm: "10m"'))
    settings = Settings.from_env(environ={"APP_DATABASE_URL": shop.dsn}, state_dir=tmp_path / "state")
    gw = gateway.open(tmp_path / "gateway.yaml", "agent", settings)
    ends_others = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND "
                   "backend_type = 'client backend'; ")
    before = shop.scalar("SELECT sum(total_cents) FROM orders")
    try:
        # The first keeps its copy warm (its twin is observed while the action runs: it ends nobody), the
        # second rehearses on it.
        for warm, sql in ((False, ""), (True, ends_others)):
            answer = gw.propose({"sql": sql + "UPDATE orders SET total_cents = total_cents + 1 WHERE id <= 3"})
            assert answer["verdict"] == "awaiting_approval", answer
            [change] = answer["changes"]["app"]
            assert (change["address"], change["detail"]["count"]) == ("update rows public.orders", 3), change
            verdicts = {v["rule"]: v["ok"] for v in answer["expectations"]}
            assert verdicts["fidelity"] and verdicts["rollback"], answer["expectations"]
            report = json.loads((Path(answer["report"]).parent / "report.json").read_text())
            assert report["targets"][0]["checkpoint"]["warm"]["reused"] is warm, report["targets"][0]["checkpoint"]
    finally:
        gw.close()
    assert shop.scalar("SELECT sum(total_cents) FROM orders") == before
