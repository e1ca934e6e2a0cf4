"""Running a plan's action against a set of endpoints (the shadows during rehearsal, production during apply).

A command action runs in the plan's folder with a scrubbed environment: ``PATH``, ``HOME`` (a fresh temp dir),
``LANG``, ``TZ``, the plan's ``action.env`` and the endpoints' variables — nothing else of the caller's
environment, so production credentials in the caller's shell never reach a rehearsal. It runs under a
:mod:`shadow.warden`, so a timeout, an interrupt or shadow's own death stops everything it started.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters import Endpoint
from shadow import warden
from shadow.errors import ActionFailed
from shadow.redact import mask_secrets
from shadow.plan import Plan
from shadow.sqlsplit import Statement

if TYPE_CHECKING:
    from adapters import LockTrace

PASSTHROUGH = ("PATH", "LANG", "TZ")
LOG_TAIL = 20


@dataclass
class ActionResult:
    ok: bool
    seconds: float
    mode: str = ""  # sql: "transaction" | "autocommit"; command: "process"
    error: str | None = None
    log: str | None = None
    # Rehearsals: per SQL statement, locks taken and tables rewritten; a command's on a Postgres shadow, sampled
    locks: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "seconds": round(self.seconds, 3), "mode": self.mode, "error": self.error,
                "log": self.log, "locks": self.locks}


def action_env(plan: Plan, endpoints: Mapping[str, Endpoint], kinds: Mapping[str, str], caller: Mapping[str, str],
               home: str, run_id: str) -> dict[str, str]:
    env = {k: caller[k] for k in PASSTHROUGH if k in caller}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env["HOME"] = home
    env.update(plan.action.env)
    per_kind: dict[str, int] = {}
    for name in endpoints:
        per_kind[kinds[name]] = per_kind.get(kinds[name], 0) + 1
    for name, ep in endpoints.items():
        env.update(ep.env)
        if per_kind[kinds[name]] == 1:
            env.update(ep.exclusive_env)
    # The run's mark, inherited by everything the action starts: how `shadow recover` finds a straggler.
    env[warden.MARK] = run_id
    # libpq clients (psql, psycopg …) name their sessions after the run unless the plan names them, so that
    # recover can end a statement the server still runs for a killed client.
    env.setdefault("PGAPPNAME", session_tag(run_id))
    return env


def session_tag(run_id: str) -> str:
    """The ``application_name`` of the action's database sessions."""
    return f"shadow action {run_id}"


@dataclass(frozen=True)
class Launch:
    """Who runs the action: the run it belongs to, and how its process identity is recorded durably before the
    action is let go (so that ``shadow recover`` can stop it should shadow be killed)."""

    run_id: str
    started: Callable[[dict[str, Any]], None]


