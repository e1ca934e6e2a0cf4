"""Migrations as tests (``--shadow-alembic`` / ``--shadow-django``): a :class:`MigrationsFile` is an Alembic or
Django project, rehearsed once; each pending revision and the round trip back is a :class:`RevisionItem`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from shadow.pytest_plugin_common import PlanFailed, _once, _settings, _ShadowItem, target_overrides

if TYPE_CHECKING:
    from shadow.result import RunResult


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

