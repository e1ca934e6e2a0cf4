"""Static findings on SQL, before anything runs: destructive statements, lock-heavy or table-rewriting DDL,
statements that cannot run in a transaction, and missing lock/statement timeouts.

Two readers, each used where it is reliable:

* **sqlglot's parse** (Postgres dialect) for the statement kind, WHERE clauses, CREATE INDEX options and the tables
  a statement reads and writes;
* **the token stream** (comments dropped, string literals masked) for ALTER TABLE actions and for statements sqlglot
  keeps as an opaque ``exp.Command``. sqlglot's ALTER TABLE grammar is partial — it falls back to ``Command`` for
  ``USING INDEX``, ``VALIDATE CONSTRAINT``, ``ATTACH PARTITION`` … and reads ``RENAME col TO new`` as a table
  rename — so one token reader serves every ALTER TABLE rather than two readers that could disagree.

"Earlier" means earlier in the statements linted together (one SQL action's files, in order). What an earlier
statement did to the database holds for later ones: objects created earlier (without ``IF NOT EXISTS``) are new —
nobody else uses them yet, so dropping, locking or rewriting them is not flagged — and a table an earlier statement
shows to be partitioned (``PARTITION BY``, ``PARTITION OF``, ``ATTACH PARTITION``) is partitioned. What it did to its
*session* (``SET lock_timeout``, ``BEGIN``) holds only within its file: migration tools run each file in a session
of its own, unless the caller says the files share one (``one_session``, a plan's ``action.one_session``).
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import sqlglot
from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from shadow.errors import BadInput, SqlError, excerpt
from shadow.sqlsplit import (MAX_ANALYSED_STATEMENT, MAX_ANALYSED_TOTAL, Statement, forces_autocommit,
                             load_sql_files)
from shadow.sqlsyntax import check_shape, parse_error, quotable

Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class Rule:
    id: str
    severity: Severity
    title: str
    hint: str


# PostgreSQL cannot build an index CONCURRENTLY on a partitioned table
# (https://www.postgresql.org/docs/current/sql-createindex.html#SQL-CREATEINDEX-CONCURRENTLY): this is its recipe.
_PARTITIONED_INDEX_HINT = ("a partitioned table takes no CREATE INDEX CONCURRENTLY: CREATE INDEX … ON ONLY the table "
                           "(instant; invalid until complete), then per partition CREATE INDEX CONCURRENTLY and "
                           "ALTER INDEX <the parent's index> ATTACH PARTITION <that index>")
_NOT_VALID_HINT = "ADD CONSTRAINT … NOT VALID, then VALIDATE CONSTRAINT in a separate migration"
_USING_INDEX_HINT = "CREATE UNIQUE INDEX CONCURRENTLY first, then ADD CONSTRAINT … {} USING INDEX"

RULES: dict[str, Rule] = {r.id: r for r in (
    # destructive
    Rule("drop-table", "error", "DROP TABLE",
         "drop it in its own migration once no code reads it, and allow drop-table for that file"),
    Rule("drop-column", "error", "ALTER TABLE … DROP COLUMN",
         "stop using the column in code first, then drop it in a later migration that allows drop-column"),
    Rule("drop-schema", "error", "DROP SCHEMA", "drop the objects you mean one by one, or allow drop-schema"),
    Rule("drop-index", "error", "DROP INDEX",
         "check pg_stat_user_indexes that it is unused, then DROP INDEX CONCURRENTLY in its own migration"),
    Rule("drop-view", "error", "DROP [MATERIALIZED] VIEW",
         "drop it only once nothing queries it, and allow drop-view for that file"),
    Rule("drop-database", "error", "DROP DATABASE", "never from a migration; do it by hand"),
    Rule("truncate", "error", "TRUNCATE", "DELETE … WHERE the rows you mean, or allow truncate for this file"),
    Rule("delete-without-where", "error", "DELETE without WHERE",
         "add a WHERE clause (WHERE true if you really mean every row)"),
    Rule("update-without-where", "error", "UPDATE without WHERE",
         "add a WHERE clause (WHERE true if you really mean every row), and batch large updates"),
    # lock-heavy or table-rewriting
    Rule("alter-column-type", "warning", "ALTER COLUMN … TYPE",
         "add a new column, backfill it in batches, switch the code over, then drop the old one"),
    Rule("set-not-null", "warning", "ALTER COLUMN … SET NOT NULL",
         "ADD CONSTRAINT … CHECK (col IS NOT NULL) NOT VALID, VALIDATE it, then SET NOT NULL (PG12+ skips the scan)"),
    Rule("volatile-default", "warning", "ADD COLUMN with a volatile default (or serial / identity)",
         "add the column without a default (or with a constant one), backfill in batches, then set the default"),
    Rule("create-index-blocking", "warning", "CREATE INDEX without CONCURRENTLY on an existing table",
         "create the index with CREATE INDEX CONCURRENTLY in its own migration"),
    Rule("concurrently-on-partitioned", "error", "CREATE INDEX CONCURRENTLY on a partitioned table "
         "(PostgreSQL refuses it)", _PARTITIONED_INDEX_HINT),
    Rule("reindex-blocking", "warning", "REINDEX without CONCURRENTLY",
         "REINDEX … CONCURRENTLY (PostgreSQL 12+), in an SQL action of its own (it cannot run in a transaction)"),
    Rule("lock-access-exclusive", "warning", "LOCK TABLE in ACCESS EXCLUSIVE mode (the default mode)",
         "take the weakest mode that protects what you do (SHARE ROW EXCLUSIVE blocks writes, not reads), keep the "
         "transaction short, and SET lock_timeout before it"),
    Rule("not-null-without-default", "error", "ADD COLUMN … NOT NULL without a DEFAULT on an existing table",
         "give it a constant DEFAULT (added without a rewrite since PostgreSQL 11), or add it nullable, backfill in "
         "batches, then SET NOT NULL"),
    Rule("add-foreign-key", "warning", "ADD FOREIGN KEY without NOT VALID", _NOT_VALID_HINT),
    Rule("add-check", "warning", "ADD CHECK without NOT VALID", _NOT_VALID_HINT),
    Rule("add-unique", "warning", "ADD UNIQUE directly", _USING_INDEX_HINT.format("UNIQUE")),
    Rule("add-primary-key", "warning", "ADD PRIMARY KEY directly", _USING_INDEX_HINT.format("PRIMARY KEY")),
    Rule("rename-table", "warning", "ALTER TABLE … RENAME TO / SET SCHEMA",
         "deploy code that no longer uses the old name first (a view with the old name can bridge the gap)"),
    Rule("rename-column", "warning", "ALTER TABLE … RENAME COLUMN",
         "expand and contract: add the new column, write both, backfill, switch reads, then drop the old one"),
    # not transactional
    Rule("non-transactional", "warning", "CREATE/DROP INDEX CONCURRENTLY, VACUUM, REINDEX CONCURRENTLY, "
         "CREATE DATABASE, ALTER SYSTEM, BEGIN/COMMIT … (anything shadow must run in autocommit)",
         "put it in an SQL action of its own, so the rest of the migration still runs in one transaction"),
    Rule("in-transaction-block", "error", "CREATE INDEX CONCURRENTLY, VACUUM … after BEGIN, inside the transaction "
         "block (PostgreSQL refuses it there)",
         "COMMIT before it, or drop the BEGIN: shadow runs an action with such a statement statement by statement"),
    # hygiene
    Rule("no-lock-timeout", "warning", "lock-taking statement with no lock_timeout set before it",
         "start the file with SET lock_timeout = '5s' (and retry the migration when it times out)"),
    Rule("no-statement-timeout", "warning", "lock-taking statement with no statement_timeout set before it",
         "start the file with SET statement_timeout = '…', sized for the slowest statement"),
    Rule("opaque-statement", "info", "procedural code (DO, CALL) or a statement sqlglot cannot analyse",
         "keep it small; the rehearsal's diff shows what it actually changed"),
    # what static analysis does not read (shadow.sqlsplit.MAX_ANALYSED_STATEMENT / MAX_ANALYSED_TOTAL)
    Rule("statement-too-large", "info", "a statement too large for static analysis",
         "the rehearsal's diff shows what it changed; split a bulk load into smaller statements to have them "
         "checked"),
    Rule("analysis-limit", "info", "statements after the first MiB of an action's SQL, which static analysis does "
         "not read", "the rehearsal's diff shows what they changed; keep schema changes in a file of their own, "
         "before bulk data"),
)}


@dataclass(frozen=True)
class Finding:
    """One static finding on one statement; ``id`` is stable (policy.allow and --allow name it)."""

    id: str
    severity: Severity
    message: str
    hint: str
    file: str
    line: int
    statement: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# --- public API -------------------------------------------------------------------------------------------------


@dataclass
class _Session:
    """What the statements of one session have set so far."""

    timeouts: dict[str, bool] = field(default_factory=lambda: {"lock_timeout": False, "statement_timeout": False})
    block: Statement | None = None  # the BEGIN of the open transaction block


@dataclass
class _Database:
    """What the statements linted so far have done to the database."""

    created: set[str] = field(default_factory=set)
    partitioned: set[str] = field(default_factory=set)


def lint(statements: Sequence[Statement], *, one_session: bool = False,
         partitioned: Collection[str] = ()) -> list[Finding]:
    """The findings on ``statements`` (one SQL action's, in order).

    Each file runs in a session of its own unless ``one_session``: a ``SET lock_timeout`` or a ``BEGIN`` in one
    file does not hold in the next. ``partitioned``: the tables the database (a rehearsal's checkpoint) knows to be
    partitioned, named as observed (``public.payment``, ``app."Orders"``). Raise :class:`SqlError` naming file, line
    and column when a statement does not parse. Statements the splitter marked ``analyse=False`` are not read: one
    finding names each statement too large, one the first statement past the total bound.
    """
    findings: list[Finding] = []
    db = _Database(partitioned={_name(p) for p in partitioned})
    session = _Session()
    nagged: set[tuple[str, str]] = set()
    left_out: list[Statement] = []
    for n, st in enumerate(statements):
        if n and st.file != statements[n - 1].file and not one_session:
            session = _Session()
        if not st.analyse:
            if len(st.text) > MAX_ANALYSED_STATEMENT:
                findings.append(_finding(st, "statement-too-large", f"{_head(st)} is {_size(len(st.text))}, more "
                                         f"than the {_size(MAX_ANALYSED_STATEMENT)} static analysis reads: it was "
                                         "not checked (the rehearsal still runs it)"))
            else:
                left_out.append(st)
            continue
        facts = _analyse(st, st.column)
        subjects = _subjects(facts)
        is_new = bool(subjects) and all(_is_new(s, db.created) for s in subjects)
        for rule_id, message, hint in _checks(facts, is_new, session, db):
            findings.append(_finding(st, rule_id, message, hint))
        if _takes_heavy_lock(facts) and not is_new:
            on = f" on {', '.join(sorted(subjects))}" if subjects else ""
            for setting, why in _TIMEOUT_WHY.items():
                rule_id = f"no-{setting.replace('_', '-')}"
                if not session.timeouts[setting] and (st.file, rule_id) not in nagged:
                    nagged.add((st.file, rule_id))
                    findings.append(_finding(st, rule_id, f"{_label(facts)}{on} takes a heavy lock with no "
                                             f"{setting} set before it: {why}"))
        session.timeouts.update(_timeout_settings(facts))
        session.block = _block_after(facts, session.block)
        db.created |= _creates(facts)
        db.partitioned |= _partitioned_by(facts)
    if left_out:
        findings.append(_finding(left_out[0], "analysis-limit", f"static analysis stops after "
                                 f"{_size(MAX_ANALYSED_TOTAL)} of SQL: this statement and the "
                                 f"{len(left_out) - 1:,} after it ({_size(sum(len(s.text) for s in left_out))}) were "
                                 "not checked (the rehearsal still runs them)"))
    return findings


def _size(chars: int) -> str:
    return f"{chars / (1 << 20):.1f} MiB" if chars >= 1 << 20 else f"{chars / 1024:.0f} KiB"


def _head(st: Statement) -> str:
    """``this INSERT`` — the statement's first word, read without tokenizing it all."""
    m = re.match(r"[A-Za-z]+", st.text)
    return f"this {m.group().upper()}" if m else "this statement"


def lint_files(paths: Sequence[Path], *, one_session: bool = False,
               partitioned: Collection[str] = ()) -> list[Finding]:
    """Read, split and lint SQL files together, in the order given (like one SQL action's files); see :func:`lint`."""
    return lint(load_sql_files(list(paths), [str(p) for p in paths]), one_session=one_session,
                partitioned=partitioned)


def touched(statement: Statement) -> tuple[set[str], set[str]]:
    """``(reads, writes)``: the tables (and views) a statement reads and writes — schema-qualified when written so,
    unquoted names folded to lower case as PostgreSQL does. A table both read and written (``INSERT INTO a SELECT …
    FROM a``) is in both; the target of a plain UPDATE/DELETE only in ``writes``. Both are empty for what cannot be
    seen statically (DO, CALL) and for objects that are not tables (DROP INDEX, DROP SCHEMA)."""
    if not statement.analyse:
        return set(), set()
    return _touched(_analyse(statement, statement.column))


AllowEntry = str | Mapping[str, str]


def allow_problems(allow: Sequence[AllowEntry]) -> list[str]:
    """Every problem with an allow list (unknown id, bad entry), for the plan loader to report with its location."""
    problems: list[str] = []
    for n, entry in enumerate(allow, 1):
        rule_id: object = entry
        if isinstance(entry, Mapping):
            rule_id = entry.get("id")
            if set(entry) - {"id", "file"}:
                problems.append(f"allow entry {n}: unknown key(s) {sorted(set(entry) - {'id', 'file'})} "
                                "(expected id and file)")
            if not isinstance(entry.get("file", ""), str):
                problems.append(f"allow entry {n}: file must be a glob string")
        if not isinstance(rule_id, str) or rule_id not in RULES:
            problems.append(f"allow entry {n}: unknown finding id {rule_id!r} (known: {', '.join(RULES)})")
    return problems


def allowed(findings: Sequence[Finding], allow: Sequence[AllowEntry]) -> tuple[list[Finding], list[Finding]]:
    """Split ``findings`` into ``(kept, allowed)``. An allow entry is a finding id, or ``{id: …, file: glob}`` to
    allow the id only in matching files (a glob without ``/`` also matches the file's base name)."""
    if problems := allow_problems(allow):
        raise BadInput("; ".join(problems))
    rules = [(e, None) if isinstance(e, str) else (e["id"], e.get("file")) for e in allow]
    kept: list[Finding] = []
    ok: list[Finding] = []
    for f in findings:
        hit = any(rule_id == f.id and (glob is None or _file_matches(f.file, glob)) for rule_id, glob in rules)
        (ok if hit else kept).append(f)
    return kept, ok


def _file_matches(file: str, glob: str) -> bool:
    path = file.replace("\\", "/")
    return fnmatch.fnmatchcase(path, glob) or ("/" not in glob and fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], glob))


