"""Observing a PostgreSQL database: its catalog and a content hash per table, computed in SQL.

An observation is plain JSON-able data::

    {"server": {"major": 15, "version_num": 150018},
     "row_hash": 2,                                     # how rows were hashed (see "Row hashing" below)
     "objects": {kind: {name: {property: value}}},     # kinds are the change-address kinds
     "data": {table: {"rows": n, "hash": "…", "key": [pk columns] | None, "only": bool, "columns": [names]}},
     "depends": {"<kind> <name>": {"<kind> <name>": deptypes}}}   # pg_depend between observed objects

The kinds in :data:`LATER_KINDS` (rules, extended statistics, publications, event triggers, collations) appear in
``objects`` only when the database has such objects (see there).

Names are schema-qualified with ``search_path = ''`` so definitions (``pg_get_viewdef`` …) are deterministic.
Objects that belong to an extension are covered by ``extension`` and not listed one by one. Everything is read in
one REPEATABLE READ transaction, so the observation is one consistent snapshot; ``snapshot`` lets a checkpoint
observe exactly what ``pg_dump --snapshot`` dumps.

Row hashing: a row's hash is made of each non-NULL column's name and value as text — every column's text is hashed
with ``hashtextextended`` under ``COLLATE "C"``, seeded by its name, and the column hashes are XORed (row hash 2,
:func:`row_hash_expr`). Text works for every column type (``hash_record_extended`` fails on json, xml, point …)
and keeps what a conversion to jsonb would lose (json's exact text, a null-valued key *inside* a jsonb value);
leaving NULL columns out makes "add a nullable column" leave every row's hash alone, so it is not reported as an
update of every row; the order of the columns does not matter. Text output depends on session settings (TimeZone,
DateStyle, bytea_output …), which production's database, role or client may set differently from the shadow's
server: :data:`READ_SETTINGS` pins them for every read, so equal data hashes equal wherever it is observed.

Row hash 3 (the current one) is row hash 2 for a table's content hash, except that a column of a type whose own
hash function tells every distinct text apart — ``smallint``, ``integer``, ``bigint``, ``oid``, ``uuid``,
``timestamp``, ``timestamptz`` (as UTC), ``time``, ``char(n)`` (under ``COLLATE "C"``), and domains over them — is
hashed by that function (the one hash partitioning uses: stable across versions) instead of its text: no output
function per value, 3-6× less CPU on such tables (``numeric``, floats, ``interval``, ``jsonb``, enums and arrays, whose
hash functions equate values that print differently, stay text). Which columns are hashed natively is read from the
catalog of the database being hashed, so two copies of one definition hash alike; where definitions differ (a
column's type changed) the content hashes only flag the table for a row-by-row count, which is always made in row
hash 2 (:func:`column_hash_expr`), as are per-row hashes kept in undo records (:func:`row_hash_expr`).

Row hashes are versioned (``row_hash`` in the observation; absent means 1). Row hash 1 hashed a jsonb object
``{column: text}`` per row with ``jsonb_hash_extended`` — the same content at 3-4× the CPU. A run keeps the row hash
of its checkpoint to the end: every observation compared with (or derived from) a checkpoint's is made under
:func:`hashing_like` that checkpoint, so a run planned, applied or kept as an undo record by an older shadow is
still applied, verified and rolled back exactly by a newer one.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.adapt import Buffer, Loader

from adapters.postgres import dbsettings
from adapters.postgres.catalog import (PUBLICATION_TABLE_EXTRA_15, USER_NS, NOT_EXT, Q_SCHEMAS, Q_RELATIONS,
                                         Q_COLUMNS, Q_INDEXES, Q_CONSTRAINTS, Q_ROUTINES, Q_TRIGGERS, Q_POLICIES, Q_SEQUENCES,
                                         Q_TYPES, Q_DEFAULT_PRIVILEGES, DEFAULT_PRIVILEGE_OBJECTS, Q_RULES,
                                         Q_STATISTICS, Q_PUBLICATIONS, Q_PUBLICATION_TABLES, Q_PUBLICATION_SCHEMAS,
                                         Q_EVENT_TRIGGERS, Q_COLLATIONS, Q_SETTINGS, Q_EXTENSIONS, Q_DEPENDS)
from shadow.errors import ShadowError, TargetUnreachable
from shadow.redact import looks_secret

# hashed(table, objects): whether observe counts and hashes that table's rows
Hashed = Callable[[str, dict[str, dict[str, dict[str, Any]]]], bool]

ROW_HASH = 3  # the row hash of new observations (see the module docstring); 1 and 2 are read and made for older runs
ROW_HASHES = (1, 2, 3)
# The row hash in force: set by hashing_like() for the work on one checkpoint's run; unset, new observations' own
# (SHADOW_ROW_HASH=1 or 2 makes a checkpoint the way shadow did before row hash 2 or 3, for the tests of such runs).
_row_hash: ContextVar[int | None] = ContextVar("shadow_row_hash", default=None)

# SET LOCAL for every transaction that reads user data (observing, and counting row changes in diff).
READ_SETTINGS = {
    "search_path": "",  # names in definitions come out schema-qualified, hence deterministic
    "row_security": "off",  # a table under RLS would be counted short: make the server refuse instead of lying
    # The text output of values, which row hashes are made of.
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",  # exact floats (shortest exact on PostgreSQL 12+)
    "bytea_output": "hex",
    "lc_monetary": "C",
    "statement_timeout": "0",  # a database-level timeout must not cancel an observation half way
}

KIND_NAMES = {"r": "table", "p": "partitioned table", "f": "foreign table", "v": "view", "m": "materialized view"}


def _as_cp1252(error: UnicodeError) -> tuple[str, int]:
    assert isinstance(error, UnicodeDecodeError)
    return error.object[error.start:error.end].decode("cp1252", "replace"), error.end


codecs.register_error("shadow-cp1252", _as_cp1252)


class _SqlAsciiText(Loader):
    """Text from a ``SQL_ASCII`` database, as ``str``.

    Such a database stores whatever bytes it was given, and psycopg hands its text over as ``bytes``. They are
    read as UTF-8 (what such databases mostly hold), and a byte that is not part of UTF-8 as Windows-1252 (what
    legacy data mostly is otherwise: ``K\\xf8ge`` reads ``Køge``), so names, definitions, values and keys (JSON
    text included) are printable wherever they end up. Row hashes are computed by the server from the raw bytes,
    so no difference is lost to the decoding.
    """

    def load(self, data: Buffer) -> str:
        return bytes(data).decode("utf-8", "shadow-cp1252")


def read_text_as_str(conn: psycopg.Connection) -> None:
    """Make ``conn`` return text as ``str`` when its database is ``SQL_ASCII`` (psycopg returns ``bytes`` there)."""
    if conn.info.encoding == "ascii":  # psycopg's name for SQL_ASCII
        for name in ("text", "varchar", "bpchar", "name", '"char"'):
            conn.adapters.register_loader(name, _SqlAsciiText)
        conn.adapters.register_loader(0, _SqlAsciiText)  # untyped literals ('x' AS y)


def server_major(conn: psycopg.Connection) -> int:
    return int(conn.info.server_version) // 10000


def observe(conn: psycopg.Connection, *, snapshot: str | None = None, with_data: bool = True,
            hashed: Hashed | None = None) -> dict[str, Any]:
    """Observe the database ``conn`` is connected to. Leaves the connection's transaction state as it found it.

    ``hashed(table, objects)`` says which tables' rows are counted and hashed (default: every one); the others'
    ``data`` entries have ``rows`` and ``hash`` None, for the caller to fill in (:mod:`adapters.postgres.capture`).

    Inside an open transaction (a transactional apply observing its own uncommitted changes) it reads in a
    savepoint of that transaction; otherwise in a REPEATABLE READ, READ ONLY transaction of its own.
    """
    read_text_as_str(conn)
    in_tx = conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    autocommit = conn.autocommit
    if not in_tx:
        conn.autocommit = False
    try:
        with conn.transaction():
            if not in_tx:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if snapshot:
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            set_read_settings(conn)
            return _observe_in_tx(conn, with_data, hashed)
    except psycopg.OperationalError as exc:
        raise TargetUnreachable(f"lost the connection while observing: {exc}") from exc
    finally:
        if not conn.closed and not in_tx:
            conn.autocommit = autocommit


def set_read_settings(conn: psycopg.Connection) -> None:
    """Apply :data:`READ_SETTINGS` to the open transaction."""
    calls = sql.SQL(", ").join(
        sql.SQL("set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value))
        for name, value in READ_SETTINGS.items()
    )
    conn.execute(sql.SQL("SELECT {}").format(calls))


def _observe_in_tx(conn: psycopg.Connection, with_data: bool, hashed: Hashed | None = None) -> dict[str, Any]:
    objects: dict[str, dict[str, dict[str, Any]]] = {
        k: {}
        for k in (
            "schema", "extension", "type", "table", "column", "index", "constraint", "view",
            "materialized_view", "function", "procedure", "trigger", "sequence", "default_privileges",
        )
    }
    _observe_namespaces(conn, objects)
    relkinds = _observe_relations(conn, objects)
    table_columns = _observe_columns(conn, objects, relkinds)
    _observe_indexes_and_constraints(conn, objects)
    _observe_routines_and_triggers(conn, objects)
    _observe_sequences(conn, objects)
    for kind, found in _observe_later_kinds(conn).items():
        if found:
            objects[kind] = found
    return {
        "server": {"version_num": conn.info.server_version, "major": server_major(conn)},
        "row_hash": current_row_hash(),
        "objects": objects,
        "data": _observe_data(conn, objects, relkinds, table_columns, hashed) if with_data else {},
        "depends": dependencies(conn),
    }


def _observe_namespaces(conn: psycopg.Connection, objects: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Schemas, extensions, types and default privileges."""
    for name, owner, acl, comment in conn.execute(Q_SCHEMAS):
        objects["schema"][name] = {"owner": owner, "acl": acl, "comment": comment}
    for name, version, schema in conn.execute(Q_EXTENSIONS):
        objects["extension"][name] = {"version": version, "schema": schema}
    for name, typtype, owner, detail, acl, comment in conn.execute(Q_TYPES):
        kind = {"e": "enum", "d": "domain", "c": "composite", "r": "range"}[typtype]
        objects["type"][name] = {"type_kind": kind, "owner": owner, "definition": detail, "acl": acl, "comment": comment}
    for name, objtype, acl in conn.execute(Q_DEFAULT_PRIVILEGES):
        objects["default_privileges"].setdefault(name, {})[DEFAULT_PRIVILEGE_OBJECTS[objtype]] = acl


