"""Restoring a database from a ``pg_dump`` archive: into a fresh shadow, or over production.

Over production the restore is **one transaction** (``psql --single-transaction``): first everything created
since the checkpoint is dropped — every user schema but ``public`` (kept, so its OID and its entry in
``pg_init_privs`` stay), every object inside ``public``, extensions, event triggers, publications, large objects —
and ``public`` itself is put back the way ``CREATE DATABASE`` makes it; then the archive is replayed. If anything
fails, PostgreSQL rolls the whole thing back and production is as it was before the restore started; the caller
then reports that production still needs restoring.

Default privileges (``ALTER DEFAULT PRIVILEGES``) are not in any schema but belong to the database: those
since the checkpoint must go too. ``pg_dump`` writes them as differences from the built-in defaults, so every
entry is taken back to those defaults (which removes it) before the archive's entries are replayed.

``pg_dump`` writes the ``public`` schema only as *differences* from its initial state (owner
``pg_database_owner``, the ACL in ``pg_init_privs``, the comment "standard public schema"), and writes nothing
at all when those are unchanged. Replaying those differences over a ``public`` whose owner, grants or comment
were changed after the checkpoint would keep the changes, so the reset to the initial state must come first.

Two things a ``pg_dump`` archive cannot say, which the checkpoint's observation (when the caller passes it) does:
an extension's version (``CREATE EXTENSION`` in the archive installs the server's default one, but production
may run an older one, not updated since a server upgrade), and that the database had no ``public`` schema. The
archive is then replayed in two parts — its schemas, then everything else — and in between each extension is
created at its checkpoint version, which makes the archive's ``CREATE EXTENSION IF NOT EXISTS`` a no-op.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters import tempdirs
from adapters.postgres.binaries import ClientTools
from adapters.postgres.dsn import libpq_env
# pg_dump, and reading single entries of an archive, live in dump: what other modules import stays importable here.
from adapters.postgres.dump import (Dump as Dump, _env, copy_section as copy_section,
                                    dumped_sequences as dumped_sequences, pg_dump_started as pg_dump_started,
                                    run_pg_dump as run_pg_dump, table_data_files as table_data_files)
from shadow.errors import RestoreFailed

CLEAR_DATABASE = r"""
DO $shadow_restore$
DECLARE
    cmd text;
    cmds text[];
    item record;
    grantee oid;
    scope text;
    objects text;
    public_oid oid;
    initial_owner oid;
    initial_acl aclitem[];
