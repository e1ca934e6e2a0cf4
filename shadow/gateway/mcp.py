"""``shadow mcp``: the gateway as a stdio MCP server (the official ``mcp`` SDK). A thin layer: every tool calls one
:class:`~shadow.gateway.core.Gateway` method; a refusal is a tool error with the gateway's message, and the server
keeps serving. The actor is fixed when the server starts (``--actor``); no tool argument can change it. There is
deliberately no approve tool: people approve with ``shadow approve``."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from shadow.gateway.core import QUERY_BYTES, QUERY_ROWS, Gateway, Refused

INSTRUCTIONS = ("shadow gateway for actor {actor!r}. Look at copies of production (targets, describe, query), "
                "propose an action (it is rehearsed on a copy and judged against your expectations, scope and "
                "limits), then apply a proposal once a person approved it. Nothing you do reaches production "
                "unrehearsed.")
LOOK = {"read_only_hint": True, "destructive_hint": False, "idempotent_hint": True, "open_world_hint": False}


def _registrar(app: Any) -> Callable[[dict[str, Any]], Callable[[Callable[..., dict[str, Any]]], Any]]:
    """``@tool(annotations)``: registers a gateway method's wrapper on ``app`` — run in a thread, one call at a time
    (the gateway's runs are not meant to interleave), a refusal as a tool error with the gateway's message."""
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp_types import ToolAnnotations

    lock = asyncio.Lock()

    def tool(annotations: dict[str, Any]) -> Callable[[Callable[..., dict[str, Any]]], Any]:
        def register(fn: Callable[..., dict[str, Any]]) -> Any:
            @functools.wraps(fn)
            async def call(*args: Any, **kwargs: Any) -> dict[str, Any]:
                async with lock:
                    try:
                        return await asyncio.to_thread(fn, *args, **kwargs)
                    except Refused as exc:
                        raise ToolError(str(exc)) from None
            return app.tool(annotations=ToolAnnotations(**annotations))(call)
        return register
    return tool


def server(gateway: Gateway) -> Any:
    from mcp.server import MCPServer

    app = MCPServer("shadow", instructions=INSTRUCTIONS.format(actor=gateway.actor))
    tool = _registrar(app)

    @tool(LOOK)
    def targets() -> dict[str, Any]:
        """The targets you may work on (names and kinds), your scope, limits, rate limits and breaker state."""
        return gateway.targets()

    @tool(LOOK)
    def describe(target: str, name: str | None = None) -> dict[str, Any]:
        """Tables (columns, key, row count) and other objects of a target, from its latest checkpoint; `name` is
        an optional glob on object names, like public.orders*."""
        return gateway.describe(target, name)

    @tool(LOOK)
    def query(target: str, sql: str, limit: int = QUERY_ROWS, max_bytes: int = QUERY_BYTES) -> dict[str, Any]:
        """Run one read-only SQL statement on a disposable copy of the target (never production); the answer is cut
        at `limit` rows and `max_bytes` bytes, secret-looking columns redacted."""
        return gateway.query(target, sql, limit, max_bytes)

    @tool(LOOK)
    def status(run_id: str) -> dict[str, Any]:
        """The state of one of your runs: rehearsed, awaiting approval, approved by whom, applied, rolled back."""
        return gateway.status(run_id)

    @tool({"read_only_hint": False, "destructive_hint": False, "idempotent_hint": False, "open_world_hint": False})
    def propose(action: dict[str, Any], expect: dict[str, Any] | None = None, rationale: str = "") -> dict[str, Any]:
        """Propose a change. action: {"sql": "UPDATE ...", "target": "app"} or {"command": "python fix.py",
        "files": {"fix.py": "..."}}. expect: per target, as in a shadow plan ({"app": {"must": [...], "may": [...],
        "rows": {"public.orders": {"updated": "<= 10"}}}}). It is rehearsed on a copy and judged; production is
        only read. Returns the run id, verdict, change set, findings, lock trace and scope/limit verdicts."""
        return gateway.propose(action, expect, rationale)

    @tool({"read_only_hint": False, "destructive_hint": True, "idempotent_hint": False, "open_world_hint": False})
    def apply(run_id: str) -> dict[str, Any]:
        """Apply your proposal `run_id` to production exactly as rehearsed — only once a person approved it (or
        your rules apply what passed within limits); refused if production drifted, rolled back if it diverges."""
        return gateway.apply(run_id)

    @tool({"read_only_hint": False, "destructive_hint": True, "idempotent_hint": False, "open_world_hint": False})
    def rollback(run_id: str) -> dict[str, Any]:
        """Undo your applied proposal `run_id` (refused when production changed since in what it would undo)."""
        return gateway.rollback(run_id)

    return app


def serve(gateway: Gateway) -> None:
    """Serve ``gateway`` on stdin/stdout until the client closes it."""
    server(gateway).run("stdio")
