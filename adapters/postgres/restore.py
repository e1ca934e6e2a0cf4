"""Restoring a database from a ``pg_dump`` archive: into a fresh shadow, or over production.

Over production the restore is **one transaction** (``psql --single-transaction``): first everything created
since the checkpoint is dropped — every user schema but ``public`` (kept so its owner, ACL and initial privileges
stay as they were), every object inside ``public``, extensions, event triggers, publications, large objects —
then the archive is replayed. If anything fails, PostgreSQL rolls the whole thing back and production is as it
was before the restore started; the caller then reports that production still needs restoring.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from adapters.postgres.binaries import PgBinaries
from adapters.postgres.dsn import libpq_env
from shadow.errors import InfrastructureError, RestoreFailed

CLEAR_DATABASE = r"""
DO $shadow_restore$
DECLARE
    cmd text;
    cmds text[];
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

    -- Everything that lives in schema public, found through its dependency on the schema.
    SELECT coalesce(array_agg(format('DROP %s IF EXISTS %s CASCADE',
                   CASE o.type WHEN 'statistics object' THEN 'statistics' ELSE o.type END, o.identity)
                   ORDER BY d.classid = 'pg_class'::regclass DESC), '{}')
      INTO cmds
      FROM pg_depend d, LATERAL pg_identify_object(d.classid, d.objid, 0) o
     WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = 'public'::regnamespace AND d.deptype = 'n'
       AND o.type IS NOT NULL
       -- identity and serial sequences, table row types …: they go with the object that owns them
       AND NOT EXISTS (SELECT 1 FROM pg_depend d2 WHERE d2.classid = d.classid AND d2.objid = d.objid
                                                    AND d2.deptype IN ('i', 'a', 'e'));
    FOREACH cmd IN ARRAY cmds LOOP EXECUTE cmd; END LOOP;

    SELECT coalesce(array_agg(format('DROP FOREIGN DATA WRAPPER IF EXISTS %I CASCADE', fdwname)), '{}')
      INTO cmds FROM pg_foreign_data_wrapper;
    FOREACH cmd IN ARRAY cmds LOOP EXECUTE cmd; END LOOP;

    PERFORM lo_unlink(oid) FROM pg_largeobject_metadata;
END
$shadow_restore$;
"""


def restore_into_empty(binaries: PgBinaries, dsn: str, archive: Path) -> list[str]:
    """Restore ``archive`` into an empty database (a shadow). Returns pg_restore's complaints, if any."""
    conninfo, env = libpq_env(dsn)
    proc = subprocess.run(
        [binaries.path("pg_restore"), "--no-password", "-d", conninfo, str(archive)],
        capture_output=True, text=True, env=_env(env),
    )
    if proc.returncode != 0:
        return [line for line in proc.stderr.splitlines() if line.strip()][:20]
    return []


def restore_over(binaries: PgBinaries, dsn: str, archive: Path, lock_timeout: str = "60s") -> None:
    """Replace the database's contents with ``archive``, atomically. Raise :class:`RestoreFailed` if not done."""
    conninfo, env = libpq_env(dsn)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="shadow-restore-") as pre:
        pre.write(f"SET lock_timeout = '{lock_timeout}';\n" + CLEAR_DATABASE)
        pre.flush()
        dump = subprocess.Popen(
            [binaries.path("pg_restore"), "-f", "-", str(archive)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env({}),
        )
        assert dump.stdout is not None
        try:
            psql = subprocess.run(
                [binaries.path("psql"), "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                 "-d", conninfo, "-f", pre.name, "-f", "-"],
                stdin=dump.stdout, capture_output=True, text=True, env=_env(env),
            )
        finally:
            dump.stdout.close()
            dump_err = dump.stderr.read().decode(errors="replace") if dump.stderr else ""
            dump.wait()
    if psql.returncode != 0:
        errors = [line for line in psql.stderr.splitlines() if "ERROR" in line or "FATAL" in line or "error" in line]
        raise RestoreFailed(
            "the restore transaction failed and was rolled back: " + ("; ".join(errors[:3]) or psql.stderr.strip()[:500])
        )
    if dump.returncode != 0:
        raise RestoreFailed(f"pg_restore could not read the checkpoint archive: {dump_err.strip()[:500]}")


def _env(extra: dict[str, str]) -> dict[str, str]:
    import os

    base = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "PGSSLROOTCERT")}
    return {**base, **extra}


def run_pg_dump(binaries: PgBinaries, dsn: str, out: Path, snapshot: str | None) -> None:
    conninfo, env = libpq_env(dsn)
    args = [binaries.path("pg_dump"), "--no-password", "-Fc", "-Z", "1", "-f", str(out), "-d", conninfo]
    if snapshot:
        args.append(f"--snapshot={snapshot}")
    proc = subprocess.run(args, capture_output=True, text=True, env=_env(env))
    if proc.returncode != 0:
        message = proc.stderr.strip().splitlines()
        raise InfrastructureError("pg_dump failed: " + ("; ".join(message[-3:]) if message else f"exit {proc.returncode}"))
