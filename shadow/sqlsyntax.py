"""Why an SQL statement does not parse, in words a user understands.

sqlglot is more lenient than PostgreSQL: it accepts ``CREATE TABLE t (a int,, b int)``, and it keeps a statement it
cannot read as an opaque ``Command`` — so ``ALTER TABLE t ADD COLUMN a int`` and a ``CREATE INDEX`` on the next line,
the semicolon between them forgotten, read as one odd ALTER TABLE. :func:`check_shape` catches, from the tokens
alone, what PostgreSQL's grammar never allows: a comma with nothing on one side, unbalanced parentheses, and a line
that starts a new statement before the previous one ended. sqlglot also keeps an ALTER TABLE action it does not
know as a ``Command`` (``ADD COLUM x int``), or reads a missing name as a keyword (``DROP COLUMN;``):
:func:`check_alter_table` (in :mod:`shadow.sqlsyntax_alter`, re-exported here) reads every action against
PostgreSQL's ALTER TABLE grammar. :func:`parse_error` rewords sqlglot's own errors ("Required keyword: 'this'
missing for <class …Where>") as what is missing or unexpected, and where; :func:`unreadable` says where a statement
cannot be cut into words, and why. Positions and the errors that point there are :mod:`shadow.sqlsyntax_where`'s.

Errors name the file, line and column; they quote keywords and punctuation, never a name or a value of a statement
that may not be quoted (:attr:`Statement.quote`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from sqlglot.errors import ParseError
from sqlglot.tokens import Token

from shadow.errors import SqlError, excerpt
from shadow.sqlsplit import Statement
from shadow.sqlsyntax_alter import check_alter_table as check_alter_table
from shadow.sqlsyntax_alter import comma_parts as comma_parts
from shadow.sqlsyntax_where import _at, _error, _line, _starts_line
from shadow.sqlsyntax_where import quotable as quotable

# Words that start a statement and never continue one from the start of a line (outside parentheses) — unless the
# word before them joins them to the statement (`ON DELETE`, `BEFORE INSERT OR UPDATE`, `DO UPDATE`, `FOR NO KEY
# UPDATE`, `ON COMMIT DELETE ROWS`, `WITH GRANT OPTION`, `GRANT SELECT, INSERT`). SELECT, SET, WITH, VALUES, DO and
# END do continue statements (`INSERT INTO t SELECT`, `UPDATE t SET`, `CASE … END`) and are not listed.
_HEADS = frozenset("CREATE COMMENT REINDEX VACUUM LOCK CALL SHOW TRUNCATE INSERT UPDATE DELETE MERGE GRANT REVOKE "
                   "BEGIN COMMIT ROLLBACK".split())
_JOINERS = frozenset(", ( ON OR OF FOR DO INSTEAD ALSO THEN ELSE BEFORE AFTER KEY AS GRANT REVOKE COMMIT WITH AND "
                     "NOT IS WHEN".split())
# ALTER / DROP start a statement when an object kind follows — except inside an ALTER statement, where `DROP index`
# may drop a column named index; TABLE is reserved, so `ALTER TABLE` / `DROP TABLE` never continue one.
_OBJECT_KINDS = frozenset("TABLE INDEX VIEW MATERIALIZED SEQUENCE SCHEMA FUNCTION PROCEDURE TYPE DOMAIN TRIGGER "
                          "EXTENSION POLICY ROLE DATABASE".split())
# Statements that hold other statements' words by design: CREATE SCHEMA's elements, a rule's actions, a function's
# SQL body, EXPLAIN's statement, PREPARE's, a cursor's; the member lists of extensions, publications, subscriptions
# and operator families; default privileges' GRANT/REVOKE; COPY (its data may follow it).
_HOLDERS = re.compile(r"^(?:EXPLAIN|COPY|PREPARE|DECLARE|CREATE (?:OR REPLACE )?(?:SCHEMA|RULE|FUNCTION|PROCEDURE)"
                      r"|ALTER (?:DEFAULT PRIVILEGES|EXTENSION|OPERATOR|PUBLICATION|SUBSCRIPTION))\b")
_SECOND_WORDS = frozenset("UNIQUE OR INTO FROM ON TEMP TEMPORARY UNLOGGED".split())  # named with the first word
_DML = frozenset("INSERT UPDATE DELETE MERGE".split())
_CLOSE = {"(": ")", "[": "]"}


def check_shape(st: Statement, tokens: Sequence[Token], words: Sequence[str]) -> None:
    """Raise :class:`SqlError` when the statement's tokens cannot be one PostgreSQL statement. ``tokens`` carry
    offsets into ``st.text``; ``words`` are their upper-cased keywords (one per token)."""
    if not tokens:
        return
    text = " ".join(words[:4])
    holder = bool(_HOLDERS.match(text))
    is_alter, is_with = words[0] == "ALTER", words[0] == "WITH"
    open_: list[tuple[str, Token]] = []
    for i, (token, word) in enumerate(zip(tokens, words)):
        prev = words[i - 1] if i else ""
        if word in ("(", "["):
            open_.append((word, token))
        elif word in (")", "]"):
            if not open_ or _CLOSE[open_[-1][0]] != word:
                what = f"'{word}' without a matching '{'(' if word == ')' else '['}' before it"
                raise _error(st, token, what if not open_ else f"'{word}' where '{_CLOSE[open_[-1][0]]}' was "
                             f"expected (to close the '{open_[-1][0]}' at {_at(st, open_[-1][1])})")
            open_.pop()
        if word == "," and prev in (",", "(", "["):
            raise _error(st, token, "two commas in a row" if prev == "," else f"a comma right after '{prev}', with "
                         "nothing before it")
        if word in (")", "]") and prev == ",":
            raise _error(st, tokens[i - 1], f"a comma right before '{word}', with nothing after it (PostgreSQL "
                         "allows no trailing comma)")
        if i and not open_ and not holder and _starts_line(st, tokens[i - 1], token) and prev not in _JOINERS:
            after = words[i + 1] if i + 1 < len(words) else ""
            if (word in _HEADS and not (is_with and word in _DML)
                    or word in ("ALTER", "DROP") and (after == "TABLE" or not is_alter and after in _OBJECT_KINDS)
                    or word == "REFRESH" and after == "MATERIALIZED"):
                head = f"{word} {after}" if after in _OBJECT_KINDS | _SECOND_WORDS else word
                raise _error(st, token, f"{head} starts a new statement before the one on line {st.line} ended: is "
                             f"a semicolon missing at the end of line {_line(st, tokens[i - 1])}?")
    if open_:
        word, token = open_[-1]
        raise _error(st, tokens[-1], f"the statement ends with the '{word}' at {_at(st, token)} still open: a "
                     f"'{_CLOSE[word]}' is missing")


def parse_error(st: Statement, exc: ParseError, start_col: int) -> SqlError:
    """sqlglot's error on ``st``, with its position made absolute and its words made plain."""
    error = exc.errors[0] if exc.errors else {}
    rel_line, col = int(error.get("line") or 1), int(error.get("col") or 1)
    highlight = str(error.get("highlight") or "")
    # sqlglot's col is where the offending token ends; report where it starts, as an editor would.
    if highlight and "\n" not in highlight and col >= len(highlight):
        col -= len(highlight) - 1
    line = st.line + rel_line - 1
    if rel_line == 1:
        col += start_col - 1
    near = f"{excerpt(highlight)!r}" if highlight and st.quote else ""
    description = str(error.get("description") or exc).split("\n")[0]
    if description.startswith("Required keyword:"):  # "Required keyword: 'this' missing for <class …Where>"
        message = f"something is missing after {near}" if near else "something is missing here"
    elif description.startswith("Invalid expression / Unexpected token"):
        message = f"unexpected {near}" if near else "unexpected word here"
        source_line = st.text.split("\n")[rel_line - 1] if rel_line <= st.text.count("\n") + 1 else ""
        if rel_line > 1 and highlight and source_line.lstrip().upper().startswith(highlight.upper()):
            message += f": is a semicolon missing at the end of line {line - 1}?"
    elif m := re.match(r"Expecting (\S+)", description):
        message = f"expected '{m.group(1)}'" + (f" near {near}" if near else "")
    else:
        message = re.sub(r"<Token token_type: TokenType\.SENTINEL[^>]*>", "the end of the statement", description)
        message = re.sub(r"<Token token_type: [^,]*, text: ([^,]*),[^>]*>", r"'\1'", message)
        message = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", lambda m: m.group(1).upper(), message)
        if not st.quote:  # sqlglot's description can name the offending token
            message = re.sub(r"'[^']*'", "…", message)
        message = excerpt(message, 200) + (f" (at {near})" if near else "")
    return SqlError(f"cannot parse the SQL (line {line}, column {col}): {message}", file=st.file, line=line,
                    statement=quotable(st))


def unreadable(st: Statement, read: Sequence[Token]) -> SqlError | None:
    """The error for a statement that cannot be cut into words past the tokens ``read``, when PostgreSQL refuses
    what comes next too: a bit string with a digit other than 0 and 1, a hex string with one other than 0-9 and A-F
    (the splitter has already refused unterminated quotes and comments). None: the statement is not checked."""
    start = read[-1].end + 1 if read else 0
    pos = m.end() if (m := _SKIP.match(st.text, start)) else start
    if m := _BITS.match(st.text, pos):
        digits, what = ("01", "a bit string (B'…') may hold only the digits 0 and 1") if m.group(1) in "bB" else (
            string.hexdigits, "a hex string (X'…') may hold only the digits 0-9 and A-F")
        bad = next((c for c in m.group(2) if c not in digits), None)
        if bad is not None:
            return _error(st, pos, what + (f", not {bad!r}" if st.quote else ""))
    return None


_SKIP = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/)*", re.DOTALL)  # what may stand between two tokens
_BITS = re.compile(r"([bBxX])'([^']*)'")
