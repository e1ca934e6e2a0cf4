"""``describe`` and ``query``: looking at a target without touching production — ``describe`` reads the latest
checkpoint's observation, ``query`` runs one read-only statement on a shadow made from a checkpoint (a journaled
``look`` run; what it never shows is in :mod:`shadow.gateway.query`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from shadow.errors import ShadowError
from shadow.gateway.common import GATEWAY_FORMAT, GatewayBase, Refused, runs_sql, warm_seconds
from shadow.gateway.query import QueryFailed, read_only
from shadow.outcome import Outcome
from shadow.result import RunResult
from snapshots import open_store


class Looking(GatewayBase):
    """The ``describe`` and ``query`` tools."""

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
        if not runs_sql(self.file.target(target).kind):
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
                checkpoints, _ = checkpoint_all(session, targets, warm_seconds(self.file.policy, self.settings))
                if body is not None:
                    shadows = open_shadows(session, targets, checkpoints, stack, backend, None)
                    dsn = shadows[target].endpoint.dsn
                    if dsn is None:
                        raise Refused(f"{target!r}: its copy has no SQL endpoint")
                    answer = body(dsn)
            result.end(Ending(Outcome.PASSED, f"looked at a copy of {target}"))
        self._latest(result)
        return result.run_id, answer
