"""What every ``shadow`` verb shares: its context (settings, consoles), the common options, the one broad catch
that maps errors to exit codes (:func:`_guard`), and the progress lines a run prints.

The orchestrator is imported on first use (``runmod``), not when the CLI starts: ``shadow --help`` and ``shadow
lint`` never pay for it.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import click
from rich.console import Console
from rich.markup import escape

from shadow.errors import EXIT_INFRA, ShadowError, cap
from shadow.locks import DEFAULT_LOCK_TIMEOUT
from shadow.settings import Settings


class _OnFirstUse:
    """A module imported when first used, not when the CLI starts: `shadow --help` and `shadow lint` never pay for
    the orchestrator (and, through the registry, no kind's libraries until a plan names the kind)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


if TYPE_CHECKING:
    from shadow import run as runmod
else:
    runmod = _OnFirstUse("shadow.run")

PLAN_OPTION = click.option("-f", "--file", "plan_file", default="shadow.yaml", show_default=True,
                           type=click.Path(dir_okay=False, path_type=Path), help="The plan file.")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (for machines).")


def _remember_quiet(click_ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx = click_ctx.find_object(Ctx)
    if ctx is not None:
        ctx.quiet = value
    return value


QUIET_OPTION = click.option("-q", "--quiet", is_flag=True, callback=_remember_quiet,
                            help="Only the verdict and where the report is: no progress, no tables.")
LOCK_TIMEOUT_OPTION = click.option(
    "--lock-timeout", type=click.FloatRange(min=0), default=DEFAULT_LOCK_TIMEOUT, show_default=True,
    metavar="SECONDS", help="How long to wait for another run holding a target's lock; 0 refuses at once (exit 3).")


class Ctx:
    def __init__(self, state_dir: str | None, show_traceback: bool) -> None:
        self.settings = Settings.from_env(state_dir=state_dir)
        self.traceback = show_traceback
        self.quiet = False
        # https://no-color.org: NO_COLOR set and not empty means no colour; nor when the stream is not a terminal.
        plain = bool(self.settings.environ.get("NO_COLOR"))
        self.err = Console(stderr=True, highlight=False, soft_wrap=True, color_system=_colours(sys.stderr, plain))
        self.out = Console(highlight=False, soft_wrap=True, color_system=_colours(sys.stdout, plain))


def _colours(stream: Any, plain: bool) -> Literal["auto"] | None:
    return None if plain or not stream.isatty() else "auto"


# Every error line is cut to this length: a message quoting a huge value must not become a huge line.
MAX_ERROR_CHARS = 2000


def _fail(ctx: Ctx, exc: BaseException, code: int) -> NoReturn:
    if ctx.traceback:
        traceback.print_exception(exc)
    ctx.err.print(f"[bold red]shadow: error:[/] {escape(cap(str(exc), MAX_ERROR_CHARS))}")
    sys.exit(code)


def _guard(ctx: Ctx, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ShadowError as exc:
        _fail(ctx, exc, exc.exit_code)
    except KeyboardInterrupt:
        ctx.err.print("[bold red]shadow: interrupted[/] (shadows were removed; see `shadow runs`)")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one broad catch: map to exit 3, never a bare traceback
        if ctx.traceback:
            traceback.print_exception(exc)
        ctx.err.print(f"[bold red]shadow: internal error:[/] {escape(type(exc).__name__)}: "
                      f"{escape(cap(str(exc), MAX_ERROR_CHARS))} "
                      "(run with --traceback for details)")
        sys.exit(EXIT_INFRA)


def _progress(ctx: Ctx, quiet: bool) -> runmod.Progress:
    started = time.monotonic()

    def show(event: str, text: str) -> None:
        if quiet:
            return
        style = {"start": "dim", "done": "green", "failed": "red", "info": "cyan"}.get(event, "")
        mark = {"start": "…", "done": "✓", "failed": "✗", "info": "•"}.get(event, " ")
        if event == "start":
            return  # only finished steps are printed; they carry the elapsed time
        ctx.err.print(f"[dim]{time.monotonic() - started:6.1f}s[/] [{style}]{mark} {escape(text)}[/]")
    return show
