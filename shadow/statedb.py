"""Shared state on PostgreSQL (``SHADOW_STATE_URL``): what ``.shadow/`` holds on one machine, in one schema.

Several runners (CI jobs, a gateway, people approving from their laptops) then see one journal, one set of run
records and approvals, and exclude each other with the database's own locks — Terraform's PostgreSQL backend does
the same with advisory locks. The local state dir stays each runner's working copy (reports, logs, the action's
files); what another runner must be able to read is written through to here.

Schema (``shadow`` unless ``SHADOW_STATE_SCHEMA`` names another), versioned in ``meta``:

    run_starts, run_ends, step_starts, step_ends, notes, chain_head
        the journal, one hash chain exactly as in :mod:`shadow.journal` (same rows, same hashes; appends are
        serialised with a transaction-level advisory lock)
    files (run_id, name, body)
        the run folder's shared files: ``run.json`` (the run record and its phase), the approval request and the
        approval, ``report.json``

Locks (session advisory locks, so the server drops them when a runner's connection dies, wherever it ran):

    (21321, hashtext(run id))       held by a running run for its whole life: "killed" means its record is
                                    unfinished and this lock is free, so ``shadow recover`` on any runner settles it
    (21322, hashtext(identity))     a target, while a run writes it (beside each kind's own lock on the resource)

A run never goes on without its journal: the connection it journals on is the one it started with, and when the
state database goes away mid-run the next journal write fails and the run stops (``shadow recover`` settles it
once the database is back). A state database written by a newer shadow (schema version above this one's) is
refused with a message, never written.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from shadow.errors import BadInput, InfrastructureError, UnknownRun
from shadow.journal import CHAINED, GENESIS, RunRow, row_hash

SCHEMA_VERSION = 1
RUN_LOCK = 21321
TARGET_LOCK = 21322
APPEND_LOCK = 21323
MIGRATE_LOCK = 21324
POLL_SECONDS = 0.25

LINK = "link bigint PRIMARY KEY, prev_hash text NOT NULL, row_hash text NOT NULL,"
# Each version's statements, applied in order in one transaction; a database at version N gets N+1 … onwards.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        f"""CREATE TABLE run_starts ({LINK} id text NOT NULL UNIQUE, command text NOT NULL, plan_path text NOT NULL,
            plan_sha256 text NOT NULL, started_at double precision NOT NULL)""",
        f"""CREATE TABLE run_ends ({LINK} run_id text NOT NULL, finished_at double precision NOT NULL,
            outcome text NOT NULL, summary text)""",
        "CREATE INDEX run_ends_run ON run_ends (run_id)",
        f"""CREATE TABLE step_starts ({LINK} run_id text NOT NULL, seq integer NOT NULL, target text, step text NOT NULL,
            undo text, detail text NOT NULL, started_at double precision NOT NULL, UNIQUE (run_id, seq))""",
        f"""CREATE TABLE step_ends ({LINK} run_id text NOT NULL, seq integer NOT NULL, state text NOT NULL,
            detail text, ended_at double precision NOT NULL)""",
        "CREATE INDEX step_ends_step ON step_ends (run_id, seq)",
        f"CREATE TABLE notes ({LINK} at double precision NOT NULL, text text NOT NULL)",
        """CREATE TABLE chain_head (one integer PRIMARY KEY CHECK (one = 1), link bigint NOT NULL,
            row_hash text NOT NULL)""",
        """CREATE VIEW runs AS SELECT s.id, s.command, s.plan_path, s.plan_sha256, s.started_at, e.finished_at,
            e.outcome, e.summary FROM run_starts s
            LEFT JOIN run_ends e ON e.link = (SELECT MAX(link) FROM run_ends WHERE run_id = s.id)""",
        """CREATE VIEW steps AS SELECT s.run_id, s.seq, s.target, s.step, COALESCE(e.state, 'started') AS state,
            s.undo, COALESCE(e.detail, s.detail) AS detail, s.started_at, e.ended_at FROM step_starts s
            LEFT JOIN step_ends e ON e.link = (SELECT MAX(link) FROM step_ends
                                               WHERE run_id = s.run_id AND seq = s.seq)""",
        """CREATE TABLE files (run_id text NOT NULL, name text NOT NULL, body bytea NOT NULL,
            written_at double precision NOT NULL, PRIMARY KEY (run_id, name))""",
    ],
}


def where(url: str) -> str:
    """The state database's address without its credentials, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "SHADOW_STATE_URL (unparsable)"
    return f"postgres://{info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


