"""``pg_dump`` archives short of restoring one whole: making one (``pg_dump`` in the background) and reading
single entries back from one (the sequence values it recorded, a table's ``COPY`` data), with the environment the
client tools are given. Restoring an archive whole is :mod:`adapters.postgres.restore`.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from adapters import tempdirs
from adapters.postgres.binaries import ClientTools
from adapters.postgres.dsn import libpq_env
from shadow.errors import InfrastructureError, RestoreFailed

# What the client tools may see of our environment: libpq's TLS settings and, for container tools, the Docker
# client's. Never the caller's PG* variables — the DSN says where to connect.
KEEP_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "PGSSLROOTCERT", "DOCKER_HOST", "DOCKER_CONTEXT",
            "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY", "DOCKER_CONFIG")


def _env(extra: dict[str, str]) -> dict[str, str]:
    import os

    base = {k: v for k, v in os.environ.items() if k in KEEP_ENV}
    return {**base, **extra}


def run_pg_dump(binaries: ClientTools, dsn: str, out: Path, snapshot: str | None) -> None:
    with pg_dump_started(binaries, dsn, out, snapshot) as dump:
        dump.wait()


class Dump:
    """A ``pg_dump`` running in the background (:func:`pg_dump_started`)."""

    def __init__(self, proc: subprocess.Popen[bytes], stderr: IO[bytes]) -> None:
        self._proc = proc
        self._stderr = stderr

    def failed(self) -> bool:
        """Whether it has ended, and not well (without waiting)."""
        return self._proc.poll() not in (None, 0)

    def wait(self) -> None:
        """Wait until it ends; raise :class:`InfrastructureError` with its last words when it failed."""
        code = self._proc.wait()
        if code != 0:
            self._stderr.seek(0)
            message = self._stderr.read().decode(errors="replace").strip().splitlines()
            raise InfrastructureError("pg_dump failed: " + ("; ".join(message[-3:]) if message else f"exit {code}"))

    def stop(self) -> None:
        """End it if it still runs, and wait until it is gone. SIGTERM first: a ``docker run`` client
        (:class:`ContainerTools`) passes it on to the pg_dump in its container, which SIGKILL would leave running."""
        if self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


@contextmanager
def pg_dump_started(binaries: ClientTools, dsn: str, out: Path, snapshot: str | None) -> Iterator[Dump]:
    """Start ``pg_dump -Fc -Z 1`` of ``dsn`` (from the exported ``snapshot``) into ``out``, and yield it while it
    runs; whatever ends the block, the process is ended and waited for before this returns."""
    conninfo, env = libpq_env(dsn)
    args = [*binaries.argv("pg_dump", [out.parent]), "--no-password", "-Fc", "-Z", "1", "-f", str(out), "-d", conninfo]
    if snapshot:
        args.append(f"--snapshot={snapshot}")
    # stderr to a file, not a pipe nobody reads while the caller works: a chatty pg_dump must not block on it.
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                env=_env(env))
        dump = Dump(proc, stderr)
        try:
            yield dump
        finally:
            dump.stop()


SEQUENCE_SET_ENTRY = re.compile(r"^\d+; \d+ \d+ SEQUENCE SET ")
SETVAL = re.compile(r"^SELECT pg_catalog\.setval\('((?:[^']|'')*)', (-?\d+), (true|false)\);$", re.M)


def dumped_sequences(binaries: ClientTools, archive: Path, run_id: str | None = None) -> dict[str, tuple[int, bool]]:
    """Each sequence's value as the archive records it: ``{name: (last_value, is_called)}``, names as the
    catalog quotes them. Sequences are not transactional, so ``pg_dump`` reads them at its own moment, not in
    the exported snapshot; what it recorded is what a restore puts back, and so what the checkpoint must say.
    Only the archive's table of contents and its SEQUENCE SET entries are read (cost: the number of sequences)."""
    toc = subprocess.run([*binaries.argv("pg_restore", [archive.parent]), "-l", str(archive)],
                         capture_output=True, text=True, env=_env({}))
    if toc.returncode != 0:
        raise InfrastructureError(f"pg_restore could not read the checkpoint archive: {toc.stderr.strip()[:500]}")
    entries = [line for line in toc.stdout.splitlines() if SEQUENCE_SET_ENTRY.match(line)]
    if not entries:
        return {}
    with tempdirs.tempdir("restore", run_id) as folder:
        listing = folder / "sequences.list"
        listing.write_text("".join(line + "\n" for line in entries))
        out = subprocess.run([*binaries.argv("pg_restore", [archive.parent, folder]), "-L", str(listing), "-f", "-",
                              str(archive)], capture_output=True, text=True, env=_env({}))
    if out.returncode != 0:
        raise InfrastructureError(f"pg_restore could not read the checkpoint archive: {out.stderr.strip()[:500]}")
    return {m[1].replace("''", "'"): (int(m[2]), m[3] == "true") for m in SETVAL.finditer(out.stdout)}


