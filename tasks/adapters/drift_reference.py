"""The data gate's drift reference in the S3 store: the summary statistics of the last dataset
version that passed the gate, which the next version's drift expectations compare against.
One object per dataset name, `s3://<data bucket>/validated/<name>/statistics.json`."""

from __future__ import annotations

import json

from tasks.adapters.release import s3_client_from_env
from tasks.adapters.servers import S3, retry_call, s3_url_from_env


def reference_key(dataset_name: str) -> str:
    return f"validated/{dataset_name}/statistics.json"


def load_reference(bucket: str, dataset_name: str) -> dict | None:
    """The summary statistics of the last dataset that passed the gate (None on the first run).
    Transient S3 errors are retried (the request and the streamed body together);
    ServerUnavailable names the store when they persist."""
    from botocore.exceptions import ClientError

    s3 = s3_client_from_env()

    def read() -> dict | None:
        try:
            body = s3.get_object(Bucket=bucket, Key=reference_key(dataset_name))["Body"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return json.loads(body.read())

    return retry_call(read, server=S3, url=s3_url_from_env())


def save_reference(bucket: str, dataset_name: str, statistics: dict) -> None:
    """Store `statistics` as the reference of the next run's drift checks (one object,
    overwritten: writing it again is harmless, so transient errors are retried)."""
    retry_call(s3_client_from_env().put_object, Bucket=bucket, Key=reference_key(dataset_name),
               Body=json.dumps(statistics, default=float).encode(), server=S3, url=s3_url_from_env())
