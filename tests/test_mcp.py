"""``shadow mcp`` driven the way an MCP client drives it: a subprocess spoken to through the ``mcp`` SDK's own stdio
client. Every tool's happy path and annotations, a corpus of malformed calls (the server keeps serving, production
never changes), and a SIGKILL of the server during an agent's apply settled by ``shadow recover``."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from shadow.audit import audit
from tests.conftest import ProdDb, cli_env, run_cli
from tests.gateway_door import undocumented
from tests.test_gateway import GATEWAY, SECRET_VALUE, password_of

Session = Callable[[ClientSession], Awaitable[Any]]


def drive(tmp_path: Path, env: dict[str, str], actor: str, body: Session) -> Any:
    """Start `shadow mcp` for ``actor`` and run ``body`` with an initialised client session."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "shadow.cli", "--state-dir", str(tmp_path / "state"), "mcp", "-f",
                                      str(tmp_path / "gateway.yaml"), "--actor", actor],
        env=cli_env("local", env), cwd=str(tmp_path))

    async def main() -> Any:
        with open(tmp_path / "mcp-server.log", "a") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    return await body(session)
    return anyio.run(main)


def answer(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    data: dict[str, Any] = result.structured_content
    return data


def error_text(result: Any) -> str:
    assert result.is_error, result.structured_content
    return " ".join(getattr(c, "text", "") for c in result.content)


@pytest.fixture
def served(tmp_path: Path, prod_db: ProdDb) -> dict[str, Any]:
    prod_db.execute("ALTER TABLE users ADD COLUMN api_token text; "
                    f"UPDATE users SET api_token = '{SECRET_VALUE}' WHERE id <= 3; "
                    "CREATE TABLE notes (id bigserial PRIMARY KEY, note text)")
    (tmp_path / "gateway.yaml").write_text(GATEWAY)
    return {"env": {"APP_DATABASE_URL": prod_db.dsn}, "db": prod_db}


def test_every_tool_over_stdio(tmp_path: Path, served: dict[str, Any]) -> None:
    db: ProdDb = served["db"]

    async def body(s: ClientSession) -> dict[str, Any]:
        tools = {t.name: t for t in (await s.list_tools()).tools}
        out: dict[str, Any] = {"tools": {n: t.annotations for n, t in tools.items()}}
        out["targets"] = answer(await s.call_tool("targets", {}))
        out["describe"] = answer(await s.call_tool("describe", {"target": "app", "name": "public.orders"}))
        out["query"] = answer(await s.call_tool("query", {"target": "app", "sql": "SELECT count(*) FROM orders"}))
        out["propose"] = answer(await s.call_tool("propose", {
            "action": {"sql": "UPDATE orders SET status = 'paid' WHERE id IN (4, 8)"},
            "expect": {"app": {"must": ["update rows public.orders"]}}, "rationale": "two orders were paid"}))
        run_id = out["propose"]["run_id"]
        out["unapproved"] = error_text(await s.call_tool("apply", {"run_id": run_id}))
        approved = run_cli("approve", run_id, "--by", "alice", state=tmp_path / "state", cwd=tmp_path)
        assert approved.code == 0, approved.text
        out["status"] = answer(await s.call_tool("status", {"run_id": run_id}))
        out["apply"] = answer(await s.call_tool("apply", {"run_id": run_id}))
        out["paid"] = db.scalar("SELECT count(*) FROM orders WHERE id IN (4, 8) AND status = 'paid'")
        out["rollback"] = answer(await s.call_tool("rollback", {"run_id": run_id}))
        return out

    fingerprint = db.fingerprint()
    out = drive(tmp_path, served["env"], "agent", body)
    tools = out["tools"]
    assert set(tools) == {"targets", "describe", "query", "propose", "status", "apply", "rollback"}
    assert all(tools[n].read_only_hint for n in ("targets", "describe", "query", "status"))
    assert tools["apply"].destructive_hint and tools["rollback"].destructive_hint
    assert not tools["propose"].read_only_hint and not tools["propose"].destructive_hint
    assert out["targets"]["actor"] == "agent" and out["targets"]["targets"] == [{"name": "app", "kind": "postgres"}]
    assert out["describe"]["tables"]["public.orders"]["rows"] == 2000
    assert out["query"]["rows"] == [[2000]]
    assert out["propose"]["verdict"] == "awaiting_approval", out["propose"]
    assert "awaits a person's approval" in out["unapproved"]
    assert out["status"]["approved_by"] == "alice"
    assert out["apply"]["verdict"] == "applied" and out["paid"] == 2
    assert out["rollback"]["verdict"] == "restored"
    assert db.fingerprint() == fingerprint
    for tool in ("targets", "describe", "query", "propose", "status", "apply", "rollback"):
        assert not undocumented(tool, out[tool]), f"{tool}: not in docs/gateway-answers.md"
    assert undocumented("status", {**out["status"], "approved_at": 1.0}) == {"approved_at"}  # the check can fail
    text = json.dumps(out, default=str)
    assert password_of(served["env"]["APP_DATABASE_URL"]) not in text and SECRET_VALUE not in text
    state = tmp_path / "state"
    assert audit(state / "journal.sqlite").intact
    notes = [json.loads(t[len("gateway "):]) for _, t in _notes(state)]
    assert [n["tool"] for n in notes if n["event"] == "call"] == [
        "targets", "describe", "query", "propose", "apply", "status", "apply", "rollback"]


def _notes(state: Path) -> list[tuple[float, str]]:
    from shadow.journal import Journal

    journal = Journal(state / "journal.sqlite")
    try:
        return journal.notes("gateway ")
    finally:
        journal.close()


MALFORMED: list[tuple[str, dict[str, Any]]] = [
    ("describe", {"target": "nope"}),
    ("describe", {}),
    ("describe", {"target": 7}),
    ("describe", {"target": "app", "name": "x" * 500}),
    ("query", {"target": "app"}),
    ("query", {"target": "nope", "sql": "SELECT 1"}),
    ("query", {"target": "app", "sql": ""}),
    ("query", {"target": "app", "sql": "SELECT 1; DROP TABLE orders"}),
    ("query", {"target": "app", "sql": "DELETE FROM orders"}),
    ("query", {"target": "app", "sql": "SELEC oops"}),
    ("query", {"target": "app", "sql": "SELECT 1", "limit": 0}),
    ("query", {"target": "app", "sql": "SELECT 1", "limit": 10 ** 9}),
    ("query", {"target": "app", "sql": "SELECT 1", "max_bytes": 3}),
    ("query", {"target": "app", "sql": "x" * 200_000}),
    ("propose", {}),
    ("propose", {"action": "DROP TABLE orders"}),
    ("propose", {"action": {}}),
    ("propose", {"action": {"sql": "SELECT 1", "command": "true"}}),
    ("propose", {"action": {"sql": ""}}),
    ("propose", {"action": {"sql": 42}}),
    ("propose", {"action": {"sql": "SELECT 1", "target": "nope"}}),
    ("propose", {"action": {"sql": "SELECT 1", "surprise": 1}}),
    ("propose", {"action": {"sql": "UPDATE orders SET"}}),
    ("propose", {"action": {"sql": "x" * (2 << 20)}}),
    ("propose", {"action": {"command": "true", "files": {"../escape.py": "x"}}}),
    ("propose", {"action": {"command": "true", "files": {"/etc/passwd": "x"}}}),
    ("propose", {"action": {"command": "true", "files": {"a/b.py": "x"}}}),
    ("propose", {"action": {"command": "true", "files": {"shadow.yaml": "x"}}}),
    ("propose", {"action": {"command": "true", "files": ["x"]}}),
    ("propose", {"action": {"command": ""}}),
    ("propose", {"action": {"sql": "SELECT 1"}, "expect": "everything"}),
    ("propose", {"action": {"sql": "SELECT 1"}, "expect": {"nope": {}}}),
    ("propose", {"action": {"sql": "SELECT 1"}, "expect": {"app": {"rows": "lots"}}}),
    ("propose", {"action": {"sql": "SELECT 1"}, "rationale": "x" * 10_000}),
    ("status", {"run_id": "../../etc/passwd"}),
    ("status", {"run_id": "20260101-000000-abcdef"}),
    ("status", {}),
    ("apply", {"run_id": "not-a-run"}),
    ("apply", {"run_id": "20260101-000000-abcdef"}),
    ("rollback", {"run_id": "20260101-000000-abcdef"}),
    ("rollback", {"run_id": None}),
    ("no_such_tool", {}),
]


def test_malformed_calls_are_tool_errors_and_the_server_keeps_serving(tmp_path: Path,
                                                                       served: dict[str, Any]) -> None:
    db: ProdDb = served["db"]
    fingerprint = db.fingerprint()

    async def body(s: ClientSession) -> list[tuple[str, bool, str]]:
        out = []
        for tool, args in MALFORMED:
            result = await s.call_tool(tool, args)
            out.append((tool, bool(result.is_error), " ".join(getattr(c, "text", "") for c in result.content)))
        answer(await s.call_tool("targets", {}))  # still serving
        return out

    results = drive(tmp_path, served["env"], "agent", body)
    errors = [r for r in results if r[1]]
    print(f"malformed tool calls: {len(MALFORMED)}, tool errors: {len(errors)}, server crashes: 0, "
          f"production changes: {int(db.fingerprint() != fingerprint)}")
    assert len(MALFORMED) >= 30
    assert len(errors) == len(MALFORMED), [r for r in results if not r[1]]
    assert not any("Traceback" in text for _, _, text in results)
    assert db.fingerprint() == fingerprint
    assert audit(tmp_path / "state" / "journal.sqlite").intact


def test_sigkill_of_the_server_during_an_apply_is_recovered(tmp_path: Path, served: dict[str, Any]) -> None:
    """The gateway process dies while its apply runs; `shadow recover` leaves production at the checkpoint or at the
    rehearsed outcome — never in between."""
    db: ProdDb = served["db"]
    state = tmp_path / "state"
    slow = "UPDATE orders SET total_cents = total_cents + 1 WHERE id <= 50; SELECT pg_sleep(3)"

    async def propose(s: ClientSession) -> str:
        return str(answer(await s.call_tool("propose", {"action": {"sql": slow}}))["run_id"])

    run_id = drive(tmp_path, served["env"], "agent", propose)
    assert run_cli("approve", run_id, "--by", "alice", state=state, cwd=tmp_path).code == 0
    before = db.scalar("SELECT sum(total_cents) FROM orders WHERE id <= 50")

    async def apply_and_die(s: ClientSession) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(s.call_tool, "apply", {"run_id": run_id})
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the apply's transaction is open on production
                if db.scalar("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(3)%' "
                             "AND pid <> pg_backend_pid()"):
                    break
                await anyio.sleep(0.05)
            for pid in _server_pids(state):
                os.kill(pid, signal.SIGKILL)
            tg.cancel_scope.cancel()

    try:
        drive(tmp_path, served["env"], "agent", apply_and_die)
    except BaseException:  # noqa: BLE001 - the transport breaks when its server dies
        pass
    recovered = run_cli("recover", "--json", state=state, cwd=tmp_path, env=served["env"])
    assert recovered.code == 0, recovered.text
    after = db.scalar("SELECT sum(total_cents) FROM orders WHERE id <= 50")
    assert after in (before, int(before) + 50), (before, after)  # type: ignore[arg-type]
    assert audit(state / "journal.sqlite").intact


def _server_pids(state: Path) -> list[int]:
    """The running gateway's pid: the run record of the apply it started says which process runs it."""
    pids = []
    for record in state.glob("runs/*/run.json"):
        data = json.loads(record.read_text())
        if data.get("command") == "apply" and data.get("pid"):
            pids.append(int(data["pid"]))
    assert pids, "the apply never started"
    return pids


PLANTED_NAME = "Zelda Quarantine"  # in users.full_name, hidden only by the gateway file's policy.redact glob
SECRETISH = "AKIAxQ7mN2pL9vR4tY8wZ3bC6"  # a secret-looking value in a column no rule names

BYPASSES = [  # each reaches a row that holds the planted values
    "SELECT api_token AS t FROM users WHERE id = 1",  # an alias hides the column's name
    "SELECT row_to_json(u) FROM users u WHERE id = 1",  # a whole row as one value
    "SELECT u FROM users u WHERE id = 1",
    "SELECT concat(api_token) FROM users WHERE id = 1",  # a function of the column
    "SELECT api_token::int FROM users WHERE id = 1",  # the server's error quotes the value
    "SELECT full_name AS who FROM users WHERE id = 1",  # a policy.redact glob with its table part
    "SELECT full_name::int FROM users WHERE id = 1",
    "SELECT row_to_json(u) FROM users u WHERE ctid = (SELECT ctid FROM users WHERE id = 1)",  # a TID scan
    "SELECT note FROM notes WHERE false UNION ALL SELECT api_token FROM users WHERE id = 1",  # no column origin
    "SELECT query_to_xml('select api_token, full_name from users where id = 1', true, false, '')",  # SQL in SQL
    "SELECT note FROM notes",  # the secret-looking value itself
]


def test_query_bypasses_return_no_redacted_or_secret_looking_value(tmp_path: Path, served: dict[str, Any]) -> None:
    db: ProdDb = served["db"]
    db.execute(f"UPDATE users SET full_name = '{PLANTED_NAME}' WHERE id = 1; "
               f"INSERT INTO notes (note) VALUES ('aws key {SECRETISH} (rotate)')")
    (tmp_path / "gateway.yaml").write_text(
        GATEWAY.replace('warm: "off"}', 'warm: "off", redact: ["public.users.full_name"]}'))

    async def body(s: ClientSession) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for sql in BYPASSES:
            result = await s.call_tool("query", {"target": "app", "sql": sql})
            out[sql] = error_text(result) if result.is_error else answer(result)
        out["plain"] = answer(await s.call_tool("query", {"target": "app", "sql":
                                                          "SELECT id, email FROM users WHERE id = 1"}))
        out["count"] = answer(await s.call_tool("query", {"target": "app", "sql": "SELECT count(*) FROM orders"}))
        return out

    out = drive(tmp_path, served["env"], "agent", body)
    for sql in BYPASSES:
        text = json.dumps(out[sql])
        for secret in (SECRET_VALUE, PLANTED_NAME, SECRETISH, password_of(served["env"]["APP_DATABASE_URL"])):
            assert secret not in text, (sql, out[sql])
        shown = out[sql] if isinstance(out[sql], dict) else {}
        assert "[redacted]" in text or shown.get("redacted_columns"), (sql, out[sql])  # hidden, and said so
    assert "invalid input syntax for type integer" in out["SELECT api_token::int FROM users WHERE id = 1"]
    assert out["SELECT note FROM notes"]["rows"] == [["aws key [redacted] (rotate)"]]
    assert out["plain"]["rows"] == [[1, db.scalar("SELECT email FROM users WHERE id = 1")]]  # the rest stays useful
    assert out["count"]["rows"] == [[2000]]


def test_a_huge_answer_is_cut_with_a_note(tmp_path: Path, served: dict[str, Any]) -> None:
    from shadow.gateway.core import MAX_ANSWER_CHARS

    async def body(s: ClientSession) -> dict[str, Any]:
        return answer(await s.call_tool("query", {
            "target": "app", "sql": "SELECT g, repeat('x', 4000) AS filler FROM generate_series(1, 1000) g",
            "limit": 1000, "max_bytes": 1 << 20}))

    out = drive(tmp_path, served["env"], "agent", body)
    assert len(json.dumps(out)) <= MAX_ANSWER_CHARS
    cut = out["answer_cut"]
    assert "cut to fit" in cut["note"] and cut["limit_chars"] == MAX_ANSWER_CHARS
    kept, of = (int(n.replace(",", "")) for n in re.findall(r"[\d,]+", cut["lists"]["rows"]))
    assert 0 < kept < of and len(out["rows"]) == kept and out["rows"][0][0] == 1
    assert not undocumented("query", out)


def test_action_output_masks_dsn_passwords_and_secret_looking_values(tmp_path: Path, served: dict[str, Any]) -> None:
    script = (f"print('connecting to postgres://app:hunter2-Pw@db.internal/app password=s3cr3t-Pw')\n"
              f"print('token {SECRETISH} loaded')\n")

    async def body(s: ClientSession) -> dict[str, Any]:
        return answer(await s.call_tool("propose", {"action": {
            "command": f"{sys.executable} show.py", "files": {"show.py": script}}}))

    out = drive(tmp_path, served["env"], "agent", body)
    output = out["action_output"]
    assert "postgres://app:***@db.internal/app" in output and "password=***" in output, output
    assert "token [redacted] loaded" in output, output
    text = json.dumps(out)
    assert "hunter2-Pw" not in text and "s3cr3t-Pw" not in text and SECRETISH not in text
