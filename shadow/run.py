"""The run state machine: checkpoint → shadow → rehearse → observe/diff → judge → (apply → verify | roll back).

These functions are the public verbs (the CLI is a thin layer over them); each returns a :class:`RunResult`
and writes the run's report. Every step that touches production is journaled before it starts, with what
undoes it. Shadows live in an ``ExitStack`` so they are torn down on every path, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets as pysecrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adapters import REGISTRY, Checkable, Checkpoint, Endpoint, ShadowCopy, Target
from shadow import report
from shadow.action import ActionResult, Launch, run_action, session_tag
from shadow.changes import Change
from shadow.errors import (ActionFailed, BadInput, InfrastructureError, RestoreFailed, ShadowError, SnapshotCorrupt,
                           SqlError, TargetUnreachable)
from shadow.guard import (FaultPoints, Liveness, RunRecord, holder_text, lock_targets, refuse_if_unrecovered,
                          unfinished)
from shadow.journal import Journal
from shadow.locks import DEFAULT_LOCK_TIMEOUT
from shadow.judge import Verdict, compare_change_sets, judge
from shadow.plan import Plan, load_plan
from shadow.settings import Settings
from shadow.sqlsplit import Statement, load_sql_files
from snapshots import Store, atomic_write_bytes, make_private_dir, sha256_file

Progress = Callable[[str, str], None]

EXIT_FOR_OUTCOME = {"passed": 0, "applied": 0, "restored": 0, "awaiting_approval": 0, "approved": 0,
                    "recovered": 0, "failed": 1, "refused": 1, "rolled_back": 1}


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


class Step:
    """One running step of a run; :meth:`found` marks it as having found a problem (it still ran to its end)."""

    def __init__(self) -> None:
        self.problem: str | None = None

    def found(self, problem: str) -> None:
        self.problem = problem


class _Session:
    """Shared plumbing of one run: journal, store, report dir, step timing."""

    def __init__(self, settings: Settings, result: RunResult, progress: Progress) -> None:
        self.settings = settings
        self.result = result
        self.progress = progress
        self.store = Store(settings.store_dir)
        self.dir = settings.runs_dir / result.run_id
        try:
            make_private_dir(settings.runs_dir)
            make_private_dir(self.dir)  # reports and the action's logs: private whatever their own modes
        except OSError as exc:
            raise InfrastructureError(f"state dir {settings.state_dir} is not writable: {exc.strerror}") from exc
        result.report_dir = str(self.dir)
        self.journal = Journal(settings.journal_path)
        self.liveness = Liveness(self.dir)
        self.faults = FaultPoints(settings.environ)
        self.record: RunRecord | None = None

    def begin(self, targets: dict[str, Target], plan_path: str, plan_sha256: str) -> None:
        """Journal the run and leave the record that says, after a crash, which targets it had and how far it got."""
        r = self.result
        self.record = RunRecord(r.run_id, r.command, plan_path, {n: t.describe() for n, t in targets.items()},
                                pid=os.getpid(), host=socket.gethostname(), of_run=r.of_run)
        self.record.save(self.dir)
        self.journal.start_run(r.run_id, r.command, plan_path, plan_sha256)
        self.faults.reached("start run")

    @contextmanager
    def running(self) -> Iterator[None]:
        """The body of a run: whatever ends it unsettled is recorded as its outcome; the report is always written."""
        result = self.result
        try:
            yield
        except ShadowError as exc:
            if result.outcome == "running":
                result.outcome, result.reason = "error", str(exc)
            raise
        except BaseException:
            if result.outcome == "running":
                result.outcome, result.reason = "interrupted", "interrupted"
            raise
        finally:
            self.finish()

    def launch(self) -> Launch:
        """How this run's action is started: its processes are recorded before the action is let go."""
        return Launch(self.result.run_id, self.action_started)

    def action_started(self, identity: dict[str, Any]) -> None:
        assert self.record is not None
        self.record.actions.append(identity)
        self.record.save(self.dir)
        self.faults.reached("action recorded")

    def phase(self, name: str, transaction: dict[str, Any] | None = None) -> None:

        assert self.record is not None
        self.record.phase = name
        if transaction is not None:
            self.record.transaction = transaction
        self.record.save(self.dir)
        self.faults.reached(f"phase {name}")

    @contextmanager
    def step(self, name: str, target: str | None = None, undo: str | None = None) -> Iterator[Step]:
        """Time a step; journal it first when it touches production (``undo`` given).

        A step that ran to its end but found a problem (drift, divergence, a failed action) says so with
        :meth:`Step.found`: it is shown as such (✗ and what it found), never as done."""
        label = f"{name} {target}" if target else name
        self.progress("start", label)
        seq = self.journal.begin_step(self.result.run_id, name, target, undo) if undo else None
        self.faults.reached(f"begin {label}")
        start = time.monotonic()
        state = "failed"
        handle = Step()
        try:
            yield handle
            state = "done" if handle.problem is None else "problem"
        finally:
            seconds = time.monotonic() - start
            entry: dict[str, Any] = {"step": name, "target": target, "seconds": round(seconds, 3), "state": state}
            if handle.problem is not None:
                entry["problem"] = handle.problem
            self.result.steps.append(entry)
            if seq is not None:  # the journal records whether the step ran to its end (what undoes it is known)
                self.journal.end_step(self.result.run_id, seq, "failed" if state == "failed" else "done")
            if state != "failed":
                self.faults.reached(f"end {label}")
            found = f": {handle.problem}" if handle.problem else ""
            self.progress("done" if state == "done" else "failed", f"{label} ({seconds:.1f} s){found}")

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
            # A run that stopped while production was being written, without settling it, stays unfinished:
            # `shadow recover` settles it, and until then no new work starts on its targets.
            settled = self.result.outcome in ("applied", "rolled_back", "restored", "refused", "recovered")
            if self.record is not None and (settled or self.record.phase not in ("applying", "restoring")):
                self.phase("finished")
            self.liveness.release()


