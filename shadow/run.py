"""The run state machine: checkpoint → shadow → rehearse → observe/diff → judge → (apply → verify | roll back).

These functions are the public verbs (the CLI is a thin layer over them); each returns a :class:`RunResult`
and writes the run's report. Every step that touches production is journaled before it starts, with what
undoes it. Shadows live in an ``ExitStack`` so they are torn down on every path, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import secrets as pysecrets
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adapters import REGISTRY, Checkpoint, Endpoint, ShadowCopy, Target
from shadow import report
from shadow.action import ActionResult, run_action
from shadow.changes import Change
from shadow.errors import ActionFailed, BadInput, InfrastructureError, RestoreFailed, ShadowError, SqlError
from shadow.journal import Journal
from shadow.judge import Verdict, compare_change_sets, judge
from shadow.plan import Plan, load_plan
from shadow.settings import Settings
from shadow.sqlsplit import Statement, load_sql_files
from snapshots import Store, atomic_write_bytes

Progress = Callable[[str, str], None]

EXIT_FOR_OUTCOME = {"passed": 0, "applied": 0, "restored": 0, "failed": 1, "refused": 1, "rolled_back": 1}


def _quiet(_event: str, _text: str) -> None:
    pass


@dataclass
class TargetResult:
    name: str
    kind: str
    endpoint: str
    checkpoint: dict[str, Any] | None = None
    changes: list[Change] = field(default_factory=list)
    production_changes: list[Change] | None = None
    warnings: list[str] = field(default_factory=list)
    restore: dict[str, Any] | None = None


@dataclass
class RunResult:
    run_id: str
    command: str
    plan_path: str
    started_at: float
    backend: str = ""
    backend_reason: str = ""
    outcome: str = "running"
    reason: str = ""
    targets: dict[str, TargetResult] = field(default_factory=dict)
    action: str = ""
    rehearsal: ActionResult | None = None
    production: ActionResult | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)  # static findings on the SQL, with "allowed"
    divergence: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    finished_at: float | None = None
    report_dir: str = ""
    of_run: str | None = None
    redact: tuple[str, ...] = ()  # the plan's policy.redact: column globs whose values reports never show

    @property
    def passed(self) -> bool:
        return all(v.ok for v in self.verdicts)

    @property
    def exit_code(self) -> int:
        return EXIT_FOR_OUTCOME.get(self.outcome, 3)

    def to_dict(self) -> dict[str, Any]:
        return report.model(self)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + pysecrets.token_hex(3)


def choose_backend(policy: str, settings: Settings) -> tuple[str, str]:
    """The backend for this run and why; ``SHADOW_BACKEND`` overrides the plan's ``policy.backend``."""
    from adapters.docker import engine_answers

    wanted = settings.backend or policy
    origin = "SHADOW_BACKEND" if settings.backend else "policy.backend"
    if wanted not in ("auto", "local", "docker"):
        raise BadInput(f"{origin}: {wanted!r} is not one of auto, local, docker")
    if wanted == "local":
        return "local", f"{origin} is local"
    answers, why = engine_answers()
    if wanted == "docker":
        if not answers:
            raise InfrastructureError(f"{origin} is docker but {why}")
        return "docker", f"{origin} is docker; {why}"
    if answers:
        return "docker", f"auto: {why}"
    return "local", f"auto: {why}; using the local PostgreSQL binaries"


class _Session:
    """Shared plumbing of one run: journal, store, report dir, step timing."""

    def __init__(self, settings: Settings, result: RunResult, progress: Progress) -> None:
        self.settings = settings
        self.result = result
        self.progress = progress
        self.store = Store(settings.store_dir)
        self.dir = settings.runs_dir / result.run_id
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InfrastructureError(f"state dir {settings.state_dir} is not writable: {exc.strerror}") from exc
        result.report_dir = str(self.dir)
        self.journal = Journal(settings.journal_path)

    @contextmanager
    def step(self, name: str, target: str | None = None, undo: str | None = None) -> Iterator[None]:
        """Time a step; journal it first when it touches production (``undo`` given)."""
        label = f"{name} {target}" if target else name
        self.progress("start", label)
        seq = self.journal.begin_step(self.result.run_id, name, target, undo) if undo else None
        start = time.monotonic()
        state = "failed"
        try:
            yield
            state = "done"
        finally:
            seconds = time.monotonic() - start
            self.result.steps.append({"step": name, "target": target, "seconds": round(seconds, 3), "state": state})
            if seq is not None:
                self.journal.end_step(self.result.run_id, seq, state)
            self.progress("done" if state == "done" else "failed", f"{label} ({seconds:.1f} s)")

    def finish(self) -> None:
        self.result.finished_at = time.time()
        model = report.model(self.result)
        try:
            atomic_write_bytes(self.dir / "report.json", report.render_json(model).encode())
            atomic_write_bytes(self.dir / "report.md", report.render_markdown(model).encode())
            atomic_write_bytes(self.dir / "report.html", report.render(model, "html").encode())
        finally:
            self.journal.finish_run(self.result.run_id, self.result.outcome, report.summary_line(model))
            self.journal.close()


