"""The run journal: a SQLite file in the state dir, written ahead of every step that touches production.

Rows are only ever inserted, and every inserted row is one link of a hash chain::

    run_starts   one row when a run starts (what, when, which plan)
    run_ends     one row each time a run's outcome is recorded (the latest one counts)
    step_starts  one row per step, committed *before* the step starts, with how to undo it
    step_ends    one row each time a step's state is recorded (``done`` | ``failed``; the latest one counts)
    notes        anything else worth keeping, e.g. that old rows were migrated into the chain

Each row carries ``link`` (its place in the one chain that spans all five tables, 1, 2, 3 …), ``prev_hash`` (the
``row_hash`` of link - 1; 64 zeros for link 1) and ``row_hash``: the sha256 of the row's canonical content — the
table name and every column but ``row_hash``, as sorted compact JSON. A step or run that ends is therefore never
updated: its end is a new link. The views ``runs`` and ``steps`` show each run and step with its latest state, in
the shape readers expect. ``chain_head`` is the one row that is rewritten: the link and hash of the newest row,
so that deleting rows at the end of the chain is noticed too. Appends are serialised with ``BEGIN IMMEDIATE``;
each commits (WAL, ``synchronous=FULL``) before the step starts, so after a crash the journal says what may have
happened and what undoes it.

:func:`audit` re-hashes every row and names the first one that does not match: an edited value, a deleted,
inserted or reordered row, a changed view or an unknown table. The chain has no secret key, so it proves that
nothing was changed *without* recomputing every later hash; to prove more, keep the head hash that
``shadow audit --json`` prints somewhere else (a CI log) and compare it later.

A journal written before the chain (schema version 1: ``runs`` and ``steps`` tables updated in place) is migrated
when shadow opens it for writing or listing: its rows are replayed into the chain, in run order, and a ``notes``
row records that the chain vouches for them only from then on. :func:`audit` never migrates; it reports such a
journal as unverifiable.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadow.errors import InfrastructureError, UnknownRun
from snapshots import make_private_dir, make_private_file

SCHEMA_VERSION = 2
GENESIS = "0" * 64
CHAINED = ("run_starts", "run_ends", "step_starts", "step_ends", "notes")
LINK_COLUMNS = """
    link      INTEGER PRIMARY KEY,
    prev_hash TEXT NOT NULL,
    row_hash  TEXT NOT NULL,"""
TABLES = f"""
CREATE TABLE run_starts ({LINK_COLUMNS}
    id          TEXT NOT NULL UNIQUE,
    command     TEXT NOT NULL,
    plan_path   TEXT NOT NULL,
    plan_sha256 TEXT NOT NULL,
    started_at  REAL NOT NULL
);
CREATE TABLE run_ends ({LINK_COLUMNS}
    run_id      TEXT NOT NULL,
    finished_at REAL NOT NULL,
    outcome     TEXT NOT NULL,
    summary     TEXT
);
CREATE INDEX run_ends_run ON run_ends (run_id);
CREATE TABLE step_starts ({LINK_COLUMNS}
    run_id     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    target     TEXT,
    step       TEXT NOT NULL,
    undo       TEXT,
    detail     TEXT NOT NULL,
    started_at REAL NOT NULL,
    UNIQUE (run_id, seq)
);
CREATE TABLE step_ends ({LINK_COLUMNS}
    run_id   TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    state    TEXT NOT NULL,
    detail   TEXT,
    ended_at REAL NOT NULL
);
CREATE INDEX step_ends_step ON step_ends (run_id, seq);
CREATE TABLE notes ({LINK_COLUMNS}
    at   REAL NOT NULL,
    text TEXT NOT NULL
);
CREATE TABLE chain_head (
    one       INTEGER PRIMARY KEY CHECK (one = 1),
    link      INTEGER NOT NULL,
    row_hash  TEXT NOT NULL
);
"""
VIEWS = {
    "runs": """CREATE VIEW runs AS