BEGIN
    SELECT coalesce(array_agg(format('DROP EVENT TRIGGER IF EXISTS %I CASCADE', evtname)), '{}')
      INTO cmds FROM pg_event_trigger;
    FOREACH cmd IN ARRAY cmds LOOP EXECUTE cmd; END LOOP;

    SELECT coalesce(array_agg(format('DROP PUBLICATION IF EXISTS %I', pubname)), '{}')
      INTO cmds FROM pg_publication;
    FOREACH cmd IN ARRAY cmds LOOP EXECUTE cmd; END LOOP;

    SELECT coalesce(array_agg(format('DROP EXTENSION IF EXISTS %I CASCADE', extname)), '{}')
      INTO cmds FROM pg_extension WHERE extname <> 'plpgsql';
    FOREACH cmd IN ARRAY cmds LOOP EXECUTE cmd; END LOOP;

    SELECT coalesce(array_agg(format('DROP SCHEMA IF EXISTS %I CASCADE', nspname)), '{}')
      INTO cmds FROM pg_namespace
     WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'public')
       AND nspname NOT LIKE 'pg\_temp\_%' AND nspname NOT LIKE 'pg\_toast\_temp\_%';
    FOREACH cmd IN ARRAY cmds LOOP EXECUTE cmd; END LOOP;

    -- Default privileges (those of a dropped schema went with it).
    FOR item IN SELECT defaclrole, defaclnamespace, defaclobjtype, defaclacl FROM pg_default_acl LOOP
        objects := CASE item.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES' WHEN 'f' THEN 'FUNCTIONS'
                                           WHEN 'T' THEN 'TYPES' WHEN 'n' THEN 'SCHEMAS' END;
        scope := format('ALTER DEFAULT PRIVILEGES FOR ROLE %s', item.defaclrole::regrole)
                 || CASE WHEN item.defaclnamespace <> 0 THEN format(' IN SCHEMA %s', item.defaclnamespace::regnamespace)
                         ELSE '' END;
        FOR grantee IN SELECT DISTINCT a.grantee FROM aclexplode(item.defaclacl) a LOOP
            EXECUTE format('%s REVOKE ALL ON %s FROM %s CASCADE', scope, objects,
                           CASE WHEN grantee = 0 THEN 'PUBLIC' ELSE grantee::regrole::text END);
        END LOOP;
        IF item.defaclnamespace = 0 THEN  -- the built-in default of an entry for every schema is not empty
            FOR grantee, cmd IN SELECT a.grantee, a.privilege_type FROM aclexplode(acldefault(
                    CASE item.defaclobjtype WHEN 'S' THEN 's' ELSE item.defaclobjtype END, item.defaclrole)) a LOOP
                EXECUTE format('%s GRANT %s ON %s TO %s', scope, cmd, objects,
                               CASE WHEN grantee = 0 THEN 'PUBLIC' ELSE grantee::regrole::text END);
            END LOOP;
        END IF;
    END LOOP;

    -- An action may have dropped public; the archive never creates it (every new database has it).
    public_oid := to_regnamespace('public');
    IF public_oid IS NULL THEN
        CREATE SCHEMA public;
        public_oid := to_regnamespace('public');
    END IF;

    -- Everything that lives in schema public, found through its dependency on the schema.
    SELECT coalesce(array_agg(format('DROP %s IF EXISTS %s CASCADE',
                   CASE o.type WHEN 'statistics object' THEN 'statistics' ELSE o.type END, o.identity)
                   ORDER BY d.classid = 'pg_class'::regclass DESC), '{}')
      INTO cmds
      FROM pg_depend d, LATERAL pg_identify_object(d.classid, d.objid, 0) o
     WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = public_oid AND d.deptype = 'n'
       AND o.type IS NOT NULL
       -- identity and serial sequences, table row types, partitions …: they go with the object that owns them.
       -- A reference to the object itself (a partitioned table depends on its own key columns) is no owner.
       AND NOT EXISTS (SELECT 1 FROM pg_depend d2 WHERE d2.classid = d.classid AND d2.objid = d.objid
                                                    AND d2.deptype IN ('i', 'a', 'e')
                                                    AND NOT (d2.refclassid = d.classid AND d2.refobjid = d.objid));
    FOREACH cmd IN ARRAY cmds LOOP EXECUTE cmd; END LOOP;

    -- public's owner, ACL and comment as CREATE DATABASE made them (see the module docstring).
    initial_owner := CASE WHEN current_setting('server_version_num')::int >= 150000
                          THEN 'pg_database_owner'::regrole ELSE 10 END;
    IF (SELECT nspowner FROM pg_namespace WHERE oid = public_oid) <> initial_owner THEN
        EXECUTE format('ALTER SCHEMA public OWNER TO %s', initial_owner::regrole);
    END IF;
    SELECT initprivs INTO initial_acl FROM pg_init_privs
     WHERE objoid = public_oid AND classoid = 'pg_namespace'::regclass AND objsubid = 0;
    IF initial_acl IS NULL THEN  -- public was dropped and created again: no initial privileges recorded
        initial_acl := acldefault('n', initial_owner) || makeaclitem(0, initial_owner,
            CASE WHEN current_setting('server_version_num')::int >= 150000 THEN 'USAGE' ELSE 'USAGE, CREATE' END, false);
    END IF;
    IF (SELECT nspacl FROM pg_namespace WHERE oid = public_oid) IS DISTINCT FROM initial_acl THEN
        FOR item IN SELECT DISTINCT a.grantee FROM pg_namespace n,
                           aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a WHERE n.oid = public_oid LOOP
            EXECUTE format('REVOKE ALL ON SCHEMA public FROM %s CASCADE',
                           CASE WHEN item.grantee = 0 THEN 'PUBLIC' ELSE item.grantee::regrole::text END);
        END LOOP;
        FOR item IN SELECT a.grantee, a.privilege_type, a.is_grantable FROM aclexplode(initial_acl) a LOOP
            EXECUTE format('GRANT %s ON SCHEMA public TO %s%s', item.privilege_type,
                           CASE WHEN item.grantee = 0 THEN 'PUBLIC' ELSE item.grantee::regrole::text END,
                           CASE WHEN item.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
    END IF;
    IF obj_description(public_oid, 'pg_namespace') IS DISTINCT FROM 'standard public schema' THEN
        COMMENT ON SCHEMA public IS 'standard public schema';
    END IF;

    SELECT coalesce(array_agg(format('DROP FOREIGN DATA WRAPPER IF EXISTS %I CASCADE', fdwname)), '{}')
      INTO cmds FROM pg_foreign_data_wrapper;
    FOREACH cmd IN ARRAY cmds LOOP EXECUTE cmd; END LOOP;

    PERFORM lo_unlink(oid) FROM pg_largeobject_metadata;
END
$shadow_restore$;
"""


# Create each extension the checkpoint had at the version it had, when that is not the default one and this
# server has it. A failure is left to the archive's own CREATE EXTENSION (default version), and the caller's
# verification then names the difference.
PIN_EXTENSIONS = r"""
SET standard_conforming_strings = on;
DO $shadow_restore$
DECLARE
    ext record;
BEGIN
    FOR ext IN SELECT e.key AS name, e.value->>'version' AS version, e.value->>'schema' AS schema
                 FROM jsonb_each('%s'::jsonb) e
                 JOIN pg_available_extensions a ON a.name = e.key
                WHERE a.default_version IS DISTINCT FROM e.value->>'version'
                  AND EXISTS (SELECT 1 FROM pg_available_extension_versions v
                               WHERE v.name = e.key AND v.version = e.value->>'version')
                ORDER BY 1 LOOP
        BEGIN
            EXECUTE format('CREATE EXTENSION IF NOT EXISTS %%I WITH SCHEMA %%I VERSION %%L',
                           ext.name, ext.schema, ext.version);
        EXCEPTION WHEN others THEN
            NULL;
        END;
    END LOOP;
END
$shadow_restore$;
"""
# Every new database has public; the checkpoint's did not. RESTRICT: the archive put nothing there.
DROP_PUBLIC = "DROP SCHEMA IF EXISTS public RESTRICT;\n"

SCHEMA_ENTRY = re.compile(r"^\d+; \d+ \d+ SCHEMA ")  # a `pg_restore -l` line: "5; 2615 16420 SCHEMA - app owner"


@dataclass
class _Replay:
    """How to replay an archive: whole, or schemas → ``between`` SQL → the rest, then ``after`` SQL."""

    schemas: Path | None = None  # pg_restore -L lists
    rest: Path | None = None
    between: Path | None = None  # SQL files
    after: Path | None = None


def _replay(binaries: ClientTools, archive: Path, folder: Path, observation: Mapping[str, Any] | None) -> _Replay:
    if observation is None:
        return _Replay()
    objects = observation.get("objects", {})
    replay = _Replay()
    extensions = {name: {"version": e.get("version"), "schema": e.get("schema")}
                  for name, e in objects.get("extension", {}).items()}
    if extensions:
        toc = subprocess.run([*binaries.argv("pg_restore", [archive.parent]), "-l", str(archive)],
                             capture_output=True, text=True, env=_env({}))
        if toc.returncode != 0:
            raise RestoreFailed(f"pg_restore could not read the checkpoint archive: {toc.stderr.strip()[:500]}")
        entries = [line for line in toc.stdout.splitlines() if line.strip() and not line.startswith(";")]
        replay.schemas, replay.rest, replay.between = folder / "schemas.list", folder / "rest.list", folder / "pin.sql"
        replay.schemas.write_text("".join(line + "\n" for line in entries if SCHEMA_ENTRY.match(line)))
        replay.rest.write_text("".join(line + "\n" for line in entries if not SCHEMA_ENTRY.match(line)))
        replay.between.write_text(PIN_EXTENSIONS % json.dumps(extensions, sort_keys=True).replace("'", "''"))
    if "public" not in objects.get("schema", {"public": {}}):
        replay.after = folder / "after.sql"
        replay.after.write_text(DROP_PUBLIC)
    return replay


def restore_into_empty(binaries: ClientTools, dsn: str, archive: Path,
                       observation: Mapping[str, Any] | None = None, run_id: str | None = None) -> list[str]:
    """Restore ``archive`` into an empty database (a shadow). Returns pg_restore's complaints, if any.

    ``observation``: the checkpoint's, for what the archive cannot say (see the module docstring). ``run_id``:
    the run whose checkpoint this is, for the name of the temp dir (:mod:`adapters.tempdirs`).
    """
    conninfo, env = libpq_env(dsn)
    problems: list[str] = []

    def run(args: list[str]) -> None:
        proc = subprocess.run(args, capture_output=True, text=True, env=_env(env))
        if proc.returncode != 0:
            problems.extend(line for line in proc.stderr.splitlines() if line.strip())

    with tempdirs.tempdir("restore", run_id) as folder:
        mounts = [archive.parent, folder]
        # Parallel restore of the custom-format archive (a shadow needs no single transaction).
        jobs = str(max(1, min(4, os.cpu_count() or 1)))
        pg_restore = [*binaries.argv("pg_restore", mounts), "--no-password", "-j", jobs, "-d", conninfo]
        psql = [*binaries.argv("psql", mounts), "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1", "-d", conninfo]
        replay = _replay(binaries, archive, folder, observation)
        if replay.schemas and replay.rest and replay.between:
            run([*pg_restore, "-L", str(replay.schemas), str(archive)])
            run([*psql, "-f", str(replay.between)])
            run([*pg_restore, "-L", str(replay.rest), str(archive)])
        else:
            run([*pg_restore, str(archive)])
        if replay.after:
            run([*psql, "-f", str(replay.after)])
    return problems[:20]


def restore_over(binaries: ClientTools, dsn: str, archive: Path, lock_timeout: str = "60s",
                 observation: Mapping[str, Any] | None = None, run_id: str | None = None) -> None:
    """Replace the database's contents with ``archive``, atomically. Raise :class:`RestoreFailed` if not done.

    ``observation``: the checkpoint's, for what the archive cannot say (see the module docstring). ``run_id``:
    the run whose checkpoint this is, for the name of the temp dir (:mod:`adapters.tempdirs`).
    """
    conninfo, env = libpq_env(dsn)
    with tempdirs.tempdir("restore", run_id) as folder:
        pre = folder / "clear.sql"
        pre.write_text(f"SET lock_timeout = '{lock_timeout}';\n" + CLEAR_DATABASE)
        replay = _replay(binaries, archive, folder, observation)
        files = [pre]
        if replay.schemas and replay.between:
            schemas = folder / "schemas.sql"
            part = subprocess.run([*binaries.argv("pg_restore", [archive.parent, folder]), "-L", str(replay.schemas), "-f", str(schemas),
                                   str(archive)], capture_output=True, text=True, env=_env({}))
            if part.returncode != 0:
                raise RestoreFailed(f"pg_restore could not read the checkpoint archive: {part.stderr.strip()[:500]}")
            files += [schemas, replay.between]
        rest = ["-L", str(replay.rest)] if replay.rest else []
        # The whole script is written and checked first: if pg_restore died half way through a pipe, psql would
        # take the end of its input for the end of the script and COMMIT a partial restore.
        script = folder / "restore.sql"
        dump = subprocess.run([*binaries.argv("pg_restore", [archive.parent, folder]), *rest, "-f", str(script),
                               str(archive)], capture_output=True, text=True, env=_env({}))
        if dump.returncode != 0:
            raise RestoreFailed(f"pg_restore could not read the checkpoint archive: {dump.stderr.strip()[:500]}; "
                                "nothing was changed")
        sources = [arg for f in [*files, script] for arg in ("-f", str(f))]
        if replay.after:
            sources += ["-f", str(replay.after)]
        psql = subprocess.run(
            [*binaries.argv("psql", [folder]), "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1",
             "--single-transaction", "-d", conninfo, *sources],
            capture_output=True, text=True, env=_env(env),
        )
    if psql.returncode != 0:
        errors = [line for line in psql.stderr.splitlines() if "ERROR" in line or "FATAL" in line or "error" in line]
        raise RestoreFailed(
            "the restore transaction failed and was rolled back: " + ("; ".join(errors[:3]) or psql.stderr.strip()[:500])
        )
