"""Why an SQL statement does not parse, in words a user understands.

sqlglot is more lenient than PostgreSQL: it accepts ``CREATE TABLE t (a int,, b int)``, and it keeps a statement it
cannot read as an opaque ``Command`` — so ``ALTER TABLE t ADD COLUMN a int`` and a ``CREATE INDEX`` on the next line,
the semicolon between them forgotten, read as one odd ALTER TABLE. :func:`check_shape` catches, from the tokens
alone, what PostgreSQL's grammar never allows: a comma with nothing on one side, unbalanced parentheses, and a line
that starts a new statement before the previous one ended. sqlglot also keeps an ALTER TABLE action it does not
know as a ``Command`` (``ADD COLUM x int``), or reads a missing name as a keyword (``DROP COLUMN;``):
:func:`check_alter_table` reads every action against PostgreSQL's ALTER TABLE grammar. :func:`parse_error` rewords
sqlglot's own errors ("Required keyword: 'this' missing for <class …Where>") as what is missing or unexpected, and
where; :func:`unreadable` says where a statement cannot be cut into words, and why.

Errors name the file, line and column; they quote keywords and punctuation, never a name or a value of a statement
that may not be quoted (:attr:`Statement.quote`).
"""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Sequence

from sqlglot.errors import ParseError
from sqlglot.tokens import Token

from shadow.errors import SqlError, excerpt
from shadow.sqlsplit import Statement

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


# --- ALTER TABLE actions, read against PostgreSQL's grammar (https://www.postgresql.org/docs/current/sql-altertable.html)

# PostgreSQL's reserved key words (pg_get_keywords() with catcode 'R'): never a table's, a column's or a
# constraint's name unless double-quoted.
_RESERVED = frozenset(
    "ALL ANALYSE ANALYZE AND ANY ARRAY AS ASC ASYMMETRIC BOTH CASE CAST CHECK COLLATE COLUMN CONSTRAINT CREATE "
    "CURRENT_CATALOG CURRENT_DATE CURRENT_ROLE CURRENT_TIME CURRENT_TIMESTAMP CURRENT_USER DEFAULT DEFERRABLE DESC "
    "DISTINCT DO ELSE END EXCEPT FALSE FETCH FOR FOREIGN FROM GRANT GROUP HAVING IN INITIALLY INTERSECT INTO LATERAL "
    "LEADING LIMIT LOCALTIME LOCALTIMESTAMP NOT NULL OFFSET ON ONLY OR ORDER PLACING PRIMARY REFERENCES RETURNING "
    "SELECT SESSION_USER SOME SYMMETRIC TABLE THEN TO TRAILING TRUE UNION UNIQUE USER USING VARIADIC WHEN WHERE "
    "WINDOW WITH".split())
_NAME = re.compile(r'"(?:[^"]|"")*"|[^\W\d][\w$]*')
# Words a type may have after its first one: DOUBLE PRECISION, CHARACTER VARYING, TIMESTAMP WITH TIME ZONE,
# INTERVAL DAY TO SECOND, int ARRAY (its parenthesised modifiers and [] bounds are read as groups).
_TYPE_WORDS = frozenset("PRECISION VARYING CHARACTER CHAR WITH WITHOUT TIME ZONE YEAR MONTH DAY HOUR MINUTE SECOND "
                        "TO ARRAY".split())
# What may follow a new column's type: COLLATE, STORAGE, COMPRESSION and the words a column constraint starts with.
_COLUMN_QUALIFIERS = frozenset("COLLATE CONSTRAINT NOT NULL CHECK DEFAULT GENERATED UNIQUE PRIMARY REFERENCES "
                               "DEFERRABLE INITIALLY ENFORCED STORAGE COMPRESSION OPTIONS".split())