# A finding carries its statement for reports; a long one is cut (the file and line name the whole).
MAX_FINDING_STATEMENT = 2000


def _finding(st: Statement, rule_id: str, message: str, hint: str | None = None) -> Finding:
    rule = RULES[rule_id]
    text = st.text if len(st.text) <= MAX_FINDING_STATEMENT else st.text[: MAX_FINDING_STATEMENT - 1] + "…"
    return Finding(rule_id, rule.severity, message, hint or rule.hint, st.file, st.line, text)


# --- reading a statement: tokens, and a tree when sqlglot has a useful one ----------------------------------------


@dataclass(frozen=True)
class _Facts:
    statement: Statement
    tree: exp.Expression | None  # None: an opaque Command, or a command sqlglot does not model
    tokens: tuple[Token, ...]
    words: tuple[str, ...]  # one per token: keywords upper-cased, quoted identifiers re-quoted, strings masked

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def kind(self) -> str:
        return str(self.tree.args.get("kind") or "").upper() if self.tree is not None else ""


_STRINGS = {TokenType.STRING, TokenType.NATIONAL_STRING, TokenType.RAW_STRING, TokenType.HEREDOC_STRING,
            TokenType.BYTE_STRING, TokenType.BIT_STRING, TokenType.HEX_STRING, TokenType.UNICODE_STRING}

