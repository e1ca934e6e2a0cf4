"""Observing a PostgreSQL database: its catalog and a content hash per table, computed in SQL.

An observation is plain JSON-able data::

    {"server": {"major": 15, "version_num": 150018},
     "objects": {kind: {name: {property: value}}},     # kinds are the change-address kinds
     "data": {table: {"rows": n, "hash": "…", "key": [pk columns] | None, "only": bool, "columns": [names]}},
     "depends": {"<kind> <name>": {"<kind> <name>": deptypes}}}   # pg_depend between observed objects

The kinds in :data:`LATER_KINDS` (rules, extended statistics, publications, event triggers, collations) appear in
``objects`` only when the database has such objects (see there).

Names are schema-qualified with ``search_path = ''`` so definitions (``pg_get_viewdef`` …) are deterministic.
Objects that belong to an extension are covered by ``extension`` and not listed one by one. Everything is read in
one REPEATABLE READ transaction, so the observation is one consistent snapshot; ``snapshot`` lets a checkpoint
observe exactly what ``pg_dump --snapshot`` dumps.

Row hashing: the row becomes a jsonb object ``{column: value as text}`` without its NULL columns, and is hashed
with ``jsonb_hash_extended``. Text works for every column type (``hash_record_extended`` fails on json, xml,
point …) and keeps what a conversion to jsonb would lose (json's exact text, a null-valued key *inside* a jsonb
value); leaving NULL columns out makes "add a nullable column" leave every row's hash alone, so it is not reported
as an update of every row. Text output depends on session settings (TimeZone, DateStyle, bytea_output …), which
production's database, role or client may set differently from the shadow's server: :data:`READ_SETTINGS` pins
them for every read, so equal data hashes equal wherever it is observed.
"""

from __future__ import annotations

import codecs
import hashlib
from typing import Any

import psycopg
from psycopg import sql
from psycopg.adapt import Buffer, Loader

from adapters.postgres import dbsettings
from shadow.errors import TargetUnreachable
from shadow.redact import looks_secret

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

SYSTEM_SCHEMAS = "('pg_catalog', 'information_schema', 'pg_toast')"
USER_NS = f"n.nspname NOT IN {SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'"
# Objects owned by an extension are reported as the extension.
NOT_EXT = "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = {cls}::regclass AND d.objid = {oid} AND d.deptype = 'e')"

Q_SCHEMAS = f"""
SELECT quote_ident(n.nspname), pg_get_userbyid(n.nspowner), n.nspacl::text, obj_description(n.oid, 'pg_namespace')
FROM pg_namespace n WHERE {USER_NS} AND {NOT_EXT.format(cls="'pg_namespace'", oid='n.oid')}
"""

Q_RELATIONS = f"""
SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relkind, pg_get_userbyid(c.relowner),
       c.relacl::text, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity, c.relispartition,
       CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END,
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
       (SELECT quote_ident(pn.nspname) || '.' || quote_ident(pc.relname) FROM pg_inherits i
          JOIN pg_class pc ON pc.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = pc.relnamespace
          WHERE i.inhrelid = c.oid ORDER BY i.inhseqno LIMIT 1),
       c.reloptions::text, obj_description(c.oid, 'pg_class'),
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
       CASE WHEN c.relkind = 'm' THEN c.relispopulated END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm') AND {USER_NS} AND {NOT_EXT.format(cls="'pg_class'", oid='c.oid')}
"""

Q_COLUMNS = f"""
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), quote_ident(a.attname),
       row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum), format_type(a.atttypid, a.atttypmod),
       a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated,
       CASE WHEN a.attcollation <> t.typcollation THEN a.attcollation::regcollation::text END,
       col_description(c.oid, a.attnum), a.attname, a.attacl::text
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm') AND a.attnum > 0 AND NOT a.attisdropped AND {USER_NS}
  AND {NOT_EXT.format(cls="'pg_class'", oid='c.oid')}
"""

