"""The agent gateway: an AI agent (or any automation) may look at copies and propose actions that are rehearsed and
judged against its scope and limits; it never acts on production except through an approved, rehearsed run.

``gw = shadow.gateway.open("gateway.yaml", actor="bot")`` · ``gw.propose(action={"sql": ...}, expect=...)`` ·
``gw.apply(run_id)``; ``shadow mcp -f gateway.yaml --actor bot`` serves the same methods over MCP (stdio).
"""

from __future__ import annotations

from shadow.gateway.config import GatewayFile, Rules, load_gateway
from shadow.gateway.core import GATEWAY_FORMAT, Gateway, Refused, open

__all__ = ["GATEWAY_FORMAT", "Gateway", "GatewayFile", "Refused", "Rules", "load_gateway", "open"]