def _targets(plan: Plan, settings: Settings, progress: Progress = _quiet) -> dict[str, Target]:
    targets = {spec.name: REGISTRY[spec.kind].target(spec.name, spec.options, settings) for spec in plan.targets}
    for t in targets.values():
        if hasattr(t, "progress"):  # kinds with long-running steps report progress lines
            t.progress = lambda text: progress("info", text)
    return targets


def plan(plan_file: str | Path, settings: Settings | None = None, progress: Progress = _quiet) -> RunResult:
    """Rehearse the plan on shadows and judge it. Production is only read."""
    return _execute(plan_file, settings or Settings.from_env(), "plan", progress)


def apply(plan_file: str | Path, settings: Settings | None = None, progress: Progress = _quiet) -> RunResult:
    """Rehearse, and if the plan passes, apply to production, verify, or roll back."""
    return _execute(plan_file, settings or Settings.from_env(), "apply", progress)


def _execute(plan_file: str | Path, settings: Settings, command: str, progress: Progress) -> RunResult:
    loaded = load_plan(Path(plan_file), settings.environ)
    statements = load_sql_files(list(loaded.action.sql_files), list(loaded.action.sql_display))
    backend, why = choose_backend(loaded.policy.backend, settings)
    if loaded.action.isolation == "container" and backend != "docker":
        raise BadInput("action.isolation: container needs the docker backend, but this run uses "
                       f"{backend} ({why})")
    targets = _targets(loaded, settings, progress)
    result = RunResult(new_run_id(), command, str(loaded.path), time.time(), backend, why,
                       action=loaded.action.describe())
    result.redact = loaded.policy.redact
    _static_findings(result, loaded, statements)
    for name, t in targets.items():
        result.targets[name] = TargetResult(name, t.kind, t.describe())
    session = _Session(settings, result, progress)
    session.journal.start_run(result.run_id, command, str(loaded.path), loaded.sha256)
    progress("info", f"run {result.run_id}: {backend} backend ({why})")
    try:
        with ExitStack() as stack:
            checkpoints = _checkpoint_all(session, targets)
            shadows: dict[str, ShadowCopy] = {}
            for name, t in targets.items():
                with session.step("shadow", name):
                    shadows[name] = stack.enter_context(
                        t.shadow(checkpoints[name], session.store, result.run_id, backend, loaded.policy.limits))
            endpoints: dict[str, Endpoint] = {n: s.endpoint for n, s in shadows.items()}
            sandbox = None
            if loaded.action.isolation == "container":
                from shadow.sandbox import Sandbox

                sandbox = stack.enter_context(Sandbox(result.run_id, loaded.action.image or settings.action_image))
                endpoints = {n: s.attach(sandbox.network) for n, s in shadows.items()}  # type: ignore[attr-defined]
            _rehearse(session, loaded, statements, targets, shadows, endpoints, sandbox)
            for name in targets:  # read after the rehearsal: the pristine copy is observed while the action runs
                _fidelity(result, name, shadows[name], checkpoints[name])
            if not result.passed:
                result.outcome = "failed" if command == "plan" else "refused"
                result.reason = _failure_reason(result)
            elif command == "plan":
                result.outcome = "passed"
            else:
                _apply(session, loaded, statements, targets, shadows, checkpoints, sandbox)
    except ShadowError as exc:
        if result.outcome == "running":
            result.outcome = "error"
            result.reason = str(exc)
        raise
    except BaseException:
        if result.outcome == "running":
            result.outcome = "interrupted"
            result.reason = "interrupted"
        raise
    finally:
        session.finish()
    return result


