"""The databases behind the ``shadow_db`` fixture: a session-wide PostgreSQL server (this worker's own), one template
database per source (a schema file, a dump, a shadow checkpoint, or nothing), and a clone of it per test.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import Any

import pytest

from shadow.pytest_plugin_common import _settings


class ShadowDb:
    """One test's throwaway database: ``dsn``, ``name``, ``connect()``."""

    def __init__(self, server: Any, name: str) -> None:
        self.server, self.name = server, name
        self.dsn: str = server.dsn(name)

    def connect(self, autocommit: bool = True) -> Any:
        return self.server.connect(self.name, autocommit=autocommit)

    def scalar(self, query: str, params: Any = None) -> Any:
        with self.connect() as conn:
            row = conn.execute(query, params).fetchone()
        return None if row is None else row[0]

    def __str__(self) -> str:
        return self.dsn


class _Templates:
    """The session's PostgreSQL server (this worker's own: no two xdist workers share one) and its template
    databases, one per source; each test clones one (``CREATE DATABASE … TEMPLATE``), never restores."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.server: Any = None
        self.made: dict[tuple[str, str], str] = {}
        self.counter = itertools.count(1)
        self.worker = re.sub(r"\W", "", os.environ.get("PYTEST_XDIST_WORKER", "main"))

    def start(self) -> Any:
        if self.server is not None:
            return self.server
        from adapters.postgres.binaries import find_binaries
        from shadow.run import choose_backend

        settings = _settings(self.config)
        backend, _why = choose_backend("local", settings)
        label = f"pytest-{self.worker}-{os.getpid()}"
        if backend == "docker":
            from adapters.postgres.container import ContainerServer

            major = int(os.environ.get("SHADOW_PYTEST_PG_MAJOR", "17"))
            image = settings.image_for("postgres", "postgres:{major}").format(major=major)
            self.server = ContainerServer(label, image, major).start()
        else:
            from adapters.postgres.cluster import LocalCluster

            self.server = LocalCluster(label=label, binaries=find_binaries()[0]).start()
        return self.server

    def template(self, source: tuple[str, str], folder: Path) -> str:
        """The template database for ``source`` — ("schema" | "dump" | "checkpoint" | "empty", what)."""
        if source in self.made:
            return self.made[source]
        server = self.start()
        name = f"tpl_{self.worker}_{len(self.made) + 1}"
        server.create_database(name)
        kind, what = source
        try:
            if kind == "schema":
                with server.connect(name) as conn:
                    conn.execute(_file(folder, what, "schema").read_text())
            elif kind == "dump":
                _restore(server, name, _file(folder, what, "dump"))
            elif kind == "checkpoint":
                _restore_checkpoint(server, name, what, _settings(self.config))
        except BaseException:
            with server.connect() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            raise
        with server.connect() as conn:
            conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        self.made[source] = name
        return name

    def clone(self, template: str) -> ShadowDb:
        name = f"test_{self.worker}_{next(self.counter)}"
        with self.server.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return ShadowDb(self.server, name)

    def drop(self, db: ShadowDb) -> None:
        with self.server.connect() as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [db.name])
            conn.execute(f'DROP DATABASE IF EXISTS "{db.name}"')

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def _file(folder: Path, what: str, key: str) -> Path:
    path = Path(what) if Path(what).is_absolute() else folder / what
    if not path.is_file():
        raise pytest.UsageError(f"@pytest.mark.shadow_db({key}={what!r}): no such file {path}")
    return path


def _restore(server: Any, name: str, dump: Path) -> None:
    """A plain SQL dump through psql, any other through pg_restore (custom, directory or tar format)."""
    import subprocess

    from adapters.postgres.binaries import find_binaries

    tools = find_binaries(need_server=False)[0]
    head = dump.read_bytes()[:5]
    cmd = ([*tools.argv("pg_restore", [dump.parent]), "--no-owner", "-d", server.dsn(name), str(dump)]
           if head == b"PGDMP" else
           [*tools.argv("psql", [dump.parent]), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", server.dsn(name),
            "-f", str(dump)])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise pytest.UsageError(f"@pytest.mark.shadow_db(dump={dump}): could not load it: {done.stderr.strip()[:400]}")


def _restore_checkpoint(server: Any, name: str, spec: str, settings: Any) -> None:
    """``RUN_ID[:TARGET]``: the PostgreSQL checkpoint a shadow run took, from the state dir's store."""
    import json

    from adapters.postgres.binaries import find_binaries
    from adapters.postgres.restore import restore_into_empty
    from snapshots import Artifact, open_store

    run_id, _sep, target = spec.partition(":")
    store = open_store(settings)
    folder = store.root / "manifests" / run_id
    manifests = sorted(p for p in folder.glob("*.json") if not target or p.stem == target) if folder.is_dir() else []
    postgres = [m for m in manifests if json.loads(m.read_text()).get("kind") == "postgres"]
    if len(postgres) != 1:
        raise pytest.UsageError(f"@pytest.mark.shadow_db(checkpoint={spec!r}): {len(postgres)} PostgreSQL "
                                f"checkpoints of that run in {store.root} (name one: RUN_ID:TARGET)")
    manifest = json.loads(postgres[0].read_text())
    dump = manifest["artifacts"]["dump"]
    archive = store.open_verified(Artifact(dump["sha256"], int(dump["size"])))
    restore_into_empty(find_binaries(need_server=False)[0], server.dsn(name), archive, manifest.get("observation"))

