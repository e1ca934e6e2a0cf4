"""The environment variables shadow reads, read once: a kind's image comes from ``SHADOW_<KIND>_IMAGE``."""

from __future__ import annotations

from pathlib import Path

from adapters import REGISTRY
from shadow.settings import Settings


def test_a_kinds_image_variable_chooses_its_docker_image_and_an_unset_or_empty_one_keeps_the_kinds_default(
        tmp_path: Path) -> None:
    env = {"SHADOW_POSTGRES_IMAGE": "shadow-test/postgres:{major}", "SHADOW_S3_IMAGE": "",
           "SHADOW_STATE_DIR": str(tmp_path)}
    chosen, default = Settings.from_env(env), Settings.from_env({"SHADOW_STATE_DIR": str(tmp_path)})

    assert chosen.image_for("postgres", "postgres:{major}") == "shadow-test/postgres:{major}"
    assert chosen.image_for("s3", "motoserver/moto:latest") == "motoserver/moto:latest"
    assert default.images == {}

    spec = {"dsn": "postgresql://app@127.0.0.1:1/app"}
    for settings, expected in ((chosen, "shadow-test/postgres:16"), (default, "postgres:16")):
        target = REGISTRY["postgres"].target("app", spec, settings)
        assert target.image_for(16) == expected  # type: ignore[attr-defined]
