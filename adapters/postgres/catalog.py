"""The catalog queries an observation is made of (:mod:`adapters.postgres.observe` runs them): one per kind of
object, each returning one row per object of the user's schemas, never an extension's."""

from __future__ import annotations

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
