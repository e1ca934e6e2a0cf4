"""The README's first command: the demo runs end to end on the embedded default (no Docker)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _demo(tmp_path: Path, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env.update(extra)
    return subprocess.run([sys.executable, "-m", "shadow.cli", "--state-dir", str(tmp_path / "state"), "demo"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_demo_applies_the_safe_migration_and_refuses_the_destructive_one(tmp_path):
    r = _demo(tmp_path, {})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "APPLIED" in r.stdout
    assert "REFUSED" in r.stdout
    assert "drop column public.orders.placed_at" in r.stdout
    assert "production untouched" in r.stdout
    assert len(list((tmp_path / "state" / "runs").iterdir())) == 2


@pytest.mark.skipif(importlib.util.find_spec("pgserver") is None, reason="the pgserver extra is not installed")
def test_demo_runs_on_the_pgserver_wheel_alone(tmp_path):
    spec = importlib.util.find_spec("pgserver")
    assert spec is not None and spec.origin
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    r = _demo(tmp_path, {"SHADOW_PG_BINDIR": str(bindir), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PostgreSQL 16" in r.stdout
