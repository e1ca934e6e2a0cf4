"""The gateway: what an actor (an AI agent, a bot) may do, as Python methods — the MCP server
(:mod:`shadow.gateway.mcp`) is a thin layer over them.

The gateway holds the credentials (its environment); the actor never sees them. It may look at a copy
(:meth:`Gateway.describe`, :meth:`Gateway.query` — on a shadow, never production), **propose** an action — which
becomes a plan file in the state dir (targets as the gateway file writes them, ``${VAR}`` kept; the action; the
actor's expectations; ``policy.approval: required``) rehearsed by ``shadow plan`` with the actor's scope and limits
as extra judges — and **apply** a proposal only through the existing ``apply --run`` path, once a person approved
it (``shadow approve``) or, for ``apply: within-limits`` actors, once everything held. Every call is journaled
before it acts (:mod:`shadow.gateway.ledger`); anything the gateway cannot decide is a refusal.

Answers are plain JSON (``gateway_format`` 1, every field in docs/gateway-answers.md); the change sets in them are
the report model's, redacted; none is larger than :data:`MAX_ANSWER_CHARS` (:func:`shadow.gateway.answers.fit`).
This module holds the tools and what every call goes through (journal, refusals, secrets, the work between
calls); the tools' bodies are in :mod:`~shadow.gateway.proposal`, :mod:`~shadow.gateway.look` and
:mod:`~shadow.gateway.runs`, on :class:`~shadow.gateway.common.GatewayBase`. What ``query`` hides is in
:mod:`shadow.gateway.query`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shadow import redact
from shadow.errors import ShadowError, cap
from shadow.gateway.answers import fit
from shadow.gateway.common import (GATEWAY_FORMAT, MAX_ANSWER_CHARS, QUERY_BYTES, QUERY_ROWS, WARMING_TOOLS,
                                   Refused)
from shadow.gateway.config import GatewayFile, Rules, load_gateway
from shadow.gateway.ledger import Ledger, digest
from shadow.gateway.look import Looking
from shadow.gateway.proposal import Proposing
from shadow.gateway.runs import Running
from shadow.settings import Settings

__all__ = ["GATEWAY_FORMAT", "MAX_ANSWER_CHARS", "QUERY_BYTES", "QUERY_ROWS", "Gateway", "Refused", "open"]


def open(path: str | Path, actor: str, settings: Settings | None = None) -> Gateway:  # noqa: A001 - gateway.open
    """The gateway of ``path`` for ``actor``: ``shadow.gateway.open("gateway.yaml", actor="bot")``."""
    settings = settings or Settings.from_env()
    file = load_gateway(Path(path), settings.environ)
    return Gateway(file, actor, file.settings_for(settings))


class Gateway(Proposing, Looking, Running):
    """The gateway for one actor: its tools as methods (``targets``, ``describe``, ``query``, ``propose``,
    ``status``, ``apply``, ``rollback``), each journaled before it acts and answered within its size cap."""

    def __init__(self, file: GatewayFile, actor: str, settings: Settings) -> None:
        self.file = file
        self.actor = actor
        self.rules: Rules = file.rules_for(actor)
        self.settings = settings
        self.ledger = Ledger(settings)
        self.dir = settings.state_dir / "gateway"
        self._secrets: tuple[str, ...] | None = None
        self._between: threading.Thread | None = None  # readies the warm copies for the next call (prepare_warm)
        self._interrupt: Any = None  # stops it when the next call comes first

    # -- the tools -----------------------------------------------------------------------------------------------

    def targets(self) -> dict[str, Any]:
        """Names, kinds, the actor's scope, limits, rate and breaker state — never an endpoint."""
        return self._call("targets", {}, lambda: {
            "gateway_format": GATEWAY_FORMAT, "actor": self.actor,
            "targets": [{"name": t.name, "kind": t.kind} for t in self.file.targets],
            **self.rules.to_dict(),
            "rate_state": self._rate_state(),
            "breaker": self.ledger.breaker(self.actor, self.rules).to_dict(),
        })

    def describe(self, target: str, name: str | None = None) -> dict[str, Any]:
        """Objects and row counts of ``target`` from its latest checkpoint's observation (a new checkpoint when the
        gateway has none yet); ``name`` a glob on object names."""
        return self._call("describe", {"target": target, "name": name}, lambda: self._describe(target, name))

    def query(self, target: str, sql: str, limit: int = QUERY_ROWS, max_bytes: int = QUERY_BYTES) -> dict[str, Any]:
        """A read-only query on a shadow of ``target`` (never production): statement timeout, row and byte caps,
        redacted columns."""
        return self._call("query", {"target": target, "sql": sql, "limit": limit, "max_bytes": max_bytes},
                          lambda: self._query(target, sql, limit, max_bytes))

    def propose(self, action: Any, expect: Any = None, rationale: str = "") -> dict[str, Any]:
        """Rehearse ``action`` (``{"sql": TEXT}`` | ``{"command": TEXT}``, optional ``files: {name: text}`` and
        ``target``) against ``expect`` and the actor's rules; production is only read."""
        args = {"action": action, "expect": expect, "rationale": rationale}
        return self._call("propose", args, lambda: self._propose(action, expect, rationale))

    def status(self, run_id: str) -> dict[str, Any]:
        """A run's state: rehearsed, awaiting approval, approved by whom, applied, rolled back."""
        return self._call("status", {"run_id": run_id}, lambda: self._status(run_id))

    def apply(self, run_id: str) -> dict[str, Any]:
        """Apply exactly the approved rehearsal ``run_id`` (this actor's own) through ``apply --run``."""
        return self._call("apply", {"run_id": run_id}, lambda: self._apply(run_id))

    def rollback(self, run_id: str) -> dict[str, Any]:
        """Undo this actor's own applied run (refused, as on the CLI, when production changed since)."""
        return self._call("rollback", {"run_id": run_id}, lambda: self._rollback(run_id))

    # -- every call: journaled first, answered safely ------------------------------------------------------------

    def _call(self, tool: str, args: dict[str, Any], body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        self.wait_between()
        try:
            answer = self._answer(tool, args, body)
        finally:
            if tool in WARMING_TOOLS:
                from adapters import Interrupt

                self._interrupt = Interrupt()
                self._between = threading.Thread(target=self._prepare_warm, args=(self._interrupt,),
                                                 name="gateway-prepare-warm", daemon=True)
                self._between.start()
        return answer

    def wait_between(self, stop: bool = True) -> None:
        """End the work the gateway does between calls (readying its warm copies): stop it (``stop``) — a call
        never waits for a copy it could make itself — or let it finish."""
        if self._between is not None:
            if stop:
                self._interrupt.set()
            self._between.join()
            self._between = None

    def close(self) -> None:
        """Let the work between calls finish; nothing else is held open."""
        self.wait_between(stop=False)

    def _prepare_warm(self, interrupt: Any) -> None:
        """While the actor reads the answer, each idle warm copy gets its next shadow cloned ahead
        (:meth:`adapters.Kind.prepare_warm`): the next proposal renames them instead of copying. Best effort — a
        copy that cannot be readied is cloned on the next call's path as before."""
        from adapters import REGISTRY

        for kind in REGISTRY.values():
            try:
                kind.prepare_warm(self.settings, interrupt)
            except Exception:  # noqa: BLE001 - an optimisation; the next lease checks the copy anyway
                pass

    def _answer(self, tool: str, args: dict[str, Any], body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            self.ledger.write({"event": "call", "actor": self.actor, "tool": tool, "args_sha256": digest(args)})
        except ShadowError as exc:  # nothing happens that the journal does not record first
            raise Refused(self._safe(f"refused: the call could not be recorded ({exc})")) from None
        try:
            answer = body()
        except Refused as exc:
            self._result(tool, "refused", None, False, str(exc))
            raise Refused(self._safe(str(exc))) from None
        except ShadowError as exc:
            self._result(tool, "error", None, False, str(exc))
            raise Refused(self._safe(f"{type(exc).__name__}: {exc}")) from None
        except Exception as exc:  # noqa: BLE001 - never a traceback to the actor; the journal has the type
            self._result(tool, "error", None, False, type(exc).__name__)
            raise Refused(f"internal error ({type(exc).__name__}); nothing was applied — the operator finds the "
                          "call in the journal") from None
        failure = bool(answer.pop("_failure", False))
        self._result(tool, "ok", answer.get("run_id"), failure, answer.get("verdict", ""))
        if failure:
            self.ledger.count_failure(self.actor, self.rules)
        return fit(json.loads(self._safe(json.dumps(answer, default=str))), MAX_ANSWER_CHARS)

    def _result(self, tool: str, result: str, run_id: str | None, failure: bool, detail: str) -> None:
        self.ledger.write({"event": "result", "actor": self.actor, "tool": tool, "result": result, "run_id": run_id,
                           "failure": failure, "detail": cap(self._safe(detail), 300)})

    def _safe(self, text: str) -> str:
        """``text`` with every secret the gateway holds masked (DSN passwords …), as a last line of defence."""
        return redact.mask_secrets(text, self._known_secrets())

    def _known_secrets(self) -> tuple[str, ...]:
        if self._secrets is None:
            found: list[str] = []
            for name, t in self._make_targets().items():
                try:
                    found += list(t.endpoint().secrets)
                except Exception:  # noqa: BLE001 - a target that cannot say has nothing to add here
                    pass
            self._secrets = tuple(s for s in found if s)
        return self._secrets