def _observe_relations(conn: psycopg.Connection, objects: dict[str, dict[str, dict[str, Any]]]) -> dict[str, str]:
    """Tables (with their row-security policies), views and materialized views; returns relation → relkind."""
    relkinds: dict[str, str] = {}
    for (_oid, name, relkind, owner, acl, persistence, rls, force_rls, is_part, bound, partkey, parent, options,
         comment, viewdef, populated) in conn.execute(Q_RELATIONS):
        relkinds[name] = relkind
        props: dict[str, Any] = {"owner": owner, "acl": acl, "comment": comment}
        if relkind in ("v", "m"):
            props["definition"] = viewdef
            if relkind == "m":
                props["populated"] = populated
            objects["view" if relkind == "v" else "materialized_view"][name] = props
            continue
        props.update(
            {
                "table_kind": KIND_NAMES[relkind],
                "unlogged": persistence == "u",
                "row_security": rls,
                "force_row_security": force_rls,
                "partition_of": parent if is_part else None,
                "inherits": parent if parent and not is_part else None,
                "partition_bound": bound,
                "partition_key": partkey,
                "options": options,
                "policies": {},
            }
        )
        objects["table"][name] = props
    for table, pol, cmd, permissive, roles, qual, check, comment in conn.execute(Q_POLICIES):
        if table in objects["table"]:
            objects["table"][table]["policies"][pol] = {
                "command": cmd, "permissive": permissive, "roles": roles, "using": qual, "with_check": check,
                "comment": comment,
            }
    return relkinds


