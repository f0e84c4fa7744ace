"""A training loop's metric points delivered to MLflow: kept until MLflow has them, sent in the
background, never dropped silently.

MLflow's own asynchronous logging (`log_metrics(..., synchronous=False)`) forgets a batch whose
request failed (it logs an error line and drops the points) and makes the run's end wait for
its queue without a bound.  A `MetricLogger` instead

- keeps every (step, metrics) point in memory until MLflow has acknowledged it;
- sends them from one background thread with `MlflowClient.log_batch` (each request bounded by
  MLflow's own short retries and timeout, `tasks.adapters.servers.MLFLOW_RETRY_ENV`), every
  `interval_s` seconds or as soon as `BATCH` points wait; the training loop never waits on the
  network, only appends to a list.  (Sending synchronously at each log interval would stall
  training for every slow or failed request: during an outage, tens of seconds per log call.)
- after a failed send keeps the points and sends them again after the waits of the retry
  policy (`RetryPolicy.from_env()`: `base_s` doubling, at most `max_wait_s` each; the
  DMOPS_RETRY_* variables), until MLflow takes them;
- lets no point wait longer than `max_outage_s` (default 300 s, or DMOPS_METRICS_MAX_OUTAGE_S):
  once the oldest unsent point is older, the next `log` call (the training loop's `on_log`)
  or `close` raises ServerUnavailable naming the MLflow server, its URL, how many points were
  not delivered and the fix, so a step does not train on for an hour with nowhere to report;
- `close()` (the end of the step) delivers every point still waiting, or raises that error.
  An error MLflow answers that is not transient (a bad metric name, a deleted run) stops the
  sender; the next `log` / `close` raises MetricsRefused naming it.

Sending a point again is harmless: its timestamp is fixed when it is logged, and MLflow's
store ignores a point it already holds (same key, step, timestamp and value), so a request
whose answer was lost can be repeated.
"""

from __future__ import annotations

import itertools
import numbers
import os
import threading
import time
from typing import Any, Callable, Optional

from tasks.adapters.servers import (MLFLOW, FIXES, RetryPolicy, ServerUnavailable, _to_stderr,
                                    describe, is_transient)

BATCH = 1000                  # MLflow's limit of metrics in one log_batch request
MAX_OUTAGE_ENV = "DMOPS_METRICS_MAX_OUTAGE_S"
DEFAULT_MAX_OUTAGE_S = 300.0


class MetricsRefused(RuntimeError):
    """MLflow answered a metric request with an error that sending again cannot fix."""


