"""``shadow audit``: prove the journal is the one shadow wrote — every row's hash chain intact, the chain's head
where the last row says, the schema unchanged (see :mod:`shadow.journal`)."""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shadow.errors import BadInput, InfrastructureError
from shadow.journal import (CHAINED, GENESIS, KNOWN_INDEXES, KNOWN_TABLES, SCHEMA_VERSION, VIEWS, _schema_version,
                            row_hash)


@dataclass(frozen=True)
class Tampered:
    """The first row of the chain that does not verify, and why."""

    table: str
    link: int | None
    problem: str
    run_id: str | None = None
    key: str | None = None  # the row's own key: ``id`` of a run, ``seq`` of a step

    def describe(self) -> str:
        where = self.table if self.link is None else f"{self.table} link {self.link}"
        about = ", ".join(p for p in (f"run {self.run_id}" if self.run_id else "", self.key or "") if p)
        return f"{where}{f' ({about})' if about else ''}: {self.problem}"


@dataclass(frozen=True)
class AuditResult:
    path: str
    schema_version: int
    rows: int = 0
    head: str | None = None
    notes: list[str] = field(default_factory=list)
    tampered: Tampered | None = None

    @property
    def intact(self) -> bool:
        return self.tampered is None

    @property
    def exit_code(self) -> int:
        return 0 if self.intact else 1

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "intact": self.intact, "schema_version": self.schema_version, "rows": self.rows,
                "head": self.head, "notes": self.notes,
                "tampered": None if self.tampered is None else asdict(self.tampered) | {
                    "message": self.tampered.describe()}}


def audit(path: Path) -> AuditResult:
    """Verify the hash chain of the journal at ``path`` without writing to it; name the first bad row."""
    if not path.is_file():
        raise BadInput(f"no journal at {path} (nothing has run with this state dir; pass --state-dir)")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, timeout=30)
        try:
            return _audit(db, path)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise InfrastructureError(f"cannot read the journal {path}: {exc}") from exc


def audit_settings(settings: Any) -> AuditResult:
    """Audit the journal ``settings`` name: the state dir's, or the shared state database's."""
    if not settings.state_url:
        return audit(settings.journal_path)
    from shadow.statedb import PgJournal, StateDB

    journal = PgJournal(StateDB(settings.state_url, settings.environ))
    try:
        foreign = journal.foreign_objects()
        if foreign:
            return AuditResult(journal.path, SCHEMA_VERSION, tampered=Tampered(foreign[0][0], None, foreign[0][1]))
        with journal.one_snapshot():  # the rows and the head as of one moment, however busy other runners are
            rows, head = journal.chained_rows(), journal.head()
        return audit_rows(journal.path, rows, head)
    finally:
        journal.close()


def audit_rows(where: str, rows: list[tuple[int, str, dict[str, Any]]], head: tuple[int, str] | None,
               version: int = SCHEMA_VERSION) -> AuditResult:
    """Walk a chain given as (link, table, row) in link order, and its recorded head."""
    notes: list[str] = []
    tampered = None
    prev_hash, expected = GENESIS, 1
    for link, table, row in rows:
        bad = _link_problem(table, row, expected, prev_hash)
        if bad:
            tampered = _tampered(table, row, bad)
            break
        if table == "notes":
            notes.append(row["text"])
        prev_hash, expected = row["row_hash"], link + 1
    if tampered is None:
        last = (expected - 1, prev_hash) if rows else None
        if head != last:
            tampered = _head_mismatch(last, [head] if head else [])
    return AuditResult(where, version, len(rows), prev_hash if rows and tampered is None else None, notes, tampered)


def _audit(db: sqlite3.Connection, path: Path) -> AuditResult:
    db.row_factory = sqlite3.Row
    db.execute("BEGIN")
    version = _schema_version(db)
    if version != SCHEMA_VERSION:
        problem = ("written before the hash chain (schema 1); its rows cannot be verified — any shadow command "
                   "that reads the journal (e.g. `shadow runs`) migrates it into the chain"
                   if version == 1 else f"unknown journal schema version {version}")
        return AuditResult(str(path), version, tampered=Tampered("journal", None, problem))
    rows: list[tuple[int, str, dict[str, Any]]] = []
    for table in CHAINED:
        rows.extend((r["link"], table, dict(r)) for r in db.execute(f"SELECT * FROM {table}"))
    rows.sort(key=lambda item: (item[0], item[1]))
    tampered = _schema_problem(db)
    if tampered is not None:
        return AuditResult(str(path), version, len(rows), tampered=tampered)
    return audit_rows(str(path), rows, _head(db), version)


def _head(db: sqlite3.Connection) -> tuple[int, str] | None:
    """The recorded head; more than its one row can match no chain."""
    head = [(int(r[0]), str(r[1])) for r in db.execute("SELECT link, row_hash FROM chain_head")]
    if len(head) > 1:
        return (-1, "")
    return head[0] if head else None


def _head_mismatch(last: tuple[int, str] | None, head: list[Any]) -> Tampered:
    chain = f"link {last[0]}" if last else "no row"
    recorded = f"link {head[0][0]}" if head else "no head"
    return Tampered("chain_head", None, f"the chain ends at {chain} but its head records {recorded}: rows at the "
                                        "end were deleted, or the head was edited")


def _schema_problem(db: sqlite3.Connection) -> Tampered | None:
    for kind, name, sql in db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name"):
        if name.startswith("sqlite_"):
            continue
        if kind == "table" and name not in KNOWN_TABLES:
            return Tampered(name, None, "a table that is not part of the journal (rows outside the chain)")
        if kind == "view" and VIEWS.get(name) != sql:
            return Tampered(name, None, "the view's definition is not the one shadow created")
        if kind == "trigger":
            return Tampered(name, None, "a trigger that is not part of the journal")
        if kind == "index" and name not in KNOWN_INDEXES:
            return Tampered(name, None, "an index that is not part of the journal")
    missing = (set(CHAINED) | set(VIEWS)) - {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    if missing:
        return Tampered(sorted(missing)[0], None, "missing from the journal (dropped?)")
    return None


def _link_problem(table: str, row: dict[str, Any], expected: int, prev_hash: str) -> str | None:
    link = row["link"]
    if link < expected:
        return f"link {link} appears twice (a copied or inserted row)"
    if link > expected:
        missing = f"link {expected}" if link == expected + 1 else f"links {expected}–{link - 1}"
        return f"{missing} before it is missing (a deleted row)"
    if row["row_hash"] != row_hash(table, row):
        return "its content does not match its row_hash (edited after it was written)"
    if row["prev_hash"] != prev_hash:
        return f"its prev_hash does not match the row_hash of link {link - 1} (rows replaced or reordered)"
    return None


def _tampered(table: str, row: dict[str, Any], problem: str) -> Tampered:
    run_id = row.get("run_id") or row.get("id")
    key = f"seq {row['seq']}" if "seq" in row else None
    return Tampered(table, row["link"], problem, run_id=None if run_id is None else str(run_id), key=key)
