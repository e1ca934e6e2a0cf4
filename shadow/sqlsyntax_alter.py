"""ALTER TABLE actions read against PostgreSQL's grammar: what is missing or unexpected in each, and where.

sqlglot keeps an ALTER TABLE action it does not know as a ``Command`` (``ADD COLUM x int``), or reads a missing name
as a keyword (``DROP COLUMN;``): :func:`check_alter_table` reads every action, one at a time, against
https://www.postgresql.org/docs/current/sql-altertable.html. :func:`comma_parts` cuts a statement's words at its
top-level commas. Both are re-exported by :mod:`shadow.sqlsyntax`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from sqlglot.tokens import Token

from shadow.errors import SqlError, excerpt
from shadow.sqlsplit import Statement
from shadow.sqlsyntax_where import _error

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