def _static_findings(result: RunResult, plan_: Plan, statements: list[Statement]) -> None:
    """sqlglot's findings on the SQL, before anything runs: error-level ones fail the plan unless allowed."""
    if not statements:
        return
    from shadow import lint

    sources = {shown: path.read_text(encoding="utf-8")
               for path, shown in zip(plan_.action.sql_files, plan_.action.sql_display, strict=True)}
    findings = lint.lint(statements, sources) + _unexpected_tables(plan_, statements)
    kept, allowed = lint.allowed(findings, list(plan_.policy.allow))
    result.findings = [{**f.to_dict(), "allowed": False} for f in kept] + [{**f.to_dict(), "allowed": True}
                                                                         for f in allowed]
    target = plan_.action.sql_target or ""
    for f in kept:
        if f.severity == "error":
            result.verdicts.append(Verdict(target, "finding", f"{f.id} at {f.where}", False,
                                           f"{f.message} — {f.hint} (or allow it: policy.allow: [{f.id}])"))


def _unexpected_tables(plan_: Plan, statements: list[Statement]) -> list[Any]:
    """A statement writing a table that the expectations do not mention is flagged before the rehearsal."""
    import fnmatch

    from shadow import lint

    expect = plan_.expect.get(plan_.action.sql_target or "")
    if expect is None or not expect.declared:
        return []
    patterns = [p.split(None, 2)[2] for p in expect.must + expect.may if len(p.split(None, 2)) == 3]
    patterns += [rule.table for rule in expect.rows]
    out = []
    for st in statements:
        for table in sorted(lint.touched(st)[1]):
            qualified = table if "." in table else f"public.{table}"
            if not any(fnmatch.fnmatchcase(qualified, p) or fnmatch.fnmatchcase(qualified, p.rsplit(".", 1)[0])
                       or lint.same_table(table, p) for p in patterns):
                out.append(lint.Finding("unexpected-table", "warning",
                                        f"{st.where} writes {qualified}, which the expectations do not mention",
                                        "add what should happen to it to expect.must / may / rows", st.file, st.line,
                                        st.text))
    return out


def _checkpoint_all(session: _Session, targets: dict[str, Target]) -> dict[str, Checkpoint]:
    checkpoints: dict[str, Checkpoint] = {}
    for name, t in targets.items():
        with session.step("checkpoint", name):
            cp = t.checkpoint(session.store, session.result.run_id)
            session.store.write_manifest(session.result.run_id, name, cp.to_dict())
        checkpoints[name] = cp
        session.result.targets[name].checkpoint = {
            "fingerprint": cp.fingerprint, "artifacts": cp.artifacts,
            "server_version": cp.meta.get("server_version_num"),
            **{k: cp.meta[k] for k in ("mode", "objects", "copied_bytes") if k in cp.meta},
        }
        # Safety findings (an unversioned bucket …) block the plan unless the plan allows them.
        for finding in cp.meta.get("findings", []):
            allowed = bool(finding.get("allowed"))
            session.result.verdicts.append(Verdict(name, "safety", finding["id"], allowed,
                                                   finding["message"] + (" (allowed by the plan)" if allowed else
                                                                         " — add it to the target's `allow:`")))
    return checkpoints


def _fidelity(result: RunResult, name: str, shadow: Any, checkpoint: Checkpoint) -> None:
    tr = result.targets[name]
    tr.warnings += list(getattr(shadow, "warnings", []))
    problems = list(getattr(shadow, "fidelity", []))
    result.verdicts.append(Verdict(
        name, "fidelity", "shadow equals checkpoint", not problems,
        "the shadow observes equal to the checkpoint" if not problems
        else "the shadow is not a faithful copy of the checkpoint: " + "; ".join(problems[:5]),
    ))


def _rehearse(session: _Session, plan_: Plan, statements: list[Statement], targets: dict[str, Target],
              shadows: dict[str, ShadowCopy], endpoints: dict[str, Endpoint], sandbox: Any) -> None:
    result = session.result
    with session.step("rehearse"):
        try:
            result.rehearsal = run_action(plan_, statements, endpoints, targets, session.settings.environ,
                                          session.dir / "action-rehearsal.log", sandbox)
        except SqlError as exc:
            result.rehearsal = ActionResult(False, 0.0, "sql", str(exc))
            result.verdicts.append(Verdict(plan_.action.sql_target or "", "action", "rehearsal", False, str(exc)))
            result.outcome = "error"
            result.reason = str(exc)
            raise
    for step in result.rehearsal.locks or []:
        for lock in step["locks"]:
            limit = plan_.policy.max_lock.get(lock["mode"])
            if limit is not None and lock["seconds"] > limit:
                result.verdicts.append(Verdict(
                    plan_.action.sql_target or "", "max_lock", f"{lock['mode']} on {lock['relation']}", False,
                    f"held {lock['seconds']:.2f} s from {step['statement']} ({step['text'][:60]}), "
                    f"policy.max_lock allows {limit:g} s"))
    if not result.rehearsal.ok:
        result.verdicts.append(Verdict("", "action", "rehearsal", False,
                                       f"the action failed on the shadow: {result.rehearsal.error}"))
        return
    for name, shadow in shadows.items():
        with session.step("observe", name):
            result.targets[name].changes = shadow.changes()
        with session.step("judge", name):
            result.verdicts += judge(name, result.targets[name].changes, plan_.expect[name], shadow.check)