def schema_name(environ: Any) -> str:
    name = str(environ.get("SHADOW_STATE_SCHEMA") or "shadow")
    if not name.replace("_", "").isalnum() or len(name) > 63:
        raise BadInput(f"SHADOW_STATE_SCHEMA={name!r}: a schema name of letters, digits and underscores")
    return name


def connect(url: str, schema: str) -> psycopg.Connection[Any]:
    """A connection to the state database with ``schema`` first on its search path, the schema brought to this
    shadow's version (refused when a newer shadow wrote it)."""
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10,
                               application_name="shadow state")
    except psycopg.ProgrammingError:
        # psycopg's own message quotes the string, password included: not repeated
        raise BadInput("SHADOW_STATE_URL is not a PostgreSQL connection string (postgresql://USER@HOST:PORT/DBNAME "
                       "or key=value pairs)") from None
    except psycopg.Error as exc:
        raise InfrastructureError(f"the state database {where(url)} is unreachable: "
                                  f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
                                  ) from None
    try:
        _prepare(conn, url, schema)
    except psycopg.Error as exc:
        conn.close()
        raise InfrastructureError(f"the state database {where(url)} is not usable: {str(exc).strip()}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: psycopg.Connection[Any], url: str, schema: str) -> None:
    ident = sql.Identifier(schema)
    conn.execute(sql.SQL("SET search_path TO {}").format(ident))
    version = _version(conn, schema)
    if version == SCHEMA_VERSION:
        return
    if version is not None and version > SCHEMA_VERSION:
        raise InfrastructureError(
            f"the state database {where(url)} (schema {schema}) was written by a newer shadow: its state schema is "
            f"version {version}, this shadow knows up to {SCHEMA_VERSION}; upgrade shadow on this runner (two "
            "versions of shadow cannot share one state database)")
    # A session lock taken before the transaction: a transaction begun while another runner's migration was
    # still running would keep seeing the catalog as it was (no schema yet) and migrate a second time.
    conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (MIGRATE_LOCK, schema))
    try:
        with conn.transaction():
            version = _version(conn, schema)  # as whoever migrated while this waited left it
            if version is not None and version >= SCHEMA_VERSION:
                return
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL)")
            for step in range((version or 0) + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step]:
                    conn.execute(statement)  # type: ignore[arg-type]  # our own literal DDL
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),))
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (MIGRATE_LOCK, schema))


def _version(conn: psycopg.Connection[Any], schema: str) -> int | None:
    row = conn.execute("SELECT to_regclass(%s)", (f"{schema}.meta",)).fetchone()
    if row is None or row[0] is None:
        return None
    found = conn.execute(sql.SQL("SELECT value FROM {}.meta WHERE key = 'schema_version'").format(
        sql.Identifier(schema))).fetchone()
    return int(found[0]) if found else None