def _observe_columns(conn: psycopg.Connection, objects: dict[str, dict[str, dict[str, Any]]],
                     relkinds: dict[str, str]) -> dict[str, list[tuple[int, str]]]:
    """Every table's columns; returns relation → (position, raw name) of every column, views' included: what its
    rows hash."""
    table_columns: dict[str, list[tuple[int, str]]] = {}
    for (rel, col, position, typ, notnull, default, identity, generated, collation, comment,
         rawname, acl) in conn.execute(Q_COLUMNS):
        table_columns.setdefault(rel, []).append((position, rawname))
        if relkinds.get(rel) in ("v", "m"):
            # A view's columns are part of its definition; listing them separately is noise.
            continue
        objects["column"][f"{rel}.{col}"] = {
            "position": position,
            "type": typ,
            "not_null": notnull,
            "default": None if generated else default,
            "identity": {"a": "always", "d": "by default"}.get(identity),
            "generated": default if generated else None,
            "collation": collation,
            "comment": comment,
            "acl": acl,  # column privileges (GRANT SELECT (col) …)
        }
    return table_columns


def _observe_indexes_and_constraints(conn: psycopg.Connection,
                                     objects: dict[str, dict[str, dict[str, Any]]]) -> None:
    for name, table, definition, valid, constraint, comment in conn.execute(Q_INDEXES):
        objects["index"][name] = {"table": table, "definition": definition, "valid": valid, "constraint": constraint,
                                  "comment": comment}
    for name, contype, definition, validated, deferrable, deferred, owner_name, comment in conn.execute(Q_CONSTRAINTS):
        objects["constraint"][name] = {
            "constraint_type": {"p": "primary key", "f": "foreign key", "u": "unique", "c": "check",
                                "x": "exclusion", "t": "trigger", "n": "not null"}.get(contype, contype),
            "definition": definition,
            "validated": validated,
            "deferrable": deferrable,
            "deferred": deferred,
            "on": owner_name,
            "comment": comment,
        }


