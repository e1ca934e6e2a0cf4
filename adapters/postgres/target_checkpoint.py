"""Checkpointing PostgreSQL production: ``pg_dump`` and the observation at once, from one exported snapshot.

The methods :class:`adapters.postgres.target.PostgresTarget` takes from :class:`CheckpointMixin`; the checkpoint's
archive is the store artifact :func:`_artifact` names (what a shadow, a restore and an undo read back).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import psycopg

from adapters import Checkpoint, fingerprint_of
from adapters.postgres import dbsettings
from adapters.postgres.binaries import ClientTools
from adapters.postgres.compare import last_line
from adapters.postgres.hashcache import HashCache
from adapters.postgres.observe import read_text_as_str
from adapters.postgres.restore import Dump, dumped_sequences, pg_dump_started
from shadow.errors import InfrastructureError, ShadowError, TargetUnreachable
from snapshots import Artifact, Store

Q_ROLES = """
SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, rolbypassrls
FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY rolname
"""
Q_MEMBERS = """
SELECT r.rolname, m.rolname FROM pg_auth_members am JOIN pg_roles r ON r.oid = am.roleid
JOIN pg_roles m ON m.oid = am.member WHERE r.rolname !~ '^pg_' OR m.rolname !~ '^pg_'
"""
Q_DATABASE = """
SELECT current_database(), pg_encoding_to_char(encoding), datcollate, datctype, pg_get_userbyid(datdba), current_user
FROM pg_database WHERE datname = current_database()
"""


class CheckpointMixin:
    """Checkpoint and the observation beside its dump (of :class:`adapters.postgres.target.PostgresTarget`)."""

    # What these methods use of the target (set in its __init__, defined there or by its other mixins).
    name: str
    kind: str
    dsn: str
    connect: Callable[..., psycopg.Connection]
    describe: Callable[[], str]
    binaries: Callable[[int], ClientTools]
    _observe: Callable[..., dict[str, Any]]
    _hash_cache: Callable[[], HashCache]
    _start_ahead: Callable[[int], None]

    # -- checkpoint -----------------------------------------------------------------------------------------
    def checkpoint(self, store: Store, run_id: str) -> Checkpoint:
        """Dump and observe production from one exported snapshot, so the fingerprint describes the dump."""
        try:
            return self._checkpoint(store, run_id)
        except psycopg.OperationalError as exc:
            raise TargetUnreachable(f"lost production during the checkpoint: {last_line(exc)}",
                                    target=self.name) from exc
        except psycopg.Error as exc:
            raise InfrastructureError(f"the checkpoint failed: {last_line(exc)}", target=self.name) from exc

    def _checkpoint(self, store: Store, run_id: str) -> Checkpoint:
        with self.connect(autocommit=False) as holder:
            read_text_as_str(holder)  # SQL_ASCII: the snapshot id and the names below would come back as bytes
            holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            # This connection holds the exported snapshot while pg_dump runs: production's own idle/statement
            # timeouts must not end it half way.
            holder.execute("SET idle_in_transaction_session_timeout = 0")
            holder.execute("SET statement_timeout = 0")
            row = holder.execute("SELECT pg_export_snapshot(), txid_current_snapshot()::text").fetchone()
            assert row is not None
            snapshot, txids = str(row[0]), str(row[1])
            major = int(holder.info.server_version) // 10000
            self._start_ahead(major)
            binaries = self.binaries(major)
            db = holder.execute(Q_DATABASE).fetchone()
            assert db is not None
            roles = [list(r) for r in holder.execute(Q_ROLES)]
            members = [list(r) for r in holder.execute(Q_MEMBERS)]
            settings = dbsettings.read(holder, str(db[0]))
            # pg_dump and the observation run at once, both from the snapshot this connection holds open. The
            # hashing runs in one process, hidden behind the dump: it costs a quarter of the dump's CPU (1 GB of
            # pgbench: 1.25 CPU-s against pg_dump's 5.0-5.3 in 2.9 s), so one core finishes it well before the
            # dump ends. Not split over a second connection of the snapshot (on 2 cores that measured slower), and
            # no parallel workers (below): on a busy machine they only add CPU (1.56 CPU-s for the same hash).
            with store.new_artifact() as slot:
                cache = self._hash_cache()
                cache.identify(holder)
                with pg_dump_started(binaries, self.dsn, slot.path, snapshot) as dump:
                    observation = self._observe_beside(dump, snapshot, cache)
                    dump.wait()
                cache.fill(observation)
                _as_dumped(observation, dumped_sequences(binaries, slot.path, run_id))
            holder.rollback()
        assert slot.artifact is not None
        cache.keep(observation, txids)
        return Checkpoint(
            target=self.name, kind=self.kind, run_id=run_id, observation=observation,
            fingerprint=fingerprint_of(observation),
            artifacts={"dump": {"sha256": slot.artifact.sha256, "size": slot.artifact.size, "format": "pg_dump custom"}},
            meta={
                "server_version_num": observation["server"]["version_num"], "major": major,
                "database": db[0], "encoding": db[1], "collate": db[2], "ctype": db[3],
                "database_owner": db[4], "user": db[5],
                "roles": roles, "members": members, "settings": settings, "endpoint": self.describe(),
                # tables whose content hash an earlier checkpoint's vouched for (adapters.postgres.hashcache)
                "hashes": {"reused": len(cache.reused), "hashed": len(observation["data"]) - len(cache.reused)},
                # What static analysis cannot see in the SQL (shadow.lint's `partitioned=`).
                "lint_facts": {"partitioned": sorted(name for name, t in observation["objects"]["table"].items()
                                                     if t.get("table_kind") == "partitioned table")},
            },
        )

    def _observe_beside(self, dump: Dump, snapshot: str, cache: HashCache) -> dict[str, Any]:
        """Observe from ``snapshot`` while ``dump`` runs, hashing only the tables whose hash ``cache`` cannot vouch
        for. A dump that fails first cancels the observation, and its error is the one raised; an observation that
        fails first ends the dump (the caller's ``with``)."""
        with self.connect() as conn:
            # In one process: beside pg_dump, parallel workers would end the hash sooner only to slow the dump, and
            # what ends last is the dump (1 GB here: checkpoint 1.14-1.20x pg_dump without them, 1.21-1.23x with).
            conn.execute("SET max_parallel_workers_per_gather = 0")
            done, cancelled = threading.Event(), threading.Event()
            watcher = threading.Thread(target=_cancel_when_failed, args=(dump, [conn], done, cancelled),
                                       name="shadow-checkpoint-watcher", daemon=True)
            watcher.start()
            try:
                return self._observe(conn, snapshot, hashed=cache.hashed(conn))
            except (ShadowError, psycopg.Error):
                done.set()
                watcher.join()
                if cancelled.is_set():
                    dump.wait()  # raises pg_dump's own error
                raise
            finally:
                done.set()
                watcher.join()


def _as_dumped(observation: dict[str, Any], dumped: Mapping[str, tuple[int, bool]]) -> None:
    """Sequences as the dump recorded them (read at pg_dump's moment, not in the snapshot: production's
    application may have taken values in between), so that the checkpoint says what a restore puts back."""
    for name, seq in observation["objects"]["sequence"].items():
        if name in dumped:
            seq["last_value"], seq["is_called"] = dumped[name]


def _cancel_when_failed(dump: Dump, conns: list[psycopg.Connection], done: threading.Event,
                        cancelled: threading.Event) -> None:
    """Until ``done``: when ``dump`` has failed, cancel what ``conns`` run (the checkpoint cannot succeed)."""
    while not done.wait(0.05):
        if dump.failed():
            cancelled.set()
            for conn in conns:
                try:
                    conn.cancel_safe(timeout=10)
                except psycopg.Error:
                    pass  # the observation then ends on its own; the dump's error is raised all the same
            return


def _artifact(checkpoint: Checkpoint) -> Artifact:
    dump = checkpoint.artifacts["dump"]
    return Artifact(dump["sha256"], int(dump["size"]))
