"""MLflow adapter for the pipeline's steps: nested runs, flattened params, metric callbacks.

Every step of a flow run logs into its own MLflow run, nested under the flow's parent run. The
parent's id is passed explicitly rather than taken from MLflow's active-run stack, because that
stack is per thread and Prefect may run a task on another thread than its flow.
"""

from __future__ import annotations

import json
import numbers
from contextlib import contextmanager
from typing import Any, Iterator

import mlflow

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
    """An MLflow run for one pipeline step, nested under the flow's run when one is given."""
    with mlflow.start_run(run_name=step, nested=parent_run_id is not None,
                          parent_run_id=parent_run_id, tags={"step": step, **(tags or {})}) as run:
        yield run


def numeric(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The entries of `values` that MLflow can log as metrics (numbers, numpy's included, not
    booleans), as floats, their keys prefixed."""
    return {f"{prefix}{k}": float(v) for k, v in values.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool)}


def metric_logger(prefix: str = ""):
    """An `on_log(step, metrics)` callback for diffusion's loops: numeric values become MLflow
    metrics at that step (asynchronously, so a slow server never stalls training)."""
    def on_log(step: int, metrics: dict[str, Any]) -> None:
        values = numeric(metrics, prefix)
        if values:
            mlflow.log_metrics(values, step=int(step), synchronous=False)
    return on_log


def log_json(data: Any, artifact_file: str) -> None:
    mlflow.log_dict(json.loads(json.dumps(data, default=str)), artifact_file)
