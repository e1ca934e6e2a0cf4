"""Where in a statement a token stands — line and column in its file — and the :class:`SqlError` that points there.

Shared by :mod:`shadow.sqlsyntax` and :mod:`shadow.sqlsyntax_alter`. Positions are tokens of sqlglot's tokenizer
(offsets into ``st.text``) or plain offsets; lines and columns are the file's, counted from the statement's own.
An error quotes the statement only when the plan may quote it (:func:`quotable`).
"""

from __future__ import annotations

from sqlglot.tokens import Token

from shadow.errors import SqlError
from shadow.sqlsplit import Statement


def quotable(st: Statement) -> str | None:
    """What an error may quote of ``st``: its text (the error shortens it), or nothing for a file outside the
    plan's folder."""
    return st.text if st.quote else None


def _starts_line(st: Statement, before: Token, token: Token) -> bool:
    return "\n" in st.text[before.end + 1: token.start]


def _line(st: Statement, token: Token | int) -> int:
    """The line of a token, or of an offset into ``st.text``."""
    pos = token if isinstance(token, int) else token.start
    return st.line + st.text.count("\n", 0, pos)


def _column(st: Statement, pos: int) -> int:
    line_start = st.text.rfind("\n", 0, pos) + 1
    return pos - line_start + (st.column if line_start == 0 else 1)


def _at(st: Statement, token: Token | int) -> str:
    pos = token if isinstance(token, int) else token.start
    return f"line {_line(st, pos)}, column {_column(st, pos)}"


def _error(st: Statement, token: Token | int, message: str) -> SqlError:
    """The error at a token, or at an offset into ``st.text``."""
    return SqlError(f"cannot parse the SQL ({_at(st, token)}): {message}", file=st.file, line=_line(st, token),
                    statement=quotable(st))