def _observe_routines_and_triggers(conn: psycopg.Connection, objects: dict[str, dict[str, dict[str, Any]]]) -> None:
    for signature, prokind, owner, acl, definition, comment in conn.execute(Q_ROUTINES):
        kind = "procedure" if prokind == "p" else "function"
        objects[kind][signature] = {
            "routine_kind": {"f": "function", "p": "procedure", "a": "aggregate", "w": "window"}[prokind],
            "owner": owner, "acl": acl, "definition": definition, "comment": comment,
        }
    for name, definition, enabled, table, comment in conn.execute(Q_TRIGGERS):
        objects["trigger"][name] = {"definition": definition, "enabled": enabled, "table": table, "comment": comment}


def _observe_sequences(conn: psycopg.Connection, objects: dict[str, dict[str, dict[str, Any]]]) -> None:
    seq_rows = conn.execute(Q_SEQUENCES).fetchall()
    for (oid, name, typ, start, inc, smin, smax, cycle, cache, owner, acl, owned_by, used_by, comment) in seq_rows:
        last_value, is_called = _sequence_state(conn, name)
        objects["sequence"][name] = {
            "type": typ, "start": start, "increment": inc, "min": smin, "max": smax, "cycle": cycle, "cache": cache,
            "owner": owner, "acl": acl, "owned_by": owned_by, "used_by": list(used_by or []),
            "last_value": last_value, "is_called": is_called, "comment": comment,
        }


def _observe_data(conn: psycopg.Connection, objects: dict[str, dict[str, dict[str, Any]]], relkinds: dict[str, str],
                  table_columns: dict[str, list[tuple[int, str]]], hashed: Hashed | None = None) -> dict[str, Any]:
    """Every table's and populated materialized view's row count and content hash (a partition's through its
    partitioned root)."""
    data: dict[str, Any] = {}
    keys = _primary_keys(conn)
    natives = native_hashes(conn)
    for name, relkind in sorted(relkinds.items()):
        rel = objects["table"].get(name) or objects["materialized_view"].get(name)
        if relkind not in ("r", "p", "m") or rel is None:
            continue
        if relkind == "m" and not rel.get("populated"):
            continue
        if rel.get("partition_of"):
            continue  # counted through its partitioned root
        columns = [raw for _, raw in sorted(table_columns.get(name, []))]
        if hashed is None or hashed(name, objects):
            data[name] = table_data(conn, name, only=relkind != "p", key=keys.get(name), columns=columns,
                                    natives=natives.get(name, {}))
        else:
            data[name] = {"rows": None, "hash": None, "key": keys.get(name), "only": relkind != "p", "columns": columns}
    return data


