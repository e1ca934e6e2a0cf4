"""An application that never stops writing: a separate process that inserts, updates and deletes rows in one
table of production at a bounded rate, and logs every write *after* it committed.

Tests start it around ``shadow plan`` / ``apply`` / ``rollback`` and then check that nothing it committed was
lost (:meth:`Writer.assert_kept`). Run as ``python -m tests.writer DSN TABLE LOG [--every S] [--seconds S]``;
it stops at SIGTERM or after ``--seconds``. The table needs a ``bigint`` (or serial) key ``id`` filled by
default and a text column ``note``.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from psycopg import sql


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    stop = False

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    table = sql.SQL(".").join(sql.Identifier(part) for part in args.table.split("."))
    mine: list[int] = []
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.seconds
    with psycopg.connect(args.dsn, autocommit=True, application_name="test writer") as conn, \
            open(args.log, "a", buffering=1) as log:
        log.write(json.dumps({"op": "start"}) + "\n")
        n = 0
        while not stop and time.monotonic() < deadline:
            n += 1
            try:
                _one_write(conn, table, mine, rng, n, log, args.inserts_only)
            except psycopg.errors.LockNotAvailable:
                pass
            except psycopg.OperationalError:
                if conn.closed:
                    break
            time.sleep(args.every)
        log.write(json.dumps({"op": "stop"}) + "\n")
    return 0


def _one_write(conn: psycopg.Connection, table: sql.Composable, mine: list[int], rng: random.Random, n: int,
               log: Any, inserts_only: bool = False) -> None:
    roll = 0.0 if inserts_only else rng.random()
    note = f"writer {n}"
    if roll < 0.6 or len(mine) < 3:
        row = conn.execute(sql.SQL("INSERT INTO {} (note) VALUES (%s) RETURNING id").format(table), [note]).fetchone()
        assert row is not None
        mine.append(int(row[0]))
        log.write(json.dumps({"op": "insert", "id": int(row[0]), "note": note}) + "\n")
    elif roll < 0.85:
        key = rng.choice(mine)
        cur = conn.execute(sql.SQL("UPDATE {} SET note = %s WHERE id = %s").format(table), [note, key])
        if cur.rowcount:
            log.write(json.dumps({"op": "update", "id": key, "note": note}) + "\n")
    else:
        key = mine.pop(rng.randrange(len(mine)))
        cur = conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(table), [key])
        if cur.rowcount:
            log.write(json.dumps({"op": "delete", "id": key}) + "\n")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.writer")
    p.add_argument("dsn")
    p.add_argument("table")
    p.add_argument("log")
    p.add_argument("--every", type=float, default=0.02, help="seconds between writes")
    p.add_argument("--seconds", type=float, default=120.0, help="stop after this long at the latest")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inserts-only", action="store_true", help="only insert (never touch a row twice)")
    return p.parse_args(argv)


class Writer:
    """A running writer process (see the module docstring)."""

    def __init__(self, dsn: str, table: str, log: Path, every: float = 0.02, seconds: float = 120.0,
                 inserts_only: bool = False) -> None:
        self.table, self.log = table, log
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.writer", dsn, table, str(log), "--every",
                                      str(every), "--seconds", str(seconds),
                                      *(["--inserts-only"] if inserts_only else [])],
                                     cwd=Path(__file__).resolve().parent.parent)
        deadline = time.monotonic() + 30
        while not self.writes() and time.monotonic() < deadline:  # running and committing before the test goes on
            time.sleep(0.05)

    def writes(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()
                and json.loads(line)["op"] not in ("start", "stop")]

    def stop(self) -> list[dict[str, Any]]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        return self.writes()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def expected(self) -> dict[int, str]:
        """id → note for every row the writer committed and did not delete since."""
        rows: dict[int, str] = {}
        for w in self.writes():
            if w["op"] == "delete":
                rows.pop(w["id"], None)
            else:
                rows[w["id"]] = w["note"]
        return rows

    def assert_kept(self, dsn: str) -> int:
        """Every committed write is in production: inserted and updated rows with their last note, deleted rows
        gone. Returns how many writes that covered."""
        writes = self.writes()
        assert writes, "the writer committed nothing: the test proves nothing"
        deleted = {w["id"] for w in writes if w["op"] == "delete"}
        expected = self.expected()
        table = sql.SQL(".").join(sql.Identifier(part) for part in self.table.split("."))
        with psycopg.connect(dsn) as conn:
            found = dict(conn.execute(sql.SQL("SELECT id, note FROM {} WHERE id = ANY(%s)").format(table),
                                      [list(expected) + list(deleted)]).fetchall())
        lost = {k: v for k, v in expected.items() if found.get(k) != v}
        assert not lost, f"{len(lost)} of the writer's committed rows are missing or stale: {sorted(lost)[:10]}"
        back = deleted & set(found)
        assert not back, f"rows the writer deleted are back: {sorted(back)[:10]}"
        return len(writes)


if __name__ == "__main__":
    sys.exit(main())