def _targets(plan: Plan, settings: Settings, progress: Progress = _quiet) -> dict[str, Target]:
    targets = {spec.name: REGISTRY[spec.kind].target(spec.name, spec.options, settings) for spec in plan.targets}
    for t in targets.values():
        if hasattr(t, "progress"):  # kinds with long-running steps report progress lines
            t.progress = lambda text: progress("info", text)
    return targets


def plan(plan_file: str | Path, settings: Settings | None = None, progress: Progress = _quiet) -> RunResult:
    """Rehearse the plan on shadows and judge it. Production is only read."""
    return _execute(plan_file, settings or Settings.from_env(), "plan", progress)


def apply(plan_file: str | Path | None, settings: Settings | None = None, progress: Progress = _quiet,
          lock_timeout: float = DEFAULT_LOCK_TIMEOUT, approved_run: str | None = None) -> RunResult:
    """Rehearse, and if the plan passes, apply to production, verify, or roll back.

    ``approved_run``: apply exactly the rehearsal approved with ``shadow approve`` — refused if the plan, the
    action's files, the expectations or production changed since, or if the new rehearsal differs from it.
    """
    settings = settings or Settings.from_env()
    approval = None
    if approved_run is not None:
        approval = read_approval(settings, approved_run)
        plan_file = plan_file or approval["binding"]["plan_path"]
    if plan_file is None:
        raise BadInput("apply needs a plan file, or --run RUN_ID of an approved plan run")
    return _execute(plan_file, settings, "apply", progress, lock_timeout, approval)


def _execute(plan_file: str | Path, settings: Settings, command: str, progress: Progress,
             lock_timeout: float = DEFAULT_LOCK_TIMEOUT, approval: dict[str, Any] | None = None) -> RunResult:
    loaded = load_plan(Path(plan_file), settings.environ)
    statements = load_sql_files(list(loaded.action.sql_files), list(loaded.action.sql_display))
    if command == "apply" and loaded.policy.approval == "required" and approval is None:
        raise BadInput(f"{loaded.path}: policy.approval is required — run `shadow plan`, have someone run "
                       "`shadow approve RUN_ID --by NAME`, then `shadow apply --run RUN_ID`")
    if approval is not None:
        changed = _binding_changes(approval["binding"], binding(loaded))
        if changed:
            raise BadInput(f"run {approval['run_id']} was approved, but since then {'; '.join(changed)} — "
                           "rehearse and approve again")
    backend, why = choose_backend(loaded.policy.backend, settings)
    if loaded.action.isolation == "container" and backend != "docker":
        raise BadInput("action.isolation: container needs the docker backend, but this run uses "
                       f"{backend} ({why})")
    targets = _targets(loaded, settings, progress)
    refuse_if_unrecovered(settings.runs_dir, {n: t.describe() for n, t in targets.items()})
    result = RunResult(new_run_id(), command, str(loaded.path), time.time(), backend, why,
                       action=loaded.action.describe())
    result.redact = loaded.policy.redact
    _static_findings(result, loaded, statements)
    for name, t in targets.items():
        result.targets[name] = TargetResult(name, t.kind, t.describe())
    session = _Session(settings, result, progress)
    with session.running():
        with ExitStack() as stack:
            if command == "apply":
                # Held from before the checkpoint to the end: nobody else writes through shadow meanwhile.
                stack.enter_context(lock_targets(settings.state_dir / "locks", targets,
                                                 holder_text(result.run_id, command), lock_timeout,
                                                 lambda text: progress("info", text)))
                # Checked again under the locks: a run that held them may have been killed meanwhile.
                refuse_if_unrecovered(settings.runs_dir, {n: t.describe() for n, t in targets.items()})
            session.begin(targets, str(loaded.path), loaded.sha256)
            progress("info", f"run {result.run_id}: {backend} backend ({why})")
            checkpoints = _checkpoint_all(session, targets)
            sql_target = loaded.action.sql_target if statements else None
            facts = checkpoints[sql_target].meta.get("lint_facts") if sql_target else None
            if facts and any(facts.values()):  # lint again only when the checkpoint knows something the SQL does not
                _static_findings(result, loaded, statements, facts)
            if approval is not None and _drifted_since_approval(session, targets, checkpoints, approval, stack,
                                                                backend, loaded.policy.limits):
                return result
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
            if result.passed and loaded.policy.rehearse_rollback:
                _rehearse_rollback(session, shadows)
            elif not loaded.policy.rehearse_rollback:
                for tr in result.targets.values():
                    tr.warnings.append("the rollback is unrehearsed (policy.rehearse_rollback: false)")
            if approval is not None and result.passed:
                _compare_with_approved(result, approval)
            if not result.passed:
                result.outcome = "failed" if command == "plan" else "refused"
                result.reason = _failure_reason(result)
            elif command == "plan" and loaded.policy.approval == "required":
                atomic_write_bytes(session.dir / "approval-request.json", json.dumps(
                    {"run_id": result.run_id, "binding": binding(loaded, checkpoints, result)}, indent=1).encode())
                result.outcome = "awaiting_approval"
                result.reason = (f"passed; awaiting approval: `shadow approve {result.run_id} --by NAME`, then "
                                 f"`shadow apply --run {result.run_id}`")
            elif command == "plan":
                result.outcome = "passed"
            else:
                _apply(session, loaded, statements, targets, shadows, checkpoints, sandbox)
    return result


