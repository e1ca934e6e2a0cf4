"""The environment variables shadow reads — all of them, in one place, only when asked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    pg_bindir: str | None = None
    environ: Mapping[str, str] = field(default_factory=dict)
    backend: str | None = None  # SHADOW_BACKEND: overrides the plan's policy.backend (e.g. for a CI matrix)
    postgres_image: str = "postgres:{major}"  # SHADOW_POSTGRES_IMAGE; {major} is production's major version
    action_image: str = "python:3.12-slim"  # SHADOW_ACTION_IMAGE: for `isolation: container` without `image:`
    s3_image: str = "motoserver/moto:latest"  # SHADOW_S3_IMAGE: moto's S3 server for s3 shadows (docker backend)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, state_dir: str | Path | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        chosen = state_dir or env.get("SHADOW_STATE_DIR") or ".shadow"
        return cls(
            state_dir=Path(chosen).absolute(),
            pg_bindir=env.get("SHADOW_PG_BINDIR") or None,
            environ=env,
            backend=env.get("SHADOW_BACKEND") or None,
            postgres_image=env.get("SHADOW_POSTGRES_IMAGE") or "postgres:{major}",
            action_image=env.get("SHADOW_ACTION_IMAGE") or "python:3.12-slim",
            s3_image=env.get("SHADOW_S3_IMAGE") or "motoserver/moto:latest",
        )

    @property
    def store_dir(self) -> Path:
        return self.state_dir / "snapshots"

    @property
    def runs_dir(self) -> Path:
        return self.state_dir / "runs"

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.sqlite"
