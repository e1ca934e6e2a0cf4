"""The gateway: what an actor (an AI agent, a bot) may do, as Python methods — the MCP server
(:mod:`shadow.gateway.mcp`) is a thin layer over them.

The gateway holds the credentials (its environment); the actor never sees them. It may look at a copy
(:meth:`Gateway.describe`, :meth:`Gateway.query` — on a shadow, never production), **propose** an action — which
becomes a plan file in the state dir (targets as the gateway file writes them, ``${VAR}`` kept; the action; the
actor's expectations; ``policy.approval: required``) rehearsed by ``shadow plan`` with the actor's scope and limits
as extra judges — and **apply** a proposal only through the existing ``apply --run`` path, once a person approved
it (``shadow approve``) or, for ``apply: within-limits`` actors, once everything held. Every call is journaled
before it acts (:mod:`shadow.gateway.ledger`); anything the gateway cannot decide is a refusal.

Answers are plain JSON (``gateway_format`` 1); the change sets in them are the report model's, redacted; none is
larger than :data:`MAX_ANSWER_CHARS` (:func:`shadow.gateway.answers.fit`). What ``query`` hides is in
:mod:`shadow.gateway.query`.
"""

from __future__ import annotations

import json
import re
import secrets as pysecrets
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from shadow import redact
from shadow.errors import BadInput, ShadowError, cap
from shadow.gateway.answers import fit
from shadow.gateway.config import GatewayFile, Rules, load_gateway
from shadow.gateway.ledger import Ledger, digest
from shadow.gateway.query import QueryFailed, read_only
from shadow.gateway.scope import judge_rules
from shadow.outcome import Outcome
from shadow.result import RunResult
from shadow.settings import Settings
from snapshots import atomic_write_bytes, make_private_dir, open_store

GATEWAY_FORMAT = 1
MAX_SQL_BYTES = 1 << 20
MAX_FILES = 20
MAX_FILE_BYTES = 1 << 20
MAX_COMMAND_CHARS = 4096
MAX_TEXT_CHARS = 4000
MAX_ANSWER_CHARS = 256 * 1024  # no answer is larger; its lists are cut first
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")
WARMING_TOOLS = ("describe", "query", "propose", "apply")  # calls that may leave a warm copy to ready
QUERY_ROWS, QUERY_BYTES = 100, 64 * 1024


class Refused(ShadowError):
    """A tool call the gateway refuses: bad input, out of its rules, or undecidable. The message is safe to show the
    actor (it names no endpoint or secret)."""

    exit_code = 1


def open(path: str | Path, actor: str, settings: Settings | None = None) -> Gateway:  # noqa: A001 - gateway.open
    """The gateway of ``path`` for ``actor``: ``shadow.gateway.open("gateway.yaml", actor="bot")``."""
    settings = settings or Settings.from_env()
    file = load_gateway(Path(path), settings.environ)
    return Gateway(file, actor, file.settings_for(settings))


