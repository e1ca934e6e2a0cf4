"""One real production resource per registered kind, for the contract suite (tests/test_contract.py).

A :class:`KindCase` is what the contract needs of a kind: a target on a real resource (a database on the session's
PostgreSQL server, a versioned bucket on the session's moto server, a git working copy with a bare remote), a
``mutate`` that changes whatever an :class:`~adapters.Endpoint` reaches the way a stranger's change would, and a
``state`` that reads production as its user sees it — without the adapter, so that "production is untouched" is
not only the adapter's own word.

``mutate`` works through an endpoint's environment, as an action does: the same function changes production
(``target.endpoint()``) or a shadow (``shadow.endpoint``).

A kind registered later is covered by the contract suite once it has a builder in :data:`BUILDERS`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapters import REGISTRY, Endpoint, Target
from shadow.settings import Settings
from tests.gitrepos import git, make_repo

NAME = "contract"  # every case's target name: its endpoint variables are SHADOW_CONTRACT_*


@dataclass
class KindCase:
    kind: str
    target: Target
    mutate: Callable[[Endpoint], None]  # changes what the endpoint reaches, through its environment
    state: Callable[[], Any]  # production as its user sees it, read without the adapter
    changed: set[str]  # addresses every change set must hold after ``mutate`` (top-level or nested)


def _env(endpoint: Endpoint) -> dict[str, str]:
    return {**endpoint.env, **endpoint.exclusive_env}


def _target(kind: str, spec: dict[str, Any], tmp_path: Path) -> Target:
    settings = Settings.from_env(state_dir=str(tmp_path / "state"))
    return REGISTRY[kind].target(NAME, spec, settings)


# -- postgres -------------------------------------------------------------------------------------------------

PG_SEED = """
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
    CREATE TABLE "Kunden" (id int PRIMARY KEY, "Name" text NOT NULL, stimmung mood NOT NULL DEFAULT 'ok');
    INSERT INTO "Kunden" VALUES (1, 'Zoë', 'happy'), (2, 'Jürgen', 'sad'), (3, 'ann', DEFAULT);
    CREATE TABLE log_lines (at int, line text);  -- no key: compared as a multiset
    INSERT INTO log_lines VALUES (1, 'start'), (1, 'start'), (2, 'ünïcode ✓');
    CREATE TABLE doomed (id int PRIMARY KEY);
    INSERT INTO doomed SELECT generate_series(1, 5);
"""
PG_MUTATIONS = [
    "ALTER TYPE mood ADD VALUE 'ecstatic'",
    'CREATE TABLE "café ☕" (id serial PRIMARY KEY, "naïve" text)',
    """INSERT INTO "café ☕" ("naïve") VALUES ('crème brûlée'), ('日本語')""",
    """UPDATE "Kunden" SET "Name" = 'Zoë Ω' WHERE id = 1""",
    'DELETE FROM "Kunden" WHERE id = 2',
    'ALTER TABLE "Kunden" ADD COLUMN "größe" int',
    "INSERT INTO log_lines VALUES (1, 'start')",  # a third copy of a row in a table without a key
    "DELETE FROM log_lines WHERE line = 'ünïcode ✓'",
    "DROP TABLE doomed",
]
PG_STATE = """
    SELECT json_build_object(
        'columns', (SELECT json_agg(format('%s.%s %s', table_name, column_name, data_type)
                                    ORDER BY table_name, column_name)
                    FROM information_schema.columns WHERE table_schema = 'public'),
        'enums', (SELECT json_agg(enumlabel ORDER BY enumsortorder) FROM pg_enum)
    )::text
