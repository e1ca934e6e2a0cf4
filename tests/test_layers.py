"""The packages' layers point one way: core ← snapshots, adapters ← orchestrator ← front ends.

Checks with no dependency of their own: every module imports on its own in a fresh interpreter (no module works
only because something else was imported first), no module — counting imports inside functions — imports a module
of a higher layer, and the reports (orchestrator layer) import nothing of a run: only the core and the outcomes, so
that ``shadow show`` renders a stored model with no adapter, journal or plan loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("shadow", "snapshots", "adapters")
# The leaf core: what any layer may use. Knows no kind, no run, no front end.
CORE = {"shadow", "shadow.errors", "shadow.changes", "shadow.redact", "shadow.settings", "shadow.sqlsplit",
        "shadow.sqlsyntax", "shadow.sqlsyntax_alter", "shadow.sqlsyntax_where", "shadow.locks", "shadow.warden"}
# shadow.migrations: the Alembic and Django front ends (a tool's migrations rehearsed on PostgreSQL).
FRONT_ENDS = {"shadow.cli", "shadow.cli_output", "shadow.demo", "shadow.__main__", "shadow.pytest_plugin",
              "shadow.migrations"}
KINDS = ("postgres", "s3", "git")
# What the renderers of the report model may import besides themselves (their own layer's other modules are
# allowed by the layer map, but would pull in a run: judge → plan, result → action → adapters).
REPORTS = "shadow.reports"
REPORTS_MAY_IMPORT = CORE | {"shadow.outcome"}
NAMES = {0: "core", 1: "snapshots/adapters", 2: "orchestrator", 3: "front end"}


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def layer(module: str) -> int:
    if module in CORE:
        return 0
    if module.split(".")[0] in ("snapshots", "adapters"):
        return 1
    # A front end split in modules (shadow.cli_*, shadow.pytest_plugin_*) is a front end in each.
    front = any(module == f or module.startswith((f + ".", f + "_")) for f in FRONT_ENDS)
    return 3 if front else 2


def imported(path: Path, module: str, known: set[str]) -> set[str]:
    """Every project module ``path`` imports, at any depth (lazy imports count)."""
    out: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def test_no_module_imports_a_higher_layer() -> None:
    found = modules()
    upward = []
    for module, path in found.items():
        for target in sorted(imported(path, module, set(found))):
            if layer(target) > layer(module):
                upward.append(f"{module} ({NAMES[layer(module)]}) imports {target} ({NAMES[layer(target)]})")
    assert upward == [], "\n".join(upward)


def test_reports_import_only_the_core_and_the_outcomes() -> None:
    found = modules()
    reports = [m for m in found if m == REPORTS or m.startswith(REPORTS + ".")]
    assert len(reports) > 1
    wrong = [f"{module} imports {target}" for module in reports
             for target in sorted(imported(found[module], module, set(found)))
             if target not in REPORTS_MAY_IMPORT and target not in reports]
    assert wrong == [], "\n".join(wrong)


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    def alone(module: str) -> str | None:
        done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True)
        return None if done.returncode == 0 else f"{module}: {done.stderr.strip().splitlines()[-1]}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [f for f in pool.map(alone, [m for m in modules() if m != "shadow.__main__"]) if f]
    assert failures == [], "\n".join(failures)


def test_the_readme_layout_names_every_module() -> None:
    """The README's "Layout" section is the map a newcomer reads: every module of the three packages is on it
    (by its file name, or its path from the repository or from its package)."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]

    def named(path: Path, package: str) -> bool:
        spellings = (path.name, path.relative_to(ROOT).as_posix(), path.relative_to(ROOT / package).as_posix())
        return any(f"`{spelling}`" in layout for spelling in spellings)

    missing = [str(path.relative_to(ROOT)) for package in ("shadow", "adapters", "snapshots")
               for path in sorted((ROOT / package).rglob("*.py")) if path.name != "__init__.py"
               and not named(path, package)]
    assert not missing, f"the README's Layout section does not name: {', '.join(missing)}"


def test_no_core_or_orchestrator_module_names_a_kind() -> None:
    """What a kind does is asked of the kind (``adapters.REGISTRY``, its capabilities): no module of the core or
    the orchestrator imports a kind's package or compares against a kind's name. The registry (adapters) and the
    front ends (a demo on PostgreSQL, the Alembic/Django front ends, the shadow_db fixture) may."""
    known = set(modules())
    found = []
    for module, path in modules().items():
        if layer(module) not in (0, 2):
            continue
        for name in imported(path, module, known):
            if name.split(".")[:2] in [["adapters", kind] for kind in KINDS]:
                found.append(f"{module} imports {name}")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in KINDS:
                found.append(f"{module}:{node.lineno} names the kind {node.value!r}")
    assert not found, "\n".join(found)


def test_modules_and_functions_stay_small() -> None:
    """A module is read in one sitting and a function on one screen: at most ~400 lines (420) per module of the
    three packages, 60 per function (its decorators and docstring included)."""
    too_long = []
    for module, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 420:
            too_long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno is not None and node.end_lineno - first + 1 > 60:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: "
                                    f"{node.end_lineno - first + 1} lines")
    assert not too_long, "\n".join(too_long)
