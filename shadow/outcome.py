"""How a run ends: the one list of outcomes, each with its exit code, whether it settles production, and the
verdict line a report heads with when the run's facts say nothing more specific (:func:`shadow.reports.verdict_line`).

An outcome's value is the word reports, the journal and ``--json`` carry (``"rolled_back"``); it is a ``str``, so a
stored report's outcome and a live run's compare equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    """A run's outcome. ``exit_code`` is the CLI's (0 ok, 1 expectations failed or production refused/rolled back,
    3 infrastructure); ``settles`` says the run left production in a known, finished state — a run killed while
    writing production without one of these stays unfinished until ``shadow recover``."""

    exit_code: int
    settles: bool
    verdict: str

    def __new__(cls, value: str, exit_code: int = 3, settles: bool = False, verdict: str = "") -> Outcome:
        member = str.__new__(cls, value)
        member._value_ = value
        member.exit_code = exit_code
        member.settles = settles
        member.verdict = verdict or value
        return member

    RUNNING = "running"
    PASSED = "passed", 0, False, "PASSED — every expectation holds; production was not touched"
    FAILED = "failed", 1, False, "FAILED — the rehearsal does not meet the expectations; production was not touched"
    AWAITING_APPROVAL = ("awaiting_approval", 0, False,
                         "AWAITING APPROVAL — every expectation holds; production was not touched")
    APPROVED = "approved", 0
    APPLIED = "applied", 0, True, "APPLIED — production changed exactly as rehearsed"
    REFUSED = "refused", 1, True, "REFUSED — nothing was applied to production"
    ROLLED_BACK = "rolled_back", 1, True, "ROLLED BACK — production was restored to the checkpoint and verified"
    RESTORED = "restored", 0, True, "RESTORED — production is back at the checkpoint, verified"
    RESTORE_FAILED = ("restore_failed", 3, False,
                      "ROLLBACK FAILED — production may be neither at the checkpoint nor at the rehearsed outcome")
    RECOVERED = "recovered", 0, True, "RECOVERED — a killed run was settled"
    ERROR = "error", 3, False, "ERROR"
    INTERRUPTED = "interrupted", 3, False, "INTERRUPTED"


@dataclass(frozen=True)
class Ending:
    """What a phase that ends the run returns: the outcome and its reason — and, for an ending that is also a
    failure of shadow's own (a restore that did not verify), the error the run raises once it is recorded."""

    outcome: Outcome
    reason: str = ""
    error: BaseException | None = None
    rehearse_again: bool = False  # refused before writing because the rehearsal may no longer hold: try afresh
