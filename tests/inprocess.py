"""The real ``shadow`` entry point (``shadow.cli.main``) called in this process: a subprocess costs a second of
imports, which a corpus of a hundred inputs cannot afford. Output is captured; anything escaping ``main`` other
than ``SystemExit`` is rendered as a traceback into the captured text, so a test that forbids tracebacks catches it.
"""

from __future__ import annotations

import io
import os
import signal
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from shadow.cli import main
from tests.conftest import CliResult


def run_main(state_dir: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> CliResult:
    """``shadow --state-dir STATE_DIR ARGS…`` with ``env`` on top of this process's environment (minus SHADOW_*)."""
    saved_env, saved_cwd, saved_sigterm = dict(os.environ), os.getcwd(), signal.getsignal(signal.SIGTERM)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        for key in [k for k in os.environ if k.startswith("SHADOW_") and k != "SHADOW_POSTGRES_IMAGE"]:
            del os.environ[key]
        os.environ["SHADOW_BACKEND"] = "local"
        if os.environ.get("SHADOW_TEST_WARM"):
            os.environ["SHADOW_WARM"] = os.environ["SHADOW_TEST_WARM"]
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main(["--state-dir", str(state_dir), *args])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # noqa: BLE001 - an escaped exception is what the caller tests for
                traceback.print_exc()
                code = -1
    finally:
        signal.signal(signal.SIGTERM, saved_sigterm)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return CliResult(code, out.getvalue(), err.getvalue())