_TABLE_CONSTRAINTS = frozenset("CHECK UNIQUE PRIMARY FOREIGN EXCLUDE NOT".split())  # NOT NULL: PostgreSQL 18
_COLUMN_CHANGES = frozenset("TYPE SET DROP ADD RESET RESTART OPTIONS".split())
_COLUMN_DROPS = frozenset("DEFAULT NOT EXPRESSION IDENTITY".split())
# The other actions, by first word: the words that may come second (None: any).
_ACTIONS: dict[str, frozenset[str] | None] = {
    "VALIDATE": frozenset({"CONSTRAINT"}), "ENABLE": frozenset({"TRIGGER", "RULE", "REPLICA", "ALWAYS", "ROW"}),
    "DISABLE": frozenset({"TRIGGER", "RULE", "ROW"}), "FORCE": frozenset({"ROW"}),
    "NO": frozenset({"FORCE", "INHERIT"}), "CLUSTER": frozenset({"ON"}), "NOT": frozenset({"OF"}),
    "OWNER": frozenset({"TO"}), "REPLICA": frozenset({"IDENTITY"}), "RESET": frozenset({"("}),
    "OPTIONS": frozenset({"("}), "INHERIT": None, "OF": None, "SET": None,
}
_ACTION_HEADS = ("ADD", "DROP", "ALTER", "RENAME", "ATTACH", "DETACH", *_ACTIONS)
# Actions newer than the grammar read here (PostgreSQL 19's SPLIT PARTITION, MERGE PARTITIONS): not checked.
_NEWER = frozenset({"SPLIT", "MERGE"})