"""


def _pg_mutate(endpoint: Endpoint) -> None:
    with psycopg.connect(_env(endpoint)["DATABASE_URL"], autocommit=True) as conn:
        for statement in PG_MUTATIONS:
            conn.execute(statement)


def _pg_state(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        state: dict[str, Any] = {"catalog": conn.execute(PG_STATE).fetchone()[0]}  # type: ignore[index]
        tables = [r[0] for r in conn.execute("SELECT format('%I', tablename) FROM pg_tables "
                                             "WHERE schemaname = 'public' ORDER BY 1")]
        for table in tables:
            rows = conn.execute(f"SELECT t::text FROM {table} t ORDER BY 1").fetchall()  # type: ignore[call-overload]
            state[table] = [r[0] for r in rows]
    return state


@contextmanager
def postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KindCase]:
    server = request.getfixturevalue("pg_server")
    name = "contract_" + uuid.uuid4().hex[:10]
    dsn = server.create_database(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(PG_SEED)
    try:
        yield KindCase(
            kind="postgres",
            target=_target("postgres", {"dsn": dsn}, tmp_path),
            mutate=_pg_mutate,
            state=lambda: _pg_state(dsn),
            # Row changes of a table without a key are counted only against a shadow's pristine copy: without
            # one, production's change set calls them an update (test_contract compares both ways).
            changed={'add column public."Kunden"."größe"', 'add table public."café ☕"', "alter type public.mood",
                     'insert rows public."café ☕"', 'update rows public."Kunden"', "drop table public.doomed"},
        )
    finally:
        with server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- s3 -------------------------------------------------------------------------------------------------------

S3_SEED = {
    "data/a.json": b'{"total": 10}',
    "data/2026/März Rechnung.txt": "Grüße\n".encode(),
    "data/doomed.txt": b"deleted later",
    "data/empty": b"",
    "outside/keep.txt": b"not in the target's prefix",
}


def _s3_client(env: dict[str, str]) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env.get("AWS_DEFAULT_REGION"),
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def _s3_mutate(endpoint: Endpoint) -> None:
    env = _env(endpoint)
    client, bucket = _s3_client(env), env[f"SHADOW_{NAME.upper()}_BUCKET"]
    client.put_object(Bucket=bucket, Key="data/a.json", Body=b'{"total": 99}', ContentType="application/json")
    client.put_object(Bucket=bucket, Key="data/empty", Body=b"no longer empty")
    client.put_object(Bucket=bucket, Key="data/neu/Grüße 🎉.txt", Body="hallo\n".encode())
    client.delete_object(Bucket=bucket, Key="data/doomed.txt")
    client.delete_object(Bucket=bucket, Key="data/2026/März Rechnung.txt")


def _s3_state(client: Any, bucket: str) -> list[tuple[str, str, bool, bool]]:
    """Every version and delete marker in the whole bucket: any write shows as a new one."""
    out = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        out += [(v["Key"], v["VersionId"], False, v["IsLatest"]) for v in page.get("Versions", [])]
        out += [(m["Key"], m["VersionId"], True, m["IsLatest"]) for m in page.get("DeleteMarkers", [])]
    return sorted(out)


@contextmanager
def s3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KindCase]:
    client, bucket = request.getfixturevalue("bucket")
    url = request.getfixturevalue("s3_server")
    for key, body in S3_SEED.items():
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="text/plain", Metadata={"seed": "1"})
    b = bucket
    yield KindCase(
        kind="s3",
        target=_target("s3", {"bucket": bucket, "prefix": "data/", "endpoint_url": url}, tmp_path),
        mutate=_s3_mutate,
        state=lambda: _s3_state(client, bucket),
        changed={f"modify object {b}/data/a.json", f"modify object {b}/data/empty",
                 f"add object {b}/data/neu/Grüße 🎉.txt", f"delete object {b}/data/doomed.txt",
                 f"delete object {b}/data/2026/März Rechnung.txt"},
    )


# -- git ------------------------------------------------------------------------------------------------------

GIT_SEED: dict[str, str | bytes] = {
    "README.md": "# infra\n",
    "k8s/app.yaml": "image: app:1.0\nreplicas: 2\n",
    "doomed.txt": "deleted later\n",
    "assets/logo.bin": bytes(range(256)),
}


def _git_mutate(endpoint: Endpoint) -> None:
    wc = Path(_env(endpoint)[f"SHADOW_{NAME.upper()}_WORKTREE"])
    (wc / "k8s/app.yaml").write_text("image: app:2.0\nreplicas: 3\n")
    (wc / "docs").mkdir(exist_ok=True)
    (wc / "docs/Überblick 🎉.md").write_text("Grüße\n")
    (wc / "doomed.txt").unlink()
    git(wc, "add", "-A")
    git(wc, "commit", "-q", "-m", "a stranger's change")
    git(wc, "push", "-q")
    (wc / "README.md").write_text("# infra\nan edit nobody committed\n")  # and a dirty working tree on top


@contextmanager
def git_repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KindCase]:
    repo = make_repo(tmp_path / "repos", GIT_SEED)
    yield KindCase(
        kind="git",
        # reset: the restore moves refs back, so production observes exactly equal (revert mode, which adds
        # commits on top, is covered in test_git_adapter.py).
        target=_target("git", {"path": str(repo.wc), "rollback": "reset"}, tmp_path),
        mutate=_git_mutate,
        state=repo.state,
        changed={"move ref refs/heads/main", "move ref origin:refs/heads/main", "modify file k8s/app.yaml",
                 "add file docs/Überblick 🎉.md", "delete file doomed.txt", "modify file README.md"},
    )


@dataclass(frozen=True)
class Builder:
    build: Callable[[pytest.FixtureRequest, Path], AbstractContextManager[KindCase]]
    backends: tuple[str, ...]  # the shadow backends that build something different for this kind


BUILDERS: dict[str, Builder] = {
    "postgres": Builder(postgres, ("local", "docker")),
    "s3": Builder(s3, ("local", "docker")),
    "git": Builder(git_repo, ("local",)),  # a git shadow is a clone on this host on either backend
}