def numeric(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The entries of `values` that MLflow can log as metrics (numbers, numpy's included, not
    booleans), as floats, their keys prefixed."""
    return {f"{prefix}{k}": float(v) for k, v in values.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool)}


def max_outage_from_env() -> float:
    """DMOPS_METRICS_MAX_OUTAGE_S in seconds (> 0), else 300.  ValueError names a bad value."""
    raw = os.environ.get(MAX_OUTAGE_ENV)
    if not raw:
        return DEFAULT_MAX_OUTAGE_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{MAX_OUTAGE_ENV}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise ValueError(f"{MAX_OUTAGE_ENV}={raw!r} is out of range (> 0)")
    return value


class MetricLogger:
    """`logger(step, metrics)` queues the numeric entries of `metrics` as MLflow metrics of run
    `run_id` at `step` (keys prefixed with `prefix`); see the module docstring.

    Arguments: tracking_uri (default: MLflow's current one), interval_s (seconds between
    sends, default 2), max_outage_s (seconds a point may wait for MLflow; default
    `max_outage_from_env()`), policy (waits between failed sends; default
    `RetryPolicy.from_env()`), log (progress lines; default stderr).
    Attributes: delivered (points MLflow acknowledged), pending (points waiting)."""

    def __init__(self, run_id: str, prefix: str = "", *, tracking_uri: Optional[str] = None,
                 interval_s: float = 2.0, max_outage_s: Optional[float] = None,
                 policy: Optional[RetryPolicy] = None, log: Optional[Callable[[str], None]] = None):
        import mlflow
        from mlflow import MlflowClient

        self.run_id, self.prefix, self.interval_s = run_id, prefix, interval_s
        self.url = tracking_uri or mlflow.get_tracking_uri()
        self.max_outage_s = max_outage_from_env() if max_outage_s is None else max_outage_s
        self.policy = policy or RetryPolicy.from_env()
        self._log = log or _to_stderr
        self._client = MlflowClient(tracking_uri=self.url)
        self._pending: list[tuple[Any, float]] = []      # (mlflow Metric, monotonic time logged)
        self._cond = threading.Condition()
        self._closing = False      # deliver what is left, then stop
        self._abandoned = False    # stop now
        self._failed: Optional[BaseException] = None     # what log / close raise from now on
        self._failures, self._outage_t0, self._last_error = 0, 0.0, None
        self.delivered = 0
        self._thread = threading.Thread(target=self._send_loop, daemon=True,
                                        name=f"mlflow-metrics-{run_id[:8]}")
        self._thread.start()

    # --- the training loop's side -------------------------------------------------------------

    def __call__(self, step: int, metrics: dict[str, Any]) -> None:
        """Queue the numeric entries of `metrics` at `step` (an `on_log` callback).  Raises
        ServerUnavailable once a point has waited longer than max_outage_s, MetricsRefused
        after MLflow refused points."""
        from mlflow.entities import Metric

        values = numeric(metrics, self.prefix)
        now_ms, now = int(time.time() * 1000), time.monotonic()
        with self._cond:
            self._check(now)
            self._pending.extend((Metric(key, value, now_ms, int(step)), now) for key, value in values.items())
            if len(self._pending) >= BATCH:
                self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self) -> None:
        """Deliver every waiting point and stop the sender.  Waits while MLflow is away, but no
        point longer than max_outage_s since it was logged; then raises ServerUnavailable
        (MetricsRefused after a refusal).  Closing again re-raises the same error or returns."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while self._pending and self._failed is None:
                self._check(time.monotonic())
                age = time.monotonic() - self._pending[0][1]
                self._cond.wait(timeout=max(0.01, min(1.0, self.max_outage_s - age)))
            if self._failed is not None:
                raise self._failed
        self._thread.join(timeout=5)

    def abandon(self, wait_s: float = 10.0) -> int:
        """For a step that failed for another reason: deliver what MLflow takes within `wait_s`
        seconds, then stop.  Returns the number of points not delivered (never raises)."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while self._pending and self._failed is None and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.01, min(1.0, deadline - time.monotonic())))
            self._abandoned = True
            self._cond.notify_all()
            return len(self._pending)

    def _check(self, now: float) -> None:
        """Raise (and remember) the failure once a point waited too long; under the lock."""
        if self._failed is None and self._pending and now - self._pending[0][1] > self.max_outage_s:
            waited = now - self._pending[0][1]
            last = self._last_error or TimeoutError(f"no answer to log_batch for {waited:.0f} s")
            keys = sorted({m.key for m, _ in self._pending})
            self._failed = ServerUnavailable(
                MLFLOW, self.url, max(self._failures, 1), waited, last,
                detail=f"{len(self._pending)} metric points of run {self.run_id} "
                       f"({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}) waited more than "
                       f"{self.max_outage_s:.0f} s ({MAX_OUTAGE_ENV}) and were not delivered",
                fix=f"{FIXES[MLFLOW]}, then run again (finished steps are reused, training "
                    "resumes from its last checkpoint)")
            self._abandoned = True
            self._cond.notify_all()
        if self._failed is not None:
            raise self._failed

    # --- the sender thread ------------------------------------------------------------------

    def _send_loop(self) -> None:
        try:
            self._send_until_done()
        except BaseException as e:  # a bug here must not look like an outage to the caller
            with self._cond:
                self._failed = RuntimeError(f"the metric sender of run {self.run_id} stopped with "
                                            f"{len(self._pending)} points unsent: {describe(e)}")
                self._cond.notify_all()
            raise

    def _send_until_done(self) -> None:
        waits = None            # the backoff of the current outage (None: no outage)
        while True:
            with self._cond:
                if waits is not None:
                    # backing off: a close request does not cut the wait short
                    self._cond.wait_for(lambda: self._abandoned, timeout=max(0.05, next(waits)))
                else:
                    self._cond.wait_for(lambda: self._abandoned or self._closing
                                        or len(self._pending) >= BATCH, timeout=self.interval_s)
                if self._abandoned or (self._closing and not self._pending):
                    return
                batch = [metric for metric, _ in self._pending[:BATCH]]
            if not batch:
                continue
            try:
                self._client.log_batch(self.run_id, metrics=batch, synchronous=True)
            except Exception as e:  # noqa: BLE001 - every error is either kept or raised to the caller
                with self._cond:
                    if not is_transient(e):
                        self._failed = MetricsRefused(
                            f"MLflow server at {self.url} refused {len(self._pending)} metric points "
                            f"of run {self.run_id}: {describe(e)}")
                        self._cond.notify_all()
                        return
                    if self._failures == 0:
                        self._outage_t0 = time.monotonic()
                        waits = self._backoff()
                        self._log(f"{MLFLOW} at {self.url}: {describe(e)}; keeping "
                                   f"{len(self._pending)} metric points and sending them again "
                                   f"(for at most {self.max_outage_s:.0f} s)")
                    self._failures += 1
                    self._last_error = e
                continue
            with self._cond:
                del self._pending[:len(batch)]   # new points are only ever appended
                self.delivered += len(batch)
                if self._failures:
                    self._log(f"{MLFLOW} at {self.url} answers again after "
                               f"{time.monotonic() - self._outage_t0:.0f} s: metric points delivered")
                self._failures, self._last_error, waits = 0, None, None
                self._cond.notify_all()

    def _backoff(self):
        # the retry policy's waits, without its limit on tries: max_outage_s is the bound here
        return (self.policy.wait(i) for i in itertools.count())
