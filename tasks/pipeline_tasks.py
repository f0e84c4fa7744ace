"""The pipeline's Prefect tasks: each wraps one step of tasks/ with retries, a timeout, input
caching and MLflow logging into a run nested under the flow's run.

They live apart from the steps themselves so that the plain CLI commands (`dmops train`,
`dmops sample`, ...) do not pay for importing Prefect and MLflow.

Caching: a task's key is its inputs, its own source and the sha256 of the project code its
step runs (`cached(step)`: INPUTS + TASK_SOURCE + ProjectCode(step), tasks/lineage.py), without
the flow's MLflow run id.  Inputs are plain JSON-able values -- the config as a dict, the
dataset's content hash, and the sha256 of every model's weights a step consumes -- so a rerun
reuses a step only when its settings, data, upstream weights and code are all unchanged; the
flow's `refresh` switch bypasses it.

Server outages: a step's MLflow run (tracking.step_run) keeps its loss points across a short
MLflow outage and fails the step with one line naming the server (ServerUnavailable) when the
outage outlasts the bounds (tasks/tracking.py, tasks/metric_logger.py); DVC's S3 requests are
bounded the same way (tasks.servers.DVC_RETRY_ENV).  A step that failed with ServerUnavailable
is not retried by Prefect: its retry budget is spent (`retry_may_help`, which also spares a
retry against a full disk).
"""

from __future__ import annotations

import csv
import errno
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import mlflow
from prefect import task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy

from diffusion.atomic import WriteError
from diffusion.config import Config, ConfigError

from . import tracking
from .distill import distill_sampler
from .evaluate import Candidate, choose_candidate, evaluate_model, write_candidate
from .lineage import STEP_MODULES, model_weights_sha256, step_code_sha256
from .prepare_dataset import DatasetVersion, DVCError, dvc_prepare
from .release import s3_client_from_env
from .servers import (S3, ServerUnavailable, boto_config, dvc_client_env, mlflow_call, retry_call,
                      s3_url_from_env)
from .train_teacher import train_teacher
from .validate_data import ValidationSettings, require_valid, validate_dataset

HOUR = 3600


@dataclass
class ProjectCode(CachePolicy):
    """Cache-key part: the sha256 of the project code that step `step` runs (its module and
    every project module it imports), so a change to, e.g., diffusion/objectives.py is a miss."""
    step: str = ""

    def compute_key(self, task_ctx: Any, inputs: Optional[dict], flow_parameters: Optional[dict],
                    **kwargs: Any) -> Optional[str]:
        return step_code_sha256(self.step)


def cached(step: str) -> CachePolicy:
    return (INPUTS + TASK_SOURCE + ProjectCode(step=step)) - "parent_run_id"


def pipeline_code() -> dict[str, str]:
    """The code hash of every step: part of the pipeline's work-folder key."""
    return {step: step_code_sha256(step) for step in STEP_MODULES}