def _rehearse_rollback(session: _Session, shadows: dict[str, ShadowCopy]) -> None:
    """Prove the undo on each shadow: restore it from the checkpoint and verify it observes equal again."""
    result = session.result
    for name, shadow in shadows.items():
        undo = getattr(shadow, "rehearse_rollback", None)
        if undo is None:
            result.targets[name].warnings.append(f"the rollback is unrehearsed: {result.targets[name].kind} "
                                                 "shadows cannot rehearse it yet")
            continue
        with session.step("rehearse rollback", name) as step:
            try:
                problems = undo()
            except ShadowError as exc:
                problems = [str(exc)]
            except Exception as exc:  # noqa: BLE001 - a failed undo is a verdict on the plan, not a crash
                problems = [f"{type(exc).__name__}: {exc}"]
            if problems:
                step.found("the undo did not bring the shadow back to the checkpoint")
        result.verdicts.append(Verdict(
            name, "rollback", "the undo restores the checkpoint", not problems,
            "restored the shadow from the checkpoint after the rehearsal: it observes equal to the checkpoint"
            if not problems else "restoring the shadow from the checkpoint did NOT bring it back: "
            + "; ".join(problems[:5])))


# -- approval ----------------------------------------------------------------------------------------------
def _action_files(plan_: Plan) -> dict[str, str]:
    """The action's files: its SQL files, and any word of its command naming a file beside the plan."""
    files = {str(f): sha256_file(f) for f in plan_.action.sql_files}
    for word in (plan_.action.command or "").split():
        candidate = plan_.folder / word
        if candidate.is_file():
            files[str(candidate)] = sha256_file(candidate)
    return files


def binding(plan_: Plan, checkpoints: dict[str, Checkpoint] | None = None,
            result: RunResult | None = None) -> dict[str, Any]:
    """What an approval binds: the plan file, the action's files, the expectations, and (when rehearsed) the
    checkpoints and the rehearsed change sets."""
    out: dict[str, Any] = {
        "plan_path": str(plan_.path), "plan_sha256": plan_.sha256, "action_files": _action_files(plan_),
        "expectations_sha256": hashlib.sha256(repr(sorted(plan_.expect.items())).encode()).hexdigest(),
    }
    if checkpoints is not None:
        out["checkpoints"] = {n: cp.fingerprint for n, cp in checkpoints.items()}
    if result is not None:
        # As the report shows them: redacted (policy.redact and secret-looking columns, content diffs).
        model = report.model(result)
        out["changes"] = {t["name"]: t["changes"] for t in model["targets"]}
    return out


