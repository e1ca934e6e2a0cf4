"""The plumbing every run shares: its journal, store, report dir and crash record, and the timing of its steps.

:meth:`Session.step` is where a step that touches production is journaled before it starts, where the fault
points a crash test kills at are reached, and where every step's time is taken (the report's "where the time
went" is :func:`shadow.result.timing` of them); :meth:`Session.running` writes the report whatever ends the run.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

from adapters import REGISTRY, Target
from shadow import reports
from shadow.action import Launch
from shadow.errors import InfrastructureError, ShadowError
from shadow import state
from shadow.guard import FaultPoints, RunRecord
from shadow.locks import DEFAULT_LOCK_TIMEOUT
from shadow.outcome import Outcome
from shadow.plan import Plan
from shadow.result import RunResult
from shadow.settings import Settings
from snapshots import atomic_write_bytes, make_private_dir, open_store

Progress = Callable[[str, str], None]
T = TypeVar("T")


def quiet(_event: str, _text: str) -> None:
    pass


def make_targets(plan: Plan, settings: Settings, progress: Progress = quiet) -> dict[str, Target]:
    """The plan's targets, built by their kinds' adapters."""
    targets = {spec.name: REGISTRY[spec.kind].target(spec.name, spec.options, settings) for spec in plan.targets}
    for t in targets.values():  # long-running steps report lines of progress
        t.progress = lambda text: progress("info", text)
    return targets


class Step:
    """One running step of a run; :meth:`found` marks it as having found a problem (it still ran to its end)."""

    def __init__(self) -> None:
        self.problem: str | None = None

    def found(self, problem: str) -> None:
        self.problem = problem


class Session:
    """Shared plumbing of one run: journal, store, report dir, step timing."""

    def __init__(self, settings: Settings, result: RunResult, progress: Progress) -> None:
        self.settings = settings
        self.result = result
        self.progress = progress
        self.store = open_store(settings)
        self.dir = settings.runs_dir / result.run_id
        try:
            make_private_dir(settings.runs_dir)
            make_private_dir(self.dir)  # reports and the action's logs: private whatever their own modes
        except OSError as exc:
            raise InfrastructureError(f"state dir {settings.state_dir} is not writable: {exc.strerror}") from exc
        result.report_dir = str(self.dir)
        # Shared state: one connection carries the run's journal and its liveness lock, so a run whose
        # connection died (and with it the lock other runners see) cannot journal — nor start — another step.
        self.db = state.shared(settings)
        try:
            self.journal = state.open_journal(settings, self.db)
            self.liveness = state.Liveness(settings, result.run_id, self.db)
        except BaseException:
            if self.db is not None:
                self.db.close()
            raise
        self.faults = FaultPoints(settings.environ)
        self.record: RunRecord | None = None
        self.judges: Sequence[Callable[[RunResult], list[Any]]] = ()  # more rules (shadow.run.plan's judges)

    def begin(self, targets: dict[str, Target], plan_path: str, plan_sha256: str) -> None:
        """Journal the run and leave the record that says, after a crash, which targets it had and how far it got."""
        r = self.result
        self.record = RunRecord(r.run_id, r.command, plan_path, {n: t.describe() for n, t in targets.items()},
                                pid=os.getpid(), host=socket.gethostname(), of_run=r.of_run)
        state.save_record(self.settings, self.record, self.db)
        self.journal.start_run(r.run_id, r.command, plan_path, plan_sha256)
        self.faults.reached("start run")

    @contextmanager
    def running(self) -> Iterator[None]:
        """The body of a run: whatever ends it unsettled is recorded as its outcome; the report is always written."""
        result = self.result
        try:
            yield
        except ShadowError as exc:
            if result.outcome is Outcome.RUNNING:
                result.outcome, result.reason = Outcome.ERROR, str(exc)
            raise
        except BaseException:
            if result.outcome is Outcome.RUNNING:
                result.outcome, result.reason = Outcome.INTERRUPTED, "interrupted"
            raise
        finally:
            self.finish()

    def launch(self) -> Launch:
        """How this run's action is started: its processes are recorded before the action is let go."""
        return Launch(self.result.run_id, self.action_started)

    def action_started(self, identity: dict[str, Any]) -> None:
        assert self.record is not None
        self.record.actions.append(identity)
        state.save_record(self.settings, self.record, self.db)
        self.faults.reached("action recorded")

    def phase(self, name: str, transaction: dict[str, Any] | None = None) -> None:
        """Record how far the run got (``recover`` reads it after a crash)."""
        assert self.record is not None
        self.record.phase = name
        if transaction is not None:
            self.record.transaction = transaction
        state.save_record(self.settings, self.record, self.db)
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

    @contextmanager
    def timed_exit(self, cm: AbstractContextManager[T], name: str, target: str | None = None) -> Iterator[T]:
        """Enter ``cm``; leaving it (a shadow's teardown) is timed as step ``name``, on every path — and told why
        it is left (a shadow kept warm after a run is not kept after an interrupted or failed one)."""
        value = cm.__enter__()
        try:
            yield value
        except BaseException as exc:
            with self.step(name, target):
                suppressed = cm.__exit__(type(exc), exc, exc.__traceback__)
            if not suppressed:
                raise
        else:
            with self.step(name, target):
                cm.__exit__(None, None, None)

    def finish(self) -> None:
        self.result.finished_at = time.time()
        self.result.seconds = round(time.monotonic() - self.result.clock, 3)
        model = self.result.to_dict()
        try:
            state.write_run_file(self.settings, self.result.run_id, "report.json",
                                 reports.render_json(model).encode(), self.db)
            atomic_write_bytes(self.dir / "report.md", reports.render_markdown(model).encode())
            atomic_write_bytes(self.dir / "report.html", reports.render(model, "html").encode())
        finally:
            try:
                self.journal.finish_run(self.result.run_id, self.result.outcome.value, reports.summary_line(model))
                self.journal.close()
                # A run that stopped while production was being written, without settling it, stays unfinished:
                # `shadow recover` settles it, and until then no new work starts on its targets.
                settled = self.result.outcome.settles
                if self.record is not None and (settled or self.record.phase not in ("applying", "restoring")):
                    self.phase("finished")
            finally:
                self.liveness.release()
                if self.db is not None:
                    self.db.close()
