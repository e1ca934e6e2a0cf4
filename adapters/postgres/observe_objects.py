"""The catalog part of an observation: ``objects`` by kind and ``depends``, read with the queries of
:mod:`adapters.postgres.catalog` (:mod:`adapters.postgres.observe` puts the observation together).

Names come out schema-qualified (the reading transaction runs with ``search_path = ''``); a sequence's state is
read from the sequence itself, and unknown (None) where the observing role may not read it. A database setting
whose name looks secret is kept as a hash of its value, never the value.
"""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
from psycopg import sql

from adapters.postgres import dbsettings
from adapters.postgres.catalog import (PUBLICATION_TABLE_EXTRA_15, USER_NS, NOT_EXT, Q_SCHEMAS, Q_RELATIONS,
                                         Q_COLUMNS, Q_INDEXES, Q_CONSTRAINTS, Q_ROUTINES, Q_TRIGGERS, Q_POLICIES, Q_SEQUENCES,
                                         Q_TYPES, Q_DEFAULT_PRIVILEGES, DEFAULT_PRIVILEGE_OBJECTS, Q_RULES,
                                         Q_STATISTICS, Q_PUBLICATIONS, Q_PUBLICATION_TABLES, Q_PUBLICATION_SCHEMAS,
                                         Q_EVENT_TRIGGERS, Q_COLLATIONS, Q_SETTINGS, Q_EXTENSIONS, Q_DEPENDS)
from shadow.redact import looks_secret

KIND_NAMES = {"r": "table", "p": "partitioned table", "f": "foreign table", "v": "view", "m": "materialized view"}


def server_major(conn: psycopg.Connection) -> int:
    return int(conn.info.server_version) // 10000

def observe_objects(conn: psycopg.Connection) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, str],
                                                       dict[str, list[tuple[int, str]]]]:
    """The observation's ``objects``, with relation → relkind and relation → (position, raw name) of its columns
    (what :func:`adapters.postgres.observe.observe` needs to count and hash rows)."""
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
    return objects, relkinds, table_columns


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
