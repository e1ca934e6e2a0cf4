"""A warm server's own side (:mod:`adapters.postgres.warm`): its golden database, a run's clones of it, and the
fingerprint of what a database cannot hold.

A cold run's never-written twin becomes the golden database (:func:`make_golden`), closed to connections; each run's
shadow and twin are file copies of it (:func:`clone`), or a spare renamed, dropped again at the run's end
(:func:`drop_clones`). The server's global state — roles, memberships, per-role settings, databases, tablespaces,
configuration files — is fingerprinted (:func:`server_state`), and every lease ends the other sessions and gives the
superuser a new password (:func:`_fresh_session`). All of it is managed from :data:`ADMIN_DB`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from adapters.postgres.server import SUPERUSER, Server
from adapters.postgres.warm_entry import WarmServer, golden_name, spare_names

ADMIN_DB = "template1"  # where a warm server is managed from: the database named like production's comes and goes
# The PBKDF2 iterations of the superuser's verifier each lease sets (see _verifier): the fewest SCRAM allows.
LEASE_ITERATIONS = 1

# What a database cannot hold and a clone does not reset: the server's global state, fingerprinted.
Q_SERVER_STATE = """
SELECT md5(coalesce(string_agg(line, E'\\n' ORDER BY line), '')) FROM (
  SELECT 'role ' || r::text AS line FROM pg_roles r
  UNION ALL SELECT 'member ' || m::text FROM pg_auth_members m
  UNION ALL SELECT 'setting ' || coalesce(d.datname, '*') || ' ' || s.setrole || ' ' || s.setconfig::text
    FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase
    WHERE d.datname IS NULL OR d.datname <> ALL(%(own)s)
  UNION ALL SELECT 'database ' || concat_ws(' ', datname, datallowconn, datconnlimit, datistemplate, datacl)
    FROM pg_database WHERE datname <> ALL(%(own)s)
  UNION ALL SELECT 'tablespace ' || spcname FROM pg_tablespace
  UNION ALL SELECT 'file ' || concat_ws(' ', sourcefile, name, setting, applied) FROM pg_file_settings
) lines
"""


@contextmanager
def admin(server: Server, conn: psycopg.Connection | None = None) -> Iterator[psycopg.Connection]:
    """``conn``, a session on :data:`ADMIN_DB` the caller holds already (a lease makes one for all its steps), or
    a new one for this ``with`` block."""
    if conn is not None:
        yield conn
        return
    with server.connect(ADMIN_DB) as own:
        yield own


def server_state(server: Server, database: str, conn: psycopg.Connection | None = None) -> str:
    """The server's global state, but for the databases a run makes and drops (the shadow named ``database``,
    its twin, the golden one) — the same before a cold run's action and once its copy is kept; and whether the
    golden database still refuses connections."""
    from adapters.postgres.shadowcopy import pristine_name

    own = [database, pristine_name(database), golden_name(database)]
    with admin(server, conn) as on:
        row = on.execute(Q_SERVER_STATE, {"own": own + spare_names(database)}).fetchone()
        closed = on.execute("SELECT NOT datallowconn FROM pg_database WHERE datname = %s", [own[2]]).fetchone()
    return f"{row[0] if row else ''} golden {'closed' if closed and closed[0] else 'open' if closed else 'absent'}"


def _fresh_session(server: WarmServer, conn: psycopg.Connection | None = None) -> str:
    """End every other session on the server and give its superuser a new password: whatever an earlier action
    learnt or kept open (it may have run as a superuser, with the shadow's own address) is useless now."""
    password = secrets.token_urlsafe(18)
    with admin(server, conn) as on:
        on.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                   "AND pid <> pg_backend_pid()")
        on.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(SUPERUSER),
                                                                 sql.Literal(_verifier(password, LEASE_ITERATIONS))))
    server.password = password
    return password


def _verifier(password: str, iterations: int, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802 section 3, RFC 7677; ALTER ROLE
    stores a string in this form as it is, https://www.postgresql.org/docs/current/catalog-pg-authid.html), with a
    new random salt. The lease sets it with 1 PBKDF2 iteration instead of the server's 4096, which cost every
    connection of a run about 2 ms of the client's CPU: iterations only slow an offline guess of the password from a
    stolen verifier, and this password is 144 random bits (``token_urlsafe(18)``), new at every lease, for a
    throwaway local server only shadow connects to — beyond guessing at any iteration count. Authentication stays
    SCRAM-SHA-256 (the password never crosses the wire; the server still proves it holds the verifier)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)  # Hi(); ASCII: SASLprep is a no-op
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


def drop_database(conn: psycopg.Connection, name: str) -> None:
    """Drop ``name`` if it exists, ending its sessions first (any server version)."""
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                 "pg_backend_pid()", [name])
    for _ in range(50):
        try:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            return
        except psycopg.errors.ObjectInUse:
            time.sleep(0.1)  # a terminated session takes a moment to leave
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def drop_clones(server: Server, database: str, conn: psycopg.Connection | None = None) -> None:
    """Drop a run's clones (the shadow, its twin); the server keeps an empty ``postgres`` database."""
    from adapters.postgres.shadowcopy import pristine_name

    with admin(server, conn) as on:
        for name in (database, pristine_name(database)):
            drop_database(on, name)
        if database == "postgres":
            on.execute("CREATE DATABASE postgres TEMPLATE template0")


def make_golden(server: Server, database: str, pristine: str) -> None:
    """Turn a cold run's server into a warm one: drop the written copy, rename the never-written twin to the golden
    database and close it to connections."""
    golden = golden_name(database)
    with server.connect(ADMIN_DB) as conn:
        drop_database(conn, database)
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [pristine])
        drop_database(conn, golden)
        for _ in range(50):
            try:
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(pristine),
                                                                            sql.Identifier(golden)))
                break
            except psycopg.errors.ObjectInUse:
                time.sleep(0.1)
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(golden)))
        if database == "postgres":
            conn.execute("CREATE DATABASE postgres TEMPLATE template0")


def clone(conn: psycopg.Connection, golden: str, name: str, owner: str | None, spares: list[str] | None = None) -> None:
    """``name`` as a file copy of the golden database (a checkpoint before, then no WAL per block) — or, when
    :func:`prepare_spares` left one of ``spares`` ready, that copy renamed (two clones made at once each claim a
    different one)."""
    drop_database(conn, name)
    for spare in spares or ():
        try:
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(spare), sql.Identifier(name)))
        except (psycopg.errors.InvalidCatalogName, psycopg.errors.ObjectInUse):
            continue  # not there, or claimed by the other clone this moment
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
        if owner:
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), sql.Identifier(owner)))
        return
    strategy = " STRATEGY FILE_COPY" if conn.info.server_version >= 150000 else ""
    owned = sql.SQL(" OWNER {}").format(sql.Identifier(owner)) if owner else sql.SQL("")
    conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}" + strategy).format(sql.Identifier(name),
                                                                             sql.Identifier(golden)) + owned)