Q_INDEXES = f"""
SELECT quote_ident(n.nspname) || '.' || quote_ident(ic.relname), quote_ident(n.nspname) || '.' || quote_ident(tc.relname),
       pg_get_indexdef(i.indexrelid), i.indisvalid,
       (SELECT quote_ident(co.conname) FROM pg_constraint co WHERE co.conindid = i.indexrelid AND co.conrelid = i.indrelid LIMIT 1),
       obj_description(i.indexrelid, 'pg_class')
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class tc ON tc.oid = i.indrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
WHERE {USER_NS} AND {NOT_EXT.format(cls="'pg_class'", oid='tc.oid')}
"""

Q_CONSTRAINTS = f"""
SELECT quote_ident(n.nspname) || '.' || COALESCE(quote_ident(c.relname), quote_ident(t.typname)) || '.' || quote_ident(co.conname),
       co.contype, pg_get_constraintdef(co.oid), co.convalidated, co.condeferrable, co.condeferred,
       quote_ident(n.nspname) || '.' || COALESCE(quote_ident(c.relname), quote_ident(t.typname)),
       obj_description(co.oid, 'pg_constraint')
FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace
LEFT JOIN pg_class c ON c.oid = co.conrelid LEFT JOIN pg_type t ON t.oid = co.contypid
WHERE {USER_NS} AND (c.oid IS NOT NULL OR t.oid IS NOT NULL)
  AND {NOT_EXT.format(cls="'pg_class'", oid='COALESCE(c.oid, 0)')}
  AND {NOT_EXT.format(cls="'pg_type'", oid='COALESCE(t.oid, 0)')}
"""

Q_ROUTINES = f"""
SELECT p.oid::regprocedure::text, p.prokind, pg_get_userbyid(p.proowner), p.proacl::text,
       CASE WHEN p.prokind IN ('f', 'p', 'w') THEN pg_get_functiondef(p.oid) ELSE p.prosrc END,
       obj_description(p.oid, 'pg_proc')
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE {USER_NS} AND {NOT_EXT.format(cls="'pg_proc'", oid='p.oid')}
"""

Q_TRIGGERS = f"""
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) || '.' || quote_ident(tg.tgname),
       pg_get_triggerdef(tg.oid), tg.tgenabled, quote_ident(n.nspname) || '.' || quote_ident(c.relname),
       obj_description(tg.oid, 'pg_trigger')
FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT tg.tgisinternal AND {USER_NS} AND {NOT_EXT.format(cls="'pg_class'", oid='c.oid')}
"""

Q_POLICIES = f"""
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), quote_ident(p.polname), p.polcmd, p.polpermissive,
       ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r) END FROM unnest(p.polroles) r ORDER BY 1)::text,
       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid), obj_description(p.oid, 'pg_policy')
FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {USER_NS}
"""

Q_SEQUENCES = f"""
SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname), format_type(s.seqtypid, NULL), s.seqstart,
       s.seqincrement, s.seqmin, s.seqmax, s.seqcycle, s.seqcache, pg_get_userbyid(c.relowner), c.relacl::text,
       (SELECT quote_ident(tn.nspname) || '.' || quote_ident(tc.relname) || '.' || quote_ident(a.attname)
          FROM pg_depend d JOIN pg_class tc ON tc.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = tc.relnamespace
          JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass
            AND d.deptype IN ('a', 'i') LIMIT 1),
       ARRAY(SELECT DISTINCT quote_ident(tn.nspname) || '.' || quote_ident(tc.relname)
          FROM pg_depend d JOIN pg_attrdef ad ON ad.oid = d.objid JOIN pg_class tc ON tc.oid = ad.adrelid
          JOIN pg_namespace tn ON tn.oid = tc.relnamespace
          WHERE d.classid = 'pg_attrdef'::regclass AND d.refobjid = c.oid ORDER BY 1),
       obj_description(c.oid, 'pg_class')
FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {USER_NS} AND {NOT_EXT.format(cls="'pg_class'", oid='c.oid')}
"""

