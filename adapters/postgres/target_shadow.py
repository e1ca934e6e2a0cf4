"""The shadow of a PostgreSQL checkpoint: its server (started ahead, during the checkpoint, or new), the restored
copy, and warm copies kept between runs (:mod:`adapters.postgres.warm`).

The methods :class:`adapters.postgres.target.PostgresTarget` takes from :class:`ShadowMixin`; :class:`_Ahead` is
the server :meth:`ShadowMixin.shadow_server_ahead` starts in a thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from adapters import Checkpoint
from adapters.postgres import warm
from adapters.postgres.binaries import ClientTools, binaries_for, configured_bindir
from adapters.postgres.cluster import LocalCluster
from adapters.postgres.compare import uncounted
from adapters.postgres.container import ContainerServer, Limits
from adapters.postgres.observe import like_checkpoint
from adapters.postgres.server import Server
from adapters.postgres.shadowcopy import PgShadow
from adapters.postgres.shadowcopy_make import KeptSession, answering
from adapters.postgres.target_checkpoint import _artifact
from shadow.changes import Change
from shadow.errors import ShadowError
from snapshots import Store


class ShadowMixin:
    """Shadows, their servers and warm copies (of :class:`adapters.postgres.target.PostgresTarget`)."""

    # What these methods use of the target (set in its __init__, defined there or by its other mixins).
    name: str
    settings: Any
    _keep: float | None
    _warm_key: str
    _lease: warm.Lease | None
    _leased: warm.Lease | None
    _production: KeptSession
    _ahead: _Ahead | None
    _ahead_wanted: tuple[str, str, Any] | None
    connect: Callable[..., psycopg.Connection]
    describe: Callable[[], str]
    binaries: Callable[[int], ClientTools]
    image_for: Callable[[int], str]
    _observe: Callable[..., dict[str, Any]]

    # -- shadow ---------------------------------------------------------------------------------------------
    @contextmanager
    def shadow(self, checkpoint: Checkpoint, store: Store, run_id: str, backend: str,
               limits: Any = None) -> Iterator[PgShadow]:
        """A shadow of ``checkpoint``: a clone in the warm server leased by :meth:`warm_checkpoint`, else restored
        into a new server — kept warm afterwards when :meth:`warm_checkpoint` asked for it."""
        lease, self._lease = self._lease, None
        if lease is not None and lease.entry.checkpoint.get("fingerprint") == checkpoint.fingerprint:
            with self._warm_shadow(lease, checkpoint, store, backend) as shadow:
                yield shadow
            return
        if lease is not None:
            self._production.close()
            lease.release()
        archive = store.open_verified(_artifact(checkpoint))
        major = int(checkpoint.meta["major"])
        tools = self.binaries(major)
        ahead, self._ahead = self._ahead, None
        server = ahead.server if ahead is not None and ahead.fits(run_id, backend, major) else \
            self._new_server(run_id, backend, major, limits)
        kept = False  # once kept warm, the server belongs to its entry: not stopped here
        done = False  # the run is done with the shadow: neither failed nor interrupted in it
        try:
            if ahead is not None and server is ahead.server:
                ahead.ready()  # raises what starting it raised
            else:
                if ahead is not None:
                    ahead.discard()
                server.start()
            # A copy kept warm needs its twin (the golden to be) from the start; any other reads the shadow itself
            # as the action found it (adapters.postgres.held).
            shadow = PgShadow(self.name, server, tools, checkpoint, archive, backend, twin=bool(self._keep))
            before = warm.server_state(server, shadow.database).replace("absent", "closed") if self._keep else ""
            try:
                yield shadow
            finally:
                shadow.settled()
            kept = self._keep_warm(server, shadow, run_id, backend, major, before)
            done = True
        finally:
            if not kept and done and self.settings.short_lived:
                server.stop_soon()  # a CLI run, which ends now: the engine's part is not waited for
            elif not kept:
                server.stop()

    def _new_server(self, run_id: str, backend: str, major: int, limits: Any) -> Server:
        """A shadow's server, not started: a container of the configured image, or a local cluster."""
        entry = str(self._warm_dir / f"{self._warm_key}.json") if self._keep else None
        if backend == "docker":
            return ContainerServer(run_id, self.image_for(major), major, Limits(
                getattr(limits, "memory", None), getattr(limits, "cpus", None), getattr(limits, "pids", None)),
                warm=entry, shadow=True)
        return LocalCluster(label=run_id, binaries=binaries_for(major, configured_bindir(self.settings)),
                            warm=entry, shadow=True)

    @contextmanager
    def shadow_server_ahead(self, run_id: str, backend: str, limits: Any = None) -> Iterator[None]:
        """Start the next shadow's server in a thread while the checkpoint is taken (a container took 1.5 s to
        come up at 1 GB, a local cluster 0.5 s, on top of a 2.5 s checkpoint): the checkpoint starts it once its
        first connection has told production's major version (no connection of its own, so an unreachable
        production is waited for once). Stopped on leaving unless :meth:`shadow` took it."""
        self._ahead_wanted = (run_id, backend, limits)
        try:
            yield
        finally:
            self._ahead_wanted = None
            ahead, self._ahead = self._ahead, None
            if ahead is not None and not ahead.taken:
                ahead.discard()

    def _start_ahead(self, major: int) -> None:
        """Called by the checkpoint: the server :meth:`shadow_server_ahead` asked for, starting."""
        if self._ahead_wanted is None or self._ahead is not None:
            return
        (run_id, backend, limits), self._ahead_wanted = self._ahead_wanted, None  # one server, for the first
        try:
            server = self._new_server(run_id, backend, major, limits)
        except ShadowError:
            return  # shadow() meets the same problem and says it
        self._ahead = _Ahead(run_id, backend, major, server)

    @contextmanager
    def _warm_shadow(self, lease: warm.Lease, checkpoint: Checkpoint, store: Store,
                     backend: str) -> Iterator[PgShadow]:
        """A clone of the golden database in a leased warm server; the clones are dropped at the end, and the
        entry kept for the next run unless :meth:`moved_since` found it stale or the server was lost."""
        shadow: PgShadow | None = None
        self._leased = lease
        try:
            archive = store.object_path(_artifact(checkpoint).sha256)  # verified when it was restored
            shadow = PgShadow(self.name, lease.entry.server(), self.binaries(lease.entry.major), checkpoint,
                              archive, backend, golden=lease.entry.golden, admin=lease.admin)
            lease.admin = None  # the shadow's now (release closes it when the shadow was not made)
            shadow.warnings += lease.entry.warnings
            yield shadow
        finally:
            self._leased = None
            self._production.close()  # moved_since's, when the run ended before it
            lost = None
            if shadow is not None:
                shadow.settled()
                # Whether the server was lost (PgShadow.lost), by the session that then drops the clones
                lease.admin, lost = answering(lease.entry.server().dsn(warm.ADMIN_DB))
            lease.release(lost=lost)

    def _keep_warm(self, server: Server, shadow: PgShadow, run_id: str, backend: str, major: int,
                   before: str) -> bool:
        """Keep a cold run's server as the warm copy of its checkpoint (:func:`warm.make_golden`); False when the
        copy is not faithful, the server is lost, the action changed the server's global state (``before``: as
        it was before the action), or warm copies were not asked for."""
        if not self._keep or shadow.lost() or shadow.fidelity:
            return False
        try:
            warm.make_golden(server, shadow.database, shadow.pristine)
            state = warm.server_state(server, shadow.database)
        except psycopg.Error:
            return False
        if state != before:
            return False
        now = time.time()
        entry = warm.Entry(
            key=self._warm_key, run=run_id, backend=backend, major=major,
            host=str(getattr(server, "host", "127.0.0.1")), port=server.port, password=server.password,
            database=shadow.database, checkpoint=shadow.checkpoint.to_dict(), state=state, keep=self._keep,
            used=now, created=now, root=str(server.root) if isinstance(server, LocalCluster) else None,
            container=server.container_id if isinstance(server, ContainerServer) else None,
            warnings=list(shadow.warnings))
        return warm.keep(self._warm_dir, entry, self.settings.warm_max)

    # -- warm checkpoints (adapters.postgres.warm) ---------------------------------------------------------------
    @property
    def _warm_dir(self) -> Path:
        return warm.entries_dir(self.settings)

    def warm_checkpoint(self, store: Store, backend: str, keep: float,
                        limits: Any = None) -> tuple[Checkpoint | None, str]:
        """The checkpoint a warm server of this production holds, leased to this run until its shadow is torn
        down — or (None, why not); either way this run's shadow is kept warm ``keep`` seconds after its last use."""
        self._keep = keep
        with self._production.use() as conn:  # kept for moved_since when a lease is had
            major = int(conn.info.server_version) // 10000
        lease: warm.Lease | None = None
        try:
            image = self.image_for(major) if backend == "docker" else None
            self._warm_key = warm.key_of(self.describe(), backend, major, image)
            lease, why = warm.lease(self._warm_dir, self._warm_key)
        finally:
            if lease is None:
                self._production.close()
        if lease is None:
            return None, why
        checkpoint = Checkpoint.from_dict(lease.entry.checkpoint)
        artifact = _artifact(checkpoint)
        path = store.object_path(artifact.sha256)
        if not path.exists() or path.stat().st_size != artifact.size:
            lease.stale = "its checkpoint's archive is no longer in the store"
            self._production.close()
            lease.release()
            return None, lease.stale
        self._lease = lease
        age = time.time() - lease.entry.created
        return checkpoint, f"the warm copy of run {checkpoint.run_id}'s checkpoint ({_age(age)} old)"

    @like_checkpoint
    def moved_since(self, checkpoint: Checkpoint, shadow: Any) -> tuple[list[Change], list[Change]]:
        """Production against the warm ``checkpoint`` in what the rehearsal read or wrote: every definition and
        sequence, the rows of the tables of the shadow's footprint (all tables when it is unknown); the others'
        rows are taken as the checkpoint has them — what they hold cannot change the action's outcome."""
        assert isinstance(shadow, PgShadow)
        tables = shadow.footprint_tables
        try:
            with self._production.use() as conn:  # warm_checkpoint's, if it still answers
                now = self._observe(conn, hashed=None if tables is None else lambda table, _: table in tables)
        finally:
            self._production.close()
        kept = checkpoint.observation["data"]
        for table, data in now["data"].items():
            was = kept.get(table)
            if data["rows"] is None and was and (was.get("columns"), was.get("key")) == (data["columns"], data["key"]):
                now["data"][table] = was
        changes = uncounted(checkpoint.observation, now)
        independent = shadow.independent(changes)
        depends = [c for c in changes if c not in independent]
        if depends and self._leased is not None:
            self._leased.stale = "production changed what the action reads or writes"
        return independent, depends


class _Ahead:
    """A shadow's server starting in a thread (:meth:`PostgresTarget.shadow_server_ahead`)."""

    def __init__(self, run_id: str, backend: str, major: int, server: Server) -> None:
        self.run_id, self.backend, self.major, self.server = run_id, backend, major, server
        self.taken = False  # a shadow took the server: it stops it
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, name=f"shadow-server-ahead-{run_id}", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self.server.start()
        except BaseException as exc:  # noqa: BLE001 - raised again by ready(), in the caller's thread
            self._error = exc

    def fits(self, run_id: str, backend: str, major: int) -> bool:
        return (run_id, backend, major) == (self.run_id, self.backend, self.major)

    def ready(self) -> None:
        """Wait for the server; from now on the caller owns it (and stops it, also when starting failed)."""
        self.taken = True
        self._thread.join()
        if self._error is not None:
            raise self._error

    def discard(self) -> None:
        self._thread.join()
        self.server.stop()


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