# The first words of PostgreSQL's SQL commands (https://www.postgresql.org/docs/current/sql-commands.html).
# Anything else is a typo, whatever sqlglot makes of it (it reads a bare word as a column).
_PG_COMMANDS = frozenset(
    "ABORT ALTER ANALYZE ANALYSE BEGIN CALL CHECKPOINT CLOSE CLUSTER COMMENT COMMIT COPY CREATE DEALLOCATE DECLARE "
    "DELETE DISCARD DO DROP END EXECUTE EXPLAIN FETCH GRANT IMPORT INSERT LISTEN LOAD LOCK MERGE MOVE NOTIFY PREPARE "
    "REASSIGN REFRESH REINDEX RELEASE RESET REVOKE ROLLBACK SAVEPOINT SECURITY SELECT SET SHOW START TABLE TRUNCATE "
    "UNLISTEN UPDATE VACUUM VALUES WITH (".split())
# Commands sqlglot does not model: it rejects valid forms (CLUSTER t USING i, NOTIFY ch, 'x', REASSIGN OWNED …) or
# reads them as an expression. They are read from their tokens only, and never reported as parse errors.
_UNMODELLED = frozenset(
    "ABORT CHECKPOINT CLOSE CLUSTER COPY DEALLOCATE DECLARE DISCARD END EXECUTE FETCH IMPORT LISTEN LOAD MOVE NOTIFY "
    "PREPARE REASSIGN RELEASE SAVEPOINT SECURITY START UNLISTEN".split())


