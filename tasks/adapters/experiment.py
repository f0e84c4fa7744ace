"""The pipeline's MLflow experiment, set up as a model-training experiment whose runs list shows
the numbers each run is judged by.

MLflow 3's UI shows an experiment either as GenAI traces or as machine-learning runs. This module
tags the experiment `mlflow.experimentKind = custom_model_development` (what the UI's own kind
selector writes), so UIs and clients that read the kind treat it as model training. MLflow 3.17's
UI decides the mode from the page URL's `workflowType` (else a browser setting that starts at
GenAI) and ignores the tag, so the links the pipeline prints carry the mode as well
(tasks/adapters/ui_links.py).

A fresh browser's runs table shows no metric or param columns (MLflow 3 starts with Dataset,
Source and Models only). The experiment therefore also carries a saved runs-table view: the tag
`mlflow.sharedViewState.<RUNS_VIEW>`, written the way the UI's "Save as new view" writes it,
naming the parent run's metrics and params as columns. It is listed under the runs page's
"Views", and a runs link that names it (ui_links.runs_url) opens with those columns.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Sequence

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

from tasks.adapters.servers import mlflow_call
from tasks.say import say
from tasks.adapters.ui_links import RUNS_VIEW

KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
# kinds the UI infers or writes when nobody chose one: replaced; a kind a user chose is kept
_UNCHOSEN_KINDS = {"", "no_inferred_type", "genai_development_inferred",
                   "custom_model_development_inferred"}

VIEW_TAG_PREFIX = "mlflow.sharedViewState."
RUNS_VIEW_NAME = "dmops: decision metrics"
# what the table shows before the selected columns (the grid's own ids); the dataset input after
_LEADING_COLUMNS = ("attributes.`Run Name`", "runDateAndNestInfo")
_TRAILING_COLUMNS = ("attributes.`Dataset`",)


def runs_view_state(metrics: Sequence[str], params: Sequence[str]) -> dict:
    """The runs-table state of the saved view: run name and creation time, then `metrics` and
    `params` (names as logged, in this order: the grid would otherwise put MLflow's attribute
    columns first and sort the rest by name), then the dataset; newest run first."""
    columns = ([f"metrics.`{m}`" for m in metrics] + [f"params.`{p}`" for p in params]
               + list(_TRAILING_COLUMNS))
    return {"selectedColumns": columns, "columnOrder": [*_LEADING_COLUMNS, *columns],
            "orderByKey": "attributes.start_time", "orderByAsc": False}


def use_experiment(name: str, metrics: Sequence[str] = (), params: Sequence[str] = (),
                   log: Callable[[str], None] = say) -> str:
    """Make experiment `name` the active one (created when missing, said on `log`), as a
    model-training experiment: its kind tag set unless a user chose a kind, and the saved runs
    view `RUNS_VIEW` naming `metrics` and `params` as columns (rewritten only when they change).

    Returns the experiment id. Every request goes through servers.mlflow_call (bounded
    retries): ServerUnavailable when the MLflow server stays away; MlflowException when the
    experiment is deleted (MLflow refuses to reuse the name until it is restored or purged)."""
    client = mlflow.MlflowClient()
    if mlflow_call(client.get_experiment_by_name, name) is None:
        _create(client, name, log)
    # by id: set_experiment by a name it does not find creates it with a line of its own
    # on MLflow's logger; a deleted experiment still fails here, with MLflow's message
    experiment = mlflow_call(mlflow.set_experiment,
                             experiment_id=mlflow_call(client.get_experiment_by_name,
                                                       name).experiment_id)
    eid = experiment.experiment_id
    tags = experiment.tags or {}
    if tags.get(KIND_TAG, "") in _UNCHOSEN_KINDS:
        mlflow_call(client.set_experiment_tag, eid, KIND_TAG, MODEL_TRAINING)
    state = runs_view_state(metrics, params)
    view_tag = VIEW_TAG_PREFIX + RUNS_VIEW
    current = _saved_view(tags.get(view_tag))
    if current is None or current["state"] != state:
        now = int(time.time() * 1000)
        created = current["createdAt"] if current else now
        # the UI's saved-view envelope: the state is a JSON string inside it
        envelope = {"name": RUNS_VIEW_NAME, "createdAt": created, "updatedAt": now,
                    "state": json.dumps(state)}
        mlflow_call(client.set_experiment_tag, eid, view_tag, json.dumps(envelope))
    return eid


def _create(client: mlflow.MlflowClient, name: str, log: Callable[[str], None]) -> None:
    """Create experiment `name` as model training; another run creating it at the same time
    (or a retried request whose first try got through) is not an error."""
    try:
        eid = mlflow_call(client.create_experiment, name, tags={KIND_TAG: MODEL_TRAINING})
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        return
    log(f"MLflow experiment {name!r} created (id {eid}) for the pipeline's runs")


def _saved_view(value: str | None) -> dict | None:
    """The stored envelope with its state decoded, or None when absent or not ours to read."""
    if not value:
        return None
    try:
        envelope = json.loads(value)
        return {"createdAt": int(envelope["createdAt"]), "state": json.loads(envelope["state"])}
    except (ValueError, KeyError, TypeError):
        return None
