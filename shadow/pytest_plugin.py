"""shadow's pytest plugin (the ``pytest11`` entry point ``shadow``): plans as tests, and fixtures.

- ``pytest --shadow`` (or ``shadow_plans = …`` globs in the ini file) collects plan files as tests, the way pytest
  collects doctests: each plan is rehearsed once (``shadow plan``, never apply) and every expectation — each ``must``
  pattern, "nothing unexpected" per target, each ``rows`` / ``objects`` / ``files`` rule, each check — and each
  error-level finding is its own test item, passing or failing with the change set in the failure text. The SQL
  is linted at collection (one item per finding id and place); findings the collection did not see (the run lints
  again once the checkpoint says which tables are partitioned, and the SQL may have changed since) fail the one
  item ``findings found by the rehearsal``. An item the rehearsal never judged (it could not run, or the action
  failed) is skipped with the reason, never passed.
  Under pytest-xdist, whatever ``--dist``, a plan file (or a migrations project) is rehearsed once per test run:
  the first worker to need it rehearses it, and the others read its result (:func:`shadow.pytest_plugin_common._once`).
  ``--shadow-target NAME=ADDRESS`` points a plan's target somewhere else for the test run (a DSN for PostgreSQL,
  a bucket for S3, a working copy for git).
- ``shadow_db``: a fresh throwaway PostgreSQL database per test, cloned from a session-wide template built from a
  schema file, a dump, or a shadow checkpoint (``@pytest.mark.shadow_db(schema="schema.sql")``).
- ``rehearse``: ``rehearse(sql="migrations/0042.sql", expect={...}, on=shadow_db)`` returns the run's result;
  ``assert result.passed, result.explain()``.

Rehearsals use the CLI's backends — ``local`` unless ``--shadow-backend`` (or ``SHADOW_BACKEND``) says otherwise.
Plan files and migrations projects keep their runs in the CLI's state dir (``SHADOW_STATE_DIR``, else the
default), where ``shadow show`` finds them; ``rehearse`` keeps each test's runs in that test's ``tmp_path`` (its
report: ``result.report_dir``), so hand-written tests never fill a real store with throwaway databases. Loading the
plugin imports nothing but pytest and the standard library: a project that installs shadow and does not use it pays
nothing. The hooks and fixtures are here; what they build lives in ``shadow.pytest_plugin_*`` (``_common``, ``_plans``,
``_migrations``, ``_db``), imported only when a collector or fixture needs it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from shadow.pytest_plugin_db import ShadowDb, _Templates
    from shadow.result import RunResult

DEFAULT_PLANS = ("shadow*.yaml", "shadow*.yml")


# -- options ------------------------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("shadow", "shadow: rehearse plans on a copy of production")
    group.addoption("--shadow", action="store_true", default=False,
                    help="collect shadow plan files (shadow*.yaml, or the shadow_plans ini globs) as tests: each "
                         "is rehearsed, never applied")
    group.addoption("--shadow-target", action="append", default=[], metavar="NAME=ADDRESS",
                    help="point a plan's target NAME elsewhere for this run (PostgreSQL: a DSN; S3: a bucket; "
                         "git: a working copy); repeatable")
    group.addoption("--shadow-backend", default=None, choices=("local", "docker", "auto"),
                    help="where shadows and shadow_db databases run (default: SHADOW_BACKEND, else local)")
    parser.addini("shadow_plans", type="args", default=[],
                  help="globs of plan files to collect as tests (collection is on when set)")
    group.addoption("--shadow-alembic", action="append", default=[], metavar="ALEMBIC_INI",
                    help="collect an Alembic project's pending revisions as tests (one item per revision, and the "
                         "round trip), rehearsed against --shadow-target app=DSN or DATABASE_URL; repeatable")
    parser.addini("shadow_alembic", type="paths", default=[],
                  help="Alembic config files whose pending revisions are collected as tests")
    group.addoption("--shadow-django", action="append", default=[], metavar="MANAGE_PY",
                    help="collect a Django project's unapplied migrations as tests (one item per migration, and "
                         "the round trip), like --shadow-alembic; repeatable")
    parser.addini("shadow_django", type="paths", default=[],
                  help="Django manage.py files whose unapplied migrations are collected as tests")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "shadow_db(schema=None, dump=None, checkpoint=None): what the shadow_db "
                                       "fixture's database is built from (a file relative to the test's folder, "
                                       "or RUN_ID[:TARGET] of a shadow checkpoint)")


def _plan_globs(config: pytest.Config) -> tuple[str, ...]:
    globs = tuple(config.getini("shadow_plans"))
    if globs:
        return globs
    return DEFAULT_PLANS if config.getoption("shadow") else ()


def _projects(config: pytest.Config, tool: str) -> set[Path]:
    """The migration projects (``--shadow-alembic`` / ``--shadow-django`` and their ini keys) to collect."""
    given = [Path(p) for p in config.getoption(f"shadow_{tool}") or ()] + list(config.getini(f"shadow_{tool}"))
    return {(p if p.is_absolute() else config.invocation_params.dir / p).resolve() for p in given}


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    from shadow.pytest_plugin_migrations import MigrationsFile
    from shadow.pytest_plugin_plans import PlanFile

    for tool, suffix in (("alembic", ".ini"), ("django", ".py")):
        if file_path.suffix == suffix and file_path.resolve() in _projects(parent.config, tool):
            return MigrationsFile.from_parent(parent, path=file_path, tool=tool)
    globs = _plan_globs(parent.config)
    if not globs or file_path.suffix not in (".yaml", ".yml"):
        return None
    try:
        relative = file_path.relative_to(parent.config.rootpath).as_posix()
    except ValueError:
        relative = file_path.as_posix()
    if any(fnmatch.fnmatchcase(file_path.name, g) or fnmatch.fnmatchcase(relative, g) for g in globs):
        return PlanFile.from_parent(parent, path=file_path)
    return None


# -- fixtures -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def _shadow_templates(pytestconfig: pytest.Config) -> Iterator[_Templates]:
    from shadow.pytest_plugin_db import _Templates

    templates = _Templates(pytestconfig)
    try:
        yield templates
    finally:
        templates.stop()


@pytest.fixture
def shadow_db(request: pytest.FixtureRequest, _shadow_templates: _Templates) -> Iterator[ShadowDb]:
    """A fresh PostgreSQL database for this test, cloned from a template made once per session (and worker)."""
    marker = request.node.get_closest_marker("shadow_db")
    given = dict(marker.kwargs) if marker else {}
    unknown = set(given) - {"schema", "dump", "checkpoint"}
    if unknown or len(given) > 1:
        raise pytest.UsageError("@pytest.mark.shadow_db takes one of schema=, dump=, checkpoint= "
                                f"(got {', '.join(sorted(given)) or 'nothing'})")
    source = next(iter(given.items()), ("empty", ""))
    template = _shadow_templates.template((source[0], str(source[1])), Path(request.path).parent)
    db = _shadow_templates.clone(template)
    try:
        yield db
    finally:
        _shadow_templates.drop(db)


@pytest.fixture
def rehearse(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., RunResult]:
    """``rehearse(sql=… | command=…, expect=…, on=DSN_or_shadow_db, target="app", policy=…)``: the run result of rehearsing the
    action on a copy of ``on`` (default: ``--shadow-target app=…``, else ``DATABASE_URL``); never applied. The
    runs are kept in the test's ``tmp_path`` (``result.report_dir``), whatever ``SHADOW_STATE_DIR`` says."""
    counter = itertools.count(1)
    folder = Path(request.path).parent

    def run_one(sql: str | Path | list[str | Path] | None = None, command: str | None = None,
                expect: Mapping[str, Any] | None = None, on: Any = None, target: str = "app",
                policy: Mapping[str, Any] | None = None) -> RunResult:
        import yaml

        from shadow import run
        from shadow.pytest_plugin_common import _settings, target_overrides

        address = str(on) if on is not None else target_overrides(request.config).get(target) or \
            os.environ.get("DATABASE_URL")
        if not address:
            raise pytest.UsageError("rehearse(): name the database with on=… (a DSN or the shadow_db fixture), "
                                    f"--shadow-target {target}=DSN, or DATABASE_URL")
        if (sql is None) == (command is None):
            raise pytest.UsageError("rehearse(): give exactly one of sql= (files or text) and command=")
        plan_dir = tmp_path / f"rehearse-{next(counter)}"
        plan_dir.mkdir()
        action: dict[str, Any]
        if command is not None:
            action = {"command": command}
        else:
            paths = []
            items: list[str | Path] = list(sql) if isinstance(sql, list) else [sql]  # type: ignore[list-item]
            for i, item in enumerate(items):
                if isinstance(item, Path) or ("\n" not in item and item.strip().endswith(".sql")):
                    path = Path(item)
                    paths.append(str(path if path.is_absolute() else folder / path))
                else:  # SQL text
                    inline = plan_dir / f"inline-{i + 1}.sql"
                    inline.write_text(item)
                    paths.append(str(inline))
            action = {"sql": paths if len(paths) > 1 else paths[0]}
        expectations = dict(expect or {})
        if expectations and not set(expectations) - {"must", "may", "rows", "checks", "objects", "files"}:
            expectations = {target: expectations}
        doc = {"version": 1, "targets": {target: {"kind": "postgres", "dsn": "${SHADOW_REHEARSE_DSN}"}},
               "action": action,
               "expect": expectations, "policy": dict(policy or {})}
        plan_file = plan_dir / "shadow.yaml"
        plan_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        settings = _settings(request.config, tmp_path / "state")  # the DSN stays out of the plan file
        settings = dataclasses.replace(settings, environ={**settings.environ, "SHADOW_REHEARSE_DSN": address})
        return run.plan(plan_file, settings)

    return run_one