class Gateway:
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

    def _make_targets(self, names: list[str] | None = None) -> dict[str, Any]:
        from adapters import REGISTRY

        return {s.name: REGISTRY[s.kind].target(s.name, s.options, self.settings)
                for s in self.file.targets if names is None or s.name in names}

    def _target(self, name: Any) -> str:
        names = [t.name for t in self.file.targets]
        if not isinstance(name, str) or name not in names:
            raise Refused(f"unknown target {cap(str(name), 80)!r} (targets: {', '.join(names)})")
        return name

    def _rate_state(self) -> dict[str, Any]:
        out = {}
        for tool, rate in (("propose", self.rules.proposals), ("apply", self.rules.applies)):
            out[tool] = {"allowed": rate.text if rate else None,
                         "refusal": self.ledger.rate_refusal(self.actor, tool, rate)}
        return out

    def _gate(self, tool: str) -> None:
        """Refused while the actor's breaker is open, or when ``tool`` is over its rate."""
        state = self.ledger.breaker(self.actor, self.rules)
        if state.open:
            raise Refused(f"the circuit breaker of actor {self.actor!r} is open ({state.why}); a person closes it "
                          f"with `shadow agents reset {self.actor} --by NAME`")
        rate = self.rules.proposals if tool == "propose" else self.rules.applies
        refusal = self.ledger.rate_refusal(self.actor, tool, rate)
        if refusal is not None:
            raise Refused(refusal)

    # -- proposals -----------------------------------------------------------------------------------------------

    def _propose(self, action: Any, expect: Any, rationale: str) -> dict[str, Any]:
        from shadow import run

        if not isinstance(rationale, str) or len(rationale) > MAX_TEXT_CHARS:
            raise Refused(f"rationale: a text of at most {MAX_TEXT_CHARS} characters")
        plan_doc, files = self._plan_document(action, expect)
        self._gate("propose")
        folder = self.dir / "proposals" / f"{time.strftime('%Y%m%d-%H%M%S')}-{pysecrets.token_hex(4)}"
        make_private_dir(folder)
        for name, text in files.items():
            atomic_write_bytes(folder / name, text.encode())
        plan_path = folder / "shadow.yaml"
        atomic_write_bytes(plan_path, yaml.safe_dump(plan_doc, sort_keys=False, allow_unicode=True).encode())
        try:
            result = run.plan(plan_path, self.settings, judges=[lambda r: judge_rules(self.rules, r)])
        except BadInput as exc:
            raise Refused(f"the proposal was refused before it ran: {exc}") from None
        self._remember(result.run_id, {"run_id": result.run_id, "actor": self.actor, "plan": str(plan_path),
                                       "rationale": cap(rationale, MAX_TEXT_CHARS), "at": time.time()})
        self._latest(result)
        answer = self._run_answer(result)
        answer["_failure"] = result.outcome not in (Outcome.PASSED, Outcome.AWAITING_APPROVAL)
        if result.outcome is Outcome.AWAITING_APPROVAL:
            answer["next"] = (f"a person approves with `shadow approve {result.run_id} --by NAME`; then call "
                              f"apply({result.run_id!r})" if self.rules.apply == "approval" else
                              f"everything held: apply({result.run_id!r}) applies it (apply: within-limits)")
        return answer

    def _plan_document(self, action: Any, expect: Any) -> tuple[dict[str, Any], dict[str, str]]:
        """The proposal's plan (as YAML data) and the files to write beside it; Refused for bad input."""
        if not isinstance(action, dict):
            raise Refused('action: a mapping like {"sql": "UPDATE ..."} or {"command": "python fix.py", '
                          '"files": {"fix.py": "..."}}')
        unknown = sorted(set(action) - {"sql", "command", "files", "target"})
        if unknown:
            raise Refused(f"action: unknown key(s) {', '.join(map(str, unknown))} (sql, command, files, target)")
        if ("sql" in action) == ("command" in action):
            raise Refused("action: give exactly one of `sql` (SQL text) and `command` (a shell command)")
        files = self._files(action.get("files"))
        plan_action: dict[str, Any]
        if "sql" in action:
            sql = action["sql"]
            if not isinstance(sql, str) or not sql.strip():
                raise Refused("action.sql: a non-empty SQL text")
            if len(sql.encode()) > MAX_SQL_BYTES:
                raise Refused(f"action.sql: more than {MAX_SQL_BYTES >> 20} MiB of SQL")
            files["action.sql"] = sql
            plan_action = {"sql": ["action.sql"]}
            sql_targets = [t.name for t in self.file.targets if _runs_sql(t.kind)]
            target = action.get("target")
            if target is None and len(sql_targets) != 1:
                raise Refused(f"action.target: name the target the SQL runs on (one of: {', '.join(sql_targets)})")
            target = self._target(target if target is not None else sql_targets[0])
            if target not in sql_targets:
                raise Refused(f"action.target: {target!r} does not run SQL (SQL targets: {', '.join(sql_targets)})")
            plan_action["target"] = target
        else:
            command = action["command"]
            if not isinstance(command, str) or not command.strip() or len(command) > MAX_COMMAND_CHARS:
                raise Refused(f"action.command: a non-empty shell command of at most {MAX_COMMAND_CHARS} characters")
            if "\x00" in command:
                raise Refused("action.command: must not contain NUL characters")
            plan_action = {"command": command, "timeout": f"{self.rules.timeout:g}s"}
            if self.rules.isolation == "container":
                r = self.rules.resources
                plan_action |= {"isolation": "container",
                                "limits": {k: v for k, v in (("memory", r.memory), ("cpus", r.cpus), ("pids", r.pids))
                                           if v is not None}}
        if "sql" in action:
            plan_action["timeout"] = f"{self.rules.timeout:g}s"
        policy: dict[str, Any] = {"approval": "required", "warm": "10m"}
        policy |= {k: v for k, v in self.file.policy.items()}
        warm = _warm(self.file.policy, self.settings)  # SHADOW_WARM, when set, decides for every run
        if warm is None:
            policy.pop("warm")  # off
        else:
            policy["warm"] = f"{warm:g}s"  # as decided: never the file's "off" when SHADOW_WARM turns it on
        if self.rules.max_lock:
            policy["max_lock"] = dict(self.rules.max_lock)  # seconds
        doc = {"version": 1, "targets": dict(self.file.raw_targets), "action": plan_action,
               "expect": self._expectations(expect), "policy": policy}
        return doc, files

    def _files(self, raw: Any) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, dict) or len(raw) > MAX_FILES:
            raise Refused(f"action.files: a mapping of at most {MAX_FILES} file names to their text")
        out = {}
        for name, text in raw.items():
            if not isinstance(name, str) or not FILE_NAME.fullmatch(name) or ".." in name or \
                    name in ("shadow.yaml", "action.sql"):
                raise Refused(f"action.files: {cap(str(name), 80)!r} is not a plain file name (letters, digits, "
                              "_ . -; no folders, no `..`; not shadow.yaml or action.sql)")
            if not isinstance(text, str) or len(text.encode()) > MAX_FILE_BYTES:
                raise Refused(f"action.files.{name}: a text of at most {MAX_FILE_BYTES >> 20} MiB")
            out[name] = text
        return out

    def _expectations(self, expect: Any) -> dict[str, Any]:
        """The plan's ``expect``: the actor's, per target; a target it says nothing about may change within the
        actor's scope (the scope is judged anyway)."""
        if expect is not None and not isinstance(expect, dict):
            raise Refused("expect: a mapping of target names to expectations ({must, may, rows, checks, objects, "
                          "files}), as in a plan file")
        expect = expect or {}
        for name in expect:
            self._target(name)
        out: dict[str, Any] = {}
        for t in self.file.targets:
            if t.name in expect:
                out[t.name] = expect[t.name]
            elif t.name in self.rules.scope and self.rules.scope[t.name].may:
                out[t.name] = {"may": list(self.rules.scope[t.name].may)}
        return out

    def _remember(self, run_id: str, record: dict[str, Any]) -> None:
        folder = self.dir / "runs"
        make_private_dir(folder)
        atomic_write_bytes(folder / f"{run_id}.json", json.dumps(record, indent=1).encode())

    def _record(self, run_id: Any) -> dict[str, Any]:
        """This actor's proposal ``run_id`` (or the apply of one); Refused for anything else, saying no more."""
        if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
            raise Refused(f"{cap(str(run_id), 40)!r} is not a run id (like 20261203-101500-a1b2c3)")
        path = self.dir / "runs" / f"{run_id}.json"
        if path.exists():
            record: dict[str, Any] = json.loads(path.read_text())
            if record.get("actor") == self.actor:
                return record
        raise Refused(f"run {run_id} is not a proposal of actor {self.actor!r}")

    def _latest(self, result: RunResult) -> None:
        """Remember which run last checkpointed each target (describe reads its observation)."""
        latest = self._latest_runs()
        for name, tr in result.targets.items():
            if tr.checkpoint:
                latest[name] = result.run_id
        make_private_dir(self.dir)
        atomic_write_bytes(self.dir / "latest.json", json.dumps(latest).encode())

    def _latest_runs(self) -> dict[str, str]:
        try:
            data = json.loads((self.dir / "latest.json").read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _run_answer(self, result: RunResult) -> dict[str, Any]:
        model = result.to_dict()
        rehearsal = (model["action"] or {}).get("rehearsal") or {}
        return {
            "gateway_format": GATEWAY_FORMAT, "run_id": result.run_id, "command": result.command,
            "verdict": result.outcome.value, "reason": redact.mask_output(result.reason), "passed": result.passed,
            "changes": {t["name"]: t["changes"] for t in model["targets"]},
            "expectations": [v for v in model["expectations"] if v["rule"] not in ("scope", "limit", "max_lock")],
            "rules": [v for v in model["expectations"] if v["rule"] in ("scope", "limit", "max_lock")],
            "findings": model["findings"], "locks": rehearsal.get("locks"),
            "action_output": _action_output(rehearsal.get("log")),
            "report": str(Path(result.report_dir) / "report.md"),
        }

    # -- status, apply, rollback ---------------------------------------------------------------------------------

    def _status(self, run_id: str) -> dict[str, Any]:
        from shadow.state import local_path, open_journal

        try:
            record = self._record(run_id)
        except Refused:
            return self._others_state(run_id)
        proposal = record.get("of_proposal", run_id)
        journal = open_journal(self.settings)
        try:
            def outcome(rid: str | None) -> str | None:
                if not rid:
                    return None
                try:
                    return journal.run(rid).outcome
                except ShadowError:
                    return None
            state = {"rehearsal": outcome(proposal)}
            approval_path = local_path(self.settings, proposal, "approval.json")
            approval = json.loads(approval_path.read_text()) if approval_path.exists() else None
            proposal_record = self._record(proposal)
            applied = proposal_record.get("applied_run")
            rolled = proposal_record.get("rollback_run")
            return {"gateway_format": GATEWAY_FORMAT, "run_id": run_id, "proposal": proposal,
                    "rehearsal": state["rehearsal"],
                    "approved_by": approval["by"] if approval else None,
                    "applied_run": applied, "apply": outcome(applied),
                    "rollback_run": rolled, "rollback": outcome(rolled),
                    "report": str(self.settings.runs_dir / proposal / "report.md")}
        finally:
            journal.close()

    def _others_state(self, run_id: Any) -> dict[str, Any]:
        """Another actor's run: its state and nothing more. Refused when it is no gateway run at all."""
        from shadow.state import open_journal

        if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id) or \
                not (self.dir / "runs" / f"{run_id}.json").exists():
            raise Refused(f"{cap(str(run_id), 40)!r} is no run of this gateway")
        journal = open_journal(self.settings)
        try:
            outcome = journal.run(run_id).outcome
        except ShadowError:
            outcome = None
        finally:
            journal.close()
        return {"gateway_format": GATEWAY_FORMAT, "run_id": run_id, "state": outcome,
                "note": f"not a run of actor {self.actor!r}: only its state is shown"}

    def _apply(self, run_id: str) -> dict[str, Any]:
        from shadow import run
        from shadow.approval import approve
        from shadow.state import local_path, open_journal

        self._gate("apply")
        record = self._record(run_id)
        if "of_proposal" in record:
            raise Refused(f"run {run_id} is an apply; apply takes the proposal's run id ({record['of_proposal']})")
        if record.get("applied_run"):
            raise Refused(f"proposal {run_id} was already applied by run {record['applied_run']}")
        journal = open_journal(self.settings)
        try:
            outcome = journal.run(run_id).outcome
        finally:
            journal.close()
        if outcome != Outcome.AWAITING_APPROVAL:
            raise Refused(f"proposal {run_id} did not pass its rehearsal (outcome {outcome}); nothing to apply")
        approved = local_path(self.settings, run_id, "approval.json").exists()
        if not approved:
            if self.rules.apply != "within-limits":
                raise Refused(f"proposal {run_id} awaits a person's approval: `shadow approve {run_id} --by NAME`")
            approve(run_id, f"gateway (apply: within-limits, actor {self.actor})",
                    "every expectation, scope rule and limit held", self.settings)
        result = run.apply(None, self.settings, approved_run=run_id,
                           judges=[lambda r: judge_rules(self.rules, r)])
        record["applied_run"] = result.run_id
        self._remember(run_id, record)
        self._remember(result.run_id, {"run_id": result.run_id, "actor": self.actor, "of_proposal": run_id,
                                       "at": time.time()})
        answer = self._run_answer(result)
        answer["proposal"] = run_id
        answer["_failure"] = result.outcome is not Outcome.APPLIED
        return answer

    def _rollback(self, run_id: str) -> dict[str, Any]:
        from shadow import run

        record = self._record(run_id)
        applied = record.get("applied_run") if "of_proposal" not in record else run_id
        if not applied:
            raise Refused(f"proposal {run_id} was never applied; nothing to roll back")
        proposal = record.get("of_proposal", run_id)
        result = run.rollback(applied, self.settings)
        proposal_record = self._record(proposal)
        proposal_record["rollback_run"] = result.run_id
        self._remember(proposal, proposal_record)
        self._remember(result.run_id, {"run_id": result.run_id, "actor": self.actor, "of_proposal": proposal,
                                       "at": time.time()})
        answer = self._run_answer(result)
        answer["proposal"] = proposal
        return answer

    # -- looking: describe and query -----------------------------------------------------------------------------

    def _describe(self, target: str, name: str | None) -> dict[str, Any]:
        import fnmatch

        from adapters import Checkpoint

        target = self._target(target)
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            raise Refused("name: a glob of at most 200 characters on object names, like public.orders*")
        run_id = self._latest_runs().get(target)
        store = open_store(self.settings)
        manifest = None
        if run_id:
            try:
                manifest = store.read_manifest(run_id, target)
            except ShadowError:
                manifest = None
        if manifest is None:
            run_id, _ = self._on_copy(target, None)
            manifest = store.read_manifest(run_id, target)
        observation = Checkpoint.from_dict(manifest).observation
        objects: dict[str, list[str]] = {}
        for kind, items in (observation.get("objects") or {}).items():
            names = sorted(n for n in items if name is None or fnmatch.fnmatchcase(n, name))
            if names:
                objects[kind] = names[:2000]
        tables = {}
        for table, data in (observation.get("data") or {}).items():
            if name is not None and not fnmatch.fnmatchcase(table, name):
                continue
            columns = {c.rsplit(".", 1)[1]: props.get("type") for c, props in
                       (observation.get("objects") or {}).get("column", {}).items()
                       if c.rsplit(".", 1)[0] == table}
            tables[table] = {"rows": data.get("rows"), "key": data.get("key"), "columns": columns}
        return {"gateway_format": GATEWAY_FORMAT, "target": target, "kind": self.file.target(target).kind,
                "checkpoint_run": run_id, "tables": tables, "objects": objects}

    def _query(self, target: str, sql: Any, limit: Any, max_bytes: Any) -> dict[str, Any]:
        from shadow.sqlsplit import split_sql

        target = self._target(target)
        if not _runs_sql(self.file.target(target).kind):
            raise Refused(f"query runs SQL; {target!r} is a {self.file.target(target).kind} target (use describe)")
        if not isinstance(sql, str) or not sql.strip() or len(sql) > 100_000:
            raise Refused("sql: one read-only SQL statement of at most 100,000 characters")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise Refused("limit: a row cap from 1 to 1000")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or not 1024 <= max_bytes <= 1 << 20:
            raise Refused("max_bytes: a byte cap from 1024 to 1048576")
        try:
            statements = split_sql(sql, "query")
        except ShadowError as exc:
            raise Refused(f"sql: {exc}") from None
        if len(statements) != 1:
            raise Refused(f"sql: exactly one statement, not {len(statements)}")
        text = statements[0].text
        patterns = tuple(self.file.policy.get("redact") or ())
        try:
            run_id, answer = self._on_copy(target, lambda dsn: read_only(dsn, text, limit, max_bytes, patterns))
        except QueryFailed as exc:
            raise Refused(str(exc)) from None
        return {"gateway_format": GATEWAY_FORMAT, "target": target, "on": f"a shadow (checkpoint of run {run_id}); "
                "never production", **(answer or {})}

    def _on_copy(self, target: str, body: Callable[[str], dict[str, Any]] | None) -> tuple[str, Any]:
        """Checkpoint ``target`` (or reuse its warm checkpoint) as a journaled ``look`` run; with ``body``, open a
        shadow from it and call ``body(shadow DSN)``. Production is only read."""
        from shadow.state import refuse_if_unrecovered
        from shadow.outcome import Ending
        from shadow.rehearsal import checkpoint_all, open_shadows
        from shadow.result import TargetResult, new_run_id
        from shadow.run import choose_backend
        from shadow.session import Session, quiet

        targets = self._make_targets([target])
        backend, why = choose_backend(str(self.file.policy.get("backend", "auto")), self.settings)
        result = RunResult(new_run_id(), "look", str(self.file.path), time.time(), backend, why,
                           action=f"look at a copy of {target} for actor {self.actor}")
        result.redact = tuple(self.file.policy.get("redact") or ())
        for name, t in targets.items():
            result.targets[name] = TargetResult(name, t.kind, t.describe())
        refuse_if_unrecovered(self.settings, {n: t.describe() for n, t in targets.items()})
        session = Session(self.settings, result, quiet)
        answer = None
        with session.running():
            session.begin(targets, str(self.file.path), self.file.sha256)
            with ExitStack() as stack:
                checkpoints, _ = checkpoint_all(session, targets, _warm(self.file.policy, self.settings))
                if body is not None:
                    shadows = open_shadows(session, targets, checkpoints, stack, backend, None)
                    dsn = shadows[target].endpoint.dsn
                    if dsn is None:
                        raise Refused(f"{target!r}: its copy has no SQL endpoint")
                    answer = body(dsn)
            result.end(Ending(Outcome.PASSED, f"looked at a copy of {target}"))
        self._latest(result)
        return result.run_id, answer


def _action_output(log: Any) -> str | None:
    """The end of the rehearsal's output (its log, where the action's own known secrets are already masked) as the
    actor may read it: DSN passwords and secret-looking values masked too, at most :data:`MAX_TEXT_CHARS`."""
    if not log:
        return None
    try:
        with Path(str(log)).open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4 * MAX_TEXT_CHARS))  # the end is what says how it went
            text = f.read().decode(errors="replace")
    except (OSError, ValueError):
        return None
    text = redact.mask_output(text)
    return (text if len(text) <= MAX_TEXT_CHARS else "…" + text[1 - MAX_TEXT_CHARS:]) or None


def _warm(policy: Any, settings: Settings) -> float | None:
    from shadow.plan.document import duration

    raw = settings.warm if settings.warm is not None else str(policy.get("warm", "10m"))
    if raw.strip().lower() in ("off", "0", "false", "no", "none"):
        return None
    return duration(raw)


def _runs_sql(kind: str) -> bool:
    """Whether targets of ``kind`` run SQL (``Kind.runs_sql``): an SQL action and ``query`` need one."""
    from adapters import REGISTRY

    return bool(REGISTRY[kind].runs_sql)