SELECT s.id, s.command, s.plan_path, s.plan_sha256, s.started_at, e.finished_at, e.outcome, e.summary
FROM run_starts s
LEFT JOIN run_ends e ON e.link = (SELECT MAX(link) FROM run_ends WHERE run_id = s.id)""",
    "steps": """CREATE VIEW steps AS
SELECT s.run_id, s.seq, s.target, s.step, COALESCE(e.state, 'started') AS state, s.undo,
       COALESCE(e.detail, s.detail) AS detail, s.started_at, e.ended_at
FROM step_starts s
LEFT JOIN step_ends e ON e.link = (SELECT MAX(link) FROM step_ends WHERE run_id = s.run_id AND seq = s.seq)""",
}
KNOWN_TABLES = frozenset(CHAINED) | {"chain_head"}
KNOWN_INDEXES = frozenset({"run_ends_run", "step_ends_step"})


def row_hash(table: str, row: dict[str, Any]) -> str:
    """sha256 of a row's canonical content: the table and every column except ``row_hash``."""
    content = {k: v for k, v in row.items() if k != "row_hash"}
    body = json.dumps([table, content], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RunRow:
    id: str
    command: str
    plan_path: str
    plan_sha256: str
    started_at: float
    finished_at: float | None
    outcome: str | None
    summary: str | None


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


def _secure_sidecars(path: Path) -> None:
    for suffix in ("-wal", "-shm", "-journal"):
        sidecar = path.with_name(path.name + suffix)
        if sidecar.exists():
            os.chmod(sidecar, 0o600)


def _schema_version(db: sqlite3.Connection) -> int:
    """2 for a chained journal, 1 for the pre-chain layout, 0 for an empty file."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version:
        return version
    kind = db.execute("SELECT type FROM sqlite_master WHERE name = 'runs'").fetchone()
    return 1 if kind and kind[0] == "table" else 0


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            make_private_dir(path.parent)
            make_private_file(path)
            self.db = _connect(path)
            self._prepare()
            _secure_sidecars(path)
        except (OSError, sqlite3.Error) as exc:
            raise InfrastructureError(f"state dir {path.parent} is not usable: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _prepare(self) -> None:
        with self._transaction() as db:
            version = _schema_version(db)
            if version == SCHEMA_VERSION:
                return
            if version > SCHEMA_VERSION:
                raise InfrastructureError(f"journal {self.path} has schema version {version}; this shadow reads "
                                          f"up to {SCHEMA_VERSION} (upgrade shadow)")
            if version == 1:
                db.execute("ALTER TABLE runs RENAME TO v1_runs")
                db.execute("ALTER TABLE steps RENAME TO v1_steps")
            for statement in TABLES.split(";"):
                if statement.strip():
                    db.execute(statement)
            for view in VIEWS.values():
                db.execute(view)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            if version == 1:
                self._migrate_v1(db)

    def _migrate_v1(self, db: sqlite3.Connection) -> None:
        runs = db.execute("SELECT id, command, plan_path, plan_sha256, started_at, finished_at, outcome, summary "
                          "FROM v1_runs ORDER BY started_at, id").fetchall()
        steps = 0
        for rid, command, plan_path, plan_sha256, started_at, finished_at, outcome, summary in runs:
            self._append(db, "run_starts", {"id": rid, "command": command, "plan_path": plan_path,
                                            "plan_sha256": plan_sha256, "started_at": started_at})
            for seq, target, step, state, undo, detail, s_at, e_at in db.execute(
                    "SELECT seq, target, step, state, undo, detail, started_at, ended_at FROM v1_steps "
                    "WHERE run_id = ? ORDER BY seq", (rid,)).fetchall():
                self._append(db, "step_starts", {"run_id": rid, "seq": seq, "target": target, "step": step,
                                                 "undo": undo, "detail": detail or "{}", "started_at": s_at})
                if state != "started":
                    self._append(db, "step_ends", {"run_id": rid, "seq": seq, "state": state, "detail": None,
                                                   "ended_at": e_at if e_at is not None else s_at})
                steps += 1
            if outcome is not None:
                self._append(db, "run_ends", {"run_id": rid, "finished_at": finished_at or started_at,
                                              "outcome": outcome, "summary": summary})
        db.execute("DROP TABLE v1_steps")
        db.execute("DROP TABLE v1_runs")
        self._append(db, "notes", {"at": time.time(), "text": (
            f"migrated {len(runs)} runs and {steps} steps from the unchained schema 1 journal; the chain vouches "
            "for them only from this note on")})

    def _append(self, db: sqlite3.Connection, table: str, values: dict[str, Any]) -> None:
        """Insert one row as the next link; the caller holds an IMMEDIATE transaction."""
        head = db.execute("SELECT link, row_hash FROM chain_head").fetchone()
        link, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
        row = {"link": link, "prev_hash": prev, **values}
        row["row_hash"] = row_hash(table, row)
        cols = ", ".join(row)
        db.execute(f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
        db.execute("INSERT OR REPLACE INTO chain_head (one, link, row_hash) VALUES (1, ?, ?)",
                   (link, row["row_hash"]))

    def _write(self, table: str, values: dict[str, Any]) -> None:
        try:
            with self._transaction() as db:
                self._append(db, table, values)
        except sqlite3.Error as exc:
            raise InfrastructureError(f"cannot write the journal {self.path}: {exc}") from exc

    def start_run(self, run_id: str, command: str, plan_path: str, plan_sha256: str) -> None:
        self._write("run_starts", {"id": run_id, "command": command, "plan_path": plan_path,
                                   "plan_sha256": plan_sha256, "started_at": time.time()})

    def finish_run(self, run_id: str, outcome: str, summary: str) -> None:
        self._write("run_ends", {"run_id": run_id, "finished_at": time.time(), "outcome": outcome,
                                 "summary": summary})

    def begin_step(self, run_id: str, step: str, target: str | None = None, undo: str | None = None,
                   detail: dict[str, Any] | None = None) -> int:
        try:
            with self._transaction() as db:
                row = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM step_starts WHERE run_id = ?",
                                 (run_id,)).fetchone()
                seq = int(row[0])
                self._append(db, "step_starts", {"run_id": run_id, "seq": seq, "target": target, "step": step,
                                                 "undo": undo, "detail": json.dumps(detail or {}),
                                                 "started_at": time.time()})
        except sqlite3.Error as exc:
            raise InfrastructureError(f"cannot write the journal {self.path}: {exc}") from exc
        return seq

    def end_step(self, run_id: str, seq: int, state: str = "done", detail: dict[str, Any] | None = None) -> None:
        self._write("step_ends", {"run_id": run_id, "seq": seq, "state": state,
                                  "detail": None if detail is None else json.dumps(detail),
                                  "ended_at": time.time()})

    def note(self, text: str) -> None:
        self._write("notes", {"at": time.time(), "text": text})

    def notes(self, prefix: str) -> list[tuple[float, str]]:
        """The notes whose text starts with ``prefix``, oldest first: (when, text)."""
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return [(float(at), str(text)) for at, text in self.db.execute(
            "SELECT at, text FROM notes WHERE text LIKE ? ESCAPE '\\' ORDER BY link", (like,))]

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT seq, target, step, state, undo, detail, started_at, ended_at FROM steps WHERE run_id = ? ORDER BY seq",
            (run_id,),
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur]

    def runs(self, limit: int = 50) -> list[RunRow]:
        rows = self.db.execute(
            "SELECT id, command, plan_path, plan_sha256, started_at, finished_at, outcome, summary FROM runs "
            "ORDER BY started_at DESC LIMIT ?", (limit,),
        )
        return [RunRow(*r) for r in rows]

    def run(self, run_id: str) -> RunRow:
        row = self.db.execute(
            "SELECT id, command, plan_path, plan_sha256, started_at, finished_at, outcome, summary FROM runs WHERE id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            raise UnknownRun(f"no run {run_id!r} in this state dir (see `shadow runs`)")
        return RunRow(*row)
