"""One promotion of a model at a time: a lease object in the S3 store.

MLflow aliases have no compare-and-set, so two promotions of one model that overlap could each
score the same champion and each move `champion`, the later one undoing the earlier without
having compared against it.  The promotion therefore holds a per-model lease for its whole
score-decide-release-move-alias-record sequence:

    s3://<releases bucket>/<model>/_promotion/lease.json

- Taking it: a conditional create (If-None-Match: *); the store grants it to exactly one caller.
- Holding it: the holder rewrites the lease every `ttl_s / 4` seconds with If-Match on the ETag it
  last wrote (compare-and-set), so a live holder keeps it however long scoring takes.
- Expiry: a lease not rewritten for `ttl_s` seconds (default 120 s) belongs to a holder that
  crashed or hung.  Age is measured on the store's clock (its Date header against the lease's
  Last-Modified), so the callers' clocks do not matter.  A waiter then takes the lease over by
  overwriting it with If-Match on the expired ETag: one waiter wins, the others keep waiting.
- A holder whose renewal fails (the lease was taken over) has lost it: `check()` raises
  `PromotionLockLost`, and the promotion calls it (with a renewal that proves ownership for
  another `ttl_s`) right before it moves the alias, so a holder that was too slow moves nothing.
- Releasing: a conditional delete (If-Match on its own ETag), in a `finally`; a lease someone
  else holds by then is left alone.
- Retried writes: a conditional write refused because an earlier try of the same request (a
  botocore retry after a lost response) was carried out is recognised by reading the lease
  back (its bytes are this write's), so a holder neither waits for nor loses its own lease.
- Waiting: a second promoter polls every `poll_s` seconds, prints who holds the lease (owner,
  flow run, since when) at most every `report_s` seconds, and gives up after `wait_s` with
  `PromotionLockTimeout` naming the holder.

Needs a store with conditional PUT and DELETE (If-None-Match / If-Match): AWS S3 and SeaweedFS
(checked against the stack's 4.x server) have them.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from botocore.exceptions import ClientError

from tasks.adapters.release import is_missing, is_precondition_failed
from tasks.say import say

DEFAULT_TTL_S = 120.0
LEASE = "_promotion/lease.json"


class PromotionLockError(RuntimeError):
    """The promotion lease could not be taken or was lost; the message names the holder."""


class PromotionLockTimeout(PromotionLockError):
    pass


class PromotionLockLost(PromotionLockError):
    pass


def lease_key(model: str) -> str:
    return f"{model}/{LEASE}"


def _describe(holder: dict) -> str:
    return (f"owner {holder.get('owner', '?')} (host {holder.get('host', '?')}, pid "
            f"{holder.get('pid', '?')}, flow run {holder.get('flow_run_id') or 'none'}, since "
            f"{holder.get('acquired', '?')})")


class PromotionLock:
    """Context manager holding the promotion lease of `model` in `bucket` (see the module doc).

    `ttl_s`: seconds a lease lives without renewal (> 0); `wait_s`: how long to wait for another
    holder before PromotionLockTimeout; `log`: where progress lines go."""

    def __init__(self, s3, bucket: str, model: str, *, flow_run_id: str | None = None,
                 ttl_s: float = DEFAULT_TTL_S, wait_s: float = 3600.0, poll_s: float = 1.0,
                 report_s: float = 15.0, log=say):
        if not ttl_s > 0:
            raise PromotionLockError(f"the lease length must be > 0 seconds, got {ttl_s}")
        self.s3, self.bucket, self.model, self.key = s3, bucket, model, lease_key(model)
        self.ttl_s, self.wait_s, self.poll_s, self.report_s = ttl_s, wait_s, poll_s, report_s
        self.owner = uuid.uuid4().hex
        self.flow_run_id = flow_run_id
        self.log = log
        self._etag: str | None = None
        self._acquired: str | None = None
        self._lost: str | None = None
        self._guard = threading.Lock()         # renewals from the heartbeat and from check()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # --- the lease object --------------------------------------------------------------

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "flow_run_id": self.flow_run_id, "model": self.model,
                           "acquired": self._acquired, "ttl_s": self.ttl_s,
                           "renewed": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                          sort_keys=True).encode()

    def _put(self, **condition) -> str | None:
        """Write our lease under `condition`; its new ETag, or None when the condition failed.

        botocore retries a PUT whose response was lost; when the lost try was carried out, the
        retry fails its condition on our own write.  So a failed condition is checked against
        the stored lease: the very bytes of this write (owner id and time inside) mean it
        happened, and its ETag is ours."""
        body = self._body()
        try:
            return self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=body,
                                      ContentType="application/json", **condition)["ETag"]
        except ClientError as e:
            if not is_precondition_failed(e):
                raise
        stored = self._get()
        if stored is None:
            return None
        return stored["ETag"] if stored["Body"].read() == body else None

    def _get(self) -> dict | None:
        """The stored lease object (GetObject's answer), None when there is none."""
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as e:
            if is_missing(e):
                return None
            raise

    def _current(self) -> tuple[dict, str, float] | None:
        """(holder, ETag, age in seconds on the store's clock) of the lease, None if absent."""
        answer = self._get()
        if answer is None:
            return None
        try:
            holder = json.loads(answer["Body"].read())
        except json.JSONDecodeError:
            holder = {}   # unreadable: it still blocks until it expires like any other lease
        headers = answer["ResponseMetadata"].get("HTTPHeaders", {})
        now = parsedate_to_datetime(headers["date"]) if "date" in headers else datetime.now(timezone.utc)
        age = (now - answer["LastModified"]).total_seconds()
        return holder, answer["ETag"], age

    # --- taking, keeping, giving back ------------------------------------------------

    def acquire(self) -> "PromotionLock":
        started = time.monotonic()
        last_report = -float("inf")
        while True:
            self._acquired = datetime.now(timezone.utc).isoformat(timespec="seconds")
            etag = self._put(IfNoneMatch="*")
            if etag is None:
                current = self._current()
                if current is None:
                    continue                       # released between our two requests
                holder, their_etag, age = current
                ttl = float(holder.get("ttl_s", self.ttl_s))
                if age > ttl:
                    etag = self._put(IfMatch=their_etag)   # one waiter takes an expired lease
                    if etag is not None:
                        self.log(f"promotion lock of {self.model}: took over an expired lease "
                                 f"({age:.0f} s old, lease length {ttl:g} s) of {_describe(holder)}")
                if etag is None:
                    waited = time.monotonic() - started
                    if waited > self.wait_s:
                        raise PromotionLockTimeout(
                            f"gave up after {waited:.0f} s waiting for the promotion lock of "
                            f"{self.model} held by {_describe(holder)}; it expires "
                            f"{max(ttl - age, 0):.0f} s after its holder stops renewing it "
                            f"(s3://{self.bucket}/{self.key})")
                    if time.monotonic() - last_report >= self.report_s:
                        self.log(f"waiting for the promotion lock of {self.model}: held by "
                                 f"{_describe(holder)}, waited {waited:.0f} s")
                        last_report = time.monotonic()
                    time.sleep(self.poll_s)
                    continue
            self._etag = etag
            break
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._keep, name=f"lease-{self.model}", daemon=True)
        self._heartbeat.start()
        return self

    def _renew(self) -> bool:
        with self._guard:
            if self._lost is not None or self._etag is None:
                return False
            etag = self._put(IfMatch=self._etag)
            if etag is None:
                self._lost = (f"the promotion lock of {self.model} was taken over by another "
                              "promoter (this holder did not renew it within its lease length)")
                return False
            self._etag = etag
            return True

    def _keep(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                if not self._renew():
                    return
            except Exception as e:   # a store hiccup: keep trying while the lease lasts
                self.log(f"promotion lock of {self.model}: renewal failed ({e}); retrying")

    def check(self) -> None:
        """Prove the lease is still ours (a renewal, which also extends it by `ttl_s`);
        PromotionLockLost otherwise.  Called right before anything irreversible."""
        if not self._renew():
            raise PromotionLockLost(self._lost or f"the promotion lock of {self.model} is not held")

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        with self._guard:
            etag, self._etag = self._etag, None
            if etag is None or self._lost is not None:
                return
            try:
                self.s3.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=etag)
            except ClientError as e:
                if not (is_precondition_failed(e) or is_missing(e)):
                    raise

    def __enter__(self) -> "PromotionLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
