"""The checks of one statement, given what earlier statements did to its session and to the database."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlglot import exp

from shadow.lint.alter import alter_action
from shadow.lint.facts import (QUALIFIED, Facts, alter_table, drop_names, fold_name, index_table, label, named_in,
                               on_only, table_name, target_names)
from shadow.lint.locking import NO_BLOCK, REINDEX, lock_table
from shadow.lint.rules import PARTITIONED_INDEX_HINT
from shadow.sqlsplit import Statement, forces_autocommit

@dataclass
class Session:
    """What the statements of one session have set so far."""

    timeouts: dict[str, bool] = field(default_factory=lambda: {"lock_timeout": False, "statement_timeout": False})
    block: Statement | None = None  # the BEGIN of the open transaction block


@dataclass
class Database:
    """What the statements linted so far have done to the database."""

    created: set[str] = field(default_factory=set)
    partitioned: set[str] = field(default_factory=set)


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


def statement_checks(facts: Facts, is_new: bool, session: Session,
                     db: Database) -> Iterator[tuple[str, str, str | None]]:
    """``(rule id, message, hint or None)`` for each finding on one statement."""
    tree, words = facts.tree, facts.words
    if not is_new:  # the statement only drops, locks or rewrites objects created earlier: nothing to fear
        yield from _destructive_and_locking(facts, db)
    index_on = index_table(facts)
    if index_on and tree is not None and tree.args.get("concurrently") and named_in(index_on, db.partitioned):
        yield ("concurrently-on-partitioned", f"CREATE INDEX CONCURRENTLY on {index_on}, a partitioned table: "
               "PostgreSQL refuses it (cannot create index on partitioned table concurrently)", None)
    elif session.block is not None and NO_BLOCK.match(facts.text):  # (an error either way: reported once)
        begin = session.block
        yield ("in-transaction-block", f"{label(facts)} inside the transaction block that {begin.text.split()[0]} "
               f"at {begin.where} opened: PostgreSQL refuses it there ({label(facts)} cannot run inside a "
               "transaction block)", None)
    elif forces_autocommit(facts.statement):
        if words[0] in _TXN_CONTROL:
            yield ("non-transactional", f"{words[0]} manages the transaction itself: {_HALF_APPLIED}",
                   "drop BEGIN/COMMIT: shadow already runs a transactional SQL action in one transaction")
        else:
            yield "non-transactional", f"{label(facts)} cannot run inside a transaction: {_HALF_APPLIED}", None
    if facts.unchecked:
        yield ("opaque-statement", f"cannot check this {label(facts) or 'statement'}: {facts.unchecked} (the rehearsal "
               "still runs it)", None)
    elif words and words[0] in ("DO", "CALL", "EXECUTE"):
        yield ("opaque-statement", f"{words[0]} runs procedural code: the locks it takes and the tables it touches "
               "are invisible to static checks", None)
    elif tree is None and _ANALYSED.match(facts.text):
        yield ("opaque-statement", f"sqlglot could not analyse this {label(facts)}: its static checks were skipped",
               None)


def _destructive_and_locking(facts: Facts, db: Database) -> Iterator[tuple[str, str, str | None]]:
    tree = facts.tree
    if alter := alter_table(facts):
        for action in alter[1]:
            for rule_id, message in alter_action(alter[0], action):
                yield rule_id, message, None
    elif isinstance(tree, exp.Drop) and facts.kind in _DROP:
        rule_id, why = _DROP[facts.kind]
        materialized = "MATERIALIZED " if tree.args.get("materialized") else ""
        yield rule_id, f"DROP {materialized}{facts.kind} {', '.join(drop_names(tree))}: {why}", None
    elif isinstance(tree, exp.TruncateTable):
        yield ("truncate", f"TRUNCATE {', '.join(target_names(tree))} deletes every row under an ACCESS EXCLUSIVE "
               "lock", None)
    elif isinstance(tree, exp.Delete) and not tree.args.get("where"):
        yield ("delete-without-where", f"DELETE FROM {', '.join(target_names(tree))} without WHERE deletes every "
               "row", None)
    elif isinstance(tree, exp.Update) and not tree.args.get("where"):
        yield "update-without-where", f"UPDATE {', '.join(target_names(tree))} without WHERE rewrites every row", None
    elif (table := index_table(facts)) and tree is not None and not tree.args.get("concurrently"):
        # ON ONLY builds nothing on a partitioned table: it is the first step of the partition-by-partition recipe
        if named_in(table, db.partitioned) and not on_only(facts):
            yield ("create-index-blocking", f"CREATE INDEX on {table}, a partitioned table, blocks writes to it and "
                   "to every partition while the indexes build", PARTITIONED_INDEX_HINT)
        elif not on_only(facts):
            yield "create-index-blocking", (f"CREATE INDEX on {table} without CONCURRENTLY blocks writes to the "
                                            "table while the index builds"), None
    elif m := REINDEX.match(facts.text):
        what, name = m.group(1), fold_name(m.group(2))
        blocks = {"INDEX": "writes to its table, and reads that use the index,",
                  "TABLE": "writes to the table, and reads that use its indexes,"}.get(what, f"every table in {what}"
                                                                                    f" {name} in turn")
        yield "reindex-blocking", f"REINDEX {what} {name} without CONCURRENTLY blocks {blocks} while it rebuilds", None
    elif (locked := lock_table(facts)) and locked[1] == "ACCESS EXCLUSIVE":
        yield ("lock-access-exclusive", f"LOCK TABLE {', '.join(locked[0])} in ACCESS EXCLUSIVE mode blocks every "
               "read and write of it until the transaction ends", None)


def partitioned_by(facts: Facts) -> set[str]:
    """The tables a statement shows to be partitioned: created PARTITION BY, or the parent of a partition."""
    text, out = facts.text, set()
    if m := re.match(rf"^CREATE (?:(?:GLOBAL |LOCAL )?TEMP(?:ORARY)? |UNLOGGED )?TABLE (?:IF NOT EXISTS )?"
                     rf"({QUALIFIED}) .* PARTITION BY (?:RANGE|LIST|HASH) \(", text):
        out.add(fold_name(m.group(1)))
    if text.startswith("CREATE ") and (m := re.search(rf" PARTITION OF ({QUALIFIED})", text)):
        out.add(fold_name(m.group(1)))
    if (alter := alter_table(facts)) and any(re.match(r"^(?:ATTACH|DETACH) PARTITION ", a) for a in alter[1]):
        out.add(alter[0])
    if on_only(facts) and (table := index_table(facts)):
        out.add(table)
    return out


def subjects_of(facts: Facts) -> set[str]:
    """The objects a statement drops, locks or rewrites (to tell the ones created earlier apart)."""
    tree = facts.tree
    if alter := alter_table(facts):
        return {alter[0]}
    if isinstance(tree, exp.Drop):
        return set(drop_names(tree))
    if isinstance(tree, exp.Create) and facts.kind == "TRIGGER":
        return {table_name(t) for t in tree.find_all(exp.Table) if isinstance(t.this, exp.Identifier)}
    if tree is not None:
        return set(target_names(tree))
    if locked := lock_table(facts):
        return set(locked[0])
    m = REINDEX.match(facts.text)
    if m and m.group(1) in ("INDEX", "TABLE"):
        return {fold_name(m.group(2))}
    m = re.match(rf"^REFRESH MATERIALIZED VIEW (?:CONCURRENTLY )?({QUALIFIED})", facts.text)
    return {fold_name(m.group(1))} if m else set()
