"""Shared fixtures: a real PostgreSQL server playing production, one fresh database per test, and the CLI.

Tests never touch the developer's home directory or default state dir: every run gets ``--state-dir`` in
``tmp_path``. The only network address used is 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapters.postgres import cluster
from adapters.postgres.binaries import find_binaries
from adapters.postgres.cluster import LocalCluster
from adapters.postgres.target import PostgresTarget
from shadow.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

# Containers here: never pull (there is no registry), so no Ryuk reaper image. testcontainers reads this when it is
# first imported, which shadow does lazily — so setting it here is early enough. No TESTCONTAINERS_HOST_OVERRIDE /
# _CONNECTION_MODE: shadow finds its own route to its containers (adapters.docker.route_to). The images are built
# locally by scripts/build-images.sh.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("SHADOW_POSTGRES_IMAGE", "shadow-test/postgres:{major}")
os.environ.setdefault("SHADOW_S3_IMAGE", "shadow-test/moto:latest")
TEST_IMAGES = {15: "shadow-test/postgres:15", 17: "shadow-test/postgres:17"}


def docker_or_skip() -> None:
    """Skip when no Docker engine answers — except in CI, where the Docker tests must run."""
    from adapters.docker import engine_answers

    answers, why = engine_answers()
    if not answers:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {why}: the Docker tests must run in CI")
        pytest.skip(f"docker backend: {why}")


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The shadow backend a test runs on: ``local`` unless a test parametrises it (indirect=True)."""
    chosen = getattr(request, "param", "local")
    if chosen == "docker":
        docker_or_skip()
    return str(chosen)


BOTH_BACKENDS = pytest.mark.parametrize("backend", ["local", "docker"], indirect=True)


def gone_soon(listing: Callable[[], list[Any]], seconds: float = 60.0) -> list[Any]:
    """What ``listing()`` finds once it finds nothing, or after ``seconds``: a CLI run leaves the removal of its
    shadow's container to a process of its own (adapters.docker_remove), done a second or two after the run."""
    deadline = time.monotonic() + seconds
    while (found := listing()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found
DEMO_SCHEMA = ROOT / "examples" / "demo" / "schema.sql"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[LocalCluster]:
    """A real PostgreSQL server that plays production for the whole session.

    It runs the *oldest* local major, so shadows (which use the closest major at least as new) match it.
    """
    with LocalCluster(label="test-production", binaries=find_binaries()[-1]) as cluster:
        yield cluster


# The state dir of targets a test makes without one (kept hashes of checkpoints, adapters.postgres.hashcache).
TARGET_STATE = Path(tempfile.gettempdir()) / "prod-target-state"


@dataclass
class ProdDb:
    """One production database for one test."""

    server: LocalCluster
    name: str
    dsn: str

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True)

    def execute(self, sql: str) -> None:
        with self.connect() as conn:
            conn.execute(sql)

    def scalar(self, sql: str) -> object:
        with self.connect() as conn:
            row = conn.execute(sql).fetchone()
            return None if row is None else row[0]

    def target(self, settings: Settings | None = None) -> PostgresTarget:
        return PostgresTarget("app", {"dsn": self.dsn}, settings or Settings.from_env(state_dir=TARGET_STATE))

    def fingerprint(self) -> str:
        return self.target().fingerprint()


@pytest.fixture
def empty_db(pg_server: LocalCluster) -> Iterator[ProdDb]:
    name = "prod_" + uuid.uuid4().hex[:10]
    dsn = pg_server.create_database(name)
    yield ProdDb(pg_server, name, dsn)
    with pg_server.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def prod_db(empty_db: ProdDb) -> ProdDb:
    """A production database holding the demo shop (users, orders, audit_log, a view, a trigger)."""
    empty_db.execute(DEMO_SCHEMA.read_text())
    return empty_db


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


TEST_IMAGES_ENV = ("SHADOW_POSTGRES_IMAGE", "SHADOW_S3_IMAGE")


def cli_env(backend: str | None = "local", env: dict[str, str] | None = None, drop: tuple[str, ...] = (),
            inherit: bool = True) -> dict[str, str]:
    """The CLI's environment: this process's without any SHADOW_* setting (nor ``drop``), on ``backend`` (None:
    the CLI chooses), with the test images, then ``env``. ``inherit=False``: ``env`` alone."""
    if not inherit:
        return dict(env or {})
    full = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_") and k not in drop}
    if backend is not None:
        full["SHADOW_BACKEND"] = backend
    full.update({name: os.environ[name] for name in TEST_IMAGES_ENV})
    if os.environ.get("SHADOW_TEST_WARM"):  # read at call time: a `cold` test turns it off
        full["SHADOW_WARM"] = os.environ["SHADOW_TEST_WARM"]
    # No detached spare maker after a warm run (shadow.spares; tests/test_spares.py turns it on): it would race
    # the checks tests make of their warm copies between runs.
    full["SHADOW_WARM_SPARES"] = "0"
    full.update(env or {})
    return full


# SHADOW_TEST_WARM=10m runs every CLI call of the suite with warm checkpoints on (SHADOW_WARM): the same tests
# must hold when plans rehearse on clones of a kept checkpoint. Each test's warm servers are discarded after it.


