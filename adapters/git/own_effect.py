"""A git apply among other writers: which of production's changes are the action's own, and undoing only those.

Other people keep pushing to the repository while a run works. The action's footprint is what its rehearsal
changed: the refs it moved (locally and on the remote), HEAD, and the working copy's files (the working copy is
the action's to work in). What git reads — a fetch, a merge of another branch — is not measured: a ref the action
only read that someone moved meanwhile is caught by verification instead, which compares the trees the action's
refs end at (:func:`shadow.judge.compare_change_sets`) and the files of the working copy.

Just before the action, production's refs are kept; after it, the refs in the footprint are the action's change
set, and any other ref that moved meanwhile is another writer's — reported, never blamed on the action, never
undone. The undo record names each ref the run moved, where the run left it and where the checkpoint had it;
undoing moves exactly those back (``rollback: revert`` by a revert commit, ``reset`` by a leased force push) and
puts the working copy back. A ref someone moved again since is a conflict, refused unless forced.
"""

from __future__ import annotations

from typing import Any

from adapters import Checkpoint, sort_undo
from adapters.git.describe import describe_changes
from adapters.git.observe import diff, local_refs
from adapters.git.repo import Git
from adapters.git.restore import restore_checkpoint
from adapters.git.verify import restore_problems, reverted
from shadow.changes import Change

VERSION = 1


def footprint(rehearsed: list[Change]) -> list[str]:
    """The refs the rehearsal moved, HEAD always."""
    return sorted({"HEAD"} | {c.name for c in rehearsed if c.kind == "ref"})


def _only(observation: dict[str, Any], refs: set[str]) -> dict[str, Any]:
    objects = observation["objects"]
    return {**observation, "objects": {"file": objects["file"],
                                       "ref": {n: s for n, s in objects["ref"].items() if n in refs}}}


def own_effect(git: Git, before: dict[str, Any], checkpoint: Checkpoint, now: dict[str, Any],
               strict: bool) -> tuple[list[Change], list[Change], dict[str, Any]]:
    """(the action's own change set since the checkpoint, what others changed during the apply, the undo record)."""
    refs_before: dict[str, str] = before["refs"]
    refs_now = now["objects"]["ref"]
    moved = {n for n in set(refs_before) | set(refs_now) if refs_before.get(n) != refs_now.get(n)}
    ours = set(before["footprint"]) | (moved if strict else set())
    at_checkpoint = checkpoint.observation["objects"]["ref"]
    changes = describe_changes(diff(_only(checkpoint.observation, ours), _only(now, ours)), git)
    others_before = {"objects": {"file": {}, "ref": {n: refs_before[n] for n in moved - ours if n in refs_before}}}
    others_now = {"objects": {"file": {}, "ref": {n: refs_now[n] for n in moved - ours if n in refs_now}}}
    others = diff(others_before, others_now)
    record = {"version": VERSION, "kind": "git",
              "refs": {n: {"left": refs_now.get(n), "checkpoint": at_checkpoint.get(n)} for n in sorted(ours)
                       if refs_now.get(n) != at_checkpoint.get(n)}}
    return changes, others, record


def _back(git: Git, current: str | None, want: str | None, mode: str, name: str) -> bool:
    """The ref is where the checkpoint had it — or, reverted, a descendant with the checkpoint's tree."""
    return current == want or (mode == "revert" and reverted(git, name, want, current))


def undo(git: Git, record: dict[str, Any], checkpoint: Checkpoint, manifest: dict[str, Any], now: dict[str, Any],
         mode: str, remote: str | None, target: str, observe: Any,
         force: bool) -> tuple[list[str], list[str], list[str]]:
    """Move back exactly the refs the run moved, and the working copy: (conflicts, done, problems)."""
    refs: dict[str, dict[str, Any]] = record.get("refs") or {}
    have = now["objects"]["ref"]
    todo, conflicts = sort_undo(refs, lambda n: _back(git, have.get(n), refs[n]["checkpoint"], mode, n),
                                lambda n: have.get(n) == refs[n]["left"],
                                lambda n: f"ref {n}: moved since the run left it ({_short(refs[n]['left'])} → now "
                                          f"{_short(have.get(n))})", force)
    if conflicts and not force:
        return conflicts, [], []
    for name in todo:  # forced over a push from elsewhere: its commits are fetched, to revert on top of them
        sha = have.get(name)
        if remote and ":" in name and sha and not git.has_object(sha):
            git.run("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", remote, name.split(":", 1)[1])
    want_refs = dict(have)
    for name in todo:
        if refs[name]["checkpoint"] is None:
            want_refs.pop(name, None)
        else:
            want_refs[name] = refs[name]["checkpoint"]
    want_refs["HEAD"] = checkpoint.observation["objects"]["ref"]["HEAD"]
    partial = Checkpoint(checkpoint.target, checkpoint.kind, checkpoint.run_id,
                         {**checkpoint.observation, "objects": {"file": checkpoint.observation["objects"]["file"],
                                                                "ref": want_refs}}, "", checkpoint.artifacts,
                         checkpoint.meta)
    tracking = dict(manifest["tracking"])
    if remote:  # remote-tracking refs follow only the remote branches put back; the others stay as they are now
        tracking = local_refs(git, (f"refs/remotes/{remote}",))
        for name in todo:
            if name.startswith(f"{remote}:refs/heads/"):
                ref = f"refs/remotes/{remote}/" + name.removeprefix(f"{remote}:refs/heads/")
                if ref in manifest["tracking"]:
                    tracking[ref] = manifest["tracking"][ref]
                else:
                    tracking.pop(ref, None)
    restore_checkpoint(git, partial, {**manifest, "tracking": tracking}, now, mode, remote, target)
    after = observe()
    scope = set(refs) | {"HEAD"}
    want, now_ = _only(checkpoint.observation, scope)["objects"], _only(after, scope)["objects"]
    problems = [] if want == now_ else restore_problems(git, want, now_, mode)
    done = [f"moved back {len(todo)} ref(s) the run moved" if todo else "", "put back the working copy"]
    return conflicts, [d for d in done if d], problems


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "absent"