# Kinds added to the observation after the others. Unlike those, they appear in ``objects`` only when the database
# has at least one: the fingerprint of a database without any stays what it was, so checkpoints (and after-apply
# records) taken by an earlier version of shadow still compare as equal.
LATER_KINDS = ("rule", "statistics", "publication", "event_trigger", "collation", "setting")


def _observe_later_kinds(conn: psycopg.Connection) -> dict[str, dict[str, dict[str, Any]]]:
    major = server_major(conn)
    out: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in LATER_KINDS}
    for name, definition, enabled, table, comment in conn.execute(Q_RULES):
        out["rule"][name] = {"definition": definition, "table": table, "enabled": enabled, "comment": comment}

    q_statistics = Q_STATISTICS.format(
        target="CASE WHEN s.stxstattarget >= 0 THEN s.stxstattarget::int END" if major >= 13 else "NULL::int",
        user_ns=USER_NS, not_ext=NOT_EXT.format(cls="'pg_statistic_ext'", oid="s.oid"),
        table_not_ext=NOT_EXT.format(cls="'pg_class'", oid="c.oid"))
    for name, definition, owner, table, target, comment in conn.execute(q_statistics):
        out["statistics"][name] = {"definition": definition, "owner": owner, "table": table,
                                   "statistics_target": target, "comment": comment}

    tables: dict[int, list[str]] = {}
    q_tables = Q_PUBLICATION_TABLES.format(extra=PUBLICATION_TABLE_EXTRA_15 if major >= 15 else "")
    for pub, entry in conn.execute(q_tables):
        tables.setdefault(pub, []).append(entry)
    schemas: dict[int, list[str]] = {}
    if major >= 15:  # FOR TABLES IN SCHEMA
        for pub, schema in conn.execute(Q_PUBLICATION_SCHEMAS):
            schemas.setdefault(pub, []).append(schema)
    q_publications = Q_PUBLICATIONS.format(via_root="p.pubviaroot" if major >= 13 else "false")
    for (oid, name, owner, all_tables, insert, update, delete, truncate, via_root,
         comment) in conn.execute(q_publications):
        out["publication"][name] = {
            "owner": owner, "all_tables": all_tables, "insert": insert, "update": update, "delete": delete,
            "truncate": truncate, "via_root": via_root, "tables": sorted(tables.get(oid, [])),
            "schemas": sorted(schemas.get(oid, [])), "comment": comment,
        }

    for name, event, enabled, function, tags, owner, comment in conn.execute(Q_EVENT_TRIGGERS):
        out["event_trigger"][name] = {"event": event, "enabled": enabled, "function": function, "tags": tags,
                                      "owner": owner, "comment": comment}

    locale = {15: "co.colliculocale", 16: "co.colliculocale"}.get(major, "co.colllocale" if major >= 17 else "NULL")
    q_collations = Q_COLLATIONS.format(
        locale=locale, icu_rules="co.collicurules" if major >= 16 else "NULL::text", user_ns=USER_NS,
        not_ext=NOT_EXT.format(cls="'pg_collation'", oid="co.oid"))
    for name, provider, collate, ctype, deterministic, icu_rules, owner, comment in conn.execute(q_collations):
        out["collation"][name] = {"provider": provider, "collate": collate, "ctype": ctype,
                                  "deterministic": deterministic, "icu_rules": icu_rules, "owner": owner,
                                  "comment": comment}

    for role, config in conn.execute(Q_SETTINGS):
        out["setting"][settings_name(role)] = {
            name: f"sha256:{hashlib.sha256(value.encode()).hexdigest()[:16]}" if looks_secret(name) else value
            for name, value in dbsettings.split(config) if name not in dbsettings.SESSION_LIBRARIES}
    return out


