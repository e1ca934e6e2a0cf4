"""The environment variables shadow reads — all of them, in one place, only when asked."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


_IMAGE_VARIABLE = re.compile(r"SHADOW_([A-Z][A-Z0-9_]*)_IMAGE")


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    environ: Mapping[str, str] = field(default_factory=dict)
    backend: str | None = None  # SHADOW_BACKEND: overrides the plan's policy.backend (e.g. for a CI matrix)
    action_image: str = "python:3.12-slim"  # SHADOW_ACTION_IMAGE: for `isolation: container` without `image:`
    # SHADOW_<NAME>_IMAGE, by lower-case name: the image a kind's shadows use in the docker backend (image_for)
    images: Mapping[str, str] = field(default_factory=dict)
    warm: str | None = None  # SHADOW_WARM: overrides the plan's policy.warm (a duration, or "off")
    warm_max: int = 2  # SHADOW_WARM_MAX: how many warm servers a state dir keeps at most (adapters.postgres.warm)
    targets: Mapping[str, str] = field(default_factory=dict)  # target name → address to use instead (pytest)
    # SHADOW_STATE_URL: journal, run records, approvals and locks in a PostgreSQL schema (shadow.state) instead of
    # the state dir; the state dir stays this runner's working copy.
    state_url: str | None = None
    # SHADOW_STORE_URL: the checkpoint store in an S3 prefix (s3://bucket/prefix) instead of <state dir>/snapshots,
    # which is then this runner's verified cache of it.
    store_url: str | None = None
    # A CLI plan or apply, whose process ends with the run: what may outlive it without harm — removing a shadow's
    # container, 1.2 s at 1 GB — is left to a process of its own (adapters.docker_remove) instead of waited for.
    short_lived: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, state_dir: str | Path | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        chosen = state_dir or env.get("SHADOW_STATE_DIR") or ".shadow"
        return cls(
            state_dir=Path(chosen).absolute(),
            environ=env,
            backend=env.get("SHADOW_BACKEND") or None,
            action_image=env.get("SHADOW_ACTION_IMAGE") or "python:3.12-slim",
            images={found[1].lower(): value for key, value in env.items()
                    if value and (found := _IMAGE_VARIABLE.fullmatch(key))},
            warm=env.get("SHADOW_WARM") or None,
            warm_max=int(env["SHADOW_WARM_MAX"]) if env.get("SHADOW_WARM_MAX", "").isdigit() else 2,
            state_url=env.get("SHADOW_STATE_URL") or None,
            store_url=env.get("SHADOW_STORE_URL") or None,
        )

    def image_for(self, kind: str, default: str) -> str:
        """The image ``kind``'s shadows run in (docker backend): ``SHADOW_<KIND>_IMAGE``, else the kind's own
        ``default``."""
        return self.images.get(kind) or default

    @property
    def store_dir(self) -> Path:
        return self.state_dir / "snapshots"

    @property
    def warm_dir(self) -> Path:
        return self.state_dir / "warm"

    @property
    def runs_dir(self) -> Path:
        return self.state_dir / "runs"

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.sqlite"
