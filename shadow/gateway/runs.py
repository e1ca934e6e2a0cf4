"""``status``, ``apply`` and ``rollback`` of the actor's own proposals: apply only through the ``apply --run`` path,
once a person approved the proposal (``shadow approve``) or, for ``apply: within-limits`` actors, once everything
held; another actor's run shows its state and nothing more."""

from __future__ import annotations

import json
import time
from typing import Any

from shadow.errors import ShadowError, cap
from shadow.gateway.common import GATEWAY_FORMAT, RUN_ID, GatewayBase, Refused
from shadow.gateway.scope import judge_rules
from shadow.outcome import Outcome


class Running(GatewayBase):
    """The ``status``, ``apply`` and ``rollback`` tools."""

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
        answer = self._of_proposal(run_id, record, "applied_run", result)
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
        return self._of_proposal(proposal, self._record(proposal), "rollback_run", result)

    def _of_proposal(self, proposal: str, record: dict[str, Any], key: str, result: Any) -> dict[str, Any]:
        """Record ``result`` (an apply or a rollback) as the proposal's ``key`` and as a run of this actor's
        proposal; its answer, naming the proposal."""
        record[key] = result.run_id
        self._remember(proposal, record)
        self._remember(result.run_id, {"run_id": result.run_id, "actor": self.actor, "of_proposal": proposal,
                                       "at": time.time()})
        answer = self._run_answer(result)
        answer["proposal"] = proposal
        return answer