def dependencies(conn: psycopg.Connection) -> dict[str, dict[str, str]]:
    """``{"<kind> <name>": {"<kind> <name>": deptypes}}`` (see :data:`Q_DEPENDS`). Not part of the fingerprint: it
    says why objects went or came, not what the database holds."""
    out: dict[str, dict[str, str]] = {}
    for address, deptype, ref in conn.execute(Q_DEPENDS):
        refs = out.setdefault(address, {})
        refs[ref] = "".join(sorted(set(refs.get(ref, "") + deptype)))
    return out


def settings_name(role: str | None) -> str:
    """``database`` for ALTER DATABASE … SET, ``role.<role>`` for ALTER ROLE <role> IN DATABASE … SET."""
    return "database" if role is None else f"role.{role}"


def _sequence_state(conn: psycopg.Connection, name: str) -> tuple[Any, Any]:
    # Reading a sequence relation works for its owner and SELECT holders; otherwise the value is unknown.
    try:
        with conn.transaction():
            row = conn.execute(sql.SQL("SELECT last_value, is_called FROM " + name)).fetchone()
        return (row[0], row[1]) if row else (None, None)
    except psycopg.errors.InsufficientPrivilege:
        return (None, None)


def _primary_keys(conn: psycopg.Connection) -> dict[str, list[str]]:
    rows = conn.execute(
        f"""
        SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname),
               ARRAY(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
                     JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum ORDER BY k.ord)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE i.indisprimary AND {USER_NS}
        """
    ).fetchall()
    return {name: list(cols) for name, cols in rows}


def current_row_hash() -> int:
    """The row hash observations are made with here and now (:func:`hashing_like`)."""
    found = _row_hash.get()
    if found is not None:
        return found
    wanted = os.environ.get("SHADOW_ROW_HASH", "").strip()
    return int(wanted) if wanted in ("1", "2", "3") else ROW_HASH


def row_hash_of(observation: dict[str, Any]) -> int:
    """The row hash ``observation`` was made with (1: made before observations said)."""
    version = observation.get("row_hash", 1)
    if version not in ROW_HASHES:
        raise ShadowError(f"this checkpoint's rows were hashed by a newer shadow (row hash {version}); "
                          "use that version of shadow for this run")
    return int(version)


@contextmanager
def hashing_like(observation: dict[str, Any]) -> Iterator[None]:
    """Hash rows, inside the block, as ``observation`` (a checkpoint's) was hashed."""
    token = _row_hash.set(row_hash_of(observation))
    try:
        yield
    finally:
        _row_hash.reset(token)


F = TypeVar("F", bound=Callable[..., Any])


def like_checkpoint(method: F) -> F:
    """Decorate a method whose ``checkpoint`` argument (or, without one, ``self.checkpoint``) names the run's
    checkpoint: rows are hashed inside it as that checkpoint's observation was (:func:`hashing_like`)."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs).arguments
        checkpoint = bound.get("checkpoint") or bound["self"].checkpoint
        with hashing_like(checkpoint.observation):
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def row_hash_expr(columns: list[str]) -> sql.Composable:
    """SQL for the hash of row ``t`` over ``columns`` (raw names; see the module docstring), in the row hash in
    force (:func:`current_row_hash`) — row hash 2's text for 3: the per-row hashes undo records keep."""
    if current_row_hash() == 1:
        # Arrays, not jsonb_build_object: a function takes at most 100 arguments, a table up to 1600 columns.
        names = sql.SQL(", ").join(sql.Literal(c) for c in columns)
        values = sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in columns)
        return sql.SQL(
            "jsonb_hash_extended(jsonb_strip_nulls(jsonb_object(ARRAY[{}]::text[], ARRAY[{}]::text[])), 0)"
        ).format(names, values)
    return column_hash_expr(columns)


