"""S3 access to the stack's SeaweedFS: a configured boto3 client and the buckets it must hold."""

from __future__ import annotations

import time

from infra.credentials import Credentials
from infra.errors import StackError
from infra.layout import StateLayout
from infra.processes import log_tail
from infra.services import REGION
from infra.settings import StackSettings

_AUTH_ERRORS = ("403", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId")


def s3_client(url: str, creds: Credentials, attempts: int = 3, read_timeout: float = 30):
    """A boto3 S3 client for `url`: path-style addressing (bucket.127.0.0.1 would not resolve),
    botocore's standard retry mode with `attempts` tries in all (1: no retries)."""
    import boto3
    from botocore.config import Config

    config = Config(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=read_timeout,
                    retries={"total_max_attempts": attempts, "mode": "standard"})
    return boto3.client("s3", endpoint_url=url, region_name=REGION, aws_access_key_id=creds.access_key_id,
                        aws_secret_access_key=creds.secret_access_key, config=config)


def ensure_buckets(client, settings: StackSettings, layout: StateLayout, deadline: float,
                   timeout: float) -> None:
    """Create the stack's missing buckets. SeaweedFS answers /healthz a moment before its filer
    takes writes, so transient failures are retried until `deadline` (time.monotonic)."""
    from botocore.exceptions import BotoCoreError, ClientError

    pending = list(settings.buckets)
    last_error: object = None
    while pending:
        bucket = pending[0]
        try:
            try:
                client.head_bucket(Bucket=bucket)
            except ClientError as e:
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                    raise
                client.create_bucket(Bucket=bucket)
            pending.pop(0)
            continue
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code"))
            if code == "BucketAlreadyOwnedByYou":
                pending.pop(0)
                continue
            if code in _AUTH_ERRORS:
                raise StackError(f"SeaweedFS at {settings.s3_url} refused the keys in {layout.credentials} "
                                 f"({code}); its identities are written from that file at start: "
                                 f"run `dmops down` then `dmops up`") from None
            last_error = e
        except BotoCoreError as e:
            last_error = e
        if time.monotonic() >= deadline:
            log = layout.log("seaweedfs")
            raise StackError(f"could not create bucket {bucket} at {settings.s3_url} within {timeout:.0f} s "
                             f"({last_error}); last 20 lines of {log}:\n{log_tail(log)}")
        time.sleep(0.5)
