"""The rule table, the finding type and allow lists: what ``shadow lint`` can report and how a plan silences it.

Nothing here reads SQL (no sqlglot): a plan's ``policy.allow`` is checked against :data:`RULES` alone.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from shadow.errors import BadInput
from shadow.sqlsplit import Statement

Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class Rule:
    id: str
    severity: Severity
    title: str
    hint: str


# PostgreSQL cannot build an index CONCURRENTLY on a partitioned table
# (https://www.postgresql.org/docs/current/sql-createindex.html#SQL-CREATEINDEX-CONCURRENTLY): this is its recipe.
PARTITIONED_INDEX_HINT = ("a partitioned table takes no CREATE INDEX CONCURRENTLY: CREATE INDEX … ON ONLY the table "
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
         "(PostgreSQL refuses it)", PARTITIONED_INDEX_HINT),
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


def finding(st: Statement, rule_id: str, message: str, hint: str | None = None) -> Finding:
    rule = RULES[rule_id]
    text = st.text if len(st.text) <= MAX_FINDING_STATEMENT else st.text[: MAX_FINDING_STATEMENT - 1] + "…"
    return Finding(rule_id, rule.severity, message, hint or rule.hint, st.file, st.line, text)