def retry_may_help(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: a step is not run again after a failure a retry cannot mend --
    a server that stayed away for its whole retry budget (ServerUnavailable: its bounds are
    spent, a retry would only add their time again and replace the error, which already names
    the server and the fix, with its own) or a disk that refused a write for lack of room or
    permission to grow (WriteError with ENOSPC, EDQUOT, EFBIG or EROFS: a retry seconds later
    meets the same disk).  Every other failure goes to the task's retries."""
    error = getattr(state, "data", None)
    if isinstance(error, WriteError):
        return error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
    return not isinstance(error, ServerUnavailable)


def _config(cfg_json: dict) -> Config:
    return Config.model_validate(cfg_json)


def _log_folder_files(folder: Path, artifact_path: str, pattern: str = "*.png") -> None:
    for path in sorted(folder.glob(pattern)):
        mlflow.log_artifact(str(path), artifact_path)


# --- data ---------------------------------------------------------------------------------

def s3_client(endpoint_url: str):
    """A boto3 S3 client of `endpoint_url` (credentials from the environment), with the bounded
    retries of tasks.servers.boto_config."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url, config=boto_config())


@task(name="prepare-dataset", retries=2, retry_delay_seconds=10, timeout_seconds=HOUR,
      retry_condition_fn=retry_may_help, cache_policy=NO_CACHE)  # DVC itself skips an unchanged stage; its hash must be fresh
def prepare_dataset_task(repo: str, data_name: str, remote: str, endpoint_url: str,
                         parent_run_id: str | None = None) -> dict:
    with tracking.step_run("prepare_dataset", parent_run_id):
        try:
            version = dvc_prepare(repo, data_name, remote, endpoint_url, env=dvc_client_env())
        except DVCError as e:
            _raise_if_store_down(endpoint_url, e)
            raise
        mlflow.log_params({"dataset": data_name, "dataset_md5": version.md5, "dvc_remote": remote})
        manifest = Path(version.path) / "manifest.csv"
        if manifest.exists():
            mlflow.log_artifact(str(manifest), "dataset")
        return asdict(version)


def _raise_if_store_down(endpoint_url: str, error: DVCError) -> None:
    """DVC reports a store that is down as a many-line "unexpected error": ask the store itself,
    with the bounded retries, and raise ServerUnavailable naming it (chained to DVC's error)
    when it does not answer.  A store that answers, even with a refusal, leaves DVC's error."""
    try:
        retry_call(s3_client(endpoint_url).list_buckets, server=S3, url=endpoint_url)
    except ServerUnavailable as down:
        raise down from error
    except Exception:  # noqa: BLE001 - the store answered; DVC's own error says what went wrong
        pass


@dataclass
class ValidationOutcome:
    success: bool
    summary: str
    statistics: dict
    run_id: str


@task(name="validate-data", retries=0, timeout_seconds=HOUR, cache_policy=cached("validate"),
      persist_result=True)
def validate_data_task(dataset: dict, settings: dict, reference: dict | None,
                       parent_run_id: str | None = None) -> ValidationOutcome:
    """The data-quality gate. Logs the result JSON and the Data Docs HTML either way; a failure
    raises DataValidationError naming the failed expectations, which stops the flow."""
    version = DatasetVersion(**dataset)
    with tracking.step_run("validate_data", parent_run_id, {"dataset_md5": version.md5}) as run:
        docs = Path(version.path).parent.parent / "validation" / version.name / version.md5
        report = validate_dataset(version.path, ValidationSettings.model_validate(settings),
                                  reference=reference, docs_dir=docs)
        mlflow.log_params(tracking.flatten(settings, "gate."))
        mlflow.log_metrics({"validation_success": float(report.success),
                            "failed_expectations": float(len(report.failures))})
        tracking.log_json(report.result, "validation/result.json")
        if report.docs_dir is not None and Path(report.docs_dir).exists():
            mlflow.log_artifacts(str(report.docs_dir), "validation/data_docs")
        mlflow.set_tag("validation", "passed" if report.success else "failed")
        print(report.summary())
        require_valid(report)
        return ValidationOutcome(True, report.summary(), report.statistics, run.info.run_id)


# --- models -------------------------------------------------------------------------------

@dataclass
class StepOutput:
    """What a model step produced: folders on this machine, the sha256 of each one's weights
    (what downstream steps are keyed by), and the MLflow run that holds them."""
    run_id: str
    folders: dict[str, str] = field(default_factory=dict)   # name -> model folder
    weights: dict[str, str] = field(default_factory=dict)   # name -> weights sha256
    metrics: dict = field(default_factory=dict)


@task(name="train-teacher", retries=1, retry_delay_seconds=5, timeout_seconds=6 * HOUR,
      retry_condition_fn=retry_may_help, cache_policy=cached("train"), persist_result=True)
def train_teacher_task(cfg_json: dict, dataset: dict, work_dir: str,
                       parent_run_id: str | None = None) -> StepOutput:
    """Train the teacher on the validated dataset; a retry resumes from the last checkpoint."""
    cfg = _config({**cfg_json, "out_dir": str(Path(work_dir) / "teacher")})
    with tracking.step_run("train_teacher", parent_run_id, {"dataset_md5": dataset["md5"]}) as run:
        mlflow.log_params(tracking.flatten({"model": cfg_json["model"], "train": cfg_json["train"]}))
        losses = tracking.metric_logger("train/")
        result = train_teacher(cfg, resume=True, on_log=losses, data_dir=dataset["path"],
                               dataset_md5=dataset["md5"])
        losses.close()  # every point in MLflow before the step goes on, or ServerUnavailable
        out = Path(cfg.out_dir)
        mlflow.log_metrics({"parameters": float(result.parameters),
                            "final_loss": float(result.result.loss),
                            "train_seconds": float(result.result.seconds)})
        mlflow.log_artifacts(str(result.model_dir), "model")
        latest = out / "checkpoints" / "latest"
        if latest.exists():
            mlflow.log_artifacts(str(out / "checkpoints" / latest.read_text().strip()),
                                 "checkpoints/latest")
        if result.samples_png:
            mlflow.log_artifact(str(result.samples_png), "samples")
        sha = model_weights_sha256(result.model_dir)
        mlflow.set_tag("weights_sha256", sha)
        return StepOutput(run.info.run_id, {"teacher": str(result.model_dir)}, {"teacher": sha})


@task(name="distill-sampler", retries=1, retry_delay_seconds=5, timeout_seconds=6 * HOUR,
      retry_condition_fn=retry_may_help, cache_policy=cached("distill"), persist_result=True)
def distill_task(cfg_json: dict, method: str, teacher_dir: str, teacher_sha256: str,
                 dataset: dict, work_dir: str, parent_run_id: str | None = None) -> StepOutput:
    """Distil the teacher with `method`; every student (each progressive round's) is logged.
    `teacher_sha256` (the teacher's weights) keys the cache: another teacher is a miss."""
    from diffusion.evaluation import student_name
    from diffusion.model import read_spec

    cfg = _config(cfg_json)
    with tracking.step_run(f"distill_{method}", parent_run_id, {"method": method}) as run:
        mlflow.log_params(tracking.flatten(cfg_json["distill"][method], f"{method}."))
        losses = tracking.metric_logger(f"{method}/")
        students = distill_sampler(cfg, method, teacher_dir, out_dir=work_dir, resume=True,
                                   on_log=losses, data_dir=dataset["path"],
                                   dataset_md5=dataset["md5"])
        losses.close()  # every point in MLflow before the step goes on, or ServerUnavailable
        folders, weights = {}, {}
        for folder in students:
            name = student_name(read_spec(folder))
            folders[name] = str(folder)
            weights[name] = model_weights_sha256(folder)
            mlflow.log_artifacts(str(folder), f"students/{name}/model")
            png = folder.parent / "samples.png"
            if png.exists():
                mlflow.log_artifact(str(png), f"students/{name}")
        mlflow.set_tag("teacher_sha256", teacher_sha256)
        return StepOutput(run.info.run_id, folders, weights)


@task(name="evaluate", retries=1, retry_delay_seconds=5, timeout_seconds=3 * HOUR,
      retry_condition_fn=retry_may_help, cache_policy=cached("evaluate"), persist_result=True)
def evaluate_task(cfg_json: dict, teacher_dir: str, students: dict[str, str], dataset: dict,
                  work_dir: str, weights: dict[str, str], parent_run_id: str | None = None) -> dict:
    """Quality versus NFE of the teacher and every student; logs the table, plot and grids.
    `weights` (name -> sha256 of every evaluated model) keys the cache."""
    cfg = _config(cfg_json)
    out = Path(work_dir) / "evaluation"
    with tracking.step_run("evaluate", parent_run_id) as run:
        mlflow.log_params(tracking.flatten(cfg_json["evaluate"], "evaluate."))
        report = evaluate_model(teacher_dir, cfg, out, students=[Path(p) for p in students.values()],
                                data_dir=dataset["path"])
        for row in report.table.to_dict(orient="records"):
            key = f"{row['model']}.{row['sampler']}.nfe{int(row['nfe'])}"
            mlflow.log_metrics({f"fid/{key}": float(row["fid"]),
                                f"images_per_s/{key}": float(row["images_per_s"])})
        mlflow.log_metric("fid_floor", float(report.floor))
        for name in ("csv", "json", "plot"):
            mlflow.log_artifact(str(report.files[name]), "quality_vs_nfe")
        _log_folder_files(out, "samples")
        return {"run_id": run.info.run_id, "table": report.table.to_dict(orient="records"),
                "floor": report.floor}


# --- registry -----------------------------------------------------------------------------

def lineage_tags(model_dir: Path, weights_sha256: str) -> dict[str, str]:
    """Tags that say what made the served weights -- read from their own model.json, so a
    version whose weights a later run reused still names the commit and code that made them."""
    from diffusion.model import read_spec

    spec = read_spec(model_dir)
    p = spec.provenance
    if p is None:
        raise RuntimeError(f"{model_dir}/model.json records no provenance; it cannot be registered")
    tags = {"weights_sha256": weights_sha256, "weights_git_commit": p.git_commit or "unknown",
            "weights_code_sha256": p.code_sha256, "weights_settings_sha256": p.settings_sha256,
            "training_data_sha256": p.data_sha256,
            "sample_shape": "x".join(map(str, spec.shape)), "data_kind": spec.data.kind or "unknown"}
    if p.teacher_sha256:
        tags["teacher_sha256"] = p.teacher_sha256
    return tags


@task(name="register-model", retries=2, retry_delay_seconds=10, timeout_seconds=HOUR,
      retry_condition_fn=retry_may_help, cache_policy=NO_CACHE)
def register_task(evaluation: dict, folders: dict[str, str], weights: dict[str, str],
                  work_dir: str, model_name: str, max_fid_ratio: float, tags: dict[str, str],
                  config: dict, parent_run_id: str | None = None) -> dict:
    """Choose the model to serve, log it as a pyfunc and register it with alias `challenger`.
    Its metrics are its row of the evaluation: the same n, seed and feature space that
    `score_model` gives the champion in the promote step.  Its tags add what made its weights
    (`lineage_tags`); the effective configuration is logged as lineage/config.json."""
    import pandas as pd

    from .register_model import register_model

    candidate: Candidate = choose_candidate(pd.DataFrame(evaluation["table"]),
                                            {k: Path(v) for k, v in folders.items()}, max_fid_ratio)
    model_dir = write_candidate(candidate, Path(work_dir) / "candidate" / "model")
    print(f"candidate: {candidate.describe()}")
    with tracking.step_run("register_model", parent_run_id, {"served_as": candidate.name}) as run:
        numbers = tracking.numeric(candidate.row)
        mlflow.log_metrics(numbers)
        tracking.log_json(config, "lineage/config.json")
        all_tags = {**tags, **lineage_tags(model_dir, weights[candidate.name]),
                    "served_as": candidate.name, "sampler": candidate.sampler,
                    "nfe": str(int(candidate.row["nfe"])),
                    "metrics": json.dumps({k: round(numbers[k], 5) for k in
                                           ("fid", "fid_floor", "kid_mean", "images_per_s")
                                           if k in numbers})}
        version = register_model(model_dir, model_name, all_tags, run_id=run.info.run_id)
        print(f"registered {model_name} version {version} (alias challenger)")
        return {"version": version, "model_dir": str(model_dir), "metrics": numbers,
                "candidate": candidate.describe(), "run_id": run.info.run_id}


@task(name="promote", retries=0, timeout_seconds=HOUR, cache_policy=NO_CACHE)
def promote_task(cfg_json: dict, challenger: dict, model_name: str, promote: dict,
                 releases_bucket: str, work_dir: str, release_meta: dict,
                 parent_run_id: str | None = None, *, data_dir: str,
                 flow_run_id: str | None = None) -> dict:
    """tasks.promote.promote under an MLflow step run: the champion scored on `data_dir` (the
    versioned dataset folder the challenger was evaluated on), the decision, the release and
    the alias move under the model's promotion lock, one promotion-history entry."""
    from .promote import Challenger, promote as promote_step

    if flow_run_id is None:
        from prefect.runtime import flow_run

        flow_run_id = release_meta.get("prefect_flow_run_id") or flow_run.get_id()
    with tracking.step_run("promote", parent_run_id) as run:
        result = promote_step(
            Challenger(str(challenger["version"]), Path(challenger["model_dir"]),
                       challenger["metrics"]),
            model_name, promote, releases_bucket, data_dir, _config(cfg_json), work_dir,
            release_meta, None if flow_run_id is None else str(flow_run_id))
        decision = result.decision
        if result.champion_metrics is not None:
            mlflow.log_metrics(tracking.numeric(result.champion_metrics, "champion_"))
        mlflow.set_tags({"promoted": str(decision.promoted), "reason": decision.reason,
                         "challenger_version": str(challenger["version"]),
                         "previous_champion": str(result.previous_champion),
                         "comparable": str(result.comparable),
                         "promotion_history": f"s3://{releases_bucket}/{result.history_key}"})
        return {"promoted": decision.promoted, "reason": decision.reason,
                "release": decision.release_uri,
                "previous_champion": result.previous_champion, "run_id": run.info.run_id,
                "champion_metrics": result.champion_metrics, "comparable": result.comparable}


# --- small adapters the flow calls between tasks ------------------------------------------

def _reference_key(dataset_name: str) -> str:
    return f"validated/{dataset_name}/statistics.json"


def load_reference(bucket: str, dataset_name: str) -> dict | None:
    """The summary statistics of the last dataset that passed the gate (None on the first run):
    the drift expectations compare against them.  Transient S3 errors are retried (the request
    and the streamed body together); ServerUnavailable names the store when they persist."""
    from botocore.exceptions import ClientError

    s3 = s3_client_from_env()

    def read() -> dict | None:
        try:
            body = s3.get_object(Bucket=bucket, Key=_reference_key(dataset_name))["Body"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return json.loads(body.read())

    return retry_call(read, server=S3, url=s3_url_from_env())


def save_reference(bucket: str, dataset_name: str, statistics: dict) -> None:
    """Store `statistics` as the reference of the next run's drift checks (one object,
    overwritten: writing it again is harmless, so transient errors are retried)."""
    retry_call(s3_client_from_env().put_object, Bucket=bucket, Key=_reference_key(dataset_name),
               Body=json.dumps(statistics, default=float).encode(), server=S3, url=s3_url_from_env())


def cached_steps(parent_run_id: str, step_runs: dict[str, str]) -> list[str]:
    """Steps whose MLflow run belongs to an earlier flow run: Prefect reused their cached result.
    Reads only, retried on transient MLflow errors."""
    client = mlflow.MlflowClient()
    return [step for step, run_id in step_runs.items()
            if mlflow_call(client.get_run, run_id)
            .data.tags.get("mlflow.parentRunId") != parent_run_id]


def dataset_sample(dataset: dict) -> tuple[str, str]:
    """(sample shape as '1x8x8', kind 'image' | 'vector') of a processed dataset folder, read
    from its manifest and meta.json without loading the arrays."""
    folder = Path(dataset["path"])
    kind = json.loads((folder / "meta.json").read_text()).get("kind", "unknown")
    with open(folder / "manifest.csv", newline="") as f:
        first = next(csv.DictReader(f), None)
    return (first or {}).get("shape", "unknown"), kind


def check_comparable(model_name: str, dataset: dict) -> None:
    """Refuse, before any training, a run whose data cannot give a model comparable with the
    versions already registered under `model_name` (another sample shape or modality): its
    challenger could never be scored against the champion.  ConfigError names the setting."""
    from .register_model import registered_sample

    registered = registered_sample(model_name)
    if registered is None:
        return
    shape, kind = dataset_sample(dataset)
    if (shape, kind) != registered[:2]:
        raise ConfigError(
            f"pipeline.model_name {model_name!r} holds models of {registered[1]} samples of shape "
            f"{registered[0]} (version {registered[2]}), but dataset {dataset['name']!r} has "
            f"{kind} samples of shape {shape}: a model of this data cannot be compared with its "
            f"champion; set pipeline.model_name to a name of its own")