def _apply(session: _Session, plan_: Plan, statements: list[Statement], targets: dict[str, Target],
           shadows: dict[str, ShadowCopy], checkpoints: dict[str, Checkpoint], sandbox: Any) -> None:
    result = session.result
    # Drift: refuse if anyone wrote to production since the checkpoint the rehearsal ran on.
    for name, t in targets.items():
        with session.step("drift check", name):
            if t.fingerprint() != checkpoints[name].fingerprint:
                result.targets[name].production_changes = t.changes_since(checkpoints[name], shadows[name])
                result.outcome = "refused"
                result.reason = (f"production {name!r} changed since the checkpoint (drift); nothing was applied — "
                                 "run shadow again to rehearse against the current state")
                return
    endpoints = {n: t.endpoint() for n, t in targets.items()}
    undo = f"restore every target from the checkpoints of run {result.run_id} (shadow rollback {result.run_id})"
    sql_target = plan_.action.sql_target if plan_.action.sql_files else None
    blocker = targets[sql_target].atomic_blocker(statements) if sql_target else None  # type: ignore[attr-defined]
    try:
        if sql_target and len(targets) == 1 and blocker is None:
            _apply_in_one_transaction(session, plan_, statements, targets[sql_target], shadows[sql_target],
                                      checkpoints[sql_target])
            if result.outcome == "rolled_back":
                return
        else:
            with session.step("apply", undo=undo):
                try:
                    result.production = run_action(plan_, statements, endpoints, targets, session.settings.environ,
                                                   session.dir / "action-apply.log", sandbox, production=True)
                except SqlError as exc:
                    result.production = ActionResult(False, 0.0, "sql", str(exc))
            if blocker is not None:
                result.production.mode += (f" — {blocker.where} cannot run in a transaction "
                                           f"({' '.join(blocker.text.split()[:4])} …), so a failure is undone by "
                                           "restoring the checkpoint")
            if not result.production.ok:
                _roll_back(session, targets, checkpoints, f"the action failed on production: {result.production.error}")
                return
            for name, t in targets.items():
                with session.step("verify", name):
                    prod_changes = t.changes_since(checkpoints[name], shadows[name])
                    result.targets[name].production_changes = prod_changes
                    result.divergence += [f"{name}: {d}" for d in
                                          compare_change_sets(result.targets[name].changes, prod_changes)]
            if result.divergence:
                _roll_back(session, targets, checkpoints, "production did not change the way the shadow did")
                return
    except RestoreFailed:
        raise
    except BaseException as exc:
        # Interrupted or lost a target mid-apply: put production back before giving up.
        reason = f"apply interrupted: {exc or type(exc).__name__}"
        try:
            _roll_back(session, targets, checkpoints, reason)
        except RestoreFailed:
            raise
        raise
    for name, t in targets.items():
        manifest = session.store.read_manifest(result.run_id, name)
        after = t.observe()
        manifest["after_apply"] = {"fingerprint": t.fingerprint(after), "observation": after}
        session.store.write_manifest(result.run_id, name, manifest)
    result.outcome = "applied"
    result.reason = "applied to production; production changed exactly as rehearsed"