Q_TYPES = f"""
SELECT quote_ident(n.nspname) || '.' || quote_ident(t.typname), t.typtype, pg_get_userbyid(t.typowner),
       CASE t.typtype
         WHEN 'e' THEN ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder)::text
         WHEN 'd' THEN format_type(t.typbasetype, t.typtypmod) || CASE WHEN t.typnotnull THEN ' NOT NULL' ELSE '' END
                       || COALESCE(' DEFAULT ' || t.typdefault, '')
         WHEN 'c' THEN ARRAY(SELECT quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod)
                       FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
                       ORDER BY a.attnum)::text
         WHEN 'r' THEN (SELECT format_type(r.rngsubtype, NULL) FROM pg_range r WHERE r.rngtypid = t.oid)
       END,
       t.typacl::text, obj_description(t.oid, 'pg_type')
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE {USER_NS} AND t.typtype IN ('e', 'd', 'c', 'r')
  AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
  AND {NOT_EXT.format(cls="'pg_type'", oid='t.oid')}
"""

# ALTER DEFAULT PRIVILEGES: named ``role`` (every schema) or ``schema.role``; one ACL per kind of object.
Q_DEFAULT_PRIVILEGES = """
SELECT CASE WHEN d.defaclnamespace = 0 THEN '' ELSE quote_ident(n.nspname) || '.' END
       || quote_ident(pg_get_userbyid(d.defaclrole)), d.defaclobjtype, d.defaclacl::text
FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
"""
DEFAULT_PRIVILEGE_OBJECTS = {"r": "tables", "S": "sequences", "f": "functions", "T": "types", "n": "schemas"}

# Rewrite rules other than the one that makes a view a view (``_RETURN``): named ``schema.relation.rule``.
Q_RULES = f"""
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) || '.' || quote_ident(r.rulename),
       pg_get_ruledef(r.oid), r.ev_enabled, quote_ident(n.nspname) || '.' || quote_ident(c.relname),
       obj_description(r.oid, 'pg_rewrite')
FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT (r.rulename = '_RETURN' AND c.relkind IN ('v', 'm')) AND {USER_NS}
  AND {NOT_EXT.format(cls="'pg_class'", oid='c.oid')}
"""

# Extended statistics (CREATE STATISTICS). The target (ALTER STATISTICS … SET STATISTICS) is 13+; "default" is -1
# before 17 and NULL from 17 on, both observed as None.
Q_STATISTICS = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(s.stxname), pg_get_statisticsobjdef(s.oid),
       pg_get_userbyid(s.stxowner), quote_ident(tn.nspname) || '.' || quote_ident(c.relname),
       {target}, obj_description(s.oid, 'pg_statistic_ext')
FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace
JOIN pg_class c ON c.oid = s.stxrelid JOIN pg_namespace tn ON tn.oid = c.relnamespace
WHERE {user_ns} AND {not_ext} AND {table_not_ext}
"""

# Publications belong to the database, not to a schema. Their tables are the ones named in the publication
# (pg_publication_rel), not the expansion pg_publication_tables makes of FOR ALL TABLES / FOR TABLES IN SCHEMA:
# creating a table covered that way is the table's change, not the publication's.
Q_PUBLICATIONS = """
SELECT p.oid, quote_ident(p.pubname), pg_get_userbyid(p.pubowner), p.puballtables, p.pubinsert, p.pubupdate,
       p.pubdelete, p.pubtruncate, {via_root}, obj_description(p.oid, 'pg_publication')
FROM pg_publication p
"""
# One entry per named table: ``schema.table``, on 15+ followed by its column list and row filter when it has them.
Q_PUBLICATION_TABLES = """
SELECT pr.prpubid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) {extra}
FROM pg_publication_rel pr JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
"""
PUBLICATION_TABLE_EXTRA_15 = """
       || COALESCE(' (' || (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
                            FROM pg_attribute a WHERE a.attrelid = pr.prrelid AND a.attnum = ANY(pr.prattrs)) || ')', '')
       || COALESCE(' WHERE (' || pg_get_expr(pr.prqual, pr.prrelid) || ')', '')
"""
Q_PUBLICATION_SCHEMAS = """
SELECT pn.pnpubid, quote_ident(n.nspname)
FROM pg_publication_namespace pn JOIN pg_namespace n ON n.oid = pn.pnnspid
"""

Q_EVENT_TRIGGERS = f"""
SELECT quote_ident(e.evtname), e.evtevent, e.evtenabled, e.evtfoid::regprocedure::text, e.evttags::text,
       pg_get_userbyid(e.evtowner), obj_description(e.oid, 'pg_event_trigger')