def comma_parts(words: Sequence[str], start: int = 0) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of ``words[start:]`` between the commas outside parentheses and brackets."""
    parts, depth, begin = [], 0, start
    for i in range(start, len(words)):
        depth += (words[i] in ("(", "[")) - (words[i] in (")", "]"))
        if words[i] == "," and depth == 0:
            parts.append((begin, i))
            begin = i + 1
    return [*parts, (begin, len(words))]


def check_alter_table(st: Statement, tokens: Sequence[Token], words: Sequence[str]) -> str | None:
    """Raise :class:`SqlError` when an ALTER TABLE's actions cannot be PostgreSQL's: an action it does not know, a
    name or a type missing, a word where none may stand. Return why the statement was not checked, or None.

    The check errs towards letting a statement through: expressions, constraints and options are not read, and
    an action newer than this grammar is reported unchecked rather than refused (the rehearsal runs it anyway)."""
    if tuple(words[:2]) != ("ALTER", "TABLE"):
        return None
    return _AlterTable(st, tokens, words).read()


class _AlterTable:
    """A reader of one ALTER TABLE's words, one action at a time."""

    def __init__(self, st: Statement, tokens: Sequence[Token], words: Sequence[str]) -> None:
        self.st = st
        # sqlglot makes one token of DOUBLE PRECISION, PRIMARY KEY …: one word each here, sharing the token
        pairs = [(part, token) for token, word in zip(tokens, words)
                 for part in ([word] if word.startswith('"') else word.split())]
        self.words, self.tokens = [w for w, _ in pairs], [t for _, t in pairs]
        self.i, self.end = 2, len(pairs)

    def read(self) -> str | None:
        if self.word() == "ALL":  # ALTER TABLE ALL IN TABLESPACE … SET TABLESPACE: moves tables, takes no action
            return None
        self.take("IF", "EXISTS")
        if self.take("ONLY") and self.word() == "(":
            self.group()
        else:
            self.name("the table's name", qualified=True)
            self.take("*")
        parts = comma_parts(self.words, self.i)
        if parts == [(self.end, self.end)]:
            raise self.missing("an action (ADD, DROP, ALTER …) is missing after the table's name")
        for a, b in parts:
            if a == b:
                raise _error(self.st, self.tokens[min(a, self.end - 1)], "a comma with no action "
                             + ("after it" if a == self.end else "before it"))
        unchecked = None
        readers = {"ADD": self._add, "DROP": self._drop, "ALTER": self._alter, "RENAME": self._rename,
                   "ATTACH": self._attach, "DETACH": self._detach}
        for a, b in parts:
            self.i, self.end = a, b
            head = self.word()
            if head in ("RENAME", "ATTACH", "DETACH") or head == "SET" and self.word(1) == "SCHEMA":
                if len(parts) > 1:
                    raise _error(self.st, self.tokens[a], f"{head} {self.word(1)} cannot be combined with other "
                                 "actions: PostgreSQL takes it only in an ALTER TABLE of its own")
            if head in _NEWER:
                unchecked = f"lint does not know the ALTER TABLE action {head}"
            elif reader := readers.get(head):
                reader()
            elif head == "SET" and self.word(1) == "SCHEMA":
                self.i += 2
                self.name("the new schema's name")
                self.done("SET SCHEMA and the schema's name")
            elif head in _ACTIONS:
                second = self.word(1)
                if not second:
                    raise self.missing(f"{head} is not a whole action")
                if (allowed := _ACTIONS[head]) is not None and second not in allowed:
                    raise self.unexpected(a + 1, f" after {head} (it takes {' or '.join(sorted(allowed))})")
            else:
                close = difflib.get_close_matches(head, _ACTION_HEADS, n=1)
                raise self.unexpected(a, ": PostgreSQL has no ALTER TABLE action that starts so (they start with "
                                      "ADD, DROP, ALTER, RENAME, SET …)" + (f"; is {close[0]} misspelled?"
                                                                          if close else ""))
        return unchecked

    # --- the actions

    def _add(self) -> None:
        self.i += 1
        if self.word() in ("CONSTRAINT", *_TABLE_CONSTRAINTS):
            if self.take("CONSTRAINT"):
                self.name("the constraint's name")
                if self.word() not in _TABLE_CONSTRAINTS:
                    raise self.wrong("CHECK, UNIQUE, PRIMARY KEY, FOREIGN KEY or EXCLUDE after the constraint's name")
            return  # the constraint itself is not read
        self.take("COLUMN")
        self.take("IF", "NOT", "EXISTS")
        name = self.name("the new column's name")
        self.type_("the new column's type")
        if self.i < self.end and self.word() not in _COLUMN_QUALIFIERS:
            read = (f": after ADD, {self.near(name)} reads as the new column's name and "
                    f"{self.near(name + 1, self.i - name - 1)} as its type" if self.st.quote else
                    " after the new column's name and type")
            raise self.unexpected(self.i, f"{read}, and only constraints (NOT NULL, DEFAULT …, REFERENCES …) may "
                                  "follow them" + self.misspelled(name))

    def _drop(self) -> None:
        self.i += 1
        what = "constraint" if self.take("CONSTRAINT") else "column"
        self.take("COLUMN")
        self.take("IF", "EXISTS")
        name = self.name(f"the name of the {what} to drop")
        if not self.take("CASCADE"):
            self.take("RESTRICT")
        self.done(f"the name of the {what} to drop", name)

    def _alter(self) -> None:
        self.i += 1
        if self.take("CONSTRAINT"):
            self.name("the constraint's name")
            return  # DEFERRABLE, INHERIT …: not read
        self.take("COLUMN")
        name = self.name("the column's name")
        change = self.word()
        if change not in _COLUMN_CHANGES:
            if not change:
                raise self.missing("what to change about the column (TYPE, SET …, DROP …) is missing")
            raise self.unexpected(self.i, " after the column's name: ALTER [COLUMN] name takes TYPE, SET …, "
                                  "DROP … next" + self.misspelled(name))
        if change == "TYPE" or self.take("SET", "DATA"):
            if not self.take("TYPE"):
                raise self.wrong("TYPE after SET DATA")
            self.type_("the column's new type")
            if self.i < self.end and self.word() not in ("COLLATE", "USING"):
                raise self.unexpected(self.i, " after the column's new type (COLLATE or USING may follow it)")
        elif not self.word(1) and change != "RESTART":
            raise self.missing(f"{change} is not a whole change of the column")
        elif change == "DROP" and self.word(1) not in _COLUMN_DROPS:
            raise self.unexpected(self.i + 1, " after ALTER COLUMN … DROP (it takes DEFAULT, NOT NULL, EXPRESSION "
                                  "or IDENTITY)")

    def _rename(self) -> None:
        self.i += 1
        if self.take("TO"):
            self.name("the table's new name")
            self.done("the table's new name")
            return
        what = "constraint" if self.take("CONSTRAINT") else "column"
        self.take("COLUMN")
        self.name(f"the {what}'s name")
        if not self.take("TO"):
            raise self.wrong(f"TO after the {what}'s name")
        self.name(f"the {what}'s new name")
        self.done(f"the {what}'s new name")

    def _attach(self) -> None:
        self.partition("ATTACH")
        if not self.take("DEFAULT"):
            if not self.take("FOR", "VALUES"):
                raise self.wrong("FOR VALUES … or DEFAULT after the partition's name")
            return  # the bounds are not read
        self.done("DEFAULT")

    def _detach(self) -> None:
        self.partition("DETACH")
        if not self.take("CONCURRENTLY"):
            self.take("FINALIZE")
        self.done("the partition's name")

    # --- the parts of an action

    def partition(self, verb: str) -> None:
        self.i += 1
        if not self.take("PARTITION"):
            raise self.wrong(f"PARTITION after {verb}")
        self.name("the partition's name", qualified=True)

    def name(self, what: str, *, qualified: bool = False) -> int:
        """Read a name (``a``, ``"A"``, ``U&"…"``; ``s.a`` when ``qualified``); return where it starts."""
        start = self.i
        for part in range(3 if qualified else 1):
            if part and not self.take("."):
                break
            word = self.word()
            if word == "U" and self.word(1) == "&" and self.word(2).startswith('"'):  # U&"d\0061t" UESCAPE '!'
                self.i += 3
                self.take("UESCAPE", "''")
            elif _NAME.fullmatch(word) and (word not in _RESERVED or word.startswith('"')):
                self.i += 1
            elif not word:
                raise self.missing(f"{what} is missing")
            elif word in _RESERVED:
                raise _error(self.st, self.tokens[self.i], f"{what} is missing: {word} is a reserved word (a name "
                             "spelled so must be written in double quotes)")
            else:
                raise self.unexpected(self.i, f" where {what} should be")
        return start

    def type_(self, what: str) -> None:
        self.take("SETOF")
        self.name(what, qualified=True)
        while self.word() in _TYPE_WORDS or self.word() in ("(", "["):
            if self.word() in _TYPE_WORDS:
                self.i += 1
            else:
                self.group()

    def group(self) -> None:
        """Step past the parenthesised or bracketed group that starts here (check_shape has matched them)."""
        depth = 0
        while self.i < self.end:
            depth += (self.words[self.i] in ("(", "[")) - (self.words[self.i] in (")", "]"))
            self.i += 1
            if depth == 0:
                return

    def done(self, what: str, name: int | None = None) -> None:
        if self.i < self.end:
            raise self.unexpected(self.i, f" after {what}" + (self.misspelled(name) if name is not None else ""))

    # --- reading and telling

    def word(self, ahead: int = 0) -> str:
        return self.words[self.i + ahead] if self.i + ahead < self.end else ""

    def take(self, *words: str) -> bool:
        if all(self.word(k) == w for k, w in enumerate(words)):
            self.i += len(words)
            return True
        return False

    def near(self, at: int, count: int = 1) -> str:
        first, last = self.tokens[at], self.tokens[at + count - 1]
        return f"'{excerpt(self.st.text[first.start: last.end + 1])}'"

    def misspelled(self, name: int) -> str:
        """``; is COLUMN misspelled?`` when the name read at ``name`` is a near miss of a keyword."""
        close = difflib.get_close_matches(self.words[name], ("COLUMN", "CONSTRAINT"), n=1, cutoff=0.8)
        return f"; is {close[0]} misspelled?" if close and not self.words[name].startswith('"') else ""

    def unexpected(self, at: int, why: str) -> SqlError:
        return _error(self.st, self.tokens[at], f"unexpected {self.near(at) if self.st.quote else 'word'}{why}")

    def missing(self, message: str) -> SqlError:
        """The error where the action ends (at the comma or semicolon that came instead, as PostgreSQL points)."""
        return _error(self.st, self.tokens[self.end - 1].end + 1, message)

    def wrong(self, expected: str) -> SqlError:
        if self.i >= self.end:
            return self.missing(f"{expected} is missing")
        return _error(self.st, self.tokens[self.i], f"expected {expected}"
                      + (f", not {self.near(self.i)}" if self.st.quote else ""))


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