class StateDB:
    """One connection to the shared state; the run that opened it journals, records and locks through it."""

    def __init__(self, url: str, environ: Any) -> None:
        self.url = url
        self.schema = schema_name(environ)
        self.conn = connect(url, self.schema)

    @property
    def where(self) -> str:
        return f"{where(self.url)} (schema {self.schema})"

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InfrastructureError(f"cannot {doing} in the state database {self.where}: {first}") from None

    # -- the run folder's shared files ------------------------------------------------------------------------
    def put_file(self, run_id: str, name: str, body: bytes) -> None:
        with self._errors(f"record {name} of run {run_id}"):
            self.conn.execute("INSERT INTO files (run_id, name, body, written_at) VALUES (%s, %s, %s, %s) "
                              "ON CONFLICT (run_id, name) DO UPDATE SET body = excluded.body, "
                              "written_at = excluded.written_at", (run_id, name, body, time.time()))

    def get_file(self, run_id: str, name: str) -> bytes | None:
        with self._errors(f"read {name} of run {run_id}"):
            row = self.conn.execute("SELECT body FROM files WHERE run_id = %s AND name = %s",
                                    (run_id, name)).fetchone()
        return None if row is None else bytes(row[0])

    def files(self, run_id: str) -> dict[str, bytes]:
        with self._errors(f"read the files of run {run_id}"):
            return {name: bytes(body) for name, body in
                    self.conn.execute("SELECT name, body FROM files WHERE run_id = %s", (run_id,))}

    def all_named(self, name: str) -> dict[str, bytes]:
        """Every run's file called ``name`` (e.g. every ``run.json``), by run id."""
        with self._errors(f"list the runs' {name}"):
            return {run_id: bytes(body) for run_id, body in
                    self.conn.execute("SELECT run_id, body FROM files WHERE name = %s ORDER BY run_id", (name,))}

    def running(self) -> list[str]:
        """Ids of the runs whose liveness lock some session holds (on any runner)."""
        with self._errors("list the running runs"):
            return [str(r[0]) for r in self.conn.execute(
                "SELECT run_id FROM files WHERE name = 'run.json' AND hashtext(run_id)::oid IN (SELECT objid "
                "FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objsubid = 2 AND granted)",
                (RUN_LOCK,))]

    # -- locks --------------------------------------------------------------------------------------------------
    def try_lock(self, space: int, key: str) -> bool:
        with self._errors("take a lock"):
            row = self.conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (space, key)).fetchone()
        return bool(row and row[0])

    def unlock(self, space: int, key: str) -> None:
        with self._errors("release a lock"):
            self.conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (space, key))

    def is_locked(self, space: int, key: str) -> bool:
        """Whether some session (another runner's, anywhere) holds the lock: probed, and let go if taken here."""
        with self._errors("probe a lock"):
            row = self.conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
                "AND objid = hashtext(%s)::oid AND objsubid = 2 AND granted AND pid <> pg_backend_pid()",
                (space, key)).fetchone()
        return bool(row and row[0])

    def wait_lock(self, space: int, key: str, timeout: float, who: Callable[[], str],
                  wait: Callable[[str], None]) -> None:
        from shadow.locks import LockTimeout

        deadline, told = time.monotonic() + timeout, False
        while not self.try_lock(space, key):
            holder = who()
            if time.monotonic() >= deadline:
                raise LockTimeout(f"{holder} holds the lock on this target (waited {timeout:g} s; raise "
                                  "--lock-timeout to wait longer)")
            if not told:
                wait(f"waiting up to {timeout:g} s for {holder} to release the target")
                told = True
            time.sleep(POLL_SECONDS)


