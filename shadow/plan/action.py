"""``action:`` — SQL files run on one target that runs SQL, or a shell command; its env, timeout and isolation."""

from __future__ import annotations

import errno
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shadow.plan.document import Doc, duration, known
from shadow.plan.model import DEFAULT_TIMEOUT, Action, Limits, TargetSpec

ISOLATIONS = ("process", "container")


def load_action(doc: Doc, raw: Any, folder: Path, targets: list[TargetSpec], kinds: Mapping[str, Any]) -> Action:
    """The plan's action; ``kinds`` by name, for which of ``targets`` an SQL action may run on."""
    if not isinstance(raw, dict):
        doc.problem(("action",), "missing: give `sql: FILE` (or a list of files) or `command: \"...\"`")
        return Action()
    known(doc, raw, ("action",), ("sql", "command", "target", "env", "timeout", "isolation", "image", "one_session",
                                         "limits"))
    one_session = raw.get("one_session", False)
    if not isinstance(one_session, bool):
        doc.problem(("action", "one_session"), f"{one_session!r} is not true or false")
        one_session = False
    elif "one_session" in raw and "sql" not in raw:
        doc.problem(("action", "one_session"), "only used with `sql:` files (it says they run in one session)")
    isolation, image = _isolation(doc, raw)
    if ("sql" in raw) == ("command" in raw):
        doc.problem(("action",), "give exactly one of `sql` and `command`")
        return Action()
    env, timeout = _env(doc, raw), _timeout(doc, raw)
    if "command" in raw:
        if not isinstance(raw["command"], str) or not raw["command"].strip():
            doc.problem(("action", "command"), "must be a non-empty shell command")
            return Action()
        limits = Limits()
        if "limits" in raw:
            from shadow.plan.policy import resource_limits

            if isolation != "container":
                doc.problem(("action", "limits"), "only used with `isolation: container` (they bound its container)")
            limits = resource_limits(doc, raw["limits"], ("action", "limits"))
        return Action(command=raw["command"], env=env, timeout=timeout, isolation=isolation, image=image,
                      limits=limits)
    paths, shown, outside = _sql_files(doc, raw["sql"], folder)
    sql_target = _sql_target(doc, raw.get("target"), targets, kinds)
    if isolation == "container":
        doc.problem(("action", "isolation"), "`isolation: container` is for `command` actions; SQL actions are run "
                                             "by shadow itself over one connection")
    return Action(sql_files=tuple(paths), sql_display=tuple(shown), sql_target=sql_target, env=env, timeout=timeout,
                  outside_files=tuple(outside), one_session=one_session)


def _isolation(doc: Doc, raw: dict[str, Any]) -> tuple[str, str | None]:
    isolation = raw.get("isolation", "process")
    if isolation not in ISOLATIONS:
        doc.problem(("action", "isolation"), f"{isolation!r} is not one of: {', '.join(ISOLATIONS)}")
        isolation = "process"
    image = raw.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        doc.problem(("action", "image"), "must be a container image name like python:3.12-slim")
        image = None
    if image is not None and isolation != "container":
        doc.problem(("action", "image"), "only used with `isolation: container`")
    return isolation, image


def _env(doc: Doc, raw: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    if "env" in raw:
        if not isinstance(raw["env"], dict):
            doc.problem(("action", "env"), "must be a mapping of variable names to values")
        else:
            for k, v in raw["env"].items():
                if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                    doc.problem(("action", "env", k), "not a valid environment variable name")
                elif isinstance(v, (dict, list)) or v is None:
                    doc.problem(("action", "env", k), "must be a string or number")
                else:
                    env[k] = str(v).lower() if isinstance(v, bool) else str(v)
    return env


def _timeout(doc: Doc, raw: dict[str, Any]) -> float:
    if "timeout" not in raw:
        return DEFAULT_TIMEOUT
    timeout = duration(raw["timeout"])
    if timeout is None:
        doc.problem(("action", "timeout"), "must be seconds or a duration like 90s, 10m, 1h")
        return DEFAULT_TIMEOUT
    return timeout


def _sql_files(doc: Doc, raw: Any, folder: Path) -> tuple[list[Path], list[str], list[Path]]:
    """``(paths, as the plan names them, the real paths of those outside the plan's folder)`` of ``sql:``."""
    files = raw if isinstance(raw, list) else [raw]
    paths: list[Path] = []
    shown: list[str] = []
    outside: list[Path] = []
    for i, f in enumerate(files):
        where = ("action", "sql") + ((i,) if isinstance(raw, list) else ())
        if not isinstance(f, str) or not f:
            doc.problem(where, "must be a path to an SQL file, relative to the plan file")
            continue
        named = folder / f
        try:
            real = named.resolve(strict=True)
        except FileNotFoundError:
            doc.problem(where, f"SQL file not found: {f}")
            continue
        except RuntimeError:  # Python 3.11's "Symlink loop"
            doc.problem(where, f"SQL file {f} is a symlink loop")
            continue
        except OSError as exc:
            doc.problem(where, f"SQL file {f} " + ("is a symlink loop" if exc.errno == errno.ELOOP
                                                  else f"cannot be read: {exc.strerror}"))
            continue
        if not real.is_file():
            doc.problem(where, f"SQL file not found: {f}")
            continue
        paths.append(named)
        shown.append(f)
        if not real.is_relative_to(folder):
            outside.append(real)
    return paths, shown, outside


def _sql_target(doc: Doc, sql_target: Any, targets: list[TargetSpec], kinds: Mapping[str, Any]) -> str | None:
    """The target an SQL action runs on: the one named by ``target:``, else the plan's only target that runs SQL."""
    runs_sql = [t.name for t in targets if kinds[t.kind].runs_sql]
    if sql_target is not None and sql_target not in runs_sql:
        if sql_target not in doc.broken_targets:  # else the target's own problem is the one to fix
            doc.problem(("action", "target"), f"{sql_target!r} is not a target SQL runs on ({_sql_kinds(kinds)}) "
                                              "of this plan")
    elif sql_target is None:
        if len(runs_sql) == 1:
            sql_target = runs_sql[0]
        elif targets and not doc.broken_targets:
            doc.problem(("action", "target"), "an SQL action needs `target:` naming the target it runs on"
                        if runs_sql else f"an SQL action needs a target SQL runs on ({_sql_kinds(kinds)})")
    return sql_target


def _sql_kinds(kinds: Mapping[str, Any]) -> str:
    """``a postgres target``: the kinds SQL runs on, for a message. It looks every kind up (importing its
    libraries), so only a plan with a problem pays for it."""
    return "a " + " or ".join(name for name in kinds if kinds[name].runs_sql) + " target"