TABLE_DATA_ENTRY = re.compile(r"^\d+; 0 (\d+) TABLE DATA ")  # "3355; 0 16388 TABLE DATA public t owner"


def table_data_files(binaries: ClientTools, archive: Path, oids: list[int], folder: Path) -> dict[int, Path]:
    """Each table's ``COPY … FROM stdin`` section from the archive, one file per table in ``folder``:
    ``{table oid: file}``. Tables are found by the OID pg_dump recorded for them (its TOC names are unquoted, so
    a name with a space or a dot cannot be told apart; the OID can, and a table the run changed row by row keeps
    its OID). A table the archive holds no data for (a partitioned parent, a foreign table) is left out."""
    toc = subprocess.run([*binaries.argv("pg_restore", [archive.parent]), "-l", str(archive)],
                         capture_output=True, text=True, env=_env({}))
    if toc.returncode != 0:
        raise RestoreFailed(f"pg_restore could not read the checkpoint archive: {toc.stderr.strip()[:500]}")
    entries = {int(m[1]): line for line in toc.stdout.splitlines() if (m := TABLE_DATA_ENTRY.match(line))}
    files: dict[int, Path] = {}
    for oid in sorted(set(oids) & set(entries)):
        listing, out = folder / f"{oid}.list", folder / f"{oid}.copy"
        listing.write_text(entries[oid] + "\n")
        proc = subprocess.run([*binaries.argv("pg_restore", [archive.parent, folder]), "--data-only", "-L",
                               str(listing), "-f", str(out), str(archive)], capture_output=True, text=True,
                              env=_env({}))
        if proc.returncode != 0:
            raise RestoreFailed(f"pg_restore could not read the checkpoint archive: {proc.stderr.strip()[:500]}")
        files[oid] = out
    return files


_IDENT = rb'(?:"(?:[^"]|"")*"|[^\s",.()]+)'
COPY_HEADER = re.compile(rb"^COPY " + _IDENT + rb"\." + _IDENT + rb" \((" + _IDENT + rb"(?:, " + _IDENT
                         + rb")*)\) FROM stdin;\r?\n$")


def copy_section(path: Path) -> tuple[list[str], Iterator[bytes]] | None:
    """(column names, the data lines up to the end marker) of the one COPY section of a file
    :func:`table_data_files` wrote; None when it has none (a table without columns)."""
    stream = path.open("rb")
    for line in stream:
        header = COPY_HEADER.match(line)
        if header:
            columns = [_unquote(name.decode()) for name in re.findall(_IDENT, header[1])]
            return columns, _data_lines(stream)
    stream.close()
    return None


def _data_lines(stream: IO[bytes]) -> Iterator[bytes]:
    with stream:
        for line in stream:
            if line.rstrip(b"\r\n") == b"\\.":
                return
            yield line
    raise RestoreFailed("the checkpoint archive's table data ends before its end marker")


def _unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name
