"""Single definitions of a checkpoint's ``pg_dump`` archive, picked by what they are — the SQL that puts one table,
one index or one constraint back as the checkpoint had it (for :mod:`adapters.postgres.undo_definitions`).

An entry is named as ``pg_restore -l`` lists it: ``[description, schema, tag]``, e.g. ``["INDEX", "public",
"users_email"]``, ``["CONSTRAINT", "public", "users users_pkey"]``, ``["COMMENT", "public", 'COLUMN "My T".a']``.
Tags are what pg_dump wrote: raw names for the objects themselves (a table, ``table constraint``), quoted ones in
comments and privileges. The listing's last word is the owner; a name with a space in it is matched whole, because
the entry's schema and tag are compared as a prefix, never split on spaces.

Asking for an entry the archive does not hold is not an error (a column without a default has no ``DEFAULT``
entry): callers ask for every entry an object *may* have, and verify the result against the checkpoint's
observation afterwards.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.postgres.binaries import ClientTools
from adapters.postgres.diff import split_name
from adapters.postgres.dump import _env, copy_section, table_data_files
from shadow.errors import RestoreFailed

LINE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")  # "2406; 1259 16396 INDEX public my_a owner"


def listing(binaries: ClientTools, archive: Path) -> list[str]:
    """The archive's table of contents, one entry per line (comments left out)."""
    toc = subprocess.run([*binaries.argv("pg_restore", [archive.parent]), "-l", str(archive)],
                         capture_output=True, text=True, env=_env({}))
    if toc.returncode != 0:
        raise RestoreFailed(f"pg_restore could not read the checkpoint archive: {toc.stderr.strip()[:500]}")
    return [line for line in toc.stdout.splitlines() if LINE.match(line)]


def matches(line: str, entry: list[str]) -> bool:
    """Whether listing line ``line`` is entry ``[description, schema, tag]`` (of any owner)."""
    m = LINE.match(line)
    if m is None:
        return False
    desc, schema, tag = entry
    prefix = f"{desc} {schema or '-'} "
    rest = m[4]
    if not rest.startswith(prefix):
        return False
    named = rest[len(prefix):]
    return named.rsplit(" ", 1)[0] == tag if " " in named else named == tag


def pick(lines: list[str], wanted: list[list[str]]) -> list[str]:
    """The lines of ``lines`` that are one of the ``wanted`` entries, in the archive's order (pg_restore's own
    order of creation)."""
    by_desc: dict[str, list[list[str]]] = {}
    for entry in wanted:
        by_desc.setdefault(entry[0], []).append(entry)
    out = []
    for line in lines:
        m = LINE.match(line)
        if m is None:
            continue
        for desc, entries in by_desc.items():
            if m[4].startswith(desc + " ") and any(matches(line, e) for e in entries):
                out.append(line)
                break
    return out


def object_id(line: str) -> int:
    """The OID pg_dump recorded for the entry on listing line ``line`` (a table's, for its ``TABLE DATA``)."""
    m = LINE.match(line)
    assert m is not None
    return int(m[3])


def script(binaries: ClientTools, archive: Path, lines: list[str], folder: Path, name: str) -> str:
    """The SQL that creates the entries on ``lines`` (no data), as one text to run in a transaction already open:
    psql's own commands (``\\restrict`` …) and the settings that would override the caller's timeouts are left out."""
    if not lines:
        return ""
    listed = folder / f"{name}.list"
    listed.write_text("".join(line + "\n" for line in lines))
    out = subprocess.run([*binaries.argv("pg_restore", [archive.parent, folder]), "--schema-only", "-L", str(listed),
                          "-f", "-", str(archive)], capture_output=True, text=True, env=_env({}))
    if out.returncode != 0:
        raise RestoreFailed(f"pg_restore could not read the checkpoint archive: {out.stderr.strip()[:500]}")
    kept = [line for line in out.stdout.splitlines()
            if not line.startswith(("\\restrict ", "\\unrestrict ")) and not re.match(r"SET (lock_timeout|statement_timeout|"
                                                           r"idle_in_transaction_session_timeout|"
                                                           r"transaction_timeout) = ", line)]
    return "\n".join(kept) + "\n"