def column_hash_expr(columns: list[str], natives: dict[str, str] | None = None) -> sql.Composable:
    """Row hash 2 of row ``t`` over ``columns``: each non-NULL column's text hashed with a seed of its own (its
    name's) and the hashes XORed; a NULL counts as absent and the order of the columns does not matter. ``COLLATE
    "C"``: a case-insensitive column's hash would not see a change of case. ``natives``: the columns hashed by
    their type's own function instead (row hash 3, :func:`native_hashes`)."""
    if not columns:
        return sql.SQL("0::bigint")
    natives = natives or {}

    def one(c: str) -> sql.Composable:
        seed = sql.SQL(f"({int.from_bytes(hashlib.sha256(c.encode()).digest()[:8], 'big', signed=True)})")
        template = NATIVE_HASH.get(natives.get(c, ""), TEXT_HASH)
        return sql.SQL("COALESCE(" + template + ", 0::bigint)").format(v=sql.SQL("t.{}").format(sql.Identifier(c)),
                                                                       s=seed)

    return sql.SQL("({})").format(sql.SQL(" # ").join(one(c) for c in columns))


TEXT_HASH = 'hashtextextended({v}::text COLLATE "C", {s}::bigint)'
# Row hash 3: types whose own hash function tells apart every two values that print differently (by base type).
NATIVE_HASH = {
    "int2": "hashint2extended({v}, {s}::bigint)",
    "int4": "hashint4extended({v}, {s}::bigint)",
    "int8": "hashint8extended({v}, {s}::bigint)",
    "oid": "hashoidextended({v}, {s}::bigint)",
    "uuid": "uuid_hash_extended({v}, {s}::bigint)",
    "timestamp": "timestamp_hash_extended({v}, {s}::bigint)",
    "timestamptz": "timestamp_hash_extended({v} AT TIME ZONE 'UTC', {s}::bigint)",
    "time": "time_hash_extended({v}, {s}::bigint)",
    "bpchar": 'hashbpcharextended({v} COLLATE "C", {s}::bigint)',  # char(n) only: padded alike, so exact
}
# Every table's columns hashed natively in row hash 3: column → base type name. A domain counts as its base type
# (one level); char without a length keeps its text (its trailing blanks print but do not hash).
Q_NATIVE_HASHES = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), a.attname, b.typname
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'm') AND b.typnamespace = 'pg_catalog'::regnamespace
  AND b.typname = ANY(%(types)s) AND (b.typname <> 'bpchar' OR (t.typtype <> 'd' AND a.atttypmod > 0))
  AND (%(relation)s::text IS NULL OR c.oid = %(relation)s::regclass)
"""


def native_hashes(conn: psycopg.Connection, relation: str | None = None) -> dict[str, dict[str, str]]:
    """table → {column: base type} of the columns row hash 3 hashes natively, for every table or ``relation`` (a
    quoted name); nothing in an older row hash."""
    if current_row_hash() < 3:
        return {}
    out: dict[str, dict[str, str]] = {}
    for table, column, base in conn.execute(Q_NATIVE_HASHES, {"types": list(NATIVE_HASH), "relation": relation}):
        out.setdefault(str(table), {})[str(column)] = str(base)
    return out


def table_hash_expr(columns: list[str], natives: dict[str, str]) -> sql.Composable:
    """SQL for row ``t``'s part of its table's content hash (the observation's), in the row hash in force."""
    if current_row_hash() == 1:
        return row_hash_expr(columns)
    return column_hash_expr(columns, natives if current_row_hash() >= 3 else None)


def relation_sql(name: str, only: bool) -> sql.Composable:
    # ``name`` is already quote_ident-ed by the catalog query.
    return sql.SQL(("ONLY " if only else "") + name)


def table_data(conn: psycopg.Connection, name: str, *, only: bool, key: list[str] | None,
               columns: list[str], natives: dict[str, str] | None = None) -> dict[str, Any]:
    """``name``'s row count and content hash; ``natives``: its columns hashed natively (:func:`native_hashes`),
    read here when not given."""
    if natives is None:
        natives = native_hashes(conn, name).get(name, {})
    # sum() of the bigint hashes is numeric already, the same value as summing them cast to numeric (no overflow),
    # and about 10% cheaper: it adds in 128-bit integers rather than in numeric.
    query = sql.SQL("SELECT count(*), COALESCE(sum({h}), 0)::text FROM {rel} t").format(
        h=table_hash_expr(columns, natives), rel=relation_sql(name, only)
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    return {"rows": int(row[0]), "hash": row[1], "key": key, "only": only, "columns": columns}
