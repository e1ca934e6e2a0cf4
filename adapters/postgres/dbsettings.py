"""Settings stored in the catalog rather than the dump: ``ALTER DATABASE … SET``, ``ALTER ROLE … IN DATABASE … SET``
and ``ALTER ROLE … SET``.

``pg_dump`` carries none of them (only ``pg_dumpall`` or ``--create`` would), yet they change how every session
behaves: a database-level ``search_path`` decides which table an unqualified name means, a role's
``statement_timeout`` cancels a migration, a custom setting is what an RLS policy reads with ``current_setting``.
So the checkpoint records them, the shadow gets them (the database's, and those of every role), and a restore puts
the database's back.

An entry is ``[role or None, in_database, [[name, value], …]]``: ``role`` None is the database itself;
``in_database`` False is a role's setting for every database.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

Q_SETTINGS = """
SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END, s.setdatabase <> 0, s.setconfig
FROM pg_db_role_setting s
WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = %s) OR (s.setdatabase = 0 AND s.setrole <> 0)
ORDER BY 1 NULLS FIRST, 2
"""

# Libraries loaded into every new session: a shadow server without them would refuse every connection, so a shadow
# does not get these (nor does the observation see them); a restore of production still puts them back.
SESSION_LIBRARIES = frozenset({"local_preload_libraries", "session_preload_libraries"})

# Settings whose value is a list of identifiers, written back one quoted element at a time (as pg_dump does):
# a single literal 'a, b' would become the one name "a, b".
LIST_SETTINGS = frozenset({"search_path", "temp_tablespaces", "local_preload_libraries", "session_preload_libraries",
                           "shared_preload_libraries", "unix_socket_directories"})


def read(conn: psycopg.Connection, database: str) -> list[list[Any]]:
    """The entries of ``database`` and the roles' for every database (see the module docstring), JSON-able."""
    return [[role, in_database, [list(pair) for pair in split(config)]]
            for role, in_database, config in conn.execute(Q_SETTINGS, (database,))]


def split(config: list[str] | None) -> list[tuple[str, str]]:
    """``setconfig`` entries (``name=value``) as (name, value), sorted by name."""
    pairs = [entry.split("=", 1) for entry in config or [] if "=" in entry]
    return sorted((name, value) for name, value in pairs)


def settle(conn: psycopg.Connection, database: str, want: list[list[Any]], *, every_database: bool,
           shadow: bool = False, own_role: str | None = None) -> list[str]:
    """Make the settings of ``database`` (and, with ``every_database``, the roles' settings for every database)
    those of ``want``; only an entry that differs is touched. Returns what was changed, one line each. A role
    that does not exist here is skipped: its settings cannot apply to anyone. ``shadow``: leave out
    :data:`SESSION_LIBRARIES`. ``own_role``: the role this server is run with, whose settings for every database
    are left alone (they would apply to the shadow's own work: restores, observations)."""
    roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles")}

    def keep(pairs: list[Any]) -> list[tuple[str, str]]:
        return [(name, value) for name, value in pairs if not (shadow and name in SESSION_LIBRARIES)]

    have = {(role, in_db): keep(pairs) for role, in_db, pairs in read(conn, database)}
    wanted = {(role, in_db): keep(pairs) for role, in_db, pairs in want}
    changed = []
    for role, in_db in sorted(set(have) | set(wanted), key=lambda k: (k[0] or "", k[1])):
        if (role is not None and role not in roles) or (not in_db and (not every_database or role == own_role)):
            continue
        now, then = dict(have.get((role, in_db), [])), dict(wanted.get((role, in_db), []))
        if now == then:
            continue
        # One parameter at a time, only those that differ: some need privileges (superuser-only parameters,
        # GRANT SET) that the others do not.
        scope = _scope(database, role, in_db)
        for name in sorted(set(now) - set(then)):
            conn.execute(scope + sql.SQL(" RESET ") + _name(name))
        for name, value in sorted(then.items()):
            if now.get(name) != value:
                conn.execute(scope + sql.SQL(" SET ") + _assignment(name, value))
        changed.append(scope.as_string(conn))
    return changed


def _scope(database: str, role: str | None, in_database: bool) -> sql.Composed:
    if role is None:
        return sql.SQL("ALTER DATABASE {}").format(sql.Identifier(database))
    if in_database:
        return sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), sql.Identifier(database))
    return sql.SQL("ALTER ROLE {}").format(sql.Identifier(role))


def _name(name: str) -> sql.Composed:
    return sql.SQL(".").join(sql.Identifier(part) for part in name.split("."))


def _assignment(name: str, value: str) -> sql.Composed:
    target = _name(name)
    values: sql.Composable = sql.Literal(value)
    if name in LIST_SETTINGS:
        values = sql.SQL(", ").join(sql.Literal(element) for element in _list_elements(value))
    return sql.SQL("{} TO {}").format(target, values)


def _list_elements(raw: str) -> list[str]:
    """The elements of a stored list setting: comma separated, each bare or double-quoted ("" is a quote)."""
    elements, current, quoted, i = [], "", False, 0
    while i < len(raw):
        ch = raw[i]
        if quoted:
            if ch == '"' and raw[i + 1:i + 2] == '"':
                current += '"'
                i += 1
            elif ch == '"':
                quoted = False
            else:
                current += ch
        elif ch == '"':
            quoted = True
        elif ch == ",":
            elements.append(current)
            current = ""
        elif not ch.isspace():  # outside quotes, spaces only separate
            current += ch
        i += 1
    elements.append(current)
    return elements
