"""The two doors into the agent gateway, behind one interface, so that each gateway test runs through both: the Python
API (``shadow.gateway.open``) and ``shadow mcp`` as a subprocess spoken to through the ``mcp`` SDK's own stdio client,
the way an MCP client drives it. A tool error becomes :class:`~shadow.gateway.Refused` with the tool's message, so a
test reads the same either way."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from shadow import gateway
from shadow.gateway import Refused
from shadow.settings import Settings
from tests.conftest import cli_env

DOORS = ("python", "mcp")


class McpDoor:
    """``shadow mcp -f PATH --actor ACTOR`` with a client session kept open between calls (one server process, as
    an MCP client keeps it), driven from synchronous test code through an anyio blocking portal."""

    def __init__(self, path: Path, actor: str, env: dict[str, str], state_dir: Path) -> None:
        self.actor = actor
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "shadow.cli", "--state-dir", str(state_dir), "mcp", "-f", str(path), "--actor", actor],
            env=cli_env(None, env), cwd=str(path.parent))
        self._stack = contextlib.ExitStack()
        try:
            self._errlog = self._stack.enter_context(open(path.parent / "mcp-server.log", "a"))
            self._portal: BlockingPortal = self._stack.enter_context(start_blocking_portal())
            read, write = self._stack.enter_context(
                self._portal.wrap_async_context_manager(stdio_client(params, errlog=self._errlog)))
            self._session: ClientSession = self._stack.enter_context(
                self._portal.wrap_async_context_manager(ClientSession(read, write)))
            self._portal.call(self._session.initialize)
        except BaseException:
            self._stack.close()
            raise

    def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        arguments = {k: v for k, v in arguments.items() if v is not None}
        result = self._portal.call(self._session.call_tool, tool, arguments)
        if result.is_error:
            raise Refused(" ".join(getattr(c, "text", "") for c in result.content))
        data: dict[str, Any] = result.structured_content
        return data

    def targets(self) -> dict[str, Any]:
        return self.call("targets")

    def describe(self, target: str, name: str | None = None) -> dict[str, Any]:
        return self.call("describe", target=target, name=name)

    def query(self, target: str, sql: str, limit: int | None = None, max_bytes: int | None = None) -> dict[str, Any]:
        return self.call("query", target=target, sql=sql, limit=limit, max_bytes=max_bytes)

    def propose(self, action: dict[str, Any], expect: dict[str, Any] | None = None,
                rationale: str = "") -> dict[str, Any]:
        return self.call("propose", action=action, expect=expect, rationale=rationale)

    def status(self, run_id: str) -> dict[str, Any]:
        return self.call("status", run_id=run_id)

    def apply(self, run_id: str) -> dict[str, Any]:
        return self.call("apply", run_id=run_id)

    def rollback(self, run_id: str) -> dict[str, Any]:
        return self.call("rollback", run_id=run_id)

    def close(self) -> None:
        self._stack.close()


class Doors:
    """Opens gateways through one door and closes every one it opened (a test's fixture)."""

    def __init__(self, door: str) -> None:
        self.door = door
        self._opened: list[Any] = []

    def open(self, path: Path, actor: str, env: dict[str, str], state_dir: Path) -> Any:
        if self.door == "mcp":
            opened: Any = McpDoor(path, actor, env, state_dir)
        else:
            opened = gateway.open(path, actor, Settings.from_env(environ=env, state_dir=state_dir))
        self._opened.append(opened)
        return opened

    def close(self) -> None:
        for opened in reversed(self._opened):
            with contextlib.suppress(Exception):
                opened.close()


@contextlib.contextmanager
def doors(door: str) -> Iterator[Doors]:
    opened = Doors(door)
    try:
        yield opened
    finally:
        opened.close()


# -- the answers' documented shape (docs/gateway-answers.md) -----------------------------------------------------

ANSWERS_DOC = Path(__file__).resolve().parent.parent / "docs" / "gateway-answers.md"
NAMED_KEYS = {"scope": "<target>", "changes": "<target>", "tables": "<table>", "columns": "<column>",
              "objects": "<kind>", "rate_state": "<tool>", "max_lock": "<mode>"}
OPEN_OBJECTS = ("detail", "lists")  # kind-specific facts; answer_cut.lists: path -> "kept N of M"


def documented_fields() -> dict[str, set[str]]:
    """The fields the answers page lists, by tool (``*``: every answer)."""
    import re

    fields: dict[str, set[str]] = {}
    tools: list[str] = []
    for line in ANSWERS_DOC.read_text().splitlines():
        if line.startswith("## "):
            tools = ["*"] if "Every answer" in line else re.findall(r"`(\w+)`", line)
        elif line.startswith("| `") and tools:
            first = line.split("|")[1]
            for tool in tools:
                fields.setdefault(tool, set()).update(re.findall(r"`([^`]+)`", first))
    return fields


def _paths(value: Any, path: str = "") -> Iterator[str]:
    if isinstance(value, dict):
        named = NAMED_KEYS.get(path.rsplit(".", 1)[-1]) if path else None
        if named == "<column>" and not path.startswith("tables."):
            named = None
        for key, inner in value.items():
            here = f"{path}.{named or key}" if path else str(key)
            yield here
            if str(key) not in OPEN_OBJECTS:
                yield from _paths(inner, here)
    elif isinstance(value, list):
        for inner in value:
            if isinstance(inner, dict):
                yield from _paths(inner, f"{path}[]")


def undocumented(tool: str, answer: dict[str, Any]) -> set[str]:
    """The fields of a real ``tool`` answer that docs/gateway-answers.md does not list (an object that only
    holds listed fields counts as listed)."""
    docs = documented_fields()
    known = docs.get("*", set()) | docs.get(tool, set())
    return {p for p in _paths(answer) if p not in known and
            not any(k.startswith(p + ".") or k.startswith(p + "[]") for k in known)}