FROM pg_event_trigger e
WHERE {NOT_EXT.format(cls="'pg_event_trigger'", oid='e.oid')}
"""

# An ICU collation's locale is in collcollate/collctype up to 14, in colliculocale on 15 and 16, in colllocale
# from 17 on (which also holds the builtin provider's): observed as collate and ctype on every version, so a
# checkpoint and a shadow of different majors agree.
Q_COLLATIONS = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(co.collname), co.collprovider,
       COALESCE(co.collcollate::text, {locale}), COALESCE(co.collctype::text, {locale}), co.collisdeterministic,
       {icu_rules}, pg_get_userbyid(co.collowner), obj_description(co.oid, 'pg_collation')
FROM pg_collation co JOIN pg_namespace n ON n.oid = co.collnamespace
WHERE {user_ns} AND {not_ext}
"""

# ALTER DATABASE … SET and ALTER ROLE … IN DATABASE … SET of this database. They change how every session behaves
# (search_path, timeouts, custom settings RLS policies read with current_setting), and pg_dump does not carry them.
Q_SETTINGS = """
SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE quote_ident(pg_get_userbyid(s.setrole)) END, s.setconfig
FROM pg_db_role_setting s WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
"""

Q_EXTENSIONS = """
SELECT e.extname, e.extversion, n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
"""

# What each observed object depends on (pg_depend), as "<kind> <name>" → {"<kind> <name>": deptype}: normal (n),
# automatic (a), internal (i) and partition (P) dependencies between objects the observation lists; a dependency on an
# object that belongs to an extension is one on the extension. The diff nests a dropped object under the drop it
# went with (DROP COLUMN takes the index and the foreign key on that column, DROP … CASCADE the views) and an added
# partition's index, key or trigger under the parent's. A view depends through its _RETURN rule.
# https://www.postgresql.org/docs/current/catalog-pg-depend.html
Q_DEPENDS = f"""
WITH rel AS (
  SELECT c.oid, c.relkind, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'i', 'I', 'S') AND {USER_NS}
), obj(classid, objid, objsubid, address) AS (
  SELECT 'pg_class'::regclass::oid, r.oid, 0,
         CASE WHEN r.relkind IN ('r', 'p', 'f') THEN 'table' WHEN r.relkind = 'v' THEN 'view'
              WHEN r.relkind = 'm' THEN 'materialized_view' WHEN r.relkind = 'S' THEN 'sequence' ELSE 'index' END
         || ' ' || r.name
  FROM rel r
  UNION ALL
  SELECT 'pg_class'::regclass::oid, r.oid, a.attnum, 'column ' || r.name || '.' || quote_ident(a.attname)
  FROM rel r JOIN pg_attribute a ON a.attrelid = r.oid
  WHERE r.relkind IN ('r', 'p', 'f') AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT 'pg_constraint'::regclass::oid, co.oid, 0,
         'constraint ' || quote_ident(n.nspname) || '.' || COALESCE(quote_ident(c.relname), quote_ident(t.typname))
         || '.' || quote_ident(co.conname)
  FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace
  LEFT JOIN pg_class c ON c.oid = co.conrelid LEFT JOIN pg_type t ON t.oid = co.contypid
  WHERE {USER_NS} AND (c.oid IS NOT NULL OR t.oid IS NOT NULL)
  UNION ALL
  SELECT 'pg_trigger'::regclass::oid, tg.oid, 0, 'trigger ' || r.name || '.' || quote_ident(tg.tgname)
  FROM pg_trigger tg JOIN rel r ON r.oid = tg.tgrelid WHERE NOT tg.tgisinternal
  UNION ALL
  SELECT 'pg_rewrite'::regclass::oid, rw.oid, 0,
         CASE WHEN rw.rulename = '_RETURN' AND r.relkind = 'v' THEN 'view ' || r.name
              WHEN rw.rulename = '_RETURN' AND r.relkind = 'm' THEN 'materialized_view ' || r.name
              ELSE 'rule ' || r.name || '.' || quote_ident(rw.rulename) END
  FROM pg_rewrite rw JOIN rel r ON r.oid = rw.ev_class
  UNION ALL
  SELECT 'pg_proc'::regclass::oid, p.oid, 0,
         CASE WHEN p.prokind = 'p' THEN 'procedure ' ELSE 'function ' END || p.oid::regprocedure::text
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {USER_NS}
  UNION ALL
  SELECT 'pg_type'::regclass::oid, t.oid, 0, 'type ' || quote_ident(n.nspname) || '.' || quote_ident(t.typname)
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
  WHERE {USER_NS} AND t.typtype IN ('e', 'd', 'c', 'r')
    AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
  UNION ALL
  SELECT 'pg_statistic_ext'::regclass::oid, s.oid, 0, 'statistics ' || quote_ident(n.nspname) || '.' || quote_ident(s.stxname)
  FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace WHERE {USER_NS}
), member AS (
  SELECT d.classid, d.objid, 'extension ' || e.extname AS address
  FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
  WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
)
SELECT DISTINCT o.address, d.deptype, COALESCE(rm.address, r.address)
FROM pg_depend d
JOIN obj o ON o.classid = d.classid AND o.objid = d.objid AND o.objsubid = d.objsubid
LEFT JOIN obj r ON r.classid = d.refclassid AND r.objid = d.refobjid AND r.objsubid = d.refobjsubid
LEFT JOIN member rm ON rm.classid = d.refclassid AND rm.objid = d.refobjid
WHERE d.deptype IN ('n', 'a', 'i', 'P') AND COALESCE(rm.address, r.address) <> o.address
  AND NOT EXISTS (SELECT 1 FROM member m WHERE m.classid = d.classid AND m.objid = d.objid)
"""

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


