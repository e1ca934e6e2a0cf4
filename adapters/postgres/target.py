"""The PostgreSQL target: checkpoint with ``pg_dump``, shadow in a throwaway server, observe, restore.

:class:`PostgresTarget` keeps the connection, the lock and the observation here, and takes the rest from its
mixins: the checkpoint (:mod:`adapters.postgres.target_checkpoint`), the shadow and warm copies
(:mod:`adapters.postgres.target_shadow`), the apply (:mod:`adapters.postgres.target_apply`), the restore and undo
(:mod:`adapters.postgres.target_restore`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg

from adapters import Checkpoint, Endpoint, fingerprint_of
from adapters.postgres import dsn as dsnlib
from adapters.docker import engine_answers
from adapters.postgres.binaries import ClientTools, ContainerTools, binaries_for, configured_bindir
from adapters.postgres.container import DEFAULT_IMAGE
from adapters.postgres import warm
from adapters.postgres.hashcache import HashCache
from adapters.postgres.shadowcopy import PgShadow, endpoint_env
from adapters.postgres.shadowcopy_make import KeptSession
from adapters.postgres.observe import Hashed, like_checkpoint, observe, read_text_as_str
from adapters.postgres.target_apply import ApplyMixin
from adapters.postgres.target_checkpoint import CheckpointMixin
from adapters.postgres.target_checkpoint import _artifact as _artifact  # tests/test_guard.py imports it from here
from adapters.postgres.target_restore import RestoreMixin
from adapters.postgres.target_shadow import ShadowMixin, _Ahead
from shadow.errors import BinaryNotFound, InfrastructureError, TargetUnreachable
from snapshots import Store

# Advisory lock key: a class id of shadow's own ("SH") and the database's name hashed.
LOCK_SQL = "SELECT pg_try_advisory_lock(21320, hashtext(current_database()))"
LOCK_HOLDER_SQL = """
SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.classid = 21320 AND l.objid = hashtext(current_database())::oid
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND l.granted
"""


class PostgresTarget(CheckpointMixin, ShadowMixin, ApplyMixin, RestoreMixin):
    kind = "postgres"

    def __init__(self, name: str, spec: Mapping[str, Any], settings: Any) -> None:
        self.name = name
        self.progress: Callable[[str], None] | None = None  # nothing here takes long enough to report on
        self.spec = dict(spec)
        self.dsn = str(spec["dsn"])
        self.settings = settings
        self._params = dsnlib.parse(self.dsn)
        self._rehearsal: PgShadow | None = None  # the shadow of the apply under way: its pristine copy counts rows
        self._keep: float | None = None  # policy.warm: keep this run's shadow server warm that long after use
        self._warm_key = ""
        self._lease: warm.Lease | None = None  # leased by warm_checkpoint, for shadow() to clone from
        self._leased: warm.Lease | None = None  # the lease the open shadow clones from
        # warm_checkpoint's session on production, kept for moved_since (one handshake fewer): closed by it, or by
        # the shadow's teardown
        self._production = KeptSession(self.connect)
        self._ahead: _Ahead | None = None  # a server started while the checkpoint is taken (shadow_server_ahead)
        self._ahead_wanted: tuple[str, str, Any] | None = None  # (run id, backend, limits) of that server

    # -- connection ---------------------------------------------------------------------------------------
    def describe(self) -> str:
        return dsnlib.redact(self.dsn)

    def connect(self, autocommit: bool = True) -> psycopg.Connection:
        try:
            conn = psycopg.connect(self.dsn, autocommit=autocommit,
                                   connect_timeout=int(self._params.get("connect_timeout", 10)))
            read_text_as_str(conn)  # SQL_ASCII: txid_status, lock holders … as str, never b'…'
            return conn
        except psycopg.OperationalError as exc:
            reason = dsnlib.connect_error(exc, self._params.get("password"))
            raise TargetUnreachable(f"cannot connect to {self.describe()}: {reason}", target=self.name) from exc

    def secrets(self) -> tuple[str, ...]:
        password = self._params.get("password")
        return (str(password),) if password else ()

    def lock_identity(self) -> str:
        """The database the advisory lock is taken in (whatever user or options the DSN names)."""
        p = self._params
        return f"postgres://{p.get('host') or 'localhost'}:{p.get('port') or 5432}/{p.get('dbname') or ''}"

    @contextmanager
    def lock(self, holder: str, timeout: float, wait: Callable[[str], None]) -> Iterator[None]:
        """A session advisory lock on production's database, held on a connection of its own: two shadow runs
        on two machines that share the database exclude each other. The server drops it if this process dies."""
        conn = self.connect()
        try:
            conn.execute("SELECT set_config('application_name', %s, false)", [f"shadow lock: {holder}"[:63]])
            if conn.info.server_version >= 140000:  # an idle session must not be ended while it holds the lock
                conn.execute("SET idle_session_timeout = 0")
            deadline, told = time.monotonic() + timeout, False
            while not conn.execute(LOCK_SQL).fetchone()[0]:  # type: ignore[index]
                row = conn.execute(LOCK_HOLDER_SQL).fetchone()
                owner = row[0] if row and row[0] else "another session"
                if time.monotonic() >= deadline:
                    from shadow.locks import LockTimeout

                    raise LockTimeout(f"{owner} holds shadow's advisory lock on {self.describe()} (waited "
                                      f"{timeout:g} s; raise --lock-timeout to wait longer)", target=self.name)
                if not told:
                    wait(f"waiting up to {timeout:g} s for {owner} (advisory lock on the database)")
                    told = True
                time.sleep(0.25)
            yield
        finally:
            conn.close()

    def endpoint(self) -> Endpoint:
        env, exclusive = endpoint_env(self.name, self.dsn)
        return Endpoint(env=env, exclusive_env=exclusive, dsn=self.dsn, secrets=self.secrets())

    def binaries(self, server_major: int) -> ClientTools:
        """Client tools at least as new as production: local ones, else the same tools in a container of the
        matching image when a Docker engine answers (PostgreSQL 17 in production, 15 on the laptop)."""
        try:
            return binaries_for(server_major, configured_bindir(self.settings))
        except BinaryNotFound as exc:
            if configured_bindir(self.settings) or not engine_answers()[0]:
                raise
            return ContainerTools(self.image_for(server_major), server_major)

    # -- observe / fingerprint ----------------------------------------------------------------------------
    def observe(self) -> dict[str, Any]:
        with self.connect() as conn:
            return self._observe(conn)

    def _observe(self, conn: psycopg.Connection, snapshot: str | None = None,
                 hashed: Hashed | None = None) -> dict[str, Any]:
        """Production's observation on ``conn``; without ``snapshot`` or ``hashed``, a table whose hash the last
        checkpoint kept and whose rows provably did not change since is not hashed again
        (:mod:`adapters.postgres.hashcache`) — drift checks and verifications cost a scan, not a hash, of what
        did not move."""
        try:
            if snapshot is None and hashed is None:
                cache = self._hash_cache()
                cache.identify(conn)
                observation = observe(conn, hashed=cache.hashed(conn))
                cache.fill(observation)
                return observation
            return observe(conn, snapshot=snapshot, hashed=hashed)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise InfrastructureError(
                f"the connecting role cannot read everything shadow observes: {exc.diag.message_primary} "
                "(it needs SELECT on every table and sequence, and must not be filtered by row-level security)",
                target=self.name,
            ) from exc
        except psycopg.Error as exc:
            raise InfrastructureError(f"observing production failed: {exc.diag.message_primary or exc}",
                                      target=self.name) from exc

    def _hash_cache(self) -> HashCache:
        """The content hashes kept for this production by its last checkpoint (read afresh: another run may have
        checkpointed since)."""
        return HashCache(self.settings.state_dir / "hashes", self.describe())

    def fingerprint(self, observation: dict[str, Any] | None = None) -> str:
        return fingerprint_of(observation if observation is not None else self.observe())

    @like_checkpoint
    def at_checkpoint(self, checkpoint: Checkpoint, store: Store) -> bool:
        """Whether production fingerprints as ``checkpoint`` (observed with its row hash)."""
        return self.fingerprint() == checkpoint.fingerprint

    def image_for(self, major: int) -> str:
        """The shadow image: the target's ``image:``, else SHADOW_POSTGRES_IMAGE, else ``postgres:<major>``."""
        template = str(self.spec.get("image") or self.settings.image_for(self.kind, DEFAULT_IMAGE))
        return template.replace("{major}", str(major))
