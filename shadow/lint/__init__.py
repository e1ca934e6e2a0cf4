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

The parts: :mod:`~shadow.lint.rules` (the rule table, :class:`Finding`, allow lists — no sqlglot),
:mod:`~shadow.lint.facts` (reading a statement), :mod:`~shadow.lint.locking` (locks, transaction blocks, timeouts),
:mod:`~shadow.lint.alter` (ALTER TABLE actions), :mod:`~shadow.lint.checks` (one statement's checks). This module
walks the statements in order, carrying what each did to its session and to the database.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from pathlib import Path

from shadow.lint.alter import VOLATILE_FUNCTIONS
from shadow.lint.checks import Database, Session, partitioned_by, statement_checks, subjects_of
from shadow.lint.facts import analyse, creates, fold_name, label, named_in, reads_and_writes, same_table
from shadow.lint.locking import TIMEOUT_WHY, block_after, takes_heavy_lock, timeout_settings
from shadow.lint.rules import (MAX_FINDING_STATEMENT, RULES, AllowEntry, Finding, Rule, Severity, allow_problems,
                               allowed, finding)
from shadow.sqlsplit import MAX_ANALYSED_STATEMENT, MAX_ANALYSED_TOTAL, Statement, load_sql_files

__all__ = ["MAX_FINDING_STATEMENT", "RULES", "VOLATILE_FUNCTIONS", "AllowEntry", "Finding", "Rule", "Severity",
           "allow_problems", "allowed", "lint", "lint_files", "same_table", "touched"]


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
    db = Database(partitioned={fold_name(p) for p in partitioned})
    session = Session()
    nagged: set[tuple[str, str]] = set()
    left_out: list[Statement] = []
    for n, st in enumerate(statements):
        if n and st.file != statements[n - 1].file and not one_session:
            session = Session()
        if not st.analyse:
            if len(st.text) > MAX_ANALYSED_STATEMENT:
                findings.append(finding(st, "statement-too-large", f"{_head(st)} is {_size(len(st.text))}, more "
                                         f"than the {_size(MAX_ANALYSED_STATEMENT)} static analysis reads: it was "
                                         "not checked (the rehearsal still runs it)"))
            else:
                left_out.append(st)
            continue
        facts = analyse(st, st.column)
        subjects = subjects_of(facts)
        is_new = bool(subjects) and all(named_in(s, db.created) for s in subjects)
        for rule_id, message, hint in statement_checks(facts, is_new, session, db):
            findings.append(finding(st, rule_id, message, hint))
        if takes_heavy_lock(facts) and not is_new:
            on = f" on {', '.join(sorted(subjects))}" if subjects else ""
            for setting, why in TIMEOUT_WHY.items():
                rule_id = f"no-{setting.replace('_', '-')}"
                if not session.timeouts[setting] and (st.file, rule_id) not in nagged:
                    nagged.add((st.file, rule_id))
                    findings.append(finding(st, rule_id, f"{label(facts)}{on} takes a heavy lock with no "
                                             f"{setting} set before it: {why}"))
        session.timeouts.update(timeout_settings(facts))
        session.block = block_after(facts, session.block)
        db.created |= creates(facts)
        db.partitioned |= partitioned_by(facts)
    if left_out:
        findings.append(finding(left_out[0], "analysis-limit", f"static analysis stops after "
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
    return reads_and_writes(analyse(statement, statement.column))
