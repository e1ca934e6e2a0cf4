"""The README's first command: the demo runs end to end on the embedded default (no Docker)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import CliResult, run_cli

ROOT = Path(__file__).resolve().parent.parent


def _demo(tmp_path: Path, extra: dict[str, str]) -> CliResult:
    return run_cli("demo", state=tmp_path / "state", cwd=tmp_path, backend=None, env=extra)


def test_demo_applies_the_safe_migration_and_refuses_the_destructive_one(tmp_path):
    """…while the shop's application keeps writing; then rolls the safe one back change by change, and nothing
    the application wrote is lost."""
    r = _demo(tmp_path, {})
    assert r.code == 0, r.out + r.err
    assert "APPLIED" in r.out
    assert "REFUSED" in r.out
    assert "drop column public.orders.placed_at" in r.out
    assert "production untouched" in r.out
    assert "RESTORED — the run's own change was undone and verified" in " ".join(r.out.split())
    assert r.out.count("every one is still there") == 2 and "SOME ARE MISSING" not in r.out
    assert len(list((tmp_path / "state" / "runs").iterdir())) == 3


@pytest.mark.skipif(importlib.util.find_spec("pgserver") is None, reason="the pgserver extra is not installed")
def test_demo_runs_on_the_pgserver_wheel_alone(tmp_path):
    spec = importlib.util.find_spec("pgserver")
    assert spec is not None and spec.origin
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    r = _demo(tmp_path, {"SHADOW_PG_BINDIR": str(bindir), "PATH": "/usr/bin:/bin"})
    assert r.code == 0, r.out + r.err
    assert "PostgreSQL 16" in r.out