def _analyse(st: Statement, start_col: int) -> _Facts:
    try:
        tokens = _tokenize(st.text)
        words = tuple(_word(t) for t in tokens)
        if not words:
            return _Facts(st, None, tokens, words)
        if words[0] not in _PG_COMMANDS:
            first = f"{excerpt(tokens[0].text)!r}" if st.quote else "its first word"
            raise SqlError(f"cannot parse the SQL (line {st.line}, column {start_col}): {first} does not "
                           "start an SQL command", file=st.file, line=st.line, statement=quotable(st))
        check_shape(st, tokens, words)
        if words[0] in _UNMODELLED:
            return _Facts(st, None, tokens, words)
        with _quiet_sqlglot():
            trees = [t for t in sqlglot.parse(_without_index_only(st.text, tokens, words), read="postgres")
                     if t is not None]
    except ParseError as exc:
        raise parse_error(st, exc, start_col) from exc
    except TokenError as exc:  # its message quotes the source at length: the statement's excerpt is enough
        raise SqlError("cannot read the SQL: sqlglot cannot tokenize this statement", file=st.file, line=st.line,
                       statement=quotable(st)) from exc
    tree = trees[0] if len(trees) == 1 and isinstance(trees[0], exp.Expression) else None
    return _Facts(st, None if isinstance(tree, exp.Command) else tree, tokens, words)


def _without_index_only(text: str, tokens: Sequence[Token], words: Sequence[str]) -> str:
    """``CREATE INDEX … ON ONLY t`` with ONLY blanked: sqlglot rejects ONLY there, PostgreSQL takes it (an index on a
    partitioned table alone, the first step of building one partition by partition). The words keep ONLY."""
    if words[:1] == ("CREATE",) and "INDEX" in words[1:4]:
        for i in range(len(words) - 1):
            if words[i] == "ON" and words[i + 1] == "ONLY":
                only = tokens[i + 1]
                return text[: only.start] + " " * (only.end + 1 - only.start) + text[only.end + 1:]
    return text


def _tokenize(text: str) -> tuple[Token, ...]:
    tokens = Postgres().tokenize(text)
    # sqlglot keeps everything after a "command" keyword (VACUUM, LOCK, REINDEX, REFRESH, DO, CALL …) as one raw
    # string; read that remainder as SQL too, or "VACUUM FULL t" would look like "VACUUM ''".
    if (len(tokens) == 2 and tokens[0].token_type in Postgres.tokenizer_class.COMMANDS
            and tokens[1].token_type == TokenType.STRING):
        rest = text.find(tokens[1].text, tokens[0].end + 1)
        if rest >= 0:
            # blanked, not cut: the remainder's tokens keep their offsets (and lines) in the statement's text
            try:
                return (tokens[0], *Postgres().tokenize(re.sub(r"[^\n]", " ", text[:rest]) + text[rest:]))
            except TokenError:
                pass
    return tuple(tokens)


def _word(token: Token) -> str:
    if token.token_type in _STRINGS:
        return "''"
    if token.token_type == TokenType.IDENTIFIER:
        return '"' + token.text.replace('"', '""') + '"'
    return token.text.upper()


@contextmanager
def _quiet_sqlglot() -> Iterator[None]:
    # sqlglot logs a warning for every statement it keeps as an opaque Command; here that is expected and handled.
    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# Names in the word stream: a quoted or plain identifier, optionally qualified ("A . B").
_N = r'(?:"(?:[^"]|"")*"|[\w$]+)'
_QN = rf"{_N}(?: \. {_N})*"


