"""A model's pending promotion in the S3 store: the whole decision, stored before it is carried
out, at `s3://<bucket>/<model>/_promotion/pending.json` (tasks/steps/promotion_transaction.py
carries it out and deletes it last; readers of releases refuse the pending version).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from botocore.exceptions import ClientError

from tasks.adapters.release import is_missing, is_precondition_failed, pending_key
from tasks.adapters.servers import S3, retry_call, s3_url_from_env


class PromotionInterrupted(RuntimeError):
    """Acting on a decision failed part-way; the pending record stays for the next promotion.
    The message is one line: the cause, then what was left and who finishes it."""


@dataclass(frozen=True)
class PendingPromotion:
    """One decision about `version` of `model`, as stored before it is carried out.

    entry: the promotion-history fields that do not change when it is carried out (metric,
    values, metrics, comparable, flow_run_id); release: the release URI a win writes."""
    model: str
    version: str
    promoted: bool
    reason: str
    previous_champion: str | None
    release: str | None
    entry: dict
    flow_run_id: str | None = None
    decision_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: str = field(default_factory=lambda: datetime.now(timezone.utc)
                         .isoformat(timespec="seconds"))

    def describe(self) -> str:
        return (f"{'promotion' if self.promoted else 'rejection'} of {self.model} v{self.version} "
                f"(flow run {self.flow_run_id or 'none'}, started {self.started})")


def write_pending(s3, bucket: str, record: PendingPromotion) -> None:
    """Store `record` as the model's pending promotion (conditional create).  Raises
    PromotionInterrupted when another decision is pending (finish it first: `recover`)."""
    body = json.dumps(asdict(record), sort_keys=True).encode()
    key = pending_key(record.model)
    # read first: a missing bucket is an error here (SeaweedFS creates one on a PUT), and
    # another pending decision is named before anything is written
    other = read_pending(s3, bucket, record.model)
    if other is not None and other.decision_id != record.decision_id:
        raise PromotionInterrupted(
            f"{record.model} already has a pending decision ({other.describe()}) at "
            f"s3://{bucket}/{key}; the model's next promotion finishes it first")
    try:
        retry_call(s3.put_object, Bucket=bucket, Key=key, Body=body,
                   ContentType="application/json", IfNoneMatch="*", server=S3,
                   url=s3_url_from_env())
    except ClientError as e:
        if not is_precondition_failed(e):
            raise
        other = read_pending(s3, bucket, record.model)
        if other is None or other.decision_id != record.decision_id:  # not our own lost retry
            raise PromotionInterrupted(
                f"{record.model} already has a pending decision ({other.describe() if other else '?'}) "
                f"at s3://{bucket}/{key}; the model's next promotion finishes it first") from None


def read_pending(s3, bucket: str, model: str) -> PendingPromotion | None:
    """The model's pending promotion, or None."""
    def read():
        try:
            return s3.get_object(Bucket=bucket, Key=pending_key(model))["Body"].read()
        except ClientError as e:
            if is_missing(e):
                return None
            raise
    body = retry_call(read, server=S3, url=s3_url_from_env())
    return None if body is None else PendingPromotion(**json.loads(body))


def clear_pending(s3, bucket: str, record: PendingPromotion) -> None:
    """Delete the model's pending promotion: the last step of carrying it out."""
    retry_call(s3.delete_object, Bucket=bucket, Key=pending_key(record.model), server=S3,
               url=s3_url_from_env())
