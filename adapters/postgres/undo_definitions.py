"""Undoing a run's change to a definition — a dropped or altered column, index, constraint, trigger or table — by
putting back what the checkpoint held, touching only the table it belongs to.

Chosen per change when the apply keeps its undo record (:func:`place`, :func:`capture`):

- **re-add** (``readd``): an index, constraint, trigger, rule or extended statistics the run dropped or altered,
  on a table that is still there. Its definition as the checkpoint observed it (``pg_get_indexdef`` …) is run
  again — an altered one is dropped first. The table keeps its OID, rows and statistics.
- **re-create** (``recreate``): a table whose own definition changed (a column dropped, retyped, its default or
  nullability altered; the table dropped; its options, policies or row security). The table is dropped and created
  again from the checkpoint's ``pg_dump`` archive (:mod:`adapters.postgres.archive_entries`): its definition, its
  data, its indexes, constraints, triggers, policies, comments and privileges, the position of its own sequences as
  production has it now (never backwards: others may have taken values). The foreign keys of other tables that
  reference it are re-added afterwards. It gets a new OID and fresh statistics (``ANALYZE``); no other table is
  touched. Cost: that table's size.

Neither — the whole checkpoint is restored (``fallback``) — for a definition not on a table (a function, a type, a
view, a schema), a partitioned table, a partition, an inheritance parent or child, and a table something depends on
that its re-creation would drop and not put back (:func:`blockers`: a view, a function with a SQL body, a column of
another table of its row type, a publication, another table's default on its sequence).

**Conflicts**, as for rows, refused unless forced: a re-created table written to since the apply (its rows and
content hash as the run left it), or between the checkpoint and the apply, or whose definition others altered in
between; a table the run dropped whose name someone took since (never dropped, even forced: it is theirs); an
object to re-add that someone altered since.

Everything runs inside :func:`adapters.postgres.undo.undo`'s one transaction, and :func:`verify` compares the
definitions with the checkpoint's observation before it commits.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from adapters.postgres.archive_entries import Scripts, raw, table_entries
from adapters.postgres.diff import split_name, table_of
from adapters.postgres.observe_objects import observe_objects
from adapters.postgres.undo_tables import _state, chunks, idents
from shadow.changes import Change

READD_KINDS = ("index", "constraint", "trigger", "rule", "statistics")
RECREATE_KINDS = ("table", "column", "sequence", *READD_KINDS)
UNSTABLE = {"sequence": {"last_value", "is_called"}, "index": {"valid"}}  # not part of a definition to compare


def place(change: Change, then: dict[str, Any], left: dict[str, Any]) -> tuple[str, str] | None:
    """How definition change ``change`` is undone: ``("readd" | "recreate", table)``, or None when this module
    does not undo it (an added object, a row change, or a change only the whole checkpoint undoes). ``then``: the
    checkpoint's observed objects; ``left``: what the run left."""
    if change.kind == "rows" or change.op == "add" or change.kind not in RECREATE_KINDS:
        return None
    props = then.get(change.kind, {}).get(change.name) or left.get(change.kind, {}).get(change.name) or {}
    table = change.name if change.kind == "table" else table_of(change.kind, change.name, props)
    if table is None or table not in then.get("table", {}):
        return None
    inline = (change.kind == "index" and props.get("constraint")) or props.get("constraint_type") == "not null"
    if change.kind in READD_KINDS and table in left.get("table", {}) and not inline:
        return "readd", table
    return "recreate", table


def simple_table(objects: dict[str, Any], table: str) -> str | None:
    """Why ``table`` cannot be re-created on its own (partitioned, a partition, an inheritance parent or child),
    or None."""
    props = objects.get("table", {}).get(table) or {}
    if props.get("table_kind") != "table":
        return f"{table} is a {props.get('table_kind') or 'relation'}, not a plain table"
    if props.get("partition_of") or props.get("inherits"):
        return f"{table} is a partition or inherits from {props.get('partition_of') or props.get('inherits')}"
    children = [name for name, p in objects.get("table", {}).items() if table in (p.get("partition_of"), p.get("inherits"))]
    return f"{children[0]} inherits from {table}" if children else None


