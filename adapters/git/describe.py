"""What a reviewer needs beside a git change set: the commits a ref gained, and unified diffs of small text
files."""

from __future__ import annotations

import difflib

from adapters.git.repo import Git
from shadow.changes import Change

CONTENT_DIFF_LIMIT = 64 * 1024  # bytes: text files up to this size get a unified diff in the report
DIFF_LINES = 100
DIFF_FILES = 200  # content diffs for at most this many files per change set
MAX_COMMITS = 20


def describe_changes(changes: list[Change], git: Git) -> list[Change]:
    """Add what a reviewer needs: the commits a ref gained, and unified diffs of small text files."""
    known_before = [c.detail["from"] for c in changes if c.kind == "ref" and c.detail.get("from")]
    diffs = 0
    for change in changes:
        if change.kind == "ref" and change.name != "HEAD" and change.detail.get("to"):
            _describe_ref(change, git, known_before)
        elif change.kind == "file" and diffs < DIFF_FILES:
            lines = _content_diff(change, git)
            if lines is not None:
                change.detail["content_diff"] = lines
                diffs += 1
    return changes


def _describe_ref(change: Change, git: Git, known_before: list[str]) -> None:
    new, old = change.detail["to"], change.detail.get("from")
    if not git.has_object(new):
        change.detail["commits"] = None
        change.detail["note"] = "not in this repository: pushed from elsewhere"
        return
    exclude = [f"^{s}" for s in dict.fromkeys(known_before + ([old] if old else [])) if git.has_object(s)]
    log = git.out("log", "--format=%H%x00%s", f"-{MAX_COMMITS + 1}", new, *exclude)
    commits = [dict(zip(("sha", "subject"), line.split("\0", 1), strict=True)) for line in log.splitlines()]
    change.detail["commits"] = commits[:MAX_COMMITS] + ([{"sha": "…", "subject": "more"}]
                                                        if len(commits) > MAX_COMMITS else [])
    if old and git.has_object(old):
        change.detail["forced"] = not git.is_ancestor(old, new)
    # What the ref's commit holds: commit ids differ between the rehearsal and production, their trees do not
    # when the action did the same (shadow.judge.compare_change_sets compares them).
    tree = git.run("rev-parse", "-q", "--verify", f"{new}^{{tree}}", check=False)
    if tree.returncode == 0:
        change.detail["tree"] = tree.stdout.decode().strip()


def _content_diff(change: Change, git: Git) -> list[str] | None:
    detail = change.detail
    mode = detail["mode"]["to"] if change.op == "modify" and "mode" in detail else detail.get("mode")
    if change.op == "delete" or mode in ("120000", "160000"):
        return None
    if change.op == "modify" and "blob" not in detail:
        return None
    new_path = git.cwd / change.name
    try:
        if new_path.is_symlink() or new_path.stat().st_size > CONTENT_DIFF_LIMIT:
            return None
        new = new_path.read_bytes()
    except OSError:
        return None
    old = b""
    if change.op == "modify" and detail["blob"]["from"]:
        proc = git.run("cat-file", "blob", detail["blob"]["from"], check=False)
        if proc.returncode != 0 or len(proc.stdout) > CONTENT_DIFF_LIMIT:
            return None
        old = proc.stdout
    if b"\0" in old[:8000] or b"\0" in new[:8000]:
        detail["binary"] = True
        return None
    try:
        old_text, new_text = old.decode("utf-8"), new.decode("utf-8")
    except UnicodeDecodeError:
        detail["binary"] = True
        return None
    lines = list(difflib.unified_diff(old_text.splitlines(), new_text.splitlines(),
                                      "/dev/null" if change.op == "add" else f"a/{change.name}",
                                      f"b/{change.name}", lineterm=""))
    if len(lines) > DIFF_LINES:
        lines = lines[:DIFF_LINES] + [f"… {len(lines) - DIFF_LINES} more lines"]
    return lines or None
