"""MLflow adapter for the pipeline's steps: nested runs, flattened params, metric loggers.

Every step of a flow run logs into its own MLflow run, nested under the flow's parent run. The
parent's id is passed explicitly rather than taken from MLflow's active-run stack, because that
stack is per thread and Prefect may run a task on another thread than its flow.

An outage of the MLflow server is never hidden and never waited out without a bound: a run of
`tracked_run` / `step_run` fails with one line naming the server, its URL and the fix
(tasks.adapters.servers.ServerUnavailable) when the run cannot be started or ended, when an MLflow
request of the step still fails after MLflow's own bounded retries (MLFLOW_RETRY_ENV), or when
one of its metric loggers (`metric_logger`, tasks/adapters/metric_logger.py) cannot deliver its points
within their bound; on success every logged point is in MLflow before the run ends.  A step
that fails for another reason keeps its own error; ending its run is then best effort, and
points that could not be delivered are reported on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import mlflow

from diffusion.progress import is_terminal
from tasks.adapters.metric_logger import MetricLogger, numeric
from tasks.adapters.servers import mlflow_call, mlflow_unavailable

__all__ = ["flatten", "step_run", "tracked_run", "metric_logger", "numeric", "log_json",
           "recent_step_seconds"]

# MLflow writes "View run <name> at: <url>" and "View experiment at: <url>" to stdout when a
# run ends (18 lines per flow run, one more request each); the pipeline prints its own links
# once, at its end.  A user's own setting wins.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# its artifact download bar is tqdm's: off a terminal, one long line of redraws per download
if not is_terminal(sys.stderr):
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

GIT_COMMIT_TAG = "mlflow.source.git.commit"
# on a step run that trained nothing (a finished checkpoint or student reused): its seconds
# are not how long the step takes, so recent_step_seconds never learns from it
REUSED_TAG = "reused_finished_result"
MAX_PARAM_LENGTH = 500  # MLflow's limit on a param value (6000 on recent servers); keep it short


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """{'train': {'lr': 0.002}} -> {'train.lr': '0.002'}; lists become JSON text."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
            out[name] = text[:MAX_PARAM_LENGTH]
    return out


@contextmanager
def step_run(step: str, parent_run_id: str | None, tags: dict[str, str] | None = None
             ) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one pipeline step, nested under the flow's run when one is given,
    tagged `step`; see `tracked_run` for how it ends and what it raises."""
    with tracked_run(step, parent_run_id, {"step": step, **(tags or {})}) as run:
        yield run


# the metric loggers of each open run, closed when it ends
_loggers: dict[str, list[MetricLogger]] = {}
_loggers_lock = threading.Lock()


@contextmanager
def tracked_run(run_name: str, parent_run_id: Optional[str] = None,
                tags: Optional[dict[str, str]] = None) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run` (nested under `parent_run_id` when given) that ends as the module
    docstring says: on success its metric loggers deliver every point and the run is marked
    FINISHED; on an error it is marked FAILED as far as the server allows, and the error is
    raised -- as ServerUnavailable naming the MLflow server when it was a transient failure of
    an MLflow request.  Raises ServerUnavailable, or MetricsRefused (tasks/adapters/metric_logger.py)."""
    url = mlflow.get_tracking_uri()
    tags = dict(tags or {})
    if parent_run_id is not None and GIT_COMMIT_TAG not in tags:
        tags.update(_inherited_commit(parent_run_id, url))
    try:
        run = mlflow.start_run(run_name=run_name, nested=parent_run_id is not None,
                               parent_run_id=parent_run_id, tags=tags)
    except Exception as e:
        _raise_as_unavailable(e, url)
    run_id = run.info.run_id
    with _loggers_lock:
        _loggers[run_id] = []
    try:
        yield run
    except BaseException as e:
        _abandon_loggers(run_id)
        _end_run(run_id, "FAILED", url, quiet=True)
        if isinstance(e, Exception):
            _raise_as_unavailable(e, url)
        raise
    try:
        _close_loggers(run_id)
    except BaseException:
        _end_run(run_id, "FAILED", url, quiet=True)
        raise
    _end_run(run_id, "FINISHED", url, quiet=False)


def source_commit_tag(commit: str) -> dict[str, str]:
    """MLflow's own git-commit tag, which its run page shows, for `commit` as
    tasks.steps.lineage.git_commit gives it (a '-dirty' mark stays in the run's `git_commit`
    param: the tag holds a commit id).  Nested runs of `tracked_run` inherit it from their
    parent.  {} for 'unknown' (no repository)."""
    sha = commit.removesuffix("-dirty")
    return {GIT_COMMIT_TAG: sha} if sha and sha != "unknown" else {}


def _inherited_commit(parent_run_id: str, url: str) -> dict[str, str]:
    try:
        parent = mlflow_call(mlflow.get_run, parent_run_id)
    except Exception as e:
        _raise_as_unavailable(e, url)
    commit = parent.data.tags.get(GIT_COMMIT_TAG)
    return {GIT_COMMIT_TAG: commit} if commit else {}


