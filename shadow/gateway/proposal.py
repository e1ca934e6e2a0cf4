"""``propose``: the actor's action and expectations become a plan file in the state dir — targets as the gateway
file writes them (``${VAR}`` kept), the action, the actor's expectations (or its scope as ``may``),
``policy.approval: required`` — rehearsed by ``shadow plan`` with the actor's scope and limits as extra judges.
Everything the actor sends is checked as bad input first (sizes, file names, targets)."""

from __future__ import annotations

import secrets as pysecrets
import time
from typing import Any

import yaml

from shadow.errors import BadInput, cap
from shadow.gateway.common import (FILE_NAME, MAX_COMMAND_CHARS, MAX_FILE_BYTES, MAX_FILES, MAX_SQL_BYTES,
                                   MAX_TEXT_CHARS, GatewayBase, Refused, runs_sql, warm_seconds)
from shadow.gateway.scope import judge_rules
from shadow.outcome import Outcome
from snapshots import atomic_write_bytes, make_private_dir


class Proposing(GatewayBase):
    """The ``propose`` tool."""

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
            sql_targets = [t.name for t in self.file.targets if runs_sql(t.kind)]
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
        warm = warm_seconds(self.file.policy, self.settings)  # SHADOW_WARM, when set, decides for every run
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