def _binding_changes(approved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    out = []
    if approved["plan_sha256"] != now["plan_sha256"]:
        out.append(f"the plan file {now['plan_path']} changed")
    if approved["expectations_sha256"] != now["expectations_sha256"]:
        out.append("the expectations changed")
    for path in sorted(set(approved["action_files"]) | set(now["action_files"])):
        if approved["action_files"].get(path) != now["action_files"].get(path):
            out.append(f"the action's file {path} changed")
    return out


def _drifted_since_approval(session: _Session, targets: dict[str, Target], checkpoints: dict[str, Checkpoint],
                            approval: dict[str, Any], stack: ExitStack, backend: str, limits: Any) -> bool:
    """Whether production changed since the approved rehearsal's checkpoint; what changed is counted against a
    copy of that checkpoint — the same change-set code as the plain apply's drift check."""
    result = session.result
    drifted = [n for n, cp in checkpoints.items() if approval["binding"]["checkpoints"].get(n) != cp.fingerprint]
    for name in drifted:
        with session.step("drift check", name) as step:
            step.found(f"production changed since run {approval['run_id']} was approved")
            approved_cp = Checkpoint.from_dict(session.store.read_manifest(approval["run_id"], name))
            copy = stack.enter_context(targets[name].shadow(approved_cp, session.store, result.run_id, backend,
                                                            limits))
            result.targets[name].production_changes = targets[name].changes_since(approved_cp, copy)
    if drifted:
        changed = [c for n in drifted for c in result.targets[n].production_changes or []]
        result.outcome = "refused"
        result.reason = (f"production {', '.join(drifted)} changed since run {approval['run_id']} was rehearsed and "
                         f"approved (drift); what changed: {addresses(changed)}; nothing was applied — rehearse and "
                         "approve again")
    return bool(drifted)


def _compare_with_approved(result: RunResult, approval: dict[str, Any]) -> None:
    for name, tr in result.targets.items():
        approved = [Change.from_dict(c) for c in approval["binding"]["changes"].get(name, [])]
        problems = compare_change_sets(approved, tr.changes)
        result.verdicts.append(Verdict(name, "approval", f"run {approval['run_id']}", not problems,
                                       f"the rehearsal matches the one {approval['by']} approved" if not problems else
                                       "the rehearsal differs from the approved one: " + "; ".join(problems[:5])))


def approve(run_id: str, by: str, comment: str = "", settings: Settings | None = None) -> dict[str, Any]:
    """Record who approved which rehearsal; ``shadow apply --run RUN_ID`` then applies exactly that."""
    settings = settings or Settings.from_env()
    if not by.strip():
        raise BadInput("--by must name who approves")
    request = settings.runs_dir / run_id / "approval-request.json"
    if not request.exists():
        raise BadInput(f"run {run_id!r} is not awaiting approval (only a passed `shadow plan` of a plan with "
                       "policy.approval: required is; see `shadow runs`)")
    data = json.loads(request.read_text())
    approval = {"run_id": run_id, "by": by.strip(), "comment": comment, "at": time.time(),
                "binding": data["binding"]}
    atomic_write_bytes(settings.runs_dir / run_id / "approval.json", json.dumps(approval, indent=1).encode())
    journal = Journal(settings.journal_path)
    try:
        record_id = new_run_id()
        journal.start_run(record_id, "approve", data["binding"]["plan_path"], data["binding"]["plan_sha256"])
        journal.finish_run(record_id, "approved", f"approved run {run_id} by {by.strip()}"
                           + (f": {comment}" if comment else ""))
    finally:
        journal.close()
    return approval


def read_approval(settings: Settings, run_id: str) -> dict[str, Any]:
    path = settings.runs_dir / run_id / "approval.json"
    if not path.exists():
        raise BadInput(f"run {run_id!r} has not been approved (`shadow approve {run_id} --by NAME`)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _static_findings(result: RunResult, plan_: Plan, statements: list[Statement],
                     facts: dict[str, Any] | None = None) -> None:
    """sqlglot's findings on the SQL, before anything runs: error-level ones fail the plan unless allowed.

    Called again once the checkpoint knows more about production than the SQL says (``facts``, the checkpoint's
    ``lint_facts``: which tables are partitioned), replacing the first findings."""
    if not statements:
        return
    from shadow import lint

    facts = facts or {}
    result.verdicts = [v for v in result.verdicts if v.rule != "finding"]
    findings = lint.lint(statements, one_session=plan_.action.one_session,
                         partitioned=facts.get("partitioned", ())) + _unexpected_tables(plan_, statements)
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
    with session.step("rehearse") as step:
        start = time.monotonic()
        try:
            result.rehearsal = run_action(plan_, statements, endpoints, targets, session.settings.environ,
                                          session.dir / "action-rehearsal.log", session.launch(), sandbox)
        except SqlError as exc:
            result.rehearsal = ActionResult(False, time.monotonic() - start, "sql", str(exc))
            result.verdicts.append(Verdict(plan_.action.sql_target or "", "action", "rehearsal", False, str(exc)))
            result.outcome = "error"
            result.reason = str(exc)
            raise
        except ShadowError:
            _raise_if_a_shadow_died(result, shadows)
            raise
        if not result.rehearsal.ok:
            _raise_if_a_shadow_died(result, shadows)
            step.found("the action failed on the shadow")
    for traced in result.rehearsal.locks or []:
        for lock in traced["locks"]:
            limit = plan_.policy.max_lock.get(lock["mode"])
            if limit is not None and lock["seconds"] > limit:
                result.verdicts.append(Verdict(
                    plan_.action.sql_target or "", "max_lock", f"{lock['mode']} on {lock['relation']}", False,
                    f"held {lock['seconds']:.2f} s from {traced['statement']} ({traced['text'][:60]}), "
                    f"policy.max_lock allows {limit:g} s"))
    if not result.rehearsal.ok:
        result.verdicts.append(Verdict("", "action", "rehearsal", False,
                                       f"the action failed on the shadow: {result.rehearsal.error}"))
        return
    for name, shadow in shadows.items():
        with session.step("observe", name):
            result.targets[name].changes = shadow.changes()
        with session.step("judge", name) as step:
            verdicts = judge(name, result.targets[name].changes, plan_.expect[name],
                             shadow.check if isinstance(shadow, Checkable) else None)
            failed = sum(not v.ok for v in verdicts)
            if failed:
                step.found(f"{failed} expectation(s) do not hold")
            result.verdicts += verdicts


def _raise_if_a_shadow_died(result: RunResult, shadows: dict[str, ShadowCopy]) -> None:
    """A rehearsal that failed because its shadow's server died (killed, container gone) failed for want of
    infrastructure, not because of the action: say so instead of blaming the action."""
    for name, shadow in shadows.items():
        lost = getattr(shadow, "lost", None)
        why = lost() if lost is not None else None
        if why:
            raise InfrastructureError(f"the shadow's server ({result.backend} backend) died during the rehearsal "
                                      f"({why}); production was not touched", target=name)


def _apply(session: _Session, plan_: Plan, statements: list[Statement], targets: dict[str, Target],
           shadows: dict[str, ShadowCopy], checkpoints: dict[str, Checkpoint], sandbox: Any) -> None:
    result = session.result
    # Drift: refuse if anyone wrote to production since the checkpoint the rehearsal ran on.
    for name, t in targets.items():
        with session.step("drift check", name) as step:
            if t.fingerprint() != checkpoints[name].fingerprint:
                step.found("production changed since the checkpoint")
                changed = t.changes_since(checkpoints[name], shadows[name])
                result.targets[name].production_changes = changed
                result.outcome = "refused"
                result.reason = (f"production {name!r} changed since the checkpoint (drift); what changed: "
                                 f"{addresses(changed)}; nothing was applied — run shadow again to rehearse against the current state")
                return
    endpoints = {n: t.endpoint() for n, t in targets.items()}
    undo = f"restore every target from the checkpoints of run {result.run_id} (shadow rollback {result.run_id})"
    sql_target = plan_.action.sql_target if plan_.action.sql_files else None
    blocker = targets[sql_target].atomic_blocker(statements) if sql_target else None  # type: ignore[attr-defined]
    one_transaction = bool(sql_target and len(targets) == 1 and blocker is None)
    session.phase("applying", transaction={"target": sql_target, "xid": None} if one_transaction else None)
    try:
        if one_transaction and sql_target:
            _apply_in_one_transaction(session, plan_, statements, targets[sql_target], shadows[sql_target],
                                      checkpoints[sql_target])
            if result.outcome == "rolled_back":
                return
        else:
            with session.step("apply", undo=undo) as step:
                start = time.monotonic()
                try:
                    result.production = run_action(plan_, statements, endpoints, targets, session.settings.environ,
                                                   session.dir / "action-apply.log", session.launch(), sandbox,
                                                   production=True)
                except SqlError as exc:
                    result.production = ActionResult(False, time.monotonic() - start, "sql", str(exc))
                if not result.production.ok:
                    step.found("the action failed on production")
            if blocker is not None:
                result.production.mode += (f" — {blocker.where} cannot run in a transaction "
                                           f"({' '.join(blocker.text.split()[:4])} …), so a failure is undone by "
                                           "restoring the checkpoint")
            if not result.production.ok:
                _roll_back(session, targets, checkpoints, f"the action failed on production: {result.production.error}")
                return
            for name, t in targets.items():
                with session.step("verify", name) as step:
                    prod_changes = t.changes_since(checkpoints[name], shadows[name])
                    result.targets[name].production_changes = prod_changes
                    diverged = compare_change_sets(result.targets[name].changes, prod_changes)
                    result.divergence += [f"{name}: {d}" for d in diverged]
                    if diverged:
                        step.found("production did not change the way the shadow did")
            if result.divergence:
                _roll_back(session, targets, checkpoints, "production did not change the way the shadow did")
                return
    except RestoreFailed:
        raise
    except ShadowError as exc:
        # Lost production (or a shadow) mid-apply: production is restored and the run ends as rolled back.
        _roll_back(session, targets, checkpoints, f"the apply did not finish ({exc})")
        return
    except BaseException as exc:
        # Interrupted mid-apply: put production back before giving up.
        _roll_back(session, targets, checkpoints, f"apply interrupted: {exc or type(exc).__name__}")
        raise
    for name, t in targets.items():
        manifest = session.store.read_manifest(result.run_id, name)
        after = t.observe()
        manifest["after_apply"] = {"fingerprint": t.fingerprint(after), "observation": after}
        session.store.write_manifest(result.run_id, name, manifest)
    session.phase("applied")
    result.outcome = "applied"
    how = ("in one transaction, committed after production was verified inside it"
           if result.production and result.production.mode.startswith("one transaction")
           else "production verified against the rehearsal after the action")
    result.reason = f"{how}; undo with `shadow rollback {result.run_id}`"


def _apply_in_one_transaction(session: _Session, plan_: Plan, statements: list[Statement], t: Target,
                               shadow: ShadowCopy, checkpoint: Checkpoint) -> None:
    """Every statement is transactional: apply in one transaction, compare production's change set with the
    rehearsal's *inside* it, and COMMIT only on a match — otherwise ROLLBACK: production is never changed."""
    result = session.result
    tr = result.targets[t.name]
    start = time.monotonic()
    problems: list[str] | None = None
    with session.step("apply", t.name, undo="none: one transaction, committed only after verification") as step:
        try:
            problems, tr.production_changes = t.apply_sql_verified(  # type: ignore[attr-defined]
                statements, plan_.action.timeout, checkpoint, shadow,
                lambda changes: compare_change_sets(tr.changes, changes),
                lambda xid: session.phase("applying", transaction={"target": t.name, "xid": xid}),
                tag=session_tag(result.run_id))
            result.production = ActionResult(True, time.monotonic() - start, "one transaction, verified before COMMIT")
        except (SqlError, ActionFailed) as exc:
            result.production = ActionResult(False, time.monotonic() - start, "one transaction", str(exc))
        except TargetUnreachable as exc:
            if t.fingerprint() != checkpoint.fingerprint:
                raise  # the connection may have dropped after COMMIT reached production: restore the checkpoint
            result.production = ActionResult(False, time.monotonic() - start, "one transaction", str(exc))
        if problems:
            step.found("production diverged from the rehearsal inside the transaction; rolled back")
        elif not result.production.ok:
            step.found("the action failed on production; the transaction was rolled back")
    if problems:
        result.divergence += [f"{t.name}: {d}" for d in problems]
    if problems or not result.production.ok:
        cause = ("production diverged from the rehearsal inside the transaction" if problems
                 else f"the action failed on production: {result.production.error}")
        # ROLLBACK undid everything shadow did. Never restore here: if production differs from the checkpoint
        # now, other sessions committed meanwhile, and restoring would delete their writes.
        result.outcome = "rolled_back"
        if t.fingerprint() == checkpoint.fingerprint:
            tr.restore = {"needed": False, "verified": True, "note": "the transaction was rolled back",
                          "transaction": "rolled back"}
            result.reason = f"{cause}; the transaction was rolled back — production was never changed"
        else:
            tr.restore = {"needed": False, "verified": False, "transaction": "rolled back",
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
    if any((tr.restore or {}).get("needed") for tr in result.targets.values()):
        result.reason = reason + "; production was restored to the checkpoint and verified"
    else:
        result.reason = reason + "; production still equals the checkpoint (verified), nothing needed restoring"


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
    again = "`shadow recover` (new work on this target is refused until then)"
    rerun = f"`shadow rollback {session.result.of_run}` again"
    retry = f"the checkpoint is intact; retry with {again} once the cause is fixed"
    try:
        if t.fingerprint() == cp.fingerprint:
            tr.restore = {"needed": False, "verified": True, "note": "production still equals the checkpoint"}
            return
        with session.step("restore", t.name, undo=f"production {t.name!r} must equal checkpoint of run {cp.run_id}"):
            t.restore(cp, session.store)
        with session.step("verify restore", t.name) as step:
            problems = t.verify_restored(cp)
            if problems:
                step.found("production does not observe equal to the checkpoint")
    except SnapshotCorrupt as exc:
        tr.restore = {"needed": True, "verified": False, "error": str(exc), "untouched": True}
        raise RestoreFailed(f"refused to restore production from a damaged checkpoint: {exc}; production was left as "
                            f"it is — put the artifact back (from a backup of the store), then run "
                            f"{rerun if session.result.command == 'rollback' else again}",
                            target=t.name, run_id=cp.run_id) from exc
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
             force: bool = False, progress: Progress = _quiet,
             lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> RunResult:
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
    earlier = None if force else _rolled_back_by(settings, run_id)
    if earlier is not None:
        raise BadInput(f"run {run_id} was already rolled back by run {earlier} (production was restored to its "
                       "checkpoint and verified then); nothing to do (use --force to restore it again)")
    loaded = load_plan(Path(plan_file or original.plan_path), settings.environ)
    targets = _targets(loaded, settings, progress)
    result = RunResult(new_run_id(), "rollback", str(loaded.path), time.time(), of_run=run_id,
                       action=f"restore the checkpoints of run {run_id}")
    result.redact = loaded.policy.redact
    for name, t in targets.items():
        result.targets[name] = TargetResult(name, t.kind, t.describe())
    refuse_if_unrecovered(settings.runs_dir, {n: t.describe() for n, t in targets.items()})
    session = _Session(settings, result, progress)
    with session.running():
        with lock_targets(settings.state_dir / "locks", targets, holder_text(result.run_id, "rollback"),
                          lock_timeout, lambda text: progress("info", text)):
            refuse_if_unrecovered(settings.runs_dir, {n: t.describe() for n, t in targets.items()})
            session.begin(targets, str(loaded.path), loaded.sha256)
            checkpoints = {n: Checkpoint.from_dict(session.store.read_manifest(run_id, n)) for n in targets}
            for name, t in targets.items():
                recorded = checkpoints[name].meta.get("endpoint")
                if recorded and recorded != t.describe():
                    raise BadInput(f"target {name!r} now points at {t.describe()}, but run {run_id} "
                                   f"checkpointed {recorded}; restoring one over the other is refused (fix the plan "
                                   "or its environment)")
            manifests = {n: session.store.read_manifest(run_id, n) for n in targets}
            for name, t in targets.items():
                after = manifests[name].get("after_apply")
                with session.step("drift check", name) as step:
                    if not after or force or t.fingerprint() == after["fingerprint"]:
                        continue
                    step.found(f"production changed since run {run_id} was applied")
                    # Production as the apply left it, compared by the same change-set code as every other check.
                    applied = Checkpoint(name, t.kind, run_id, after["observation"], after["fingerprint"])
                    changes = t.changes_since(applied, None)
                result.targets[name].production_changes = changes
                result.outcome = "refused"
                result.reason = (f"production {name!r} changed since run {run_id} was applied; restoring would "
                                 f"lose those writes ({addresses(changes)}). Use --force to restore anyway.")
                return result
            session.phase("restoring")
            failures = _restore_all(session, targets, checkpoints)
            if failures:
                restores = [tr.restore or {} for tr in result.targets.values()]
                if all(r.get("untouched") or not r.get("needed") for r in restores):
                    # Refused before anything was written (a damaged checkpoint): production is as it was.
                    result.outcome = "refused"
                    result.reason = "ROLLBACK REFUSED, production untouched: " + " | ".join(str(f) for f in failures)
                    raise failures[0]
                result.outcome = "restore_failed"
                result.reason = "ROLLBACK FAILED: " + " | ".join(str(f) for f in failures)
                raise failures[0]
            result.outcome = "restored"
            result.reason = f"production restored to the checkpoint of run {run_id} and verified"
    return result


def _rolled_back_by(settings: Settings, run_id: str) -> str | None:
    """The latest rollback run that restored ``run_id``'s checkpoint, if any."""
    done = []
    journal = Journal(settings.journal_path)
    try:
        for path in settings.runs_dir.glob("*/run.json"):
            try:
                record = RunRecord.load(path)
                if record.command == "rollback" and record.of_run == run_id:
                    row = journal.run(record.run_id)
                    if row.outcome == "restored":
                        done.append((row.started_at, record.run_id))
            except (OSError, ValueError, TypeError, ShadowError):
                continue  # an unreadable record is not a rollback we can vouch for
    finally:
        journal.close()
    return max(done)[1] if done else None


def addresses(changes: list[Change], limit: int = 3) -> str:
    """The first ``limit`` top-level change addresses, and how many more there are."""
    shown = "; ".join(c.address for c in changes[:limit])
    return shown + (f"; and {len(changes) - limit} more" if len(changes) > limit else "") or "no change observed"


def recover(settings: Settings | None = None, progress: Progress = _quiet,
            lock_timeout: float = DEFAULT_LOCK_TIMEOUT, plan_file: str | Path | None = None) -> list[dict[str, Any]]:
    """Settle every run whose process died before it finished; one line of what was done for each.

    - a ``plan``, or an ``apply`` killed before it touched production: closed, production untouched;
    - an ``apply`` in one transaction: the server says whether the transaction committed (it only commits after
      production was verified inside it); if it did not, production was never changed and nothing is restored;
    - any other ``apply`` killed while applying: every target restored to the checkpoint and verified;
    - an ``apply`` killed after production was verified: production checked against what was verified;
    - a ``rollback`` killed while restoring: the restore is run again (it is idempotent) and verified.

    ``plan_file``: the plan, if it moved since the run (its targets must still point where the run worked).
    """
    settings = settings or Settings.from_env()
    out = []
    for stale in unfinished(settings.runs_dir):
        folder = settings.runs_dir / stale.run_id
        try:
            hold = Liveness(folder)  # a second `shadow recover` waits here rather than race
        except OSError as exc:
            raise InfrastructureError(f"cannot take over run {stale.run_id}: {exc}") from exc
        try:
            record = RunRecord.load(folder / "run.json")  # as the other recover, if any, left it
            if record.phase == "finished":
                continue
            was = record.phase
            outcome, text = _recover_one(settings, record, progress, lock_timeout, plan_file)
            journal = Journal(settings.journal_path)
            try:
                journal.finish_run(record.run_id, outcome, f"recovered: {text}")
            finally:
                journal.close()
            record.phase = "finished"
            record.save(folder)
        finally:
            hold.release()
        out.append({"run": record.run_id, "command": record.command, "was": was, "outcome": outcome,
                    "summary": text})
        progress("info", f"run {record.run_id} ({record.command}): {outcome} — {text}")
    if out:
        _clear_leftovers({entry["run"] for entry in out}, settings, progress)
    return out


def _clear_leftovers(runs: set[str], settings: Settings, progress: Progress) -> None:
    """The shadows a killed run left running (its clusters, containers, networks) go once it is settled."""
    from shadow import gc

    try:
        result = gc.gc(runs=runs, settings=settings)
    except InfrastructureError as exc:  # production is settled; a leftover is for `shadow gc` to retry
        progress("info", f"leftover shadows not removed: {exc}")
        return
    if result.removed:
        progress("info", f"removed {len(result.removed)} leftover shadow(s) of the settled run(s)")
    for item, why in result.failed:
        progress("info", f"could not remove leftover {item.kind} {item.id}: {why} (retry with `shadow gc`)")


def _stop_action(record: RunRecord, progress: Progress) -> None:
    """Nothing of a killed run's action may still run when production is settled: its processes (the recorded
    warden session, everything carrying the run's mark) and its containers are killed, and confirmed gone —
    or recover refuses, and production is left as it is."""
    from shadow import warden

    here = socket.gethostname()
    elsewhere = sorted({a["host"] for a in record.actions if a.get("host") and a["host"] != here})
    if elsewhere:
        raise InfrastructureError(f"cannot settle run {record.run_id}: its action ran on {', '.join(elsewhere)}, "
                                  f"and from {here} shadow cannot make sure it stopped; run `shadow recover` there "
                                  "(production was left as it is)", run_id=record.run_id)
    sessions: list[dict[str, Any] | None] = [a for a in record.actions if a.get("session")] or [None]
    for recorded in sessions:
        alive = warden.stop_run_processes(record.run_id, recorded)
        if alive:
            raise InfrastructureError(f"cannot settle run {record.run_id}: its action's processes "
                                      f"{', '.join(map(str, alive[:10]))} would not stop (SIGKILL); production was "
                                      "left as it is — stop them, then run `shadow recover` again",
                                      run_id=record.run_id)
    if any(a.get("container") for a in record.actions):
        from adapters.docker import remove_containers

        try:
            left = remove_containers(record.run_id, "action")
        except InfrastructureError as exc:
            raise InfrastructureError(f"cannot settle run {record.run_id}: its action ran in a container, and "
                                      f"shadow cannot make sure it stopped ({exc}); production was left as it is",
                                      run_id=record.run_id) from exc
        if left:
            raise InfrastructureError(f"cannot settle run {record.run_id}: its action's container "
                                      f"{left[0][:12]} would not go away; production was left as it is",
                                      run_id=record.run_id)
    if record.actions:
        progress("info", f"run {record.run_id}: its action is confirmed stopped")


def _recover_one(settings: Settings, record: RunRecord, progress: Progress, lock_timeout: float,
                 plan_file: str | Path | None) -> tuple[str, str]:
    _stop_action(record, progress)
    if record.command not in ("apply", "rollback") or record.phase == "rehearsing":
        return "interrupted", "killed before it touched production; production was not changed by it"
    loaded = load_plan(Path(plan_file or record.plan_path), settings.environ)
    all_targets = _targets(loaded, settings, progress)
    missing = sorted(set(record.targets) - set(all_targets))
    if missing:
        raise BadInput(f"cannot recover run {record.run_id}: {loaded.path} has no target named "
                       f"{', '.join(missing)} any more (give the run's plan with -f)")
    targets = {n: all_targets[n] for n in record.targets}
    for name, t in targets.items():
        if t.describe() != record.targets[name]:
            raise BadInput(f"cannot recover run {record.run_id}: target {name!r} now points at {t.describe()}, but "
                           f"the run worked on {record.targets[name]} (fix the plan or its environment)")
    source = record.of_run if record.command == "rollback" else record.run_id
    assert source is not None
    result = RunResult(new_run_id(), "recover", str(loaded.path), time.time(), of_run=record.run_id,
                       action=f"settle run {record.run_id} ({record.command}, killed while {record.phase})")
    for name, t in targets.items():
        result.targets[name] = TargetResult(name, t.kind, t.describe())
    session = _Session(settings, result, progress)
    with session.running():
        with lock_targets(settings.state_dir / "locks", targets, holder_text(result.run_id, "recover"),
                          lock_timeout, lambda text: progress("info", text)):
            session.begin(targets, str(loaded.path), loaded.sha256)
            if record.command == "apply":
                for name, t in targets.items():  # a statement the server still runs for the killed client
                    with session.step("end sessions", name):
                        if ended := t.end_sessions(session_tag(record.run_id)):
                            progress("info", f"{name}: ended {ended} session(s) the killed run left running")
            if record.command == "apply" and record.phase == "applied":
                drifted = []
                for name, t in targets.items():
                    after = session.store.read_manifest(source, name).get("after_apply") or {}
                    if t.fingerprint() != after.get("fingerprint"):
                        drifted.append(name)
                result.outcome = "recovered"
                result.reason = ("applied and verified before it was killed" if not drifted else
                                 f"applied and verified before it was killed; {', '.join(drifted)} changed since "
                                 "(someone else wrote) — left alone")
                return "applied", result.reason
            if record.command == "apply" and record.transaction:
                settled = _settle_transaction(session, targets[record.transaction["target"]], record)
                if settled is not None:
                    return settled
            checkpoints = {n: Checkpoint.from_dict(session.store.read_manifest(source, n)) for n in targets}
            failures = _restore_all(session, targets, checkpoints)
            if failures:
                result.outcome = "restore_failed"
                result.reason = "RECOVERY FAILED: " + " | ".join(str(f) for f in failures)
                raise failures[0]
            result.outcome = "recovered"
            result.reason = f"production restored to the checkpoint of run {source} and verified"
            return ("rolled_back" if record.command == "apply" else "restored"), result.reason


def _settle_transaction(session: _Session, t: Target, record: RunRecord) -> tuple[str, str] | None:
    """An apply in one transaction never needs a restore: its transaction committed (after production was
    verified inside it) or it did not (and changed nothing). Restoring would delete other sessions' writes."""
    result = session.result
    assert record.transaction is not None
    xid = record.transaction.get("xid")
    with session.step("transaction outcome", t.name):
        status = t.transaction_outcome(int(xid)) if xid is not None else "never began"  # type: ignore[attr-defined]
    if status == "committed":
        result.outcome, outcome = "recovered", "applied"
        result.reason = (f"its transaction {xid} committed — only after production was verified inside it: "
                         "production has the rehearsed change")
    elif status in ("aborted", "never began"):
        result.outcome, outcome = "recovered", "rolled_back"
        result.reason = (f"its transaction {'never began' if xid is None else f'{xid} did not commit'}: production "
                         "was never changed by it, and nothing was restored (other sessions' writes are kept)")
    else:
        return None  # the server no longer knows: fall back to restoring the checkpoint
    return outcome, result.reason


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