def _apply_in_one_transaction(session: _Session, plan_: Plan, statements: list[Statement], t: Target,
                               shadow: ShadowCopy, checkpoint: Checkpoint) -> None:
    """Every statement is transactional: apply in one transaction, compare production's change set with the
    rehearsal's *inside* it, and COMMIT only on a match — otherwise ROLLBACK: production is never changed."""
    result = session.result
    tr = result.targets[t.name]
    start = time.monotonic()
    problems: list[str] | None = None
    with session.step("apply", t.name, undo="none: one transaction, committed only after verification"):
        try:
            problems, tr.production_changes = t.apply_sql_verified(  # type: ignore[attr-defined]
                statements, plan_.action.timeout, checkpoint, shadow,
                lambda changes: compare_change_sets(tr.changes, changes))
            result.production = ActionResult(True, time.monotonic() - start, "one transaction, verified before COMMIT")
        except (SqlError, ActionFailed) as exc:
            result.production = ActionResult(False, time.monotonic() - start, "one transaction", str(exc))
    if problems:
        result.divergence += [f"{t.name}: {d}" for d in problems]
    if problems or not result.production.ok:
        cause = ("production diverged from the rehearsal inside the transaction" if problems
                 else f"the action failed on production: {result.production.error}")
        # ROLLBACK undid everything shadow did. Never restore here: if production differs from the checkpoint
        # now, other sessions committed meanwhile, and restoring would delete their writes.
        result.outcome = "rolled_back"
        if t.fingerprint() == checkpoint.fingerprint:
            tr.restore = {"needed": False, "verified": True, "note": "the transaction was rolled back"}
            result.reason = f"{cause}; the transaction was rolled back — production was never changed"
        else:
            tr.restore = {"needed": False, "verified": False,
                          "note": "production differs from the checkpoint because other sessions wrote to it "
                                  "meanwhile; shadow rolled its own transaction back and did not touch their writes"}
            result.reason = (f"{cause}; the transaction was rolled back — shadow changed nothing, but OTHER "
                             "SESSIONS wrote to production during the apply (see the divergence)")


def _roll_back(session: _Session, targets: dict[str, Target], checkpoints: dict[str, Checkpoint], reason: str) -> None:
    """Restore every target (each one is tried even when another fails), then verify."""
    result = session.result
    session.progress("info", f"rolling back: {reason}")
    failures = _restore_all(session, targets, checkpoints)
    if failures:
        result.outcome = "restore_failed"
        result.reason = f"{reason}; ROLLBACK FAILED: " + " | ".join(str(f) for f in failures)
        raise failures[0]
    result.outcome = "rolled_back"
    result.reason = reason + "; production was restored to the checkpoint and verified"


def _restore_all(session: _Session, targets: dict[str, Target], checkpoints: dict[str, Checkpoint]) -> list[RestoreFailed]:
    failures: list[RestoreFailed] = []
    for name, t in targets.items():
        try:
            restore_target(session, t, checkpoints[name])
        except RestoreFailed as exc:
            failures.append(exc)
    return failures


def restore_target(session: _Session, t: Target, cp: Checkpoint) -> None:
    """Restore one target from its checkpoint and verify; raise RestoreFailed unless it observes equal."""
    tr = session.result.targets[t.name]
    retry = f"the checkpoint is intact; retry with `shadow rollback {cp.run_id} --force` once the cause is fixed"
    try:
        if t.fingerprint() == cp.fingerprint:
            tr.restore = {"needed": False, "verified": True, "note": "production still equals the checkpoint"}
            return
        with session.step("restore", t.name, undo=f"production {t.name!r} must equal checkpoint of run {cp.run_id}"):
            t.restore(cp, session.store)
        with session.step("verify restore", t.name):
            problems = t.verify_restored(cp)
    except RestoreFailed as exc:
        tr.restore = {"needed": True, "verified": False, "error": str(exc)}
        raise RestoreFailed(f"could NOT restore production: {exc}; {retry}", target=t.name, run_id=cp.run_id) from exc
    except ShadowError as exc:
        tr.restore = {"needed": True, "verified": False, "error": str(exc)}
        raise RestoreFailed(f"could NOT restore production ({exc}); {retry}", target=t.name, run_id=cp.run_id) from exc
    tr.restore = {"needed": True, "verified": not problems, "differences": problems}
    if problems:
        raise RestoreFailed(f"restored, but production does not observe equal to the checkpoint: "
                            f"{'; '.join(problems[:5])}", target=t.name, run_id=cp.run_id)


