"""The promotion history of a model: append-only, in the S3 store beside its releases.

Every promotion decision, won or lost, is one JSON object

    s3://<releases bucket>/<model>/_history/<UTC time>-<uuid>.json

created with a conditional write (If-None-Match: *), so no entry is ever overwritten; nothing in
dmops deletes one.  Keys begin with the time as YYYYMMDDTHHMMSS.ffffffZ, so listing order is
time order; promotions of one model are serialized (tasks.adapters.promotion_lock), so it is also the
order in which they happened.  An entry's `time` is when the decision took effect: for a
promotion the moment right after `champion` moved.

Entry fields: time, model, version, previous_champion, champion (the champion after it),
decision ("promoted" | "rejected" | "rolled_back": a promotion interrupted and undone by the
next run, tasks.steps.promotion_transaction), reason, comparable (False when the champion could not be
scored on the challenger's data), metric, challenger_value, champion_value, challenger_metrics,
champion_metrics, release (URI or None), flow_run_id; and, for a decision another run
finished after an interruption, completed_by (that run).  The key ends with the decision's id,
so a decision is recorded once however often its completion is retried (`find_entry`).

"Which version was serving at time T" is `champion_at(entries, T)`: the champion after the last
entry at or before T.  It knows what dmops promotions did; an alias moved by hand in MLflow is
not in the history.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

from botocore.exceptions import ClientError

from tasks.adapters.release import is_precondition_failed

HISTORY = "_history"
DECISIONS = ("promoted", "rejected", "rolled_back")
FIELDS = ("time", "model", "version", "previous_champion", "champion", "decision", "reason",
          "comparable", "metric", "challenger_value", "champion_value", "challenger_metrics",
          "champion_metrics", "release", "flow_run_id")


class HistoryError(RuntimeError):
    """A history entry that cannot be written or read; the message says which and why."""


def history_prefix(model: str) -> str:
    return f"{model}/{HISTORY}/"


def _utc(when: datetime) -> datetime:
    """Aware UTC; a naive time is taken to be UTC already."""
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def append_entry(s3, bucket: str, entry: dict, when: datetime | None = None,
                 entry_id: str | None = None) -> str:
    """Store `entry` (the FIELDS above; `time` is set here from `when`, default now) as a new
    object and return its key, which ends with `entry_id` (default a fresh uuid).
    HistoryError for a missing field or an unknown decision."""
    missing = [f for f in FIELDS if f != "time" and f not in entry]
    if missing:
        raise HistoryError(f"history entry lacks {missing}")
    if entry["decision"] not in DECISIONS:
        raise HistoryError(f"history decision {entry['decision']!r} is not one of {DECISIONS}")
    when = _utc(when or datetime.now(timezone.utc))
    record = {**entry, "time": when.isoformat(timespec="microseconds")}
    key = (f"{history_prefix(entry['model'])}{when.strftime('%Y%m%dT%H%M%S.%fZ')}-"
           f"{entry_id or uuid.uuid4().hex}.json")
    try:
        body = json.dumps(record, sort_keys=True, indent=2).encode()
    except TypeError as e:
        raise HistoryError(f"history entry for {entry['model']}/{entry['version']} is not "
                           f"JSON-serialisable: {e}") from None
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json",
                      IfNoneMatch="*")
    except ClientError as e:
        if not is_precondition_failed(e):
            raise
        # botocore retried a PUT whose response was lost and met the entry its first try
        # wrote: the same bytes mean the entry is stored.  Anything else is a uuid collision:
        # never overwrite what is there.
        if s3.get_object(Bucket=bucket, Key=key)["Body"].read() != body:
            raise HistoryError(f"history entry s3://{bucket}/{key} exists already") from None
    return key


def _keys(s3, bucket: str, model: str) -> list[str]:
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                             Prefix=history_prefix(model)):
        keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".json")]
    return keys


def find_entry(s3, bucket: str, model: str, entry_id: str) -> str | None:
    """The key of the entry stored with `entry_id`, or None (a listing, no reads)."""
    return next((k for k in _keys(s3, bucket, model) if k.endswith(f"-{entry_id}.json")), None)


def read_history(s3, bucket: str, model: str) -> list[dict]:
    """Every entry of `model`, oldest first ([] when it has none)."""
    entries = []
    for key in sorted(_keys(s3, bucket, model)):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        try:
            entries.append(json.loads(body))
        except json.JSONDecodeError as e:
            raise HistoryError(f"history entry s3://{bucket}/{key} is not valid JSON: {e}") from None
    return sorted(entries, key=lambda e: e["time"])


def parse_time(text: str) -> datetime:
    """An ISO 8601 time such as 2026-11-29T02:00 (UTC unless it names an offset)."""
    try:
        return _utc(datetime.fromisoformat(text.strip().replace("Z", "+00:00")))
    except ValueError:
        raise HistoryError(f"{text!r} is not a time; use ISO 8601 such as 2026-11-29T02:00 "
                           "(UTC) or 2026-11-29T03:00+01:00") from None


def champion_at(entries: list[dict], when: datetime) -> tuple[str | None, dict | None]:
    """(version serving at `when`, the entry that made it champion) from entries oldest first.
    (None, None) before the first entry; a rejection leaves the champion as it was.  When the
    champion predates the history, the entry is the last one at or before `when`."""
    when = _utc(when)
    until = [e for e in entries if datetime.fromisoformat(e["time"]) <= when]
    if not until:
        return None, None
    champion = until[-1].get("champion")
    made = next((e for e in reversed(until)
                 if e["decision"] == "promoted" and e["version"] == champion), until[-1])
    return champion, made
