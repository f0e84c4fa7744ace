"""Links into the MLflow and Prefect web UIs, for what the pipeline prints and the model card.

MLflow 3's UI shows an experiment in one of two modes: GenAI (traces) or machine learning
(runs). MLflow 3.17 takes the mode from the page URL's `workflowType` and otherwise from a
browser setting that starts at GenAI; the experiment's `mlflow.experimentKind` tag (set by
tasks/adapters/experiment.py) does not change it, and links inside the UI drop the query. So
every MLflow link carries `workflowType=machine_learning`: opened in a fresh browser it lands on
the runs, the run or the registered model with the model registry in the sidebar, not on an
empty traces page. The runs link also names the experiment's saved runs view (`RUNS_VIEW`,
written by tasks/adapters/experiment.py), so the table opens with the runs' metric and param
columns rather than MLflow's default of none.

The base URLs come from the environment the clients use (MLFLOW_TRACKING_URI, PREFECT_UI_URL
or PREFECT_API_URL); a tracking URI that is not a web server (a local folder) gives no link.
"""

from __future__ import annotations

import os
from urllib.parse import quote

ML_WORKFLOW = "workflowType=machine_learning"
# key of the experiment's saved runs view (tag mlflow.sharedViewState.<key>); it goes into URLs
RUNS_VIEW = "dmops-runs"


def mlflow_ui(tracking_uri: str | None = None) -> str | None:
    """The MLflow UI's base URL (no trailing slash), or None when tracking is not over HTTP."""
    uri = tracking_uri if tracking_uri is not None else os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def prefect_ui(api_url: str | None = None) -> str | None:
    """The Prefect UI's base URL: PREFECT_UI_URL, else PREFECT_API_URL without its `/api`."""
    ui = os.environ.get("PREFECT_UI_URL") if api_url is None else None
    if ui:
        return ui.rstrip("/")
    api = api_url if api_url is not None else os.environ.get("PREFECT_API_URL", "")
    return api.rstrip("/").removesuffix("/api") or None


def _mlflow(path: str, tracking_uri: str | None) -> str | None:
    base = mlflow_ui(tracking_uri)
    return f"{base}/#/{path}" if base else None


def runs_url(experiment_id: str, tracking_uri: str | None = None,
             view: str | None = RUNS_VIEW) -> str | None:
    """The experiment's runs list, in the saved runs view `view` (None: the browser's own
    columns). A view the experiment lacks makes the UI show an error and leave the runs
    list: pass a view only for an experiment set up by experiment.use_experiment."""
    query = f"{ML_WORKFLOW}&viewStateShareKey={quote(view, safe='')}" if view else ML_WORKFLOW
    return _mlflow(f"experiments/{experiment_id}/runs?{query}", tracking_uri)


def run_url(experiment_id: str, run_id: str, tracking_uri: str | None = None) -> str | None:
    """One run's page (params, metrics, artifacts)."""
    return _mlflow(f"experiments/{experiment_id}/runs/{run_id}?{ML_WORKFLOW}", tracking_uri)


def model_url(name: str, version: str | None = None, tracking_uri: str | None = None) -> str | None:
    """The registered model's page, or one version's."""
    path = f"models/{quote(name, safe='')}"
    if version is not None:
        path += f"/versions/{quote(str(version), safe='')}"
    return _mlflow(f"{path}?{ML_WORKFLOW}", tracking_uri)


def flow_run_url(flow_run_id: str, api_url: str | None = None) -> str | None:
    """The Prefect flow run's page."""
    base = prefect_ui(api_url)
    return f"{base}/runs/flow-run/{flow_run_id}" if base else None