def metric_logger(prefix: str = "", run_id: Optional[str] = None) -> MetricLogger:
    """An `on_log(step, metrics)` callback for diffusion's loops: numeric values become MLflow
    metrics of run `run_id` (default: the active run) at that step, keys prefixed.  Points are
    sent in the background and kept across a short outage (tasks/adapters/metric_logger.py); call its
    `close()` where the step needs them delivered -- a `tracked_run` of that run closes it at
    its end anyway.  RuntimeError when there is no run to log into."""
    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            raise RuntimeError("metric_logger needs an MLflow run: call it inside step_run or pass run_id")
        run_id = active.info.run_id
    logger = MetricLogger(run_id, prefix)
    with _loggers_lock:
        if run_id in _loggers:
            _loggers[run_id].append(logger)
    return logger


class ReuseWatch:
    """An `on_log(step, metrics)` callback that hands every point to `logger` (a MetricLogger)
    and counts them; `close()` closes the logger and, when no point came (no optimiser step
    ran: the step reused a finished result), tags the logger's run REUSED_TAG = "true"."""

    def __init__(self, logger: MetricLogger):
        self.logger, self.points = logger, 0

    def __call__(self, step: int, metrics: dict[str, Any]) -> None:
        self.points += 1
        self.logger(step, metrics)

    def close(self) -> None:
        self.logger.close()
        if not self.points:
            mlflow_call(mlflow.MlflowClient().set_tag, self.logger.run_id, REUSED_TAG, "true")


def log_json(data: Any, artifact_file: str) -> None:
    mlflow.log_dict(json.loads(json.dumps(data, default=str)), artifact_file)


def _close_loggers(run_id: str) -> None:
    with _loggers_lock:
        loggers = _loggers.pop(run_id, [])
    try:
        for logger in loggers:
            logger.close()
    except BaseException:
        for logger in loggers:
            logger.abandon(0)
        raise


def _abandon_loggers(run_id: str) -> None:
    with _loggers_lock:
        loggers = _loggers.pop(run_id, [])
    for logger in loggers:
        lost = logger.abandon()
        if lost:
            print(f"note: {lost} metric points of MLflow run {run_id} were not delivered to "
                  f"{logger.url} before the step failed", file=sys.stderr, flush=True)


def _end_run(run_id: str, status: str, url: str, quiet: bool) -> None:
    """End `run_id` if it is still the active run.  mlflow.end_run leaves the active-run stack
    first and then tells the server, so a failure here never leaves the run active locally."""
    active = mlflow.active_run()
    if active is None or active.info.run_id != run_id:
        return
    try:
        mlflow.end_run(status)
    except Exception as e:
        if not quiet:
            _raise_as_unavailable(e, url)
        print(f"note: MLflow run {run_id} could not be marked {status} at {url}: "
              f"{' '.join(str(e).split())[:300]}", file=sys.stderr, flush=True)


def _raise_as_unavailable(e: Exception, url: str) -> None:
    """Raise `e` as ServerUnavailable naming the MLflow server when it is a transient failure
    of an MLflow request, else unchanged."""
    unavailable = mlflow_unavailable(e, url)
    if unavailable is not None:
        raise unavailable from e
    raise e


def cached_steps(parent_run_id: str, step_runs: dict[str, str]) -> list[str]:
    """Steps (name -> MLflow run id) whose run belongs to an earlier flow run than
    `parent_run_id`: Prefect reused their cached result.  Reads only, retried on transient
    MLflow errors."""
    client = mlflow.MlflowClient()
    return [step for step, run_id in step_runs.items()
            if mlflow_call(client.get_run, run_id)
            .data.tags.get("mlflow.parentRunId") != parent_run_id]


def recent_step_seconds(experiment_id: str, profile: str, runs: int = 5
                        ) -> tuple[dict[str, float], Optional[str]]:
    """How long each step took when it last ran, in seconds by step name, from the nested
    step runs (start to end) of the newest FINISHED flow runs of `profile` in the experiment
    (parent runs tagged `profile`), newest first, at most `runs` of them: a step that a flow
    run took from the cache has no nested run under it, and one whose run reused a finished
    result (tagged REUSED_TAG) took seconds that say nothing of the work: either is timed
    from an earlier flow run, or not at all.
    Also returns the newest flow run's name (None when there is none).  A tracking server
    that does not answer gives ({}, None): this is an estimate, never a reason to fail."""
    client = mlflow.MlflowClient()
    try:
        parents = client.search_runs(
            [experiment_id], f"tags.profile = '{profile}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=runs)
        seconds: dict[str, float] = {}
        for parent in parents:
            children = client.search_runs(
                [experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                max_results=100)
            for child in children:
                step, info = child.data.tags.get("step"), child.info
                if child.data.tags.get(REUSED_TAG) == "true":
                    continue
                if step and step not in seconds and info.status == "FINISHED" and info.end_time:
                    seconds[step] = (info.end_time - info.start_time) / 1000
    except Exception:  # noqa: BLE001 - see the docstring
        return {}, None
    return seconds, (parents[0].info.run_name if parents else None)