def rollback(run_id: str, settings: Settings | None = None, plan_file: str | Path | None = None,
             force: bool = False, progress: Progress = _quiet) -> RunResult:
    """Restore production to the checkpoint of an applied run, and verify it."""
    settings = settings or Settings.from_env()
    journal = Journal(settings.journal_path)
    try:
        original = journal.run(run_id)
    finally:
        journal.close()
    if original.command != "apply" or original.outcome != "applied":
        if not force:
            raise BadInput(f"run {run_id} was not applied (it was a `{original.command}`, outcome "
                           f"{original.outcome}); nothing to roll back (use --force to restore its checkpoint anyway)")
    loaded = load_plan(Path(plan_file or original.plan_path), settings.environ)
    targets = _targets(loaded, settings, progress)
    result = RunResult(new_run_id(), "rollback", str(loaded.path), time.time(), of_run=run_id,
                       action=f"restore the checkpoints of run {run_id}")
    result.redact = loaded.policy.redact
    for name, t in targets.items():
        result.targets[name] = TargetResult(name, t.kind, t.describe())
    session = _Session(settings, result, progress)
    session.journal.start_run(result.run_id, "rollback", str(loaded.path), loaded.sha256)
    try:
        checkpoints = {n: Checkpoint.from_dict(session.store.read_manifest(run_id, n)) for n in targets}
        for name, t in targets.items():
            recorded = checkpoints[name].meta.get("endpoint")
            if recorded and recorded != t.describe():
                raise BadInput(f"target {name!r} now points at {t.describe()}, but run {run_id} checkpointed "
                               f"{recorded}; restoring one over the other is refused (fix the plan or its "
                               "environment)")
        manifests = {n: session.store.read_manifest(run_id, n) for n in targets}
        for name, t in targets.items():
            after = manifests[name].get("after_apply")
            with session.step("drift check", name):
                now = t.observe()
            if after and t.fingerprint(now) != after["fingerprint"] and not force:
                from shadow.changes import differences

                diffs = differences({"objects": after["observation"]["objects"], "data": after["observation"]["data"]},
                                    {"objects": now["objects"], "data": now["data"]})
                result.outcome = "refused"
                result.reason = (f"production {name!r} changed since run {run_id} was applied; restoring would lose "
                                 f"those writes ({'; '.join(diffs[:3])}). Use --force to restore anyway.")
                result.divergence = diffs
                return result
        failures = _restore_all(session, targets, checkpoints)
        if failures:
            result.outcome = "restore_failed"
            result.reason = "ROLLBACK FAILED: " + " | ".join(str(f) for f in failures)
            raise failures[0]
        result.outcome = "restored"
        result.reason = f"production restored to the checkpoint of run {run_id} and verified"
    except ShadowError as exc:
        if result.outcome == "running":
            result.outcome = "error"
            result.reason = str(exc)
        raise
    finally:
        session.finish()
    return result


def runs(settings: Settings | None = None, limit: int = 50) -> list[dict[str, Any]]:
    settings = settings or Settings.from_env()
    if not settings.journal_path.exists():
        return []
    journal = Journal(settings.journal_path)
    try:
        return [
            {"id": r.id, "command": r.command, "plan": r.plan_path, "outcome": r.outcome, "summary": r.summary,
             "started_at": datetime.fromtimestamp(r.started_at, timezone.utc).isoformat(timespec="seconds")}
            for r in journal.runs(limit)
        ]
    finally:
        journal.close()


def show(run_id: str, settings: Settings | None = None, fmt: str = "md", output: Path | None = None) -> str:
    """A run's stored report in ``fmt`` (one of ``report.FORMATS``); also written to ``output`` when given."""
    settings = settings or Settings.from_env()
    if fmt not in report.FORMATS:
        raise BadInput(f"unknown report format {fmt!r}; use one of {', '.join(report.FORMATS)}")
    path = settings.runs_dir / run_id / "report.json"
    if not path.exists():
        raise BadInput(f"no report for run {run_id!r} in {settings.runs_dir} (see `shadow runs`)")
    import json

    text = report.render(json.loads(path.read_text()), fmt)
    if output is not None:
        try:
            atomic_write_bytes(output, text.encode("utf-8"))
        except OSError as exc:
            raise BadInput(f"cannot write the report to {output}: {exc.strerror or exc}") from exc
    return text


def _failure_reason(result: RunResult) -> str:
    failed = [v for v in result.verdicts if not v.ok]
    unexpected = [v for v in failed if v.rule == "unexpected"]
    parts = []
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected change(s): " + ", ".join(v.subject for v in unexpected[:5]))
    others = [v for v in failed if v.rule != "unexpected"]
    if others:
        parts.append("; ".join(f"{v.rule} {v.subject}: {v.message}" for v in others[:5]))
    return "expectations failed — " + "; ".join(parts)
