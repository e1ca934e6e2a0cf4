"""Splitting SQL files into statements, keeping each statement's file, line and column.

The splitter follows PostgreSQL's own lexical rules for what can hide a semicolon — ``'…'`` strings (``''``
doubles a quote; backslashes are plain characters, as with the default ``standard_conforming_strings``),
``E'…'`` strings (backslash escapes), ``"…"`` identifiers, ``$tag$…$tag$`` dollar quotes, ``--`` comments and
nested ``/* … */`` comments — and nothing else (https://www.postgresql.org/docs/current/sql-syntax-lexical.html).
It jumps from one of those characters to the next with regular expressions, so it reads a file in time and memory
linear in its size: a 60 MB ``INSERT`` is split in seconds. The statement text handed to the server is the
original source slice, never a regenerated one; comments before a statement and between its last token and its
semicolon are left out.

One construct hides semicolons without quoting them: a SQL-standard function or procedure body, ``BEGIN ATOMIC
… END`` (PostgreSQL 14+), whose statements end in semicolons of their own. Like psql, the splitter counts ``BEGIN
ATOMIC`` and ``CASE`` up and ``END`` down inside such a body and ends a statement at a semicolon only outside it.
Unlike psql, a ``BEGIN`` not followed by ``ATOMIC`` counts for nothing, so a column named ``begin`` does not swallow
the rest of the file.

Errors never quote the file's content: only its name, line and what is unterminated.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from shadow.errors import SqlError

# How much SQL static analysis (sqlglot, pure Python) reads. sqlglot parses about 150 KB/s of large statements and
# 2,000 small statements a second here, and holds a large statement's tokens and tree in memory (a 59 MB INSERT
# needed 6.8 GB): one statement over MAX_ANALYSED_STATEMENT, and every statement after the first
# MAX_ANALYSED_TOTAL characters of an action's SQL, is not analysed — an `info` finding says so, and the rehearsal
# runs it like any other. Splitting itself has no bound: it is linear in time and memory.
MAX_ANALYSED_STATEMENT = 128 << 10  # characters: about 1 s of sqlglot
MAX_ANALYSED_TOTAL = 512 << 10  # characters: 4 s of sqlglot for large statements, 7 s for 16,000 tiny ones


@dataclass(frozen=True)
class Statement:
    file: str
    line: int
    text: str
    column: int = 1  # where the statement starts on its line (1-based)
    quote: bool = True  # whether errors may quote an excerpt of it (False: a file outside the plan's folder)
    analyse: bool = True  # False: over the static-analysis bounds below; lint says so, the rehearsal still runs it

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


# A run the splitter can take in one step: characters that cannot start or end anything, and whole '…' strings
# (an e or E right before a quote stops the run: it may open an E'…' string). Possessive, so it never backtracks.
_PLAIN = re.compile(r"""(?:[^;'"$/\-eE]++|[eE](?!')|'[^']*+(?:''[^']*+)*+')++""")
_NON_SPACE = re.compile(r"\S")
_STANDARD_STRING = re.compile(r"'[^']*(?:''[^']*)*'")
_ESCAPE_STRING = re.compile(r"'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'", re.DOTALL)
_IDENTIFIER = re.compile(r'"[^"]*(?:""[^"]*)*"')
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
_BLOCK_COMMENT_MARK = re.compile(r"/\*|\*/")
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$\u0080-\U0010ffff]")
# The words of a plain run that open and close a BEGIN ATOMIC body (a run's '…' strings are matched and skipped).
_BLOCK_WORD = re.compile(r"'[^']*(?:''[^']*)*'|(?<![A-Za-z0-9_$\u0080-\U0010ffff.])(begin|atomic|case|end)"
                         r"(?![A-Za-z0-9_$\u0080-\U0010ffff])", re.IGNORECASE)


class _Lines:
    """Line and column of positions met in increasing order, counting each newline once."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.pos = 0
        self.line = 1
        self.line_start = 0

    def at(self, pos: int) -> tuple[int, int]:
        newlines = self.source.count("\n", self.pos, pos)
        if newlines:
            self.line += newlines
            self.line_start = self.source.rfind("\n", self.pos, pos) + 1
        self.pos = pos
        return self.line, pos - self.line_start + 1


def split_sql(source: str, file: str, *, quote: bool = True, budget: _Budget | None = None) -> list[Statement]:
    """The statements of ``source``; raise :class:`SqlError` naming file and line of an unterminated quote or
    comment. ``quote=False``: the statements' errors never quote them (see :attr:`Statement.quote`). ``budget``:
    what static analysis may still read, shared by an action's files (each call has its own by default)."""
    statements = _Splitter(source, file, quote, budget or _Budget()).statements()
    for st in statements:
        if st.text.startswith("\\"):
            raise SqlError("psql meta-commands are not supported in an SQL action", file=file, line=st.line)
    return statements


class _Splitter:
    """One pass over ``source``: runs of plain text at regex speed, then the one construct each run stopped at."""

    def __init__(self, source: str, file: str, quote: bool, budget: _Budget) -> None:
        self.source, self.file, self.quote, self.budget = source, file, quote, budget
        self.lines = _Lines(source)
        self.found: list[Statement] = []
        self.start: int | None = None  # the first character of the statement being read
        self.end = 0  # just after its last significant character
        self.depth = 0  # inside a BEGIN ATOMIC body: its BEGIN ATOMIC and CASE not yet closed by END
        self.after_begin = False  # the last word read was BEGIN: an ATOMIC next opens a body
        # Words are followed only in a file that has the word ATOMIC at all: for the others reading them would
        # cost 5x the split (a 118 MB INSERT: 3.3 s instead of 0.6 s).
        self.atomic = _mentions_atomic(source)

    def statements(self) -> list[Statement]:
        source, pos, n = self.source, 0, len(self.source)
        while pos < n:
            if plain := _PLAIN.match(source, pos):
                self.significant(pos, plain.end())
                if self.atomic:
                    self.words(pos, plain.end())
                pos = plain.end()
                if pos == n:
                    break
            pos = self.past(pos)
        self.close()
        return self.found

    def past(self, stop: int) -> int:
        """Read the construct at ``stop``, a character a plain run stopped at (; " $ / - an unclosed ' or the e of
        e'…); return where reading goes on."""
        source, ch, after = self.source, self.source[stop], stop + 1
        comment = False
        if ch == ";" and self.depth:  # a statement of a BEGIN ATOMIC body
            self.significant(stop, after)
        elif ch == ";":
            self.close()
        elif ch == "-" and source.startswith("-", after):
            comment = True
            newline = source.find("\n", after)
            after = len(source) if newline < 0 else newline
        elif ch == "/" and source.startswith("*", after):
            comment = True
            after = _skip_block_comment(source, stop)
            if after < 0:
                raise self.unterminated("a /* comment", stop)
        elif ch in "eE'\"":  # E'…' (or a name ending in e, then '…'), '…' or "…"
            after = self.quoted(stop, ch)
            self.significant(stop, after)
        elif ch == "$" and (stop == 0 or not _IDENT_CHAR.match(source, stop - 1)) and (
                tag := _DOLLAR_TAG.match(source, stop)):
            close = source.find(tag.group(), tag.end())
            if close < 0:
                raise self.unterminated(f"a dollar-quoted string ({tag.group()})", stop)
            after = close + len(tag.group())
            self.significant(stop, after)
        else:  # an operator character, or a $ inside a name or a parameter ($1)
            self.significant(stop, after)
        if not comment:  # only a comment may stand between BEGIN and ATOMIC
            self.after_begin = False
        return after

    def words(self, a: int, b: int) -> None:
        """Follow BEGIN ATOMIC bodies through the plain run ``source[a:b]``."""
        # endpos b + 1: the look-ahead sees the character after the run (a word cut by a $ is not a word)
        for found in _BLOCK_WORD.finditer(self.source, a, min(b + 1, len(self.source))):
            word = found.group(1)
            if word is None or found.start() >= b:
                continue
            word = word.lower()
            if word == "atomic" and self.after_begin:
                self.depth += 1
            elif word == "case" and self.depth:
                self.depth += 1
            elif word == "end" and self.depth:
                self.depth -= 1
            self.after_begin = word == "begin"

    def quoted(self, stop: int, ch: str) -> int:
        """Just after the string or quoted identifier at ``stop``."""
        quote_at = stop + 1 if ch in "eE" else stop
        escapes = ch in "eE" and (stop == 0 or not _IDENT_CHAR.match(self.source, stop - 1))
        pattern = _ESCAPE_STRING if escapes else _IDENTIFIER if ch == '"' else _STANDARD_STRING
        closed = pattern.match(self.source, quote_at)
        if closed is None:
            raise self.unterminated("a quoted identifier" if ch == '"' else "a quoted string", stop)
        return closed.end()

    def significant(self, a: int, b: int) -> None:
        """``source[a:b]`` belongs to the statement being read (whitespace only: nothing to record)."""
        if self.start is None:
            first = _NON_SPACE.search(self.source, a, b)
            if first is None:
                return
            self.start = first.start()
        stripped = len(self.source[a:b].rstrip())
        if stripped:
            self.end = a + stripped

    def close(self) -> None:
        """The statement being read ends here (at a ; or the end of the source)."""
        if self.start is not None:
            self.found.append(_statement(self.source, self.file, self.start, self.end, self.lines, self.quote,
                                         self.budget))
        self.start = None
        self.depth, self.after_begin = 0, False

    def unterminated(self, what: str, at: int) -> SqlError:
        line, _ = self.lines.at(at)
        return SqlError(f"cannot read the SQL: {what} opened on this line is never closed", file=self.file, line=line)


class _Budget:
    """What static analysis may still read of one action's SQL (see MAX_ANALYSED_*)."""

    def __init__(self) -> None:
        self.left = MAX_ANALYSED_TOTAL
        self.exhausted = False

    def take(self, size: int) -> bool:
        if size > MAX_ANALYSED_STATEMENT:
            return False  # this one alone: later statements are still analysed
        self.exhausted = self.exhausted or size > self.left
        self.left -= 0 if self.exhausted else size
        return not self.exhausted


def _mentions_atomic(source: str, chunk: int = 1 << 20) -> bool:
    """Whether ``source`` holds "atomic" in any case (lowered a chunk at a time: 3x faster than a regex)."""
    return any("atomic" in source[i:i + chunk + 5].lower() for i in range(0, len(source), chunk))


def _skip_block_comment(source: str, at: int) -> int:
    """Just after the ``*/`` closing the (nested) comment opened at ``at``; -1 when it is never closed."""
    depth, pos = 0, at
    while (mark := _BLOCK_COMMENT_MARK.search(source, pos)) is not None:
        depth += 1 if mark.group() == "/*" else -1
        pos = mark.end()
        if depth == 0:
            return pos
    return -1


def _statement(source: str, file: str, start: int, end: int, lines: _Lines, quote: bool, budget: _Budget) -> Statement:
    line, column = lines.at(start)
    return Statement(file, line, source[start:end], column, quote, budget.take(end - start))


def may_quote(path: Path, shown: str) -> bool:
    """Whether errors may quote the content of the SQL file ``shown`` (as the plan names it), read at ``path``: only
    when it is named by a relative path without ``..`` and no symlink is on the way to it — so its content is SQL
    the plan's folder itself holds, never a file (``/etc/passwd``, a secret) that a name merely points at."""
    named = Path(shown)
    if named.is_absolute() or ".." in named.parts:
        return False
    absolute = os.path.abspath(path)
    return os.path.realpath(absolute) == absolute


def load_sql_files(paths: list[Path], display: list[str]) -> list[Statement]:
    out: list[Statement] = []
    budget = _Budget()  # the bounds hold for an action's files together
    for path, shown in zip(paths, display, strict=True):
        try:
            source = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise SqlError("SQL file not found", file=shown) from exc
        except UnicodeDecodeError as exc:
            raise SqlError(f"SQL file is not UTF-8 ({exc.reason} at byte {exc.start})", file=shown) from exc
        except OSError as exc:
            raise SqlError(f"cannot read SQL file: {exc.strerror}", file=shown) from exc
        out.extend(split_sql(source, shown, quote=may_quote(path, shown), budget=budget))
    return out


# Statements PostgreSQL refuses inside a transaction block, or that manage transactions themselves: an action
# holding one runs statement by statement (autocommit), as psql would. Each test is one forward scan: a statement
# may be megabytes long (a generated INSERT, a DETACH PARTITION list), so no pattern nests two ``.*``.
_LEADS_AUTOCOMMIT = re.compile(
    r"""\s*(
        (create|drop)\s+(unique\s+)?index\s+concurrently
      | vacuum\b
      | (create|drop|alter)\s+database\b | alter\s+system\b | (create|drop)\s+tablespace\b
      | begin\b | start\s+transaction\b | commit\b | end\b | rollback\b | abort\b | savepoint\b
      | call\b | alter\s+subscription\b | (create|drop)\s+subscription\b | discard\s+all\b
    )""",
    re.IGNORECASE | re.VERBOSE,
)
_LEAD_WORDS = re.compile(r"\s*(reindex|cluster|alter\s+type|alter\s+table)\b", re.IGNORECASE)
_CONCURRENTLY = re.compile(r"\bconcurrently\b", re.IGNORECASE)
_ON = re.compile(r"\bon\b", re.IGNORECASE)
_ADD_VALUE = re.compile(r"\badd\s+value\b", re.IGNORECASE)
_DETACH_PARTITION = re.compile(r"\bdetach\s+partition\b", re.IGNORECASE)


def forces_autocommit(statement: Statement) -> bool:
    text = _strip_comments(statement.text)
    if _LEADS_AUTOCOMMIT.match(text):
        return True
    lead = _LEAD_WORDS.match(text)
    if lead is None:
        return False
    word = lead.group(1).split()[-1].lower()
    if word == "reindex":  # REINDEX … CONCURRENTLY
        return _CONCURRENTLY.search(text, lead.end()) is not None
    if word == "cluster":  # as before: CLUSTER, unless in the old form CLUSTER index ON table
        return _ON.search(text, lead.end()) is None
    if word == "type":  # ALTER TYPE … ADD VALUE (before PostgreSQL 12; a new value is unusable until committed)
        return _ADD_VALUE.search(text, lead.end()) is not None
    detach = _DETACH_PARTITION.search(text, lead.end())  # ALTER TABLE … DETACH PARTITION … CONCURRENTLY
    return detach is not None and _CONCURRENTLY.search(text, detach.end()) is not None


def _strip_comments(text: str) -> str:
    # an unterminated comment runs to the end (one scan, not one per "/*")
    return re.sub(r"(--[^\n]*\n)|(/\*.*?(?:\*/|\Z))", " ", text + "\n", flags=re.DOTALL)