def table_entries(mine: dict[str, dict[str, Any]], table: str) -> dict[str, Any]:
    """The entries that create ``table`` as the checkpoint had it, from ``mine``, its part of the checkpoint's
    observation (:func:`adapters.postgres.undo_definitions.definition`): ``pre`` (before its data), ``data``,
    ``post`` (after it). Foreign keys are not among them: they are re-added once every table is as it was."""
    schema, name = (raw(p) for p in split_name(table))
    quoted = split_name(table)[-1]
    pre: list[list[str]] = [["TABLE", schema, name]]
    post: list[list[str]] = [["ROW SECURITY", schema, name]]
    about = [f"TABLE {quoted}"]
    for col in mine.get("column", {}):
        pre.append(["DEFAULT", schema, f"{name} {raw(split_name(col)[-1])}"])
        about.append(f"COLUMN {quoted}.{split_name(col)[-1]}")
    for seq in mine.get("sequence", {}):
        s_schema, s_name = (raw(p) for p in split_name(seq))
        pre += [["SEQUENCE", s_schema, s_name], ["SEQUENCE OWNED BY", s_schema, s_name]]
        post += [[what, s_schema, f"SEQUENCE {split_name(seq)[-1]}"] for what in ("COMMENT", "ACL")]
    for kind, desc in (("index", "INDEX"), ("statistics", "STATISTICS")):
        for obj in mine.get(kind, {}):
            o_schema, o_name = (raw(p) for p in split_name(obj))
            post += [[desc, o_schema, o_name], ["COMMENT", o_schema, f"{desc} {split_name(obj)[-1]}"]]
    for kind, descs in (("constraint", ("CONSTRAINT", "CHECK CONSTRAINT")), ("trigger", ("TRIGGER",)),
                        ("rule", ("RULE",))):
        for obj, props in mine.get(kind, {}).items():
            if props.get("constraint_type") == "foreign key":
                continue
            part = split_name(obj)[-1]
            post += [[desc, schema, f"{name} {raw(part)}"] for desc in descs]
            post.append(["COMMENT", schema, f"{descs[0].split()[-1]} {part} ON {quoted}"])
    for policy in ((mine["table"].get(table) or {}).get("policies") or {}):
        post += [["POLICY", schema, f"{name} {raw(policy)}"], ["COMMENT", schema, f"POLICY {policy} ON {quoted}"]]
    post += [[what, schema, tag] for what in ("COMMENT", "ACL", "SECURITY LABEL") for tag in about]
    return {"pre": pre, "data": ["TABLE DATA", schema, name], "post": post}


def raw(part: str) -> str:
    """A name part as the catalog quoted it (``"My T"``), unquoted as pg_dump's tags write it (``My T``)."""
    return part[1:-1].replace('""', '"') if part.startswith('"') else part


@dataclass
class Scripts:
    """What re-creating one table runs (:func:`adapters.postgres.undo_definitions.recreate`)."""

    pre: str  # its definition: the table, its defaults and own sequences
    post: str  # what follows its data: indexes, constraints but foreign keys, triggers, policies, comments, grants
    data: Any  # copy_section's (columns, lines) of its rows, or None: the archive holds none


def scripts_for(binaries: ClientTools, archive: Path, recreate: dict[str, Any], folder: Path) -> dict[str, Scripts]:
    """The :class:`Scripts` of each table of an undo record's ``recreate`` (its ``entries``), read from the
    checkpoint's archive."""
    if not recreate:
        return {}
    lines = listing(binaries, archive)
    out = {}
    for n, (table, entry) in enumerate(sorted(recreate.items())):
        wanted = entry["entries"]
        data = pick(lines, [wanted["data"]])
        files = table_data_files(binaries, archive, [object_id(data[0])], folder) if data else {}
        out[table] = Scripts(script(binaries, archive, pick(lines, wanted["pre"]), folder, f"pre-{n}"),
                             script(binaries, archive, pick(lines, wanted["post"]), folder, f"post-{n}"),
                             copy_section(next(iter(files.values()))) if files else None)
    return out