def run_command(command: str, cwd: Path, env: dict[str, str], timeout: float, log_path: Path,
                secrets: tuple[str, ...], launch: Launch) -> ActionResult:
    """Run ``command`` under a :mod:`shadow.warden`: nothing it starts outlives it, nor shadow."""
    start = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as out:
        try:
            proc = warden.spawn("process", command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        except OSError as exc:
            return ActionResult(False, time.monotonic() - start, "process", f"cannot start the command: {exc.strerror}")
        try:
            launch.started(warden.identity(proc, launch.run_id))
            warden.let_go(proc)
            code = proc.wait(timeout=timeout)
            error = None if code == 0 else f"the command exited with status {code}"
        except subprocess.TimeoutExpired:
            code, error = -1, f"the command timed out after {timeout:g} s and was killed"
        finally:
            warden.stop(proc)  # timeout, Ctrl-C, SIGTERM, a failed record: nothing of the action runs on its own
        out.seek(0)
        text = mask_secrets(out.read().decode(errors="replace"), secrets)
    return finished(text, error, log_path, start, "process")


def finished(text: str, error: str | None, log_path: Path, start: float, mode: str) -> ActionResult:
    """Write the action's (masked) output to ``log_path``; a failure's message ends with the output's last lines."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(text)
    tail = "\n".join(text.splitlines()[-LOG_TAIL:])
    if error and tail:
        error += "; last output:\n" + tail
    return ActionResult(error is None, time.monotonic() - start, mode, error, str(log_path))


def run_action(plan: Plan, statements: list[Statement], endpoints: Mapping[str, Endpoint], targets: Mapping[str, Any],
               caller_env: Mapping[str, str], log_path: Path, launch: Launch, sandbox: Any = None,
               production: bool = False, waited: Callable[[str], None] | None = None) -> ActionResult:
    """Run the action once against ``endpoints`` — in ``sandbox`` (a :class:`shadow.sandbox.Sandbox`) when the
    plan isolates it in a container. SQL errors propagate as :class:`SqlError`. On production an SQL action's
    statements wait at most ``policy.lock_timeout`` for a lock and are tried again ``policy.lock_retries`` times,
    each wait told to ``waited``."""
    action = plan.action
    if action.sql_files:
        assert action.sql_target is not None
        start = time.monotonic()
        trace: list[dict[str, Any]] | None = None if production else []
        try:
            patience: dict[str, Any] = {"lock_timeout": plan.policy.lock_timeout,
                                        "lock_retries": plan.policy.lock_retries, "waited": waited} if production else {}
            mode = targets[action.sql_target].execute_sql(endpoints[action.sql_target], statements, action.timeout,
                                                          trace, tag=session_tag(launch.run_id), **patience)
        except ActionFailed as exc:
            return ActionResult(False, time.monotonic() - start, "sql", str(exc), locks=trace)
        return ActionResult(True, time.monotonic() - start, mode, locks=trace)
    kinds = {name: t.kind for name, t in targets.items()}
    secrets = tuple(s for ep in endpoints.values() for s in ep.secrets)
    with tempfile.TemporaryDirectory(prefix=f"shadow-home-{launch.run_id}-") as home:
        env = action_env(plan, endpoints, kinds, caller_env, home, launch.run_id)
        assert action.command is not None
        # An endpoint may name a working directory (a git target's working copy): with exactly one, the command
        # runs there, and SHADOW_PLAN_DIR still leads to the plan's own files.
        workdirs = [ep.workdir for ep in endpoints.values() if ep.workdir]
        if sandbox is not None:
            mounts = tuple(dict.fromkeys(m for ep in endpoints.values() for m in ep.mounts()))
            return sandbox.run(action.command, plan.folder, env, action.timeout, log_path, secrets, launch,  # type: ignore[no-any-return]
                               production, mounts=mounts, workdir=workdirs[0] if len(workdirs) == 1 else None)
        cwd = Path(workdirs[0]) if len(workdirs) == 1 else plan.folder
        if cwd != plan.folder:
            env["SHADOW_PLAN_DIR"] = str(plan.folder)
        with ExitStack() as stack:
            samplers = [] if production else [stack.enter_context(s) for s in
                                              lock_samplers(action.command, endpoints, kinds, secrets)]
            result = run_command(action.command, cwd, env, action.timeout, log_path, secrets, launch)
        if samplers:
            result.locks = [s.trace() for s in samplers]
        return result


def lock_samplers(command: str, endpoints: Mapping[str, Endpoint], kinds: Mapping[str, str],
                  secrets: tuple[str, ...]) -> list[LockTrace]:
    """A sampled lock trace per copy whose kind can sample one (:class:`~adapters.LockSampling`): shadow cannot see
    a command's statements, so it reads what the command's sessions hold while it runs. Not for an action isolated
    in a container (its endpoints name hosts on the sandbox's network)."""
    from adapters import REGISTRY, LockSampling

    sampling = [(name, REGISTRY[kinds[name]]) for name in endpoints]
    sampling = [(name, kind) for name, kind in sampling if isinstance(kind, LockSampling)]
    samplers = []
    for name, kind in sampling:
        assert isinstance(kind, LockSampling)
        where = "command" if len(sampling) == 1 else f"command ({name})"
        sampler = kind.lock_sampler(endpoints[name], command, secrets, where)
        if sampler is not None:
            samplers.append(sampler)
    return samplers