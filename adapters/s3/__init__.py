"""S3 targets: checkpoint by object versions (or copies), shadow on an ephemeral endpoint, restore exactly."""

from __future__ import annotations

from adapters.s3.target import S3Kind, S3Target

KIND = S3Kind()

__all__ = ["KIND", "S3Kind", "S3Target"]