def observe(conn: psycopg.Connection, *, snapshot: str | None = None, with_data: bool = True) -> dict[str, Any]:
    """Observe the database ``conn`` is connected to. Leaves the connection's transaction state as it found it.

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
            return _observe_in_tx(conn, with_data)
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


def _observe_in_tx(conn: psycopg.Connection, with_data: bool) -> dict[str, Any]:
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
        "objects": objects,
        "data": _observe_data(conn, objects, relkinds, table_columns) if with_data else {},
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
                  table_columns: dict[str, list[tuple[int, str]]]) -> dict[str, Any]:
    """Every table's and populated materialized view's row count and content hash (a partition's through its
    partitioned root)."""
    data: dict[str, Any] = {}
    keys = _primary_keys(conn)
    for name, relkind in sorted(relkinds.items()):
        rel = objects["table"].get(name) or objects["materialized_view"].get(name)
        if relkind not in ("r", "p", "m") or rel is None:
            continue
        if relkind == "m" and not rel.get("populated"):
            continue
        if rel.get("partition_of"):
            continue  # counted through its partitioned root
        columns = [raw for _, raw in sorted(table_columns.get(name, []))]
        data[name] = table_data(conn, name, only=relkind != "p", key=keys.get(name), columns=columns)
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


def row_hash_expr(columns: list[str]) -> sql.Composable:
    """SQL for the hash of row ``t`` over ``columns`` (raw names; see the module docstring)."""
    # Arrays, not jsonb_build_object: a function takes at most 100 arguments, a table up to 1600 columns.
    names = sql.SQL(", ").join(sql.Literal(c) for c in columns)
    values = sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in columns)
    return sql.SQL(
        "jsonb_hash_extended(jsonb_strip_nulls(jsonb_object(ARRAY[{}]::text[], ARRAY[{}]::text[])), 0)"
    ).format(names, values)


def relation_sql(name: str, only: bool) -> sql.Composable:
    # ``name`` is already quote_ident-ed by the catalog query.
    return sql.SQL(("ONLY " if only else "") + name)


def table_data(conn: psycopg.Connection, name: str, *, only: bool, key: list[str] | None,
               columns: list[str]) -> dict[str, Any]:
    query = sql.SQL("SELECT count(*), COALESCE(sum({h}::numeric), 0)::text FROM {rel} t").format(
        h=row_hash_expr(columns), rel=relation_sql(name, only)
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    return {"rows": int(row[0]), "hash": row[1], "key": key, "only": only, "columns": columns}
