"""Finding PostgreSQL server and client binaries.

Search order: ``SHADOW_PG_BINDIR`` (passed in by the caller, never read here at import), ``PATH``,
``pg_config --bindir``, ``/usr/lib/postgresql/<major>/bin`` (Debian/Ubuntu keep them off ``PATH``),
``/usr/pgsql-<major>/bin`` (RPM), and last the optional ``pgserver`` wheel, which ships PostgreSQL 16
binaries so the demo runs on a machine with neither PostgreSQL nor Docker.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadow.errors import BinaryNotFound

TOOLS = ("initdb", "pg_ctl", "postgres", "pg_dump", "pg_restore", "psql")


@dataclass(frozen=True)
class PgBinaries:
    """Local binaries in one directory."""

    bindir: Path
    major: int

    def path(self, tool: str) -> str:
        return str(self.bindir / tool)

    def argv(self, tool: str, mounts: Sequence[Path] = ()) -> list[str]:
        """The command that runs ``tool``; ``mounts`` are the paths it reads or writes (for containers)."""
        return [self.path(tool)]


@dataclass(frozen=True)
class ContainerTools:
    """Client tools run inside a throwaway container of ``image`` — when production's server is newer than every
    local ``pg_dump``. ``--network host`` lets the tool reach the same addresses as this process; the files it
    reads or writes are mounted at the same paths; PGPASSWORD is passed by name, never on the command line.

    Both need the engine on this machine: made for an engine elsewhere (``DOCKER_HOST=tcp://…``, ``ssh://…``:
    :func:`adapters.docker.engine_site`) it raises :class:`BinaryNotFound` instead — there the dump would be
    written on the engine's disk and production reached from the engine's network."""

    image: str
    major: int

    def __post_init__(self) -> None:
        from adapters.docker import this_engine

        site = this_engine()
        if not site.shares_files:
            raise BinaryNotFound(
                f"production runs PostgreSQL {self.major}, newer than every local pg_dump, and the fallback — "
                f"pg_dump/pg_restore in a container of {self.image!r}, reading and writing the dump on this "
                f"machine's disk over this machine's network — needs a Docker engine on this machine, not "
                f"{site.describe()}: install postgresql-client-{self.major} (or newer) here, or set SHADOW_PG_BINDIR"
            )

    def argv(self, tool: str, mounts: Sequence[Path] = ()) -> list[str]:
        volumes = [arg for m in sorted({str(Path(p)) for p in mounts}) for arg in ("-v", f"{m}:{m}")]
        from adapters.docker import labels

        tags = [arg for k, v in labels("client-tool", "client-tool").items() for arg in ("--label", f"{k}={v}")]
        return ["docker", "run", "--rm", "-i", "--network", "host", "-e", "PGPASSWORD", *tags, *volumes,
                "--entrypoint", tool, self.image]


ClientTools = PgBinaries | ContainerTools


def _version_of(bindir: Path) -> int | None:
    exe = bindir / "pg_dump"
    if not exe.is_file():
        return None
    try:
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(match.group(1)) if match else None


def _candidates(explicit: str | None) -> list[Path]:
    if explicit:  # SHADOW_PG_BINDIR: the user chose; look nowhere else
        return [Path(explicit)]
    dirs: list[Path] = []
    on_path = shutil.which("pg_dump")
    if on_path:
        dirs.append(Path(on_path).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip()
            if out:
                dirs.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    dirs += [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    dirs += [Path(p) for p in glob.glob("/usr/pgsql-*/bin")]
    # Optional extra (pip install 'shadow[embedded]'): located, not imported — importing it has side effects.
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin:
        dirs.append(Path(spec.origin).parent / "pginstall" / "bin")
    return dirs


@functools.lru_cache(maxsize=8)
def find_binaries(explicit: str | None = None, need_server: bool = True) -> list[PgBinaries]:
    """Every complete set of binaries found, newest major first."""
    found: dict[Path, PgBinaries] = {}
    tools = TOOLS if need_server else ("pg_dump", "pg_restore", "psql")
    for d in _candidates(explicit):
        d = d.resolve() if d.exists() else d
        if d in found or not all((d / t).is_file() for t in tools):
            continue
        major = _version_of(d)
        if major is not None:
            found[d] = PgBinaries(d, major)
    return sorted(found.values(), key=lambda b: -b.major)


def binaries_for(server_major: int | None = None, explicit: str | None = None) -> PgBinaries:
    """The binaries to use for a server of ``server_major``: client tools must be at least as new."""
    available = find_binaries(explicit)
    if not available and explicit:
        raise BinaryNotFound(f"SHADOW_PG_BINDIR={explicit} does not hold PostgreSQL binaries ({', '.join(TOOLS)})")
    if not available:
        raise BinaryNotFound(
            "no PostgreSQL binaries found (looked on PATH, pg_config, /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin "
            "and the pgserver wheel); install PostgreSQL (e.g. apt-get install postgresql) or "
            "pip install 'shadow[embedded]', or set SHADOW_PG_BINDIR"
        )
    if server_major is None:
        return available[0]
    usable = [b for b in available if b.major >= server_major]
    if not usable:
        have = ", ".join(f"{b.major} ({b.bindir})" for b in available)
        raise BinaryNotFound(
            f"production runs PostgreSQL {server_major} but the newest local client binaries are {have}; "
            f"pg_dump must be at least as new as the server: install postgresql-client-{server_major} "
            f"(or newer) or set SHADOW_PG_BINDIR"
        )
    # The closest version that is new enough gives the most faithful shadow.
    return min(usable, key=lambda b: b.major)


def configured_bindir(settings: Any) -> str | None:
    """``SHADOW_PG_BINDIR``: the directory of the PostgreSQL binaries to use, instead of searching for them."""
    return settings.environ.get("SHADOW_PG_BINDIR") or None
