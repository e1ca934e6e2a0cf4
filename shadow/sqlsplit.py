"""Splitting SQL files into statements with sqlglot's tokenizer, keeping each statement's file and line.

Only the tokenizer is used: it knows PostgreSQL's quoting (dollar quotes, E'' strings, comments), and the
statement text handed to the server is the original source slice, never a regenerated one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import TokenError
from sqlglot.tokens import TokenType

from shadow.errors import SqlError


@dataclass(frozen=True)
class Statement:
    file: str
    line: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def split_sql(source: str, file: str) -> list[Statement]:
    """The statements of ``source``; raise :class:`SqlError` naming file and line when it cannot be tokenized."""
    try:
        tokens = Postgres().tokenize(source)
    except TokenError as exc:
        message = " ".join(str(exc).split())
        raise SqlError(f"cannot read the SQL: {message}", file=file, line=_line_of_error(str(exc), source)) from exc
    statements: list[Statement] = []
    start: int | None = None
    end = 0
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            if start is not None:
                statements.append(_statement(source, file, start, end))
            start = None
            continue
        if start is None:
            start = token.start
        end = token.end
    if start is not None:
        statements.append(_statement(source, file, start, end))
    for st in statements:
        if st.text.lstrip().startswith("\\"):
            raise SqlError("psql meta-commands are not supported in an SQL action", file=file, line=st.line)
    return statements


def _statement(source: str, file: str, start: int, end: int) -> Statement:
    line = source.count("\n", 0, start) + 1
    return Statement(file, line, source[start : end + 1].strip())


def _line_of_error(message: str, source: str) -> int | None:
    import re

    match = re.search(r"[Ll]ine (\d+)", message)
    if match:
        return int(match.group(1))
    # sqlglot quotes the source just before the point where it gave up: that point's line
    quoted = re.fullmatch(r"Error tokenizing '(.*)'", message, re.DOTALL)
    at = source.rfind(quoted.group(1)) if quoted and quoted.group(1) else -1
    return source.count("\n", 0, at + len(quoted.group(1)) - 1) + 1 if quoted and at >= 0 else None


def load_sql_files(paths: list[Path], display: list[str]) -> list[Statement]:
    out: list[Statement] = []
    for path, shown in zip(paths, display, strict=True):
        try:
            source = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise SqlError("SQL file not found", file=shown) from exc
        except UnicodeDecodeError as exc:
            raise SqlError(f"SQL file is not UTF-8 ({exc.reason} at byte {exc.start})", file=shown) from exc
        except OSError as exc:
            raise SqlError(f"cannot read SQL file: {exc.strerror}", file=shown) from exc
        out.extend(split_sql(source, shown))
    return out