def _name(words: str) -> str:
    """``PUBLIC . "Users"`` → ``public.Users``: PostgreSQL folds unquoted names to lower case."""
    parts = re.findall(r'"((?:[^"]|"")*)"|([\w$]+)', words)
    return ".".join(quoted.replace('""', '"') if quoted else plain.lower() for quoted, plain in parts)


def _table_name(table: exp.Table) -> str:
    parts = [table.args.get(k) for k in ("catalog", "db", "this")]
    return ".".join(p.this if p.args.get("quoted") else p.name.lower() for p in parts if isinstance(p, exp.Identifier))


def _label(facts: _Facts) -> str:
    """``CREATE UNIQUE INDEX CONCURRENTLY``, ``ALTER TABLE``, ``VACUUM ANALYZE``: how to name the statement."""
    words = [w for w in facts.words[:5] if re.fullmatch(r"[A-Z_]+", w)]
    if "CONCURRENTLY" in words:
        return " ".join(words[: words.index("CONCURRENTLY") + 1])
    return " ".join(words[:2])


# --- ALTER TABLE, from the tokens ----------------------------------------------------------------------------------

_ALTER_HEAD = re.compile(rf"^ALTER TABLE (?:IF EXISTS )?(?:ONLY )?({_QN})(?: \*)? ?")


def _alter_table(facts: _Facts) -> tuple[str, list[str]] | None:
    """``(table, actions)`` of an ALTER TABLE, each action as its words joined by spaces."""
    if facts.words[:2] != ("ALTER", "TABLE"):
        return None
    actions: list[list[str]] = [[]]
    depth = 0
    for word in facts.words:
        depth += (word == "(") - (word == ")")
        if word == "," and depth == 0:
            actions.append([])
        else:
            actions[-1].append(word)
    joined = [" ".join(a) for a in actions]
    if not (m := _ALTER_HEAD.match(joined[0])):
        return None
    return _name(m.group(1)), [a for a in (joined[0][m.end():], *joined[1:]) if a]


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


