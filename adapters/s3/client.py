"""The boto3 client shadow talks S3 with, and the translation of botocore's errors at the adapter's edge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shadow.errors import TargetUnreachable

WORKERS = 16
REGION = "us-east-1"

Call = Callable[..., Any]  # ``call(what, fn, *args, **kwargs)``: fn's result, its botocore errors translated


def make_client(endpoint_url: str | None, **credentials: str) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=WORKERS * 2,
                    connect_timeout=10, read_timeout=60)
    session = boto3.session.Session(**credentials) if credentials else boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url, region_name=session.region_name or REGION, config=config)


def translated(target: str, where: str, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; a botocore error becomes :class:`TargetUnreachable` naming ``what`` failed
    ``where`` (the target's description) on ``target``."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(*args, **kwargs)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise TargetUnreachable(f"{what} failed on {where}: {code}: "
                                f"{exc.response.get('Error', {}).get('Message', '')}", target=target) from exc
    except BotoCoreError as exc:
        raise TargetUnreachable(f"{what} failed on {where}: {exc}", target=target) from exc
