"""The findings of one ALTER TABLE action (read from the tokens: sqlglot's ALTER TABLE grammar is partial): dropped
columns, rewrites and full scans under an ACCESS EXCLUSIVE lock, constraints added without NOT VALID, renames."""

from __future__ import annotations

import re
from collections.abc import Iterator

from shadow.lint.facts import IDENT, fold_name

# PostgreSQL functions marked VOLATILE that people put in defaults. now(), current_timestamp and
# statement_timestamp() are STABLE: PG11+ evaluates them once and stores the value without a rewrite
# (https://www.postgresql.org/docs/current/sql-altertable.html#SQL-ALTERTABLE-NOTES).
VOLATILE_FUNCTIONS = ("random", "random_normal", "clock_timestamp", "timeofday", "gen_random_uuid", "uuidv4",
                      "uuidv7", "uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v4", "nextval",
                      "currval", "lastval", "setval", "txid_current", "pg_current_xact_id")
_VOLATILE = re.compile(r"\b(" + "|".join(f.upper() for f in VOLATILE_FUNCTIONS) + r") \(")
_NOT_VALID = re.compile(r"\bNOT VALID\b")
_USING_INDEX = re.compile(r"^USING INDEX (?!TABLESPACE\b)")
_OLD_NAME_BREAKS = "breaks running code that still uses the old name"


def alter_action(table: str, action: str) -> Iterator[tuple[str, str]]:
    """The findings of one ALTER TABLE action."""
    at = f"ALTER TABLE {table}"
    if m := re.match(rf"^DROP (?!CONSTRAINT\b)(?:COLUMN )?(?:IF EXISTS )?({IDENT})", action):
        yield "drop-column", f"{at} DROP COLUMN {fold_name(m.group(1))} deletes the column and its data"
    elif m := re.match(rf"^ALTER (?:COLUMN )?({IDENT}) (?:SET DATA )?TYPE\b", action):
        yield "alter-column-type", (f"{at} ALTER COLUMN {fold_name(m.group(1))} TYPE rewrites the table and its "
                                    "indexes under an ACCESS EXCLUSIVE lock (unless the types are binary-compatible)")
    elif m := re.match(rf"^ALTER (?:COLUMN )?({IDENT}) SET NOT NULL\b", action):
        yield "set-not-null", (f"{at} ALTER COLUMN {fold_name(m.group(1))} SET NOT NULL scans the whole table under an "
                               "ACCESS EXCLUSIVE lock")
    elif m := re.match(rf"^ADD (?:CONSTRAINT ({IDENT}) )?(FOREIGN KEY|CHECK|UNIQUE|PRIMARY KEY)\b ?(.*)", action):
        what = f"{at} ADD {'CONSTRAINT ' + fold_name(m.group(1)) + ' ' if m.group(1) else ''}{m.group(2)}"
        kind, rest = m.group(2), m.group(3)
        if kind == "FOREIGN KEY" and not _NOT_VALID.search(rest):
            yield "add-foreign-key", f"{what} without NOT VALID checks every row while it locks both tables"
        elif kind == "CHECK" and not _NOT_VALID.search(rest):
            yield "add-check", f"{what} without NOT VALID scans the whole table under an ACCESS EXCLUSIVE lock"
        elif kind in ("UNIQUE", "PRIMARY KEY") and not _USING_INDEX.match(rest):
            yield f"add-{kind.lower().replace(' ', '-')}", f"{what} builds its index under an ACCESS EXCLUSIVE lock"
    elif m := re.match(rf"^ADD (?:COLUMN )?(?:IF NOT EXISTS )?({IDENT}) (.*)", action):
        what, definition = f"{at} ADD COLUMN {fold_name(m.group(1))}", m.group(2)
        if v := _VOLATILE.search(definition):
            yield "volatile-default", (f"{what} with a volatile default ({v.group(1).lower()}()) rewrites the whole "
                                       "table under an ACCESS EXCLUSIVE lock")
        elif re.match(r"(?:SMALL|BIG)?SERIAL[248]?\b", definition) or re.search(
                r"\bGENERATED (?:ALWAYS|BY DEFAULT) AS IDENTITY\b", definition):
            yield "volatile-default", (f"{what} as serial/identity fills every row from a sequence: a rewrite of "
                                       "the whole table under an ACCESS EXCLUSIVE lock")
        elif _fails_on_rows(definition):
            yield "not-null-without-default", (f"{what} NOT NULL without a DEFAULT fails on a table that has rows "
                                               "(every existing row would hold NULL)")
        if re.search(r"\bREFERENCES\b", definition):
            yield "add-foreign-key", f"{what} REFERENCES checks every row while it locks both tables"
        if re.search(r"\bPRIMARY KEY\b", definition):
            yield "add-primary-key", f"{what} PRIMARY KEY builds its index under an ACCESS EXCLUSIVE lock"
        elif re.search(r"\bUNIQUE\b", definition):
            yield "add-unique", f"{what} UNIQUE builds its index under an ACCESS EXCLUSIVE lock"
    elif m := re.match(rf"^RENAME TO ({IDENT})", action):
        yield "rename-table", f"{at} RENAME TO {fold_name(m.group(1))} {_OLD_NAME_BREAKS}"
    elif m := re.match(rf"^SET SCHEMA ({IDENT})", action):
        yield "rename-table", f"{at} SET SCHEMA {fold_name(m.group(1))} moves the table: it {_OLD_NAME_BREAKS}"
    elif m := re.match(rf"^RENAME (?:COLUMN )?({IDENT}) TO ({IDENT})", action):
        yield "rename-column", (f"{at} RENAME COLUMN {fold_name(m.group(1))} TO {fold_name(m.group(2))} "
                                f"{_OLD_NAME_BREAKS}")


def _fails_on_rows(definition: str) -> bool:
    """Whether a new column with this definition (its words after the name) would be NULL in existing rows while
    NOT NULL (or a PRIMARY KEY) forbids it: no DEFAULT other than NULL, not generated, not serial."""
    depth, top = 0, []  # the words outside parentheses: a CHECK (a IS NOT NULL) says nothing about the column
    for word in definition.split(" "):
        depth += (word == "(") - (word == ")")
        top.append(word if depth == 0 and word != ")" else "")
    flat = " ".join(w for w in top if w)
    required = re.search(r"(?<!\bIS )\bNOT NULL\b|\bPRIMARY KEY\b", flat)
    filled = re.search(r"\bDEFAULT (?!NULL\b)|\bGENERATED\b", flat) or re.match(r"(?:SMALL|BIG)?SERIAL[248]?\b", flat)
    return bool(required) and not filled
