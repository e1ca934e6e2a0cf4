"""The run journal: a SQLite file in the state dir, written ahead of every step that touches production.

``runs`` holds one row per run (what, when, which plan, outcome); ``steps`` holds every step with its state
(``started`` → ``done`` | ``failed``) and, for steps that touch production, how to undo them. A step row is
committed (WAL, ``synchronous=FULL``) *before* the step starts, so after a crash the journal says what may have
happened and what undoes it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadow.errors import InfrastructureError, UnknownRun

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id          TEXT PRIMARY KEY,
    command     TEXT NOT NULL,
    plan_path   TEXT NOT NULL,
    plan_sha256 TEXT NOT NULL,
    started_at  REAL NOT NULL,
    finished_at REAL,
    outcome     TEXT,
    summary     TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    run_id     TEXT NOT NULL REFERENCES runs(id),
    seq        INTEGER NOT NULL,
    target     TEXT,
    step       TEXT NOT NULL,
    state      TEXT NOT NULL,
    undo       TEXT,
    detail     TEXT,
    started_at REAL NOT NULL,
    ended_at   REAL,
    PRIMARY KEY (run_id, seq)
);
"""


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


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise InfrastructureError(f"state dir {path.parent} is not usable: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    def _write(self, query: str, args: tuple[Any, ...]) -> None:
        try:
            self.db.execute(query, args)
        except sqlite3.Error as exc:
            raise InfrastructureError(f"cannot write the journal {self.path}: {exc}") from exc

    def start_run(self, run_id: str, command: str, plan_path: str, plan_sha256: str) -> None:
        self._write(
            "INSERT INTO runs (id, command, plan_path, plan_sha256, started_at) VALUES (?, ?, ?, ?, ?)",
            (run_id, command, plan_path, plan_sha256, time.time()),
        )

    def finish_run(self, run_id: str, outcome: str, summary: str) -> None:
        self._write("UPDATE runs SET finished_at = ?, outcome = ?, summary = ? WHERE id = ?",
                    (time.time(), outcome, summary, run_id))

    def begin_step(self, run_id: str, step: str, target: str | None = None, undo: str | None = None,
                   detail: dict[str, Any] | None = None) -> int:
        row = self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE run_id = ?", (run_id,)).fetchone()
        seq = int(row[0])
        self._write(
            "INSERT INTO steps (run_id, seq, target, step, state, undo, detail, started_at) VALUES (?, ?, ?, ?, 'started', ?, ?, ?)",
            (run_id, seq, target, step, undo, json.dumps(detail or {}), time.time()),
        )
        return seq

    def end_step(self, run_id: str, seq: int, state: str = "done", detail: dict[str, Any] | None = None) -> None:
        if detail is None:
            self._write("UPDATE steps SET state = ?, ended_at = ? WHERE run_id = ? AND seq = ?",
                        (state, time.time(), run_id, seq))
        else:
            self._write("UPDATE steps SET state = ?, ended_at = ?, detail = ? WHERE run_id = ? AND seq = ?",
                        (state, time.time(), json.dumps(detail), run_id, seq))

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