class PgJournal:
    """:class:`shadow.journal.Journal`'s interface on the state database: the same rows and the same chain."""

    def __init__(self, db: StateDB, owned: bool = True) -> None:
        self.db = db
        self.owned = owned
        self.path = db.where

    def close(self) -> None:
        if self.owned:
            self.db.close()

    def _append(self, table: str, values: dict[str, Any]) -> None:
        conn = self.db.conn
        conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (APPEND_LOCK,))
        head = conn.execute("SELECT link, row_hash FROM chain_head").fetchone()
        link, prev = (int(head[0]) + 1, str(head[1])) if head else (1, GENESIS)
        row = {"link": link, "prev_hash": prev, **values}
        row["row_hash"] = row_hash(table, row)
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, row)),
            sql.SQL(", ").join(sql.Placeholder() * len(row)))
        conn.execute(statement, tuple(row.values()))
        conn.execute("INSERT INTO chain_head (one, link, row_hash) VALUES (1, %s, %s) ON CONFLICT (one) DO UPDATE "
                     "SET link = excluded.link, row_hash = excluded.row_hash", (link, row["row_hash"]))

    def _write(self, table: str, values: dict[str, Any]) -> None:
        with self.db._errors("write the journal"), self.db.conn.transaction():
            self._append(table, values)

    def start_run(self, run_id: str, command: str, plan_path: str, plan_sha256: str) -> None:
        self._write("run_starts", {"id": run_id, "command": command, "plan_path": plan_path,
                                   "plan_sha256": plan_sha256, "started_at": time.time()})

    def finish_run(self, run_id: str, outcome: str, summary: str) -> None:
        self._write("run_ends", {"run_id": run_id, "finished_at": time.time(), "outcome": outcome,
                                 "summary": summary})

    def begin_step(self, run_id: str, step: str, target: str | None = None, undo: str | None = None,
                   detail: dict[str, Any] | None = None) -> int:
        with self.db._errors("write the journal"), self.db.conn.transaction():
            row = self.db.conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM step_starts WHERE run_id = %s",
                                       (run_id,)).fetchone()
            seq = int(row[0]) if row else 1
            self._append("step_starts", {"run_id": run_id, "seq": seq, "target": target, "step": step,
                                         "undo": undo, "detail": json.dumps(detail or {}),
                                         "started_at": time.time()})
        return seq

    def end_step(self, run_id: str, seq: int, state: str = "done", detail: dict[str, Any] | None = None) -> None:
        self._write("step_ends", {"run_id": run_id, "seq": seq, "state": state,
                                  "detail": None if detail is None else json.dumps(detail),
                                  "ended_at": time.time()})

    def note(self, text: str) -> None:
        self._write("notes", {"at": time.time(), "text": text})

    def notes(self, prefix: str) -> list[tuple[float, str]]:
        with self.db._errors("read the journal"):
            return [(float(at), str(text)) for at, text in self.db.conn.execute(
                "SELECT at, text FROM notes WHERE starts_with(text, %s) ORDER BY link", (prefix,))]

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        with self.db._errors("read the journal"):
            cur = self.db.conn.execute("SELECT seq, target, step, state, undo, detail, started_at, ended_at "
                                       "FROM steps WHERE run_id = %s ORDER BY seq", (run_id,))
            cols = [c.name for c in cur.description or ()]
            return [dict(zip(cols, r, strict=True)) for r in cur]

    def runs(self, limit: int = 50) -> list[RunRow]:
        with self.db._errors("read the journal"):
            return [RunRow(*r) for r in self.db.conn.execute(
                "SELECT id, command, plan_path, plan_sha256, started_at, finished_at, outcome, summary FROM runs "
                "ORDER BY started_at DESC LIMIT %s", (limit,))]

    def run(self, run_id: str) -> RunRow:
        with self.db._errors("read the journal"):
            row = self.db.conn.execute(
                "SELECT id, command, plan_path, plan_sha256, started_at, finished_at, outcome, summary FROM runs "
                "WHERE id = %s", (run_id,)).fetchone()
        if row is None:
            raise UnknownRun(f"no run {run_id!r} in the state database {self.db.where} (see `shadow runs`)")
        return RunRow(*row)

    def chained_rows(self) -> list[tuple[int, str, dict[str, Any]]]:
        """Every row of the chain as (link, table, row), in link order (``shadow audit``)."""
        rows: list[tuple[int, str, dict[str, Any]]] = []
        with self.db._errors("read the journal"):
            for table in CHAINED:
                cur = self.db.conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
                cols = [c.name for c in cur.description or ()]
                rows.extend((int(r[0]), table, dict(zip(cols, r, strict=True))) for r in cur)
            rows.sort(key=lambda item: (item[0], item[1]))
        return rows

    @contextmanager
    def one_snapshot(self) -> Iterator[None]:
        """Every read inside sees the journal at one moment (REPEATABLE READ, read only): an audit while other
        runners append never mistakes rows written between two of its reads for a broken chain."""
        with self.db._errors("read the journal"), self.db.conn.transaction():
            self.db.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield

    def foreign_objects(self) -> list[tuple[str, str]]:
        """What in the state schema shadow did not create, or defined otherwise: (name, what it is) — tables,
        triggers, rules and row-level policies (each can hide or rewrite journal rows) and views whose definition
        is not the one shadow created (``runs`` and ``steps`` are what ``shadow runs`` reads)."""
        known = set(CHAINED) | {"chain_head", "meta", "files"}
        with self.db._errors("read the journal"):
            tables = self.db.conn.execute(
                "SELECT c.relname FROM pg_class c WHERE c.relnamespace = %s::regnamespace AND c.relkind IN "
                "('r', 'p', 'f', 'm')", (self.db.schema,)).fetchall()
            triggers = self.db.conn.execute(
                "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "WHERE c.relnamespace = %s::regnamespace AND NOT t.tgisinternal", (self.db.schema,)).fetchall()
            rules = self.db.conn.execute(
                "SELECT r.rulename FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class "
                "WHERE c.relnamespace = %s::regnamespace AND r.rulename <> '_RETURN'", (self.db.schema,)).fetchall()
            policies = self.db.conn.execute(
                "SELECT p.polname FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid "
                "WHERE c.relnamespace = %s::regnamespace", (self.db.schema,)).fetchall()
            views = self._views_changed()
        return ([(str(name), "a table that is not part of the journal (rows outside the chain)")
                 for (name,) in tables if name not in known]
                + [(str(name), "a trigger that is not part of the journal") for (name,) in triggers]
                + [(str(name), "a rule that is not part of the journal (it can rewrite what is written or read)")
                   for (name,) in rules]
                + [(str(name), "a row-level policy that is not part of the journal (it can hide rows)")
                   for (name,) in policies]
                + [(name, "the view's definition is not the one shadow created") for name in views])

    def _views_changed(self) -> list[str]:
        """The journal's views whose definition differs from (or is missing against) the one this shadow creates:
        each is created again as a temporary view, in a savepoint rolled back, and the two definitions compared
        as the server prints them."""
        latest: dict[str, str] = {}  # each view's definition as the last migration that (re)created it left it
        for step in sorted(MIGRATIONS):
            for statement in MIGRATIONS[step]:
                found = re.match(r"CREATE (?:OR REPLACE )?VIEW (\w+) AS ", statement)
                if found:
                    latest[found.group(1)] = statement[found.end():]
        changed = []
        for name, body in latest.items():
            probe = f"shadow_audit_{name}"
            try:
                with self.db.conn.transaction(force_rollback=True):
                    self.db.conn.execute(f"CREATE TEMP VIEW {probe} AS {body}")  # type: ignore[arg-type]  # ours
                    row = self.db.conn.execute(
                        sql.SQL("SELECT pg_get_viewdef({}::regclass) = pg_get_viewdef({}::regclass)").format(
                            sql.Literal(f"{self.db.schema}.{name}"), sql.Literal(f"pg_temp.{probe}"))).fetchone()
            except psycopg.errors.UndefinedTable:
                row = None
            if not (row and row[0]):
                changed.append(name)
        return changed

    def head(self) -> tuple[int, str] | None:
        with self.db._errors("read the journal"):
            row = self.db.conn.execute("SELECT link, row_hash FROM chain_head").fetchone()
        return None if row is None else (int(row[0]), str(row[1]))
