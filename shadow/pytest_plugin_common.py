"""What the pytest plugin's collectors and fixtures share: the run settings its options make, ``--shadow-target``
overrides, the run-once cache that lets pytest-xdist workers share one rehearsal, and the item whose failure is its
text alone.

Imported only once a plan file, a migrations project or a fixture needs it (``shadow.pytest_plugin`` itself loads
nothing but pytest and the standard library); it imports shadow's run modules lazily too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

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