def definition(objects: dict[str, Any], table: str) -> dict[str, dict[str, Any]]:
    """The part of observed ``objects`` that is ``table``'s own definition: the table, its columns, indexes,
    constraints, triggers, rules, statistics and sequences (without their positions)."""
    prefix = table + "."
    out: dict[str, dict[str, Any]] = {"table": {table: objects.get("table", {}).get(table)}}
    for kind, found in objects.items():
        if kind in ("table", "schema"):
            continue
        for name, props in found.items():
            if kind == "column" and name.startswith(prefix) or table_of(kind, name, props) == table:
                out.setdefault(kind, {})[name] = {k: v for k, v in props.items() if k not in UNSTABLE.get(kind, ())}
    return out


def foreign_keys_to(objects: dict[str, Any], table: str) -> list[str]:
    """The foreign-key constraints (of any table) that reference ``table``, or belong to it."""
    out = []
    for name, props in objects.get("constraint", {}).items():
        if props.get("constraint_type") != "foreign key":
            continue
        if props.get("on") == table or f" REFERENCES {table}(" in str(props.get("definition")):
            out.append(name)
    return sorted(out)


# -- the undo ------------------------------------------------------------------------------------------------

def blockers(conn: psycopg.Connection, table: str, keys: set[str]) -> list[str]:
    """What dropping ``table`` (``CASCADE``) would take with it that re-creating it does not put back: anything but
    its own indexes, constraints, triggers, rules, policies, defaults, sequences and statistics, and ``keys``: the
    foreign keys re-added afterwards, and the views (``view:`` and its name; a view nothing depends on in turn)
    re-created with it."""
    rows = conn.execute("""
        WITH t AS (SELECT to_regclass(%(t)s) AS oid),
        refs AS (SELECT 'pg_class'::regclass AS cls, t.oid FROM t
                 UNION ALL SELECT 'pg_type'::regclass, c.reltype FROM pg_class c, t WHERE c.oid = t.oid
                 UNION ALL SELECT 'pg_class'::regclass, d.objid FROM pg_depend d, t
                   WHERE d.refobjid = t.oid AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                     AND (SELECT relkind FROM pg_class WHERE oid = d.objid) = 'S')
        SELECT DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid),
               CASE WHEN d.classid = 'pg_constraint'::regclass THEN (
                   SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) || '.' || quote_ident(co.conname)
                   FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace WHERE co.oid = d.objid)
               WHEN d.classid = 'pg_rewrite'::regclass THEN (
                   SELECT 'view:' || quote_ident(n.nspname) || '.' || quote_ident(c.relname)
                   FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE r.oid = d.objid AND c.relkind = 'v' AND NOT EXISTS (
                       SELECT FROM pg_depend dd WHERE dd.refobjid = c.oid AND dd.deptype = 'n'
                         AND NOT (dd.classid = 'pg_rewrite'::regclass AND dd.objid IN (
                             SELECT oid FROM pg_rewrite WHERE ev_class = c.oid)))) END
        FROM pg_depend d JOIN refs r ON d.refclassid = r.cls AND d.refobjid = r.oid, t
        WHERE d.deptype IN ('n', 'a') AND NOT (
              (d.classid = 'pg_class'::regclass AND d.objid IN (SELECT indexrelid FROM pg_index WHERE indrelid = t.oid))
           OR (d.classid = 'pg_class'::regclass AND d.objid IN (SELECT oid FROM refs WHERE cls = 'pg_class'::regclass))
           OR (d.classid = 'pg_constraint'::regclass
               AND d.objid IN (SELECT oid FROM pg_constraint WHERE conrelid = t.oid))
           OR (d.classid = 'pg_trigger'::regclass AND d.objid IN (SELECT oid FROM pg_trigger WHERE tgrelid = t.oid))
           OR (d.classid = 'pg_policy'::regclass AND d.objid IN (SELECT oid FROM pg_policy WHERE polrelid = t.oid))
           OR (d.classid = 'pg_rewrite'::regclass AND d.objid IN (SELECT oid FROM pg_rewrite WHERE ev_class = t.oid))
           OR (d.classid = 'pg_attrdef'::regclass AND d.objid IN (SELECT oid FROM pg_attrdef WHERE adrelid = t.oid))
           OR (d.classid = 'pg_statistic_ext'::regclass
               AND d.objid IN (SELECT oid FROM pg_statistic_ext WHERE stxrelid = t.oid))
           OR (d.classid = 'pg_type'::regclass AND d.objid IN (SELECT typarray FROM pg_type WHERE typrelid = t.oid)))
        ORDER BY 1""", {"t": table}).fetchall()
    return [str(what) for what, key in rows if key is None or key not in keys]


