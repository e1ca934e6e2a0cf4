"""The temp dirs shadow makes, named and labelled so that ``shadow gc`` can tell whose they are.

Every one is ``<tmp>/shadow-<what>-<run id>-<random>`` (``what``: one of :data:`KINDS`; the run id as
``shadow.run.new_run_id`` makes it, ``20261202-055501-ab12cd``), and the ones made here also hold
``shadow-labels.json``: the labels a shadow container carries (``adapters.docker.labels``: run id, owning pid
and host). The name says which run a dir belongs to even when it was made elsewhere or its labels never got
written; the labels say whether the process that made it still runs.

A restore made without a run id (its caller did not know it) is ``shadow-restore-<random>``, and a migration
rehearsal's dump of production (``shadow alembic``/``shadow django`` run many plans, none of them its own) is
``shadow-dump-<random>``: their labels still name the owning process, which is how gc ties them to the runs that
process ran.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adapters.docker import labels
from snapshots import atomic_write_bytes

# home: an action's HOME · scratch: a container action's writable dir · restore: pg_restore's lists and scripts,
# a git restore's index · git: a git checkpoint's index files, a git shadow's clone · pg: a local cluster ·
# s3: an S3 shadow's request log · dump: production's pg_dump, copied into the working copy that `shadow alembic` and
# `shadow django` rehearse on (production's data: it must never outlive its process)
KINDS = ("home", "scratch", "restore", "git", "pg", "s3", "dump")
LEFTOVER_NAMES = {"pg": "cluster"}  # what `shadow gc` calls a leftover dir of this kind; any other is a "tempdir"
# A server runs in these: one without labels (being created, or an older shadow's) may still be in use, and gc
# never judges it by age.
LABELS_REQUIRED = ("pg",)
LABELS_FILE = "shadow-labels.json"
RUN_ID = r"\d{8}-\d{6}-[0-9a-f]{6}"
_NAME = re.compile(rf"shadow-(?P<what>{'|'.join(KINDS)})-(?:(?P<run>{RUN_ID})-)?")


def prefix(what: str, run_id: str | None) -> str:
    """The name a temp dir of kind ``what`` starts with: ``shadow-<what>-<run id>-`` (or without the run id)."""
    assert what in KINDS, what
    return f"shadow-{what}-{run_id}-" if run_id else f"shadow-{what}-"


def make(what: str, run_id: str | None, role: str | None = None, warm: str | None = None) -> Path:
    """A new private temp dir named after ``run_id`` and labelled with it and with this process (and ``warm``: the
    entry that keeps it after the run, :func:`adapters.docker.labels`)."""
    root = Path(tempfile.mkdtemp(prefix=prefix(what, run_id)))
    atomic_write_bytes(root / LABELS_FILE, json.dumps(labels(run_id or "", role or what, warm)).encode())
    return root


@contextmanager
def tempdir(what: str, run_id: str | None, role: str | None = None) -> Iterator[Path]:
    """:func:`make`, removed on the way out."""
    root = make(what, run_id, role)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def parse(name: str) -> tuple[str, str | None] | None:
    """``(what, run id or None)`` for a name shadow gives its temp dirs; None for any other name."""
    found = _NAME.match(name)
    return (found["what"], found["run"]) if found else None


def read_labels(root: Path) -> dict[str, str] | None:
    """The labels a temp dir was created with, or None (not written yet, or unreadable)."""
    try:
        found = json.loads((root / LABELS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else None
