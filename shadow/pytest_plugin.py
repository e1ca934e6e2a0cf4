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
  the first worker to need it rehearses it, and the others read its result (:func:`_once`).
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
nothing.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from shadow.plan import Plan
    from shadow.result import RunResult

DEFAULT_PLANS = ("shadow*.yaml", "shadow*.yml")
# Rules that belong to one expectation item each; every other verdict (the action, fidelity, the rehearsed
# rollback, safety …) is the plan's "rehearsal" item's.
ITEM_RULES = ("must", "unexpected", "rows", "objects", "files", "check", "finding")


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


T = TypeVar("T")


def _once(node: pytest.File, make: Callable[[], T]) -> T | str:
    """``make()`` — or the message of the :class:`~shadow.errors.ShadowError` it raised — once per test run.

    pytest-xdist hands one file's items to several workers (``--dist load``, ``worksteal``, ``each``), and each
    would rehearse the plan again. So a worker takes a lock in the run's temp dir (shared by its workers: pytest-
    xdist's recipe for running something once), and either finds the outcome another worker left there or makes
    it and leaves it. A worker killed while making it leaves no outcome, and the next one makes it."""
    from shadow.errors import ShadowError

    def outcome() -> T | str:
        try:
            return make()
        except ShadowError as exc:
            return str(exc)

    # A worker of this run has ``workerinput`` (the environment variable would also be seen by a pytest run
    # *inside* a worker, e.g. by pytester, which is no worker of anyone).
    workerinput = getattr(node.config, "workerinput", None)
    if workerinput is None:
        return outcome()
    import fcntl
    import hashlib
    import pickle

    factory: pytest.TempPathFactory = node.config._tmp_path_factory  # type: ignore[attr-defined]
    shared = factory.getbasetemp().parent / "shadow-rehearsals" / str(workerinput.get("testrunuid", "run"))
    shared.mkdir(parents=True, exist_ok=True)
    # The same file rehearsed against other targets is another outcome.
    what = repr((str(node.path.resolve()), sorted(target_overrides(node.config).items())))
    key = hashlib.sha256(what.encode()).hexdigest()[:16]
    with open(shared / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the worker dies
        done = shared / f"{key}.pickle"
        if done.exists():
            loaded: T | str = pickle.loads(done.read_bytes())  # written by a worker of this run, below
            return loaded
        made = outcome()
        temp = done.with_suffix(".tmp")
        temp.write_bytes(pickle.dumps(made))
        os.replace(temp, done)
        return made


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


def target_overrides(config: pytest.Config) -> dict[str, str]:
    """``--shadow-target NAME=ADDRESS`` options, by name."""
    out: dict[str, str] = {}
    for raw in config.getoption("shadow_target") or ():
        name, sep, address = str(raw).partition("=")
        if not sep or not name.strip() or not address.strip():
            raise pytest.UsageError(f"--shadow-target {raw!r}: expected NAME=ADDRESS (e.g. app=postgresql://…)")
        out[name.strip()] = address.strip()
    return out


def _settings(config: pytest.Config, state_dir: Path | None = None) -> Any:
    from shadow.settings import Settings

    env = dict(os.environ)
    env["SHADOW_BACKEND"] = config.getoption("shadow_backend") or env.get("SHADOW_BACKEND") or "local"
    return Settings.from_env(environ=env, state_dir=state_dir)


# -- plans as tests -----------------------------------------------------------------------------------------------
class PlanFile(pytest.File):
    """A plan file: one rehearsal, shared by the items of its expectations."""

    _result: RunResult | None = None
    _error: str | None = None

    def collect(self) -> Iterator[pytest.Item]:
        from shadow.errors import ShadowError
        from shadow.plan import load_plan, with_targets

        try:
            plan = with_targets(load_plan(self.path, os.environ), target_overrides(self.config))
        except ShadowError as exc:
            yield PlanItem.from_parent(self, name="plan", check=("plan", "", str(exc)))
            return
        self._plan = plan
        self._static = _sql_findings(plan)
        yield PlanItem.from_parent(self, name="rehearsal", check=("rehearsal", "", ""))
        for target, expectation in plan.expect.items():
            for pattern in expectation.must:
                yield PlanItem.from_parent(self, name=f"{target}: must {pattern}", check=("must", target, pattern))
            yield PlanItem.from_parent(self, name=f"{target}: nothing unexpected", check=("unexpected", target, ""))
            for rule in expectation.rows:
                yield PlanItem.from_parent(self, name=f"{target}: rows {rule.table}", check=("rows", target, rule.table))
            for orule in expectation.objects:
                yield PlanItem.from_parent(self, name=f"{target}: objects {orule.pattern}",
                                           check=("objects", target, orule.pattern))
            for orule in expectation.files:
                yield PlanItem.from_parent(self, name=f"{target}: files {orule.pattern}",
                                           check=("files", target, orule.pattern))
            for check in expectation.checks:
                yield PlanItem.from_parent(self, name=f"{target}: check {_short(check.sql)}",
                                           check=("check", target, check.sql))
        target = plan.action.sql_target or ""
        for subject in self._static:
            yield PlanItem.from_parent(self, name=f"{target}: finding {subject}", check=("finding", target, subject))
        if plan.action.sql_files:
            yield PlanItem.from_parent(self, name="findings found by the rehearsal", check=("finding", target, ""))

    def result(self) -> RunResult:
        """The plan's rehearsal, run once (by the first item that needs it)."""
        if self._error is not None:
            raise PlanFailed(self._error)
        if self._result is None:
            from shadow import run

            settings = dataclasses.replace(_settings(self.config), targets=target_overrides(self.config))
            done = _once(self, lambda: run.plan(self.path, settings))
            if isinstance(done, str):
                self._error = f"the rehearsal could not run: {done}"
                raise PlanFailed(self._error)
            self._result = done
        return self._result


def _sql_findings(plan: Plan) -> dict[str, str]:
    """The error-level findings a run of ``plan`` starts with (``shadow.findings.static_findings``: the SQL linted
    before anything runs, the plan's allow list applied), by the subject their verdicts have (``ID at FILE:LINE``):
    what is wrong and what to do.

    Empty when the plan has no SQL or its SQL cannot be read: the rehearsal fails on that, and says why."""
    if not plan.action.sql_files:
        return {}
    from shadow import lint
    from shadow.errors import ShadowError
    from shadow.sqlsplit import load_sql_files

    try:
        statements = load_sql_files(list(plan.action.sql_files), list(plan.action.sql_display))
        kept, _allowed = lint.allowed(lint.lint(statements, one_session=plan.action.one_session),
                                      list(plan.policy.allow))
    except ShadowError:
        return {}
    return {f"{f.id} at {f.where}": f"{f.message} — {f.hint} (or allow it: policy.allow: [{f.id}])"
            for f in kept if f.severity == "error"}


class PlanFailed(Exception):
    """An item's failure, shown as its text alone (no traceback)."""


class _ShadowItem(pytest.Item):
    """An item whose failure is its text alone (no traceback)."""

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:  # type: ignore[override]
        if isinstance(excinfo.value, PlanFailed):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        # Not a suffix of the node id, so pytest shows the id as it is (it would turn an address's dots into "::")
        # and heads a failure with this.
        return self.path, None, f"{self.name} ({self.path.name})"


class PlanItem(_ShadowItem):
    def __init__(self, *, check: tuple[str, str, str], **kw: Any) -> None:
        super().__init__(**kw)
        self.check = check

    def runtest(self) -> None:
        rule, target, subject = self.check
        if rule == "plan":
            raise PlanFailed(subject)
        parent = self.parent
        assert isinstance(parent, PlanFile)
        try:
            result = parent.result()
        except PlanFailed as exc:  # the rehearsal item says why; the rest were never judged
            if rule == "rehearsal":
                raise
            if rule == "finding" and subject:  # found on the SQL, before anything ran
                raise PlanFailed(f"FAILED {target}: finding {subject}: {parent._static[subject]}\n"
                                 f"(found on the SQL before the rehearsal, which did not finish: {exc})") from None
            pytest.skip(f"not judged: {exc}")
        mine = _verdicts(result, parent._plan, rule, target, subject)
        if rule == "finding" and not subject:  # the findings the collection's lint did not see
            mine = [v for v in mine if v.subject not in parent._static]
        failed = [v for v in mine if not v.ok]
        if rule == "rehearsal" and (failed or result.outcome.value not in ("passed", "awaiting_approval", "failed")):
            raise PlanFailed(result.explain(failed))
        if failed:
            raise PlanFailed(result.explain(failed, target))
        # A static finding's item is judged before anything runs; every other item only once the run got there.
        if rule != "rehearsal" and not (rule == "finding" and subject) and not _judged(result, rule, target):
            why = next((v.message for v in result.verdicts if v.rule == "action" and not v.ok), result.reason)
            pytest.skip(f"not judged: {why or 'the rehearsal failed'} (see the plan's rehearsal item)")


def _short(text: str, width: int = 60) -> str:
    one = re.sub(r"\s+", " ", text).strip()
    return one if len(one) <= width else one[: width - 1] + "…"


def _judged(result: RunResult, rule: str, target: str) -> bool:
    """Whether the run got as far as judging ``rule`` on ``target``: a target's expectations once its ``judge``
    step ran to its end; the findings the collection did not see once the rehearsal started (the run lints the SQL
    again, knowing the checkpoint, just before)."""
    if rule == "finding":
        return any(s["step"] == "rehearse" for s in result.steps)
    return any(s["step"] == "judge" and s["target"] == target and s["state"] != "failed" for s in result.steps)


def _verdicts(result: RunResult, plan: Plan, rule: str, target: str, subject: str) -> list[Any]:
    """The run's verdicts that belong to one item."""
    if rule == "rehearsal":
        return [v for v in result.verdicts if v.rule not in ITEM_RULES]
    if rule == "finding":
        return [v for v in result.verdicts if v.rule == "finding" and (not subject or v.subject == subject)]
    mine = [v for v in result.verdicts if v.rule == rule and v.target == target]
    if rule in ("must", "check"):
        return [v for v in mine if v.subject == subject]
    if rule in ("objects", "files"):
        return [v for v in mine if v.subject.startswith(subject + " ")]
    if rule == "rows":  # each table is judged by its most specific rule (shadow.judge)
        from shadow.judge import rows_rule_tables

        tables = {v.subject.rsplit(" ", 1)[0] for v in mine}
        owned = {t for r, ts in rows_rule_tables(plan.expect[target].rows, tables) if r.table == subject for t in ts}
        return [v for v in mine if v.subject.rsplit(" ", 1)[0] in owned]
    return mine


class MigrationsFile(pytest.File):
    """An Alembic project (its config file) or a Django project (its manage.py): one item per pending migration,
    and the round trip (``shadow alembic`` / ``shadow django``)."""

    _run: Any = None
    _error: str | None = None

    def __init__(self, *, tool: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.tool = tool

    def collect(self) -> Iterator[pytest.Item]:
        from shadow.errors import ShadowError
        from shadow.migrations import alembic, django

        self.dsn = target_overrides(self.config).get("app") or os.environ.get("DATABASE_URL") or ""
        word = "revision" if self.tool == "alembic" else "migration"
        try:
            if not self.dsn:
                raise pytest.UsageError(f"{self.path}: name production with --shadow-target app=DSN or DATABASE_URL")
            pending = (alembic.pending(self.path, self.dsn) if self.tool == "alembic" else
                       django.pending(self.path, self.dsn))
        except ShadowError as exc:
            yield RevisionItem.from_parent(self, name=self.tool, revision="", problem=str(exc))
            return
        for rev in pending:
            yield RevisionItem.from_parent(self, name=f"{word} {rev}", revision=rev, problem="")
        if pending:
            yield RevisionItem.from_parent(self, name="round trip", revision="", problem="")

    def run(self) -> Any:
        if self._error is not None:
            raise PlanFailed(self._error)
        if self._run is None:
            from shadow.migrations import alembic, django

            settings = _settings(self.config)
            done = _once(self, lambda: alembic.rehearse(self.path, self.dsn, settings) if self.tool == "alembic" else
                         django.rehearse(self.path, self.dsn, settings))
            if isinstance(done, str):
                self._error = f"the rehearsal could not run: {done}"
                raise PlanFailed(self._error)
            self._run = done
        return self._run


class RevisionItem(_ShadowItem):
    def __init__(self, *, revision: str, problem: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.revision, self.problem = revision, problem

    def runtest(self) -> None:
        if self.problem:
            raise PlanFailed(self.problem)
        parent = self.parent
        assert isinstance(parent, MigrationsFile)
        done = parent.run()
        if self.revision:
            if self.revision in done.not_rehearsed:
                pytest.skip("not rehearsed: an earlier one does not run")
            steps = [s for s in done.steps if s.revision == self.revision]
            if len(steps) != 1:  # production moved between collection and now
                raise PlanFailed(f"{self.revision} was pending when the tests were collected, but the rehearsal "
                                 f"started from {done.start or 'an empty history'} and "
                                 f"{'did not rehearse it' if not steps else 'rehearsed it more than once'}: "
                                 "production's migrations changed meanwhile — run the tests again")
            [step] = steps
            if not step.passed:
                raise PlanFailed(f"{step.revision} ({step.message}):\n" + step.result.explain())
            return
        trip = done.round_trip
        if trip is None:
            pytest.skip("no round trip: a migration does not run")
        if not (trip.passed and trip.outcome.value == "passed"):
            raise PlanFailed(f"migrating back to {done.start or 'the start'} left a trace:\n" + left_behind(trip))



def left_behind(result: RunResult) -> str:
    """What a round trip left: each change, with the rows (key, before, after) it has samples of."""
    import json

    lines = [result.explain()]
    for tr in result.targets.values():
        for change in tr.changes:
            for row in change.detail.get("sample_rows") or []:
                lines.append(f"    {change.address}: {json.dumps(row, default=str)}")
    return "\n".join(lines)


# -- fixtures -----------------------------------------------------------------------------------------------------
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


@pytest.fixture(scope="session")
def _shadow_templates(pytestconfig: pytest.Config) -> Iterator[_Templates]:
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