def views_on(conn: psycopg.Connection, table: str) -> list[str]:
    """The views on ``table`` that nothing depends on in turn (re-created with it, see :func:`blockers`)."""
    rows = conn.execute("SELECT DISTINCT r.ev_class::regclass::text FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid "
                        "JOIN pg_class c ON c.oid = r.ev_class WHERE d.classid = 'pg_rewrite'::regclass "
                        "AND d.refclassid = 'pg_class'::regclass AND d.refobjid = to_regclass(%s) "
                        "AND c.relkind = 'v' AND r.ev_class <> to_regclass(%s)", [table, table]).fetchall()
    return sorted(str(r[0]) for r in rows)


def positions(conn: psycopg.Connection, table: str) -> dict[str, tuple[int, bool]]:
    """The sequences ``table`` owns (serial and identity), where production has them now."""
    out = {}
    for (name,) in conn.execute("""
            SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_depend d
            JOIN pg_class c ON c.oid = d.objid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE d.classid = 'pg_class'::regclass AND d.refobjid = to_regclass(%s) AND d.deptype IN ('a', 'i')
              AND c.relkind = 'S'""", [table]).fetchall():
        row = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(sql.SQL(name))).fetchone()
        if row is not None:
            out[str(name)] = (int(row[0]), bool(row[1]))
    return out


def recreate(conn: psycopg.Connection, table: str, entry: dict[str, Any], scripts: Scripts | None,
             done: list[str], problems: list[str]) -> None:
    """Drop ``table`` and create it again from the checkpoint (its conflicts were judged by :func:`judge`)."""
    if scripts is None:
        problems.append(f"the checkpoint's archive was not read for {table}")
        return
    kept = positions(conn, table) if entry.get("exists_now") else {}
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.SQL(table)))
    conn.execute(scripts.pre.encode())  # the archive's own SQL: several statements, no parameters
    if scripts.data is not None:
        columns, lines = scripts.data
        with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(sql.SQL(table), idents(columns))) as pipe:
            for chunk in chunks(lines):
                pipe.write(chunk)
    if scripts.post.strip():
        conn.execute(scripts.post.encode())
    settings = entry.get("sequences") or {}
    for name, props in settings.items():  # the checkpoint's position, unless production had moved on since
        at = kept.get(name) or (props.get("last_value"), props.get("is_called"))
        if at[0] is not None:
            conn.execute("SELECT setval(%s, %s, %s)", [name, at[0], bool(at[1])])
    conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(table)))
    done.append(f"re-created table {table} from the checkpoint ({entry['why']})")