@pytest.fixture(autouse=True)
def _discard_warm_servers(request: pytest.FixtureRequest, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    warm_suite = bool(os.environ.get("SHADOW_TEST_WARM"))
    if request.node.get_closest_marker("cold"):
        monkeypatch.delenv("SHADOW_TEST_WARM", raising=False)
    yield
    for thread in threading.enumerate():  # an in-process gateway readying its warm copies holds their locks
        if thread.name == "gateway-prepare-warm":
            thread.join()
    if warm_suite or (tmp_path / "state" / "warm").exists():
        from adapters.postgres import warm

        for folder in tmp_path.rglob("warm/postgres"):
            warm.reap(folder, everything=True)


def start_cli(*args: str, state: Path | None, cwd: Path, backend: str | None = "local",
              env: dict[str, str] | None = None, drop: tuple[str, ...] = (), inherit: bool = True,
              **popen: Any) -> subprocess.Popen[Any]:
    """Start the real ``shadow`` CLI in a subprocess with ``--state-dir state`` (None: no flag); stdout and stderr
    piped as text unless ``popen`` says otherwise."""
    argv = [sys.executable, "-m", "shadow.cli", *(["--state-dir", str(state)] if state is not None else []), *args]
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen(argv, cwd=cwd, env=cli_env(backend, env, drop, inherit), **popen)


def run_cli(*args: str, state: Path | None, cwd: Path, timeout: float = 300, **options: Any) -> CliResult:
    """Run the real ``shadow`` CLI to its end (options as :func:`start_cli`)."""
    proc = start_cli(*args, state=state, cwd=cwd, **options)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return CliResult(proc.returncode, out, err)


@pytest.fixture
def shadow_cli(tmp_path: Path, backend: str):  # type: ignore[no-untyped-def]
    """Run the real ``shadow`` CLI in a subprocess with a state dir in tmp_path, on the test's backend."""
    state = tmp_path / "state"

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300) -> CliResult:
        return run_cli(*args, state=state, cwd=cwd or tmp_path, backend=backend, env=env, timeout=timeout)

    run.state_dir = state  # type: ignore[attr-defined]
    return run


@pytest.fixture
def own_tempdir() -> Iterator[Path]:
    """gc and recover reap every shadow temp dir of a dead run in the machine's temp dir. A test that runs them gives
    its runs and its cleaner a temp dir of their own (TMPDIR; short, as a cluster's socket path must stay under 107
    bytes), so that it neither reaps another test's leftovers nor has its own reaped while tests run in parallel."""
    folder = tempfile.mkdtemp(prefix="gct", dir="/tmp")
    os.chmod(folder, 0o1777)  # like /tmp: a cluster run as another user (root cannot run initdb) goes in
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = folder, folder
    try:
        yield Path(folder)
    finally:
        if saved[0] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[0]
        tempfile.tempdir = saved[1]
        for root in Path(folder).glob("shadow-*"):
            with contextlib.suppress(Exception):
                cluster.stop_leftover(root)
        shutil.rmtree(folder, ignore_errors=True)


def write_plan(folder: Path, body: str, files: dict[str, str] | None = None, name: str = "shadow.yaml") -> Path:
    """Write a plan (and the SQL/script files it names) into ``folder``."""
    for rel, content in (files or {}).items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    plan = folder / name
    plan.write_text(body)
    return plan


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server as a real HTTP endpoint on 127.0.0.1 (a separate process), playing production."""
    import socket
    import time

    from adapters.postgres.cluster import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start")
    url = f"http://127.0.0.1:{port}"
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def bucket(s3_server: str) -> Iterator[tuple[Any, str]]:
    """A fresh versioned bucket on the production S3 server: (boto3 client, bucket name)."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    name = "prod-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    yield client, name


# -- evidence lines: what a test saw (where production ended, corpus counts), shown in the run's summary -------
# CI runs `pytest -n 2` without -s, so a print is lost. A test's lines go into its report's user_properties,
# which pytest-xdist carries from the workers to the controller; the summary prints them.
EVIDENCE = "shadow-evidence"


@pytest.fixture
def evidence(request: pytest.FixtureRequest) -> Any:
    """``evidence(line)``: print the line, and show it in the terminal summary of the whole run."""

    def say(line: str) -> None:
        print("\n" + line)
        request.node.user_properties.append((EVIDENCE, line))

    return say


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = [(report.nodeid, value) for reports in terminalreporter.stats.values() for report in reports
             if getattr(report, "when", None) == "call"
             for name, value in getattr(report, "user_properties", ()) if name == EVIDENCE]
    if lines:
        terminalreporter.section("what the tests saw")
        for nodeid, line in sorted(lines):
            terminalreporter.write_line(f"{nodeid}: {line}")


def report_of(result: CliResult) -> dict[str, Any]:
    """The report a CLI run printed with ``--json``."""
    return dict(json.loads(result.out))


def warnings_of(report: dict[str, Any]) -> str:
    """Every target's warnings in ``report``, as one string to search."""
    return " ".join(w for t in report["targets"] for w in t.get("warnings", []))


def table_digest(db: ProdDb, table: str) -> str:
    """Every row of ``table`` (generated columns too), as a multiset."""
    return str(db.scalar(f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {table} t"))


def table_oid(db: ProdDb, table: str) -> int:
    """``table``'s oid: the same one when a table was not re-created."""
    return int(db.scalar(f"SELECT '{table}'::regclass::oid"))  # type: ignore[arg-type]
