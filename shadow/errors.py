"""The one exception tree of shadow.

::

    ShadowError                     exit 3 unless a subclass says otherwise
    ├── BadInput                    exit 2: the user's plan, SQL, arguments or files are wrong
    │   ├── PlanError               a plan file key is missing/invalid (carries every problem with file:line)
    │   ├── SqlError                an action's SQL cannot be split or fails (file, line, statement)
    │   └── UnknownRun              no run with that id in the journal
    ├── InfrastructureError         exit 3: a target, a binary, the disk or the state dir failed us
    │   ├── TargetUnreachable       production (or a shadow) cannot be connected to
    │   ├── BinaryNotFound          no usable PostgreSQL binaries
    │   ├── SnapshotCorrupt         a stored artifact does not match its sha256
    │   └── RestoreFailed           production could NOT be restored: a human must look
    └── ActionFailed                the action exited non-zero / timed out / its SQL failed (exit 1 as an outcome)

Backend errors (psycopg, subprocess) are translated where they happen, with ``raise ... from exc``.
Only the CLI catches broadly.
"""

from __future__ import annotations

import re

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INFRA = 3


class ShadowError(Exception):
    """Root of every error shadow raises on purpose."""

    exit_code = EXIT_INFRA

    def __init__(self, message: str, *, target: str | None = None, run_id: str | None = None) -> None:
        self.target = target
        self.run_id = run_id
        super().__init__(message)

    def __str__(self) -> str:
        message = super().__str__()
        if self.target:
            return f"target {self.target!r}: {message}"
        return message


class BadInput(ShadowError):
    exit_code = EXIT_BAD_INPUT


class CheckQueryFailed(BadInput):
    """A ``checks:`` query reached the copy and the server refused it (not a syntax error, not a lost
    connection): a verdict on the plan, not bad input. ``server_error`` is the server's own words."""

    def __init__(self, message: str, server_error: str, *, target: str | None = None) -> None:
        super().__init__(message, target=target)
        self.server_error = server_error


class PlanError(BadInput):
    """One or more problems in a plan file, each already carrying its location (all in ``problems``; the message
    names the first :data:`MAX_PROBLEMS_SHOWN`)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
        if len(problems) > MAX_PROBLEMS_SHOWN:  # said first: a message cut to its length still says how many
            shown = f"the first {MAX_PROBLEMS_SHOWN}, and {len(problems) - MAX_PROBLEMS_SHOWN:,} more: {shown}"
        super().__init__(shown if len(problems) < 2 else f"{len(problems):,} problems: {shown}")


class SqlError(BadInput):
    """SQL that cannot be split, or that the server rejected."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        statement: str | None = None,
        target: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.statement = statement
        where = f"{file}:{line}: " if file and line else (f"{file}: " if file else "")
        text = f"{where}{message}"
        if statement:
            text += f" (statement: {_shorten(statement)})"
        super().__init__(text, target=target)


class UnknownRun(BadInput):
    pass


class InfrastructureError(ShadowError):
    exit_code = EXIT_INFRA


class TargetUnreachable(InfrastructureError):
    pass


class BinaryNotFound(InfrastructureError):
    pass


class SnapshotCorrupt(InfrastructureError):
    pass


class RestoreFailed(InfrastructureError):
    """Production is neither at the checkpoint nor at the rehearsed outcome; nothing more was attempted."""


class ActionFailed(ShadowError):
    exit_code = EXIT_FAILED


MAX_PROBLEMS_SHOWN = 20
REDACTED = "[redacted]"
_LITERAL = re.compile(r"'(?:[^']|'')*'?")  # an unclosed one runs to the end of the excerpt
_WORDISH = re.compile(r"[A-Za-z0-9+/_=.$:-]{20,}")


def _secretish(word: str) -> bool:
    """A long run that mixes digits and letters, in both cases or with key-ish punctuation, or is very long: an API
    key, a token, a password hash ($6$…), a base64 secret. Lower-case SQL names with a digit are left alone."""
    if not (re.search(r"\d", word) and re.search(r"[A-Za-z]", word)):
        return False
    return len(word) >= 32 or bool(re.search(r"[a-z]", word) and re.search(r"[A-Z]", word)) or bool(
        re.search(r"[+/$=]", word))


def cap(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters (``limit`` > 40), saying how much was cut."""
    if len(text) <= limit:
        return text
    keep = limit - 40  # room for the note
    return f"{text[:keep]}… ({len(text) - keep:,} more characters)"


def excerpt(text: str, limit: int = 60) -> str:
    """``text`` on one line, secret-looking runs replaced by [redacted], at most ``limit`` characters (… marks a
    cut): what an error may quote of a value the user gave."""
    flat = " ".join(text[: limit * 4].split())  # never more than needed is scanned
    flat = _WORDISH.sub(lambda m: REDACTED if _secretish(m.group()) else m.group(), flat)
    return flat if len(flat) <= limit and len(text) <= limit * 4 else flat[: limit - 1] + "…"


def _shorten(sql: str, limit: int = 160) -> str:
    """An excerpt of a statement for an error: string literals shown as '…' (they hold the data, and passwords)."""
    return excerpt(_LITERAL.sub("'…'", sql[: limit * 4]) + (" …" if len(sql) > limit * 4 else ""), limit)