def judge(conn: psycopg.Connection, table: str, entry: dict[str, Any], now: dict[str, Any], allowed: set[str],
          force: bool, conflicts: list[str], problems: list[str]) -> bool | None:
    """Whether ``table`` is to be re-created: None when it is as the checkpoint had it already (an undo that ran
    before), False when it must not be (conflicts unforced, problems). Locks it against everything first.
    ``now``: production's observed objects, inside the undo's transaction; ``allowed``: the constraints (of other
    tables) its re-creation may drop — the run's own, and those put back afterwards."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone() == (True,)
    then = entry["checkpoint"]
    if exists:
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.SQL(table)))
        if (definition(now, table) == entry["definition"]
                and _state(conn, table, True, then["columns"]) == (then["rows"], then["hash"])):
            return None
        if not entry["exists"]:
            problems.append(f"table {table}: dropped by the run, and someone created a table of that name since; it "
                            "is theirs, so it is not replaced (drop or rename it, then roll back again)")
            return False
        state = _state(conn, table, True, entry["columns"])
        if state != tuple(entry["left"]):
            counted = f"{state[0]} now" if state else "a column of it gone"
            conflicts.append(f"table {table}: written to by someone since the apply ({entry['left'][0]} row(s) as the "
                             f"run left it, {counted}); it is re-created from the checkpoint because {entry['why']}")
        theirs = blockers(conn, table, allowed | {f"view:{v}" for v in entry.get("views") or {}})
        if theirs:
            problems.append(f"table {table}: {', '.join(theirs[:5])} depend(s) on it since the apply; re-creating "
                            "it would drop them (restore with --full, or drop them first)")
    elif entry["exists"]:
        conflicts.append(f"table {table}: dropped by someone since the apply; it is re-created from the checkpoint")
    if entry.get("moved"):
        conflicts.append(f"table {table}: written to or altered by someone between the checkpoint and the apply; "
                         f"re-creating it from the checkpoint (because {entry['why']}) loses that")
    entry["exists_now"] = exists
    return not problems and (force or not conflicts)


def _drop(kind: str, name: str, table: str, part: str) -> str:
    return {"index": f"DROP INDEX {name}", "constraint": f"ALTER TABLE {table} DROP CONSTRAINT {part}",
            "trigger": f"DROP TRIGGER {part} ON {table}", "rule": f"DROP RULE {part} ON {table}",
            "statistics": f"DROP STATISTICS {name}"}[kind]


def _create(kind: str, table: str, part: str, definition: str) -> str:
    return f"ALTER TABLE {table} ADD CONSTRAINT {part} {definition}" if kind == "constraint" else definition


def _commented(kind: str, name: str, table: str, part: str) -> str:
    return {"index": f"INDEX {name}", "constraint": f"CONSTRAINT {part} ON {table}",
            "trigger": f"TRIGGER {part} ON {table}", "rule": f"RULE {part} ON {table}",
            "statistics": f"STATISTICS {name}"}[kind]


TRIGGER_STATE = {"D": "DISABLE", "R": "ENABLE REPLICA", "A": "ENABLE ALWAYS"}


def readd(conn: psycopg.Connection, obj: dict[str, Any], now: dict[str, Any], force: bool, conflicts: list[str],
          done: list[str]) -> None:
    """Put back index, constraint, trigger, rule or statistics ``obj`` as the checkpoint had it (``now``:
    production's observed objects): nothing when it is so already; an altered one the run left as it was is
    dropped first; one someone else altered since is a conflict."""
    kind, name, then = obj["kind"], obj["name"], obj["then"]
    table, part = str(obj["table"]), split_name(name)[-1]
    present = now.get(kind, {}).get(name)
    if present is not None:
        if _stable(kind, present) == _stable(kind, then):
            return  # as the checkpoint had it (an undo that ran before)
        if obj.get("left") is None or _stable(kind, present) != _stable(kind, obj["left"]):
            conflicts.append(f"{kind} {name}: changed by someone since the apply; it is put back as the checkpoint "
                             "had it")
            if not force:
                return
        conn.execute(_drop(kind, name, table, part).encode())
    conn.execute(_create(kind, table, part, str(then["definition"])).encode())
    if then.get("comment") is not None:
        conn.execute(sql.SQL("COMMENT ON ") + sql.SQL(_commented(kind, name, table, part)) + sql.SQL(" IS ")
                     + sql.Literal(then["comment"]))
    if kind == "trigger" and then.get("enabled") in TRIGGER_STATE:
        conn.execute(f"ALTER TABLE {table} {TRIGGER_STATE[then['enabled']]} TRIGGER {part}".encode())
    done.append(f"put back {kind} {name} as the checkpoint had it")


def _stable(kind: str, props: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in props.items() if k not in UNSTABLE.get(kind, ())}


def verify(conn: psycopg.Connection, record: dict[str, Any]) -> list[str]:
    """Inside the undo's transaction: every re-created table and every re-added object as the checkpoint had it."""
    if not record.get("recreate") and not record.get("readd"):
        return []
    now = observe_objects(conn)[0]
    problems = []
    for table, entry in sorted((record.get("recreate") or {}).items()):
        mine = definition(now, table)
        wrong = sorted(f"{kind} {name}" for kind in set(mine) | set(entry["definition"])
                       for name in set(mine.get(kind, {})) | set(entry["definition"].get(kind, {}))
                       if mine.get(kind, {}).get(name) != entry["definition"].get(kind, {}).get(name))
        then = entry["checkpoint"]
        wrong += [f"view {v}" for v, props in (entry.get("views") or {}).items() if now.get("view", {}).get(v) != props]
        if wrong:
            problems.append(f"{table}: not the checkpoint's definition after re-creating it ({', '.join(wrong[:3])})")
        elif _state(conn, table, True, then["columns"]) != (then["rows"], then["hash"]):
            problems.append(f"{table}: not the checkpoint's rows after re-creating it")
    for obj in _readds(record):
        if _stable(obj["kind"], now.get(obj["kind"], {}).get(obj["name"]) or {}) != _stable(obj["kind"], obj["then"]):
            problems.append(f"{obj['kind']} {obj['name']} is not as the checkpoint had it after putting it back")
    return problems


def _readds(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects to put back: the record's, then the foreign keys of (and to) every re-created table."""
    out = {(o["kind"], o["name"]): o for o in record.get("readd") or []}
    for entry in (record.get("recreate") or {}).values():
        out.update({(o["kind"], o["name"]): o for o in entry["key_objects"]})
    return list(out.values())


def readd_all(conn: psycopg.Connection, record: dict[str, Any], force: bool, conflicts: list[str],
              done: list[str]) -> None:
    """Put back every object of :func:`_readds` (after the rows: a foreign key is checked against them)."""
    objects = _readds(record)
    if objects:
        now = observe_objects(conn)[0]
        for obj in objects:
            readd(conn, obj, now, force, conflicts, done)


# -- the capture ---------------------------------------------------------------------------------------------

def capture(record: dict[str, Any], conn: psycopg.Connection, placed: dict[str, tuple[str, str]],
            changes: list[Change], checkpoint: dict[str, Any], before: dict[str, Any],
            after: dict[str, Any]) -> None:
    """Inside the apply's transaction, after the statements: record in ``record`` (``recreate``, ``readd``) how to
    put back the definitions ``placed`` (change address → :func:`place`'s answer), or why only the whole
    checkpoint can (``fallback``)."""
    then, left = checkpoint["objects"], after["objects"]
    tables = sorted({table for how, table in placed.values() if how == "recreate"})
    allowed = {o["name"] for o in record["objects"] if o["kind"] == "constraint"}
    for table in tables:
        why = "; ".join(sorted(address for address, (how, t) in placed.items() if t == table and how == "recreate"))
        views = views_on(conn, table) if table in left.get("table", {}) else []
        problem = (_recreatable(conn, table, then, left, allowed | {f"view:{v}" for v in views})
                   if table in checkpoint["data"] else f"the checkpoint's data of {table} is not known")
        moved = [v for v in views if then.get("view", {}).get(v) != left.get("view", {}).get(v)]
        if moved:
            problem = problem or f"view {moved[0]} on it is not as the checkpoint had it"
        if problem:
            record["fallback"] = record["fallback"] or f"`{why.split('; ')[0]}` cannot be undone on its own: {problem}"
            return
        entry = _recreate_entry(table, f"of `{why}`", checkpoint, before, after)
        entry["views"] = {v: then["view"][v] for v in views}
        entry["entries"]["post"] += [[desc, raw(split_name(v)[0]), tag] for v in views
                                     for desc, tag in (("VIEW", raw(split_name(v)[-1])),
                                                       ("COMMENT", f"VIEW {split_name(v)[-1]}"),
                                                       ("ACL", f"VIEW {split_name(v)[-1]}"))]
        record["recreate"][table] = entry
    for change in changes:
        how, table = placed.get(change.address, ("", ""))
        if how == "readd" and table not in tables:
            record["readd"].append({"kind": change.kind, "name": change.name, "table": table, "op": change.op,
                                    "then": then[change.kind][change.name],
                                    "left": left.get(change.kind, {}).get(change.name)})


def _recreatable(conn: psycopg.Connection, table: str, then: dict[str, Any], left: dict[str, Any],
                 allowed: set[str]) -> str | None:
    problem = simple_table(then, table) or (simple_table(left, table) if table in left.get("table", {}) else None)
    if problem is None and table in left.get("table", {}):
        theirs = blockers(conn, table, allowed | set(foreign_keys_to(then, table)))
        if theirs:
            problem = f"re-creating {table} would drop {', '.join(theirs[:3])}"
    return problem


def _recreate_entry(table: str, why: str, checkpoint: dict[str, Any], before: dict[str, Any],
                    after: dict[str, Any]) -> dict[str, Any]:
    then = checkpoint["objects"]
    data, was, left = checkpoint["data"].get(table), before["data"].get(table), after["data"].get(table)
    mine = definition(then, table)
    moved = (was is not None and data is not None and [was["rows"], was["hash"]] != [data["rows"], data["hash"]]) or (
        "objects" in before and definition(before["objects"], table) != mine)
    keys = foreign_keys_to(then, table)
    return {
        "why": why, "exists": left is not None, "moved": moved,
        "columns": list(left["columns"]) if left else None, "left": [left["rows"], left["hash"]] if left else None,
        "checkpoint": {"columns": list(data["columns"]) if data else [], "rows": data["rows"] if data else 0,
                       "hash": data["hash"] if data else None},
        "definition": mine, "entries": table_entries(mine, table), "keys": keys,
        "sequences": {name: {"last_value": then["sequence"][name].get("last_value"),
                             "is_called": then["sequence"][name].get("is_called")}
                      for name in mine.get("sequence", {})},
        "key_objects": [{"kind": "constraint", "name": key, "table": then["constraint"][key]["on"], "op": "drop",
                         "then": then["constraint"][key], "left": None} for key in keys],
    }
