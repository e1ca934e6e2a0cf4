"""Per-table content hashes kept between checkpoints of one production, reused only where MVCC proves a table's
rows unchanged — so a checkpoint costs about a ``pg_dump`` once production has been checkpointed before.

A checkpoint's observation hashes every row (:func:`adapters.postgres.observe.table_data`: a hash per non-NULL
column of every row). The hashes are kept (``<state dir>/hashes/<key>.json``, 0600, one per production address;
counts and hashes, never a value) with the snapshot they were read in (``txid_current_snapshot()``). The next
checkpoint, in its own snapshot, reads each table once more **without hashing**: its row count, and how many
visible rows have an ``xmin`` the kept snapshot did not see as committed (newer than its ``xmax``, or in progress
then). A row version never changes once written, so when that number is zero and the count is the same, the table
holds exactly the rows it held then: an insert or update leaves a newer visible version unless it was deleted
again, and then the count is short. Its kept hash is reused; any other table is hashed as before. Hashes made with
another row hash (:mod:`adapters.postgres.observe`) are never reused. Transaction ids mean the same rows only
within one server incarnation: the kept hashes name the postmaster's start time and the database's oid, and are
not reused after a restart, a failover, a point-in-time recovery or a recreated database.

What can change how a row reads without a new row version — the table's columns and partitions, the database's
types (an enum label renamed), extensions and collations — is part of each kept hash's signature
(:func:`adapters.postgres.capture.definition`): a different signature re-hashes the table. So does a kept
snapshot more than 2^30 transactions old (``age()`` compares 32-bit ids), a relation the check cannot read
(anything failing runs the full hash), and a table with no kept hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from adapters import json_sha256
from adapters.postgres.capture import definition
from adapters.postgres.observe import Hashed, current_row_hash, relation_sql, row_hash_of
from snapshots import atomic_write_bytes

MAX_AGE = 2**30  # transactions since the kept snapshot beyond which 32-bit ids are not compared
# The server's incarnation: transaction ids only mean the same rows within one postmaster's lifetime on one
# database (a failover, a point-in-time recovery, a restored or recreated cluster all restart it).
Q_ORIGIN = """
SELECT pg_postmaster_start_time()::text || ' ' || oid::text FROM pg_database WHERE datname = current_database()
"""
Q_SNAPSHOT = """
SELECT txid_snapshot_xmax(s), ARRAY(SELECT txid_snapshot_xip(s)), txid_snapshot_xmax(txid_current_snapshot())
FROM (SELECT %s::txid_snapshot AS s) kept
"""


class HashCache:
    """The kept hashes of one production; :meth:`hashed` decides per table, :meth:`fill` and :meth:`keep` after."""

    def __init__(self, folder: Path, identity: str) -> None:
        self.path = folder / f"{hashlib.sha256(identity.encode()).hexdigest()[:20]}.json"
        self.kept: dict[str, Any] = _read(self.path)
        self.reused: set[str] = set()
        self.origin: str | None = None  # this checkpoint's server incarnation (Q_ORIGIN), read by identify()
        self._bounds: tuple[int, list[int]] | None = None  # the kept snapshot's (xmax, in progress), as 32-bit ids

    def identify(self, conn: psycopg.Connection) -> None:
        """Read the server's incarnation (before the observation): kept hashes of another are never reused."""
        row = conn.execute(Q_ORIGIN).fetchone()
        self.origin = str(row[0]) if row else None

    def hashed(self, conn: psycopg.Connection) -> Hashed:
        """The ``hashed`` of an observation on ``conn`` (inside its snapshot): False for a table whose kept hash
        still holds — checked here, on ``conn``, by one scan without hashing."""
        tables = self.kept.get("tables") or {}
        snapshot = self.kept.get("snapshot")

        def hashed(table: str, objects: dict[str, dict[str, dict[str, Any]]]) -> bool:
            kept = tables.get(table)
            if (not kept or not snapshot or self.origin is None or self.kept.get("origin") != self.origin
                    or self.kept.get("row_hash", 1) != current_row_hash()
                    or kept.get("signature") != _signature(objects, table)):
                return True
            bounds = self._kept_bounds(conn, snapshot)
            if bounds is None or not self._unchanged(conn, table, kept, bounds):
                return True
            self.reused.add(table)
            return False

        return hashed

    def _kept_bounds(self, conn: psycopg.Connection, snapshot: str) -> tuple[int, list[int]] | None:
        if self._bounds is None:
            row = conn.execute(Q_SNAPSHOT, [snapshot]).fetchone()
            assert row is not None
            xmax, xip, now = int(row[0]), [int(x) for x in row[1]], int(row[2])
            if now - xmax > MAX_AGE or now < xmax:
                self._bounds = (-1, [])
            else:
                self._bounds = (xmax % 2**32, [x % 2**32 for x in xip])
        return None if self._bounds[0] < 0 else self._bounds

    def _unchanged(self, conn: psycopg.Connection, table: str, kept: dict[str, Any],
                   bounds: tuple[int, list[int]]) -> bool:
        xmax, xip = bounds
        query = sql.SQL("SELECT count(*), count(*) FILTER (WHERE age(t.xmin) <= age({}::text::xid) "
                        "OR t.xmin::text::bigint = ANY({})) FROM {} t").format(
            sql.Literal(str(xmax)), sql.Literal(xip), relation_sql(table, bool(kept.get("only", True))))
        try:
            with conn.transaction():  # a savepoint: a relation the check cannot read is hashed instead
                row = conn.execute(query).fetchone()
        except psycopg.Error:
            return False
        return row is not None and int(row[0]) == kept["rows"] and int(row[1]) == 0

    def fill(self, observation: dict[str, Any]) -> None:
        """The kept count and hash of every table :meth:`hashed` reused."""
        for table in self.reused:
            entry = observation["data"][table]
            entry["rows"], entry["hash"] = self.kept["tables"][table]["rows"], self.kept["tables"][table]["hash"]

    def keep(self, observation: dict[str, Any], snapshot: str) -> None:
        """Keep ``observation``'s hashes with ``snapshot`` (``txid_current_snapshot()`` of the snapshot it was read
        in), for the next checkpoint."""
        objects = observation["objects"]
        tables = {table: {"rows": d["rows"], "hash": d["hash"], "only": d.get("only", True),
                          "signature": _signature(objects, table)}
                  for table, d in observation["data"].items() if d.get("rows") is not None}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write_bytes(self.path, json.dumps({"snapshot": snapshot, "origin": self.origin, "tables": tables,
                                                      "row_hash": row_hash_of(observation),
                                                      "kept_at": time.time()}).encode())
            os.chmod(self.path, 0o600)
        except OSError:
            pass  # the next checkpoint hashes every table: slower, never wrong


def _signature(objects: dict[str, dict[str, dict[str, Any]]], table: str) -> str:
    return json_sha256(definition(objects, table))


def _read(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}