def _alter_action(table: str, action: str) -> Iterator[tuple[str, str]]:
    """The findings of one ALTER TABLE action."""
    at = f"ALTER TABLE {table}"
    if m := re.match(rf"^DROP (?!CONSTRAINT\b)(?:COLUMN )?(?:IF EXISTS )?({_N})", action):
        yield "drop-column", f"{at} DROP COLUMN {_name(m.group(1))} deletes the column and its data"
    elif m := re.match(rf"^ALTER (?:COLUMN )?({_N}) (?:SET DATA )?TYPE\b", action):
        yield "alter-column-type", (f"{at} ALTER COLUMN {_name(m.group(1))} TYPE rewrites the table and its indexes "
                                    "under an ACCESS EXCLUSIVE lock (unless the types are binary-compatible)")
    elif m := re.match(rf"^ALTER (?:COLUMN )?({_N}) SET NOT NULL\b", action):
        yield "set-not-null", (f"{at} ALTER COLUMN {_name(m.group(1))} SET NOT NULL scans the whole table under an "
                               "ACCESS EXCLUSIVE lock")
    elif m := re.match(rf"^ADD (?:CONSTRAINT ({_N}) )?(FOREIGN KEY|CHECK|UNIQUE|PRIMARY KEY)\b ?(.*)", action):
        what = f"{at} ADD {'CONSTRAINT ' + _name(m.group(1)) + ' ' if m.group(1) else ''}{m.group(2)}"
        kind, rest = m.group(2), m.group(3)
        if kind == "FOREIGN KEY" and not _NOT_VALID.search(rest):
            yield "add-foreign-key", f"{what} without NOT VALID checks every row while it locks both tables"
        elif kind == "CHECK" and not _NOT_VALID.search(rest):
            yield "add-check", f"{what} without NOT VALID scans the whole table under an ACCESS EXCLUSIVE lock"
        elif kind in ("UNIQUE", "PRIMARY KEY") and not _USING_INDEX.match(rest):
            yield f"add-{kind.lower().replace(' ', '-')}", f"{what} builds its index under an ACCESS EXCLUSIVE lock"
    elif m := re.match(rf"^ADD (?:COLUMN )?(?:IF NOT EXISTS )?({_N}) (.*)", action):
        what, definition = f"{at} ADD COLUMN {_name(m.group(1))}", m.group(2)
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
    elif m := re.match(rf"^RENAME TO ({_N})", action):
        yield "rename-table", f"{at} RENAME TO {_name(m.group(1))} {_OLD_NAME_BREAKS}"
    elif m := re.match(rf"^SET SCHEMA ({_N})", action):
        yield "rename-table", f"{at} SET SCHEMA {_name(m.group(1))} moves the table: it {_OLD_NAME_BREAKS}"
    elif m := re.match(rf"^RENAME (?:COLUMN )?({_N}) TO ({_N})", action):
        yield "rename-column", (f"{at} RENAME COLUMN {_name(m.group(1))} TO {_name(m.group(2))} "
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


# --- the checks ----------------------------------------------------------------------------------------------------

_TXN_CONTROL = frozenset({"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE"})
_ANALYSED = re.compile(r"^(?:CREATE (?:UNIQUE )?INDEX|DROP (?:TABLE|INDEX|VIEW|MATERIALIZED VIEW|SCHEMA)|TRUNCATE"
                       r"|DELETE|UPDATE|INSERT|MERGE)\b")
_HALF_APPLIED = "shadow then runs the whole SQL action statement by statement, so a failure can leave it half-applied"
_DROP = {
    "TABLE": ("drop-table", "the table and all its rows are gone; running code that uses it breaks"),
    "VIEW": ("drop-view", "code that queries it breaks"),
    "INDEX": ("drop-index", "queries that relied on it slow down, and rebuilding it takes long"),
    "SCHEMA": ("drop-schema", "everything in the schema goes with it (with CASCADE, silently)"),
    "DATABASE": ("drop-database", "the whole database is gone"),
}
_TIMEOUT_WHY = {
    "lock_timeout": "queued behind a long transaction, it blocks every later query on the table until it gets the lock",
    "statement_timeout": "a slow statement holds its lock for as long as it runs",
}


def _checks(facts: _Facts, is_new: bool, session: _Session, db: _Database) -> Iterator[tuple[str, str, str | None]]:
    tree, words = facts.tree, facts.words
    if not is_new:  # the statement only drops, locks or rewrites objects created earlier: nothing to fear
        yield from _destructive_and_locking(facts, db)
    index_on = _index_table(facts)
    if index_on and tree is not None and tree.args.get("concurrently") and _is_new(index_on, db.partitioned):
        yield ("concurrently-on-partitioned", f"CREATE INDEX CONCURRENTLY on {index_on}, a partitioned table: "
               "PostgreSQL refuses it (cannot create index on partitioned table concurrently)", None)
    elif session.block is not None and _NO_BLOCK.match(facts.text):  # (an error either way: reported once)
        begin = session.block
        yield ("in-transaction-block", f"{_label(facts)} inside the transaction block that {begin.text.split()[0]} "
               f"at {begin.where} opened: PostgreSQL refuses it there ({_label(facts)} cannot run inside a "
               "transaction block)", None)
    elif forces_autocommit(facts.statement):
        if words[0] in _TXN_CONTROL:
            yield ("non-transactional", f"{words[0]} manages the transaction itself: {_HALF_APPLIED}",
                   "drop BEGIN/COMMIT: shadow already runs a transactional SQL action in one transaction")
        else:
            yield "non-transactional", f"{_label(facts)} cannot run inside a transaction: {_HALF_APPLIED}", None
    if words and words[0] in ("DO", "CALL", "EXECUTE"):
        yield ("opaque-statement", f"{words[0]} runs procedural code: the locks it takes and the tables it touches "
               "are invisible to static checks", None)
    elif tree is None and _ANALYSED.match(facts.text):
        yield ("opaque-statement", f"sqlglot could not analyse this {_label(facts)}: its static checks were skipped",
               None)


def _destructive_and_locking(facts: _Facts, db: _Database) -> Iterator[tuple[str, str, str | None]]:
    tree = facts.tree
    if alter := _alter_table(facts):
        for action in alter[1]:
            for rule_id, message in _alter_action(alter[0], action):
                yield rule_id, message, None
    elif isinstance(tree, exp.Drop) and facts.kind in _DROP:
        rule_id, why = _DROP[facts.kind]
        materialized = "MATERIALIZED " if tree.args.get("materialized") else ""
        yield rule_id, f"DROP {materialized}{facts.kind} {', '.join(_drop_names(tree))}: {why}", None
    elif isinstance(tree, exp.TruncateTable):
        yield "truncate", f"TRUNCATE {', '.join(_targets(tree))} deletes every row under an ACCESS EXCLUSIVE lock", None
    elif isinstance(tree, exp.Delete) and not tree.args.get("where"):
        yield "delete-without-where", f"DELETE FROM {', '.join(_targets(tree))} without WHERE deletes every row", None
    elif isinstance(tree, exp.Update) and not tree.args.get("where"):
        yield "update-without-where", f"UPDATE {', '.join(_targets(tree))} without WHERE rewrites every row", None
    elif (table := _index_table(facts)) and tree is not None and not tree.args.get("concurrently"):
        # ON ONLY builds nothing on a partitioned table: it is the first step of the partition-by-partition recipe
        if _is_new(table, db.partitioned) and not _on_only(facts):
            yield ("create-index-blocking", f"CREATE INDEX on {table}, a partitioned table, blocks writes to it and "
                   "to every partition while the indexes build", _PARTITIONED_INDEX_HINT)
        elif not _on_only(facts):
            yield "create-index-blocking", (f"CREATE INDEX on {table} without CONCURRENTLY blocks writes to the "
                                            "table while the index builds"), None
    elif m := _REINDEX.match(facts.text):
        what, name = m.group(1), _name(m.group(2))
        blocks = {"INDEX": "writes to its table, and reads that use the index,",
                  "TABLE": "writes to the table, and reads that use its indexes,"}.get(what, f"every table in {what}"
                                                                                    f" {name} in turn")
        yield "reindex-blocking", f"REINDEX {what} {name} without CONCURRENTLY blocks {blocks} while it rebuilds", None
    elif (locked := _lock_table(facts)) and locked[1] == "ACCESS EXCLUSIVE":
        yield ("lock-access-exclusive", f"LOCK TABLE {', '.join(locked[0])} in ACCESS EXCLUSIVE mode blocks every "
               "read and write of it until the transaction ends", None)


# REINDEX [ ( options ) ] { INDEX | TABLE | SCHEMA | DATABASE } name, without CONCURRENTLY (SYSTEM cannot be
# reindexed concurrently: not flagged, since the hint would be refused)
_REINDEX = re.compile(rf"^REINDEX (?:\( (?:(?!CONCURRENTLY\b)[^)])* \) )?(INDEX|TABLE|SCHEMA|DATABASE) "
                      rf"(?!CONCURRENTLY\b)({_QN})")
_LOCK = re.compile(rf"^LOCK (?:TABLE )?(.*?)(?: IN ((?:ACCESS |ROW )?(?:SHARE|EXCLUSIVE)(?: UPDATE EXCLUSIVE| ROW "
                   rf"EXCLUSIVE)?) MODE)?(?: NOWAIT)?$")
# What PostgreSQL refuses inside a transaction block ("… cannot run inside a transaction block").
_NO_BLOCK = re.compile(r"^(?:(?:CREATE|DROP) (?:UNIQUE )?INDEX CONCURRENTLY\b|REINDEX\b.*\bCONCURRENTLY\b"
                       r"|REINDEX (?:\( .*? \) )?(?:DATABASE|SYSTEM)\b|VACUUM\b|CLUSTER$"
                       r"|(?:CREATE|DROP) (?:DATABASE|TABLESPACE)\b|ALTER SYSTEM\b|DISCARD ALL\b"
                       r"|ALTER TABLE .*\bDETACH PARTITION .*\bCONCURRENTLY\b)")


def _index_table(facts: _Facts) -> str | None:
    """The table a CREATE INDEX indexes."""
    tree = facts.tree
    if isinstance(tree, exp.Create) and facts.kind == "INDEX":
        return next(iter(_targets(tree)), None)
    return None


def _on_only(facts: _Facts) -> bool:
    return bool(re.search(r" ON ONLY ", facts.text))


def _lock_table(facts: _Facts) -> tuple[list[str], str] | None:
    """``([tables], mode)`` of a LOCK statement; its mode is ACCESS EXCLUSIVE unless it names another."""
    if facts.words[:1] != ("LOCK",) or not (m := _LOCK.match(facts.text)):
        return None
    names = [_name(re.sub(r"^ONLY | \*$", "", n.strip())) for n in m.group(1).split(" , ")]
    return names, m.group(2) or "ACCESS EXCLUSIVE"


def _block_after(facts: _Facts, block: Statement | None) -> Statement | None:
    """The BEGIN of the transaction block open after this statement (None: none is)."""
    text = facts.text
    if re.match(r"^(?:BEGIN|START TRANSACTION)\b", text):
        return block or facts.statement
    if re.match(r"^(?:COMMIT|END|ABORT|ROLLBACK)\b(?! (?:TO|PREPARED)\b)(?!.*\bAND CHAIN\b)", text) or \
            text.startswith("PREPARE TRANSACTION"):
        return None
    return block


def _partitioned_by(facts: _Facts) -> set[str]:
    """The tables a statement shows to be partitioned: created PARTITION BY, or the parent of a partition."""
    text, out = facts.text, set()
    if m := re.match(rf"^CREATE (?:(?:GLOBAL |LOCAL )?TEMP(?:ORARY)? |UNLOGGED )?TABLE (?:IF NOT EXISTS )?({_QN}) "
                     rf".* PARTITION BY (?:RANGE|LIST|HASH) \(", text):
        out.add(_name(m.group(1)))
    if text.startswith("CREATE ") and (m := re.search(rf" PARTITION OF ({_QN})", text)):
        out.add(_name(m.group(1)))
    if (alter := _alter_table(facts)) and any(re.match(r"^(?:ATTACH|DETACH) PARTITION ", a) for a in alter[1]):
        out.add(alter[0])
    if _on_only(facts) and (table := _index_table(facts)):
        out.add(table)
    return out


def _drop_names(tree: exp.Drop) -> list[str]:
    return [_table_name(t) for t in tree.args.get("tables") or tree.expressions if isinstance(t, exp.Table)]


def _targets(tree: exp.Expression) -> list[str]:
    return [_table_name(t) for t in _target_tables(tree)]


def _target_tables(tree: exp.Expression) -> list[exp.Table]:
    """The tables a statement writes: INSERT/UPDATE/DELETE/MERGE/TRUNCATE targets, what CREATE TABLE/VIEW/INDEX
    creates or indexes, what DROP TABLE/VIEW drops."""
    kind = str(tree.args.get("kind") or "").upper()
    if isinstance(tree, exp.TruncateTable) or isinstance(tree, exp.Drop) and kind in ("TABLE", "VIEW"):
        nodes = list(tree.args.get("tables") or tree.expressions)
    elif isinstance(tree, exp.Create) and kind == "INDEX" and isinstance(tree.this, exp.Index):
        nodes = [tree.this.args.get("table")]
    elif isinstance(tree, exp.Create) and kind in ("TABLE", "VIEW") or isinstance(
            tree, (exp.Insert, exp.Update, exp.Delete, exp.Merge)):
        nodes = [tree.this]
    else:
        return []
    # INSERT INTO t (a, b) and CREATE TABLE t (…) wrap the table in a Schema
    nodes = [n.this if isinstance(n, exp.Schema) else n for n in nodes]
    return [n for n in nodes if isinstance(n, exp.Table) and isinstance(n.this, exp.Identifier)]


def _subjects(facts: _Facts) -> set[str]:
    """The objects a statement drops, locks or rewrites (to tell the ones created earlier apart)."""
    tree = facts.tree
    if alter := _alter_table(facts):
        return {alter[0]}
    if isinstance(tree, exp.Drop):
        return set(_drop_names(tree))
    if isinstance(tree, exp.Create) and facts.kind == "TRIGGER":
        return {_table_name(t) for t in tree.find_all(exp.Table) if isinstance(t.this, exp.Identifier)}
    if tree is not None:
        return set(_targets(tree))
    if locked := _lock_table(facts):
        return set(locked[0])
    m = _REINDEX.match(facts.text)
    if m and m.group(1) in ("INDEX", "TABLE"):
        return {_name(m.group(2))}
    m = re.match(rf"^REFRESH MATERIALIZED VIEW (?:CONCURRENTLY )?({_QN})", facts.text)
    return {_name(m.group(1))} if m else set()


def same_table(a: str, b: str) -> bool:
    """Whether two names as :func:`touched` gives them mean the same table: equal, or one unqualified and the last
    parts equal (a migration runs with one search_path, so ``users`` is taken to be ``public.users``)."""
    return a == b or ("." not in a or "." not in b) and a.rsplit(".", 1)[-1] == b.rsplit(".", 1)[-1]


def _is_new(name: str, created: set[str]) -> bool:
    return any(same_table(name, c) for c in created)


def _takes_heavy_lock(facts: _Facts) -> bool:
    """Whether the statement waits for, then holds, a lock that blocks other sessions' reads or writes."""
    tree, kind = facts.tree, facts.kind
    if facts.words[:2] in (("ALTER", "TABLE"), ("ALTER", "INDEX")) or isinstance(tree, exp.TruncateTable):
        return True
    if isinstance(tree, exp.Drop):
        return kind in ("TABLE", "VIEW", "SCHEMA", "TRIGGER") or kind == "INDEX" and not tree.args.get("concurrently")
    if isinstance(tree, exp.Create):
        return kind == "TRIGGER" or kind == "INDEX" and not tree.args.get("concurrently")
    return bool(re.match(r"^(?:LOCK|CLUSTER|VACUUM .*\bFULL\b|REINDEX (?!.*\bCONCURRENTLY\b)"
                         r"|REFRESH MATERIALIZED VIEW (?!CONCURRENTLY\b))", facts.text))


def _creates(facts: _Facts) -> set[str]:
    """Names of the tables, views, indexes and schemas a statement creates (IF NOT EXISTS may create nothing)."""
    tree = facts.tree
    if not isinstance(tree, exp.Create) or tree.args.get("exists"):
        return set()
    node = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
    if facts.kind in ("TABLE", "VIEW", "SCHEMA") and isinstance(node, exp.Table):
        return {_table_name(node)}
    if facts.kind == "INDEX" and isinstance(node, exp.Index) and isinstance(node.this, exp.Identifier):
        return {node.this.this if node.this.args.get("quoted") else node.this.name.lower()}
    return set()


def _timeout_settings(facts: _Facts) -> dict[str, bool]:
    """What a statement does to lock_timeout / statement_timeout: set it (True), or turn it off (False)."""
    t, w, out = facts.tokens, facts.words, {}
    names = ("lock_timeout", "statement_timeout")
    if w[:1] == ("SET",):
        i = 2 if w[1:2] in (("SESSION",), ("LOCAL",)) else 1
        if i + 2 < len(t) and t[i].text.lower() in names and w[i + 1] in ("=", "TO"):
            out[t[i].text.lower()] = not _disables(t[i + 2])
    elif w[:1] == ("RESET",) and len(t) > 1:
        out.update({n: False for n in names if t[1].text.lower() in (n, "all")})
    else:  # SELECT set_config('lock_timeout', '5s', false)
        for i, token in enumerate(t[:-4]):
            if token.text.lower() == "set_config" and t[i + 2].token_type in _STRINGS and t[i + 2].text in names:
                out[t[i + 2].text] = not _disables(t[i + 4])
    return out


def _disables(value: Token) -> bool:
    # 0 (in any unit) turns the timeout off; so does DEFAULT unless the server's configuration sets one, which a
    # static check cannot know.
    return bool(re.fullmatch(r"\s*(?:0+(?:\.0*)?\s*[a-z]*|default)\s*", value.text.lower()))


def _touched(facts: _Facts) -> tuple[set[str], set[str]]:
    tree = facts.tree
    if alter := _alter_table(facts):
        table, actions = alter
        schema = table.rsplit(".", 1)[0] + "." if "." in table else ""
        renamed = {schema + _name(m.group(1)) for a in actions if (m := re.match(rf"^RENAME TO ({_N})", a))}
        return {_name(m.group(1)) for m in re.finditer(rf"\bREFERENCES ({_QN})", facts.text)}, {table} | renamed
    if tree is None:
        m = re.match(rf"^REFRESH MATERIALIZED VIEW (?:CONCURRENTLY )?({_QN})", facts.text)
        return set(), {_name(m.group(1))} if m else set()
    targets = _target_tables(tree)
    if isinstance(tree, exp.Drop) or isinstance(tree, exp.Create) and facts.kind not in ("TABLE", "VIEW", "INDEX"):
        return set(), {_table_name(t) for t in targets}
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    reads = {_table_name(t) for t in tree.find_all(exp.Table)
             if isinstance(t.this, exp.Identifier) and not any(t is target for target in targets)
             and not (not t.args.get("db") and t.name.lower() in ctes)}
    return reads, {_table_name(t) for t in targets}
