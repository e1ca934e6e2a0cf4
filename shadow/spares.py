"""Readying warm copies between CLI runs.

A long-lived process (the agent gateway) clones each idle warm copy's next shadow while the agent reads its answer
(:meth:`adapters.Kind.prepare_warm`), so the next run renames a database instead of copying one. A CLI run ends
with its process; so, when it used a warm copy, it leaves that work to a detached process of its own
(``shadow prepare-warm``, hidden): it takes each idle copy's lock, clones ahead, and exits. A run that wants a copy
while that process still works on it stops it (SIGTERM: the copy under way is cancelled, and a spare is whole or
absent) and waits a moment for the lock instead of going cold. ``SHADOW_WARM_SPARES=0`` turns it off.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from shadow.settings import Settings


def wanted(settings: Settings) -> bool:
    """Whether a CLI run should leave a preparer behind: it is not turned off and warm copies are kept."""
    if settings.environ.get("SHADOW_WARM_SPARES", "1") == "0":
        return False
    return settings.warm_dir.is_dir() and any(settings.warm_dir.rglob("*.json"))


def start_detached(settings: Settings) -> None:
    """Start ``shadow prepare-warm`` for ``settings``' state dir in a session of its own, its output discarded;
    best effort (a copy not readied is cloned on the next run's path, as before)."""
    try:
        subprocess.Popen([sys.executable, "-m", "shadow.cli", "--state-dir", str(settings.state_dir), "prepare-warm"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, env=dict(settings.environ), close_fds=True)
    except OSError:
        pass


def prepare(settings: Settings) -> int:
    """Ready every kind's idle warm copies until done or SIGTERM; how many things were made. The work runs in a
    thread and SIGTERM is taken by this one with ``sigwait`` — never in a signal handler, which could interrupt
    the worker holding the lock :meth:`~adapters.Interrupt.set` takes."""
    from adapters import REGISTRY, Interrupt

    interrupt = Interrupt(by_signal=True)  # a run that wants a copy may stop this process with SIGTERM
    made = [0]

    def work() -> None:
        for kind in REGISTRY.values():
            try:
                made[0] += kind.prepare_warm(settings, interrupt)
            except Exception:  # noqa: BLE001 - an optimisation; the next lease checks the copy anyway
                pass

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the worker inherits the mask: only we take it
    worker = threading.Thread(target=work, name="prepare-warm", daemon=True)
    worker.start()
    while worker.is_alive():
        if signal.sigtimedwait({signal.SIGTERM}, 0.05) is not None:
            interrupt.set()
            break
    worker.join()
    return made[0]


__all__ = ["prepare", "start_detached", "wanted"]
