"""Each pipeline step as the flow runs it: the plain step of tasks/steps/, inside an MLflow run
nested under the flow's run (tasks/adapters/tracking.py), with its settings, metrics and files
logged there, returning a StepResult.  No Prefect: tasks/prefect_tasks.py wraps each function
in one task.

Why apart from tasks/steps/: a step's code hash (tasks/steps/lineage.py) covers its module and
every project module it imports, and it keys the step's cache and the provenance of every model
it makes.  The MLflow logging here does not change what a step makes, so it stays out of that
hash (and `dmops train` and friends do not import MLflow).

Server outages: a step's MLflow run keeps its loss points across a short MLflow outage and
fails the step with one line naming the server (ServerUnavailable) when the outage outlasts the
bounds (tasks/adapters/tracking.py, tasks/adapters/metric_logger.py).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import mlflow

from diffusion.config import Config
from diffusion.evaluation_settings import RATE, sampling_rate

from tasks.adapters import tracking
from tasks.adapters.dataset_input import log_dataset_input
from tasks.adapters.dvc import (DatasetVersion, DVCError, dvc_prepare, raise_if_store_down,
                                remote_object_uri)
from tasks.adapters.servers import dvc_client_env
from tasks.pipeline_settings import PipelineConfig
from tasks.step_result import StepResult
from tasks.steps.lineage import model_weights_sha256
from tasks.table_rows import headline, served_setting


def prepare_dataset(repo: str, data_name: str, remote: str, endpoint_url: str,
                    parent_run_id: str | None = None) -> StepResult:
    """DVC runs the stage `prepare@<data_name>` (`data_name`: a name of params.yaml's
    `datasets`) when its inputs changed and pushes the folder to `remote` (S3 at
    `endpoint_url`).  details: the DatasetVersion (name, path, md5, remote, and lock_before:
    dvc.lock's entries of the dataset's stages before the repro, what a refused version is
    put back to; not part of the version).  A store
    that does not answer raises ServerUnavailable naming it; another DVC failure, DVCError."""
    with tracking.step_run("prepare_dataset", parent_run_id) as run:
        try:
            version = dvc_prepare(repo, data_name, remote, endpoint_url, env=dvc_client_env())
        except DVCError as e:
            raise_if_store_down(endpoint_url, e)
            raise
        mlflow.log_params({"dataset": data_name, "dataset_md5": version.md5, "dvc_remote": remote})
        # the Dataset column of the runs list: on this step's run and on the flow's
        log_dataset_input([run.info.run_id] + ([parent_run_id] if parent_run_id else []),
                          data_name, version.md5,
                          remote_object_uri(Path(repo), remote, version.md5))
        manifest = Path(version.path) / "manifest.csv"
        if manifest.exists():
            mlflow.log_artifact(str(manifest), "dataset")
        return StepResult(step="prepare_dataset", run_id=run.info.run_id, details=asdict(version))


def validate_data(dataset: dict, settings: dict, reference: dict | None,
                  parent_run_id: str | None = None, accept_change: bool = False) -> StepResult:
    """The data-quality gate on `dataset` (a DatasetVersion as a dict) with the gate's
    `settings` against the last validated version's statistics (`reference`, None at first).
    Logs the result JSON and the Data Docs either way; a failure raises DataValidationError
    naming the failed expectations.  `accept_change`: failed comparisons with `reference` are a
    meant change (metric `accepted_changes`, tag `data_change_accepted`), not failures.
    details: summary (text), statistics (the next reference), changes (the accepted lines)."""
    from tasks.adapters.gx.settings import ValidationSettings
    from tasks.steps.validate_data import require_valid, validate_dataset

    version = DatasetVersion(**dataset)
    with tracking.step_run("validate_data", parent_run_id, {"dataset_md5": version.md5}) as run:
        docs = Path(version.path).parent.parent / "validation" / version.name / version.md5
        report = validate_dataset(version.path, ValidationSettings.model_validate(settings),
                                  reference=reference, docs_dir=docs, dataset=version.name,
                                  accept_change=accept_change)
        metrics = {"validation_success": float(report.success),
                   "failed_expectations": float(len(report.failures))}
        if accept_change:
            metrics["accepted_changes"] = float(len(report.changes))
            mlflow.set_tag("data_change_accepted", str(len(report.changes)))
        mlflow.log_params(tracking.flatten(settings, "gate."))
        mlflow.log_metrics(metrics)
        tracking.log_json(report.result, "validation/result.json")
        if report.docs_dir is not None and Path(report.docs_dir).exists():
            mlflow.log_artifacts(str(report.docs_dir), "validation/data_docs")
        mlflow.set_tag("validation", "passed" if report.success else "failed")
        print(report.summary())
        require_valid(report)
        return StepResult(step="validate_data", run_id=run.info.run_id, metrics=metrics,
                          details={"summary": report.summary(), "statistics": report.statistics,
                                   "changes": report.changes if accept_change else []})


def train_teacher(cfg: Config, dataset: dict, work_dir: str,
                  parent_run_id: str | None = None, fresh: bool = False) -> StepResult:
    """Train the teacher of `cfg` on the versioned `dataset` into `work_dir`/teacher, resuming
    from its last checkpoint (`fresh`: from step 0, its checkpoints overwritten; a step run that
    trained nothing, its checkpoint being finished, is tagged tracking.REUSED_TAG: the time-left estimate never learns from it); loss points go to
    MLflow as `train/*`.  folders and weights:
    {"teacher": ...}.  With train.nnodes x train.nproc_per_node > 1 the plain step trains in
    torchrun ranks and hands rank 0's points here, so this one run gets what a single-process
    run gets, plus the tag `rank_weights_sha256` (each rank's, equal) and every rank's log
    under `torchrun/`."""
    from tasks.steps.train_teacher import train_teacher as train

    cfg = cfg.model_copy(update={"out_dir": str(Path(work_dir) / "teacher")})
    with tracking.step_run("train_teacher", parent_run_id, {"dataset_md5": dataset["md5"]}) as run:
        mlflow.log_params(tracking.flatten({"model": cfg.model.model_dump(mode="json"),
                                            "train": cfg.train.model_dump(mode="json")}))
        losses = tracking.ReuseWatch(tracking.metric_logger("train/"))
        result = train(cfg, resume=not fresh, on_log=losses, data_dir=dataset["path"],
                       dataset_md5=dataset["md5"])
        losses.close()  # every point in MLflow before the step goes on, or ServerUnavailable
        metrics = {"parameters": float(result.parameters), "final_loss": float(result.result.loss),
                   "train_seconds": float(result.result.seconds)}
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(result.model_dir), "model")
        checkpoints = Path(cfg.out_dir) / "checkpoints"
        if (checkpoints / "latest").exists():
            latest = (checkpoints / "latest").read_text().strip()
            mlflow.log_artifacts(str(checkpoints / latest), "checkpoints/latest")
        if result.samples_png:
            mlflow.log_artifact(str(result.samples_png), "samples")
        if result.launch_dir is not None:
            mlflow.log_artifacts(str(result.launch_dir), "torchrun")
            mlflow.set_tag("rank_weights_sha256", ",".join(result.result.rank_weights_sha256))
        sha = model_weights_sha256(result.model_dir)
        mlflow.set_tag("weights_sha256", sha)
        return StepResult(step="train_teacher", run_id=run.info.run_id, metrics=metrics,
                          folders={"teacher": str(result.model_dir)}, weights={"teacher": sha})


def distill(cfg: Config, method: str, teacher_dir: str, teacher_sha256: str, dataset: dict,
            work_dir: str, parent_run_id: str | None = None, fresh: bool = False) -> StepResult:
    """Distil the teacher at `teacher_dir` (weights `teacher_sha256`) with `method` into `work_dir`; every student (each progressive
    round's) is logged with its sample grid.  A finished student made from the same inputs is
    reused (the step run tagged tracking.REUSED_TAG when every one was) unless `fresh`: then
    every student is distilled again from step 0.  folders and weights:
    one entry per student, named as the evaluation table names it ('consistency',
    'progressive-4', ...)."""
    from diffusion.evaluation import student_name
    from diffusion.model import read_spec
    from tasks.steps.distill import distill_sampler

    step = f"distill_{method}"
    with tracking.step_run(step, parent_run_id, {"method": method}) as run:
        mlflow.log_params(tracking.flatten(getattr(cfg.distill, method).model_dump(mode="json"),
                                           f"{method}."))
        losses = tracking.ReuseWatch(tracking.metric_logger(f"{method}/"))
        students = distill_sampler(cfg, method, teacher_dir, out_dir=work_dir,
                                   resume=not fresh, on_log=losses, data_dir=dataset["path"],
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
        return StepResult(step=step, run_id=run.info.run_id, folders=folders, weights=weights)


def evaluate(cfg: Config, models: dict[str, str], dataset: dict, work_dir: str,
             parent_run_id: str | None = None) -> StepResult:
    """Quality versus NFE of the teacher and every student (`models`: name -> folder, with a
    "teacher") on `dataset`'s test split; logs the table, plot and grids.  metrics: fid_floor
    and one fid/samples_per_s per (model, sampler, NFE); details: table (rows), floor."""
    from tasks.steps.evaluate import evaluate_model

    out = Path(work_dir) / "evaluation"
    students = [Path(folder) for name, folder in models.items() if name != "teacher"]
    with tracking.step_run("evaluate", parent_run_id) as run:
        mlflow.log_params(tracking.flatten(cfg.evaluate.model_dump(mode="json"), "evaluate."))
        report = evaluate_model(models["teacher"], cfg, out, students=students,
                                data_dir=dataset["path"])
        metrics = {"fid_floor": float(report.floor)}
        for row in report.table.to_dict(orient="records"):
            key = f"{row['model']}.{row['sampler']}.nfe{int(row['nfe'])}"
            metrics.update({f"fid/{key}": float(row["fid"]),
                            f"{RATE}/{key}": sampling_rate(row)})
            # the bootstrap interval of each setting's FID and KID (diffusion/bootstrap.py)
            metrics.update({f"{bound}/{key}": float(row[bound])
                            for bound in ("fid_lo", "fid_hi", "kid_lo", "kid_hi")
                            if row.get(bound) is not None and row[bound] == row[bound]})
        quality = report.table_quality
        if quality is not None:   # a table's rows: table/<model>/<metric>, the floor as table/floor/...
            for model, scores in {"floor": quality["floor"], **quality["models"]}.items():
                metrics.update({f"table/{model}/{key}": value for key, value in scores.items()})
        mlflow.log_metrics(metrics)
        for name in ("csv", "json", "plot"):
            mlflow.log_artifact(str(report.files[name]), "quality_vs_nfe")
        if quality is not None:
            for name in ("table_csv", "table_json"):
                mlflow.log_artifact(str(report.files[name]), "table_quality")
        for png in sorted(out.glob("*.png")):
            mlflow.log_artifact(str(png), "samples")
        details = {"table": report.table.to_dict(orient="records"), "floor": float(report.floor),
                   "noun": report.noun}
        if quality is not None:
            # the register step scores the served setting's rows on the same table when the
            # evaluation scored another one (tasks/steps/table_quality.py rows_of_served)
            details.update(table_quality=quality, data_dir=dataset["path"])
        return StepResult(step="evaluate", run_id=run.info.run_id, metrics=metrics, details=details)


def register(config: PipelineConfig, evaluation: StepResult, folders: dict[str, str],
             weights: dict[str, str], work_dir: str, tags: dict[str, str],
             parent_run_id: str | None = None) -> StepResult:
    """Register the model to serve (tasks/steps/register.py) as `challenger` of
    pipeline.model_name.  `folders` and `weights`: every evaluated model's folder and weights
    sha256, by the name the evaluation table gives it.  Its
    metrics are its row of the evaluation: the same n, seed and feature space that the promote
    step scores the champion with.  The effective configuration is logged as
    lineage/config.json.  A table model's rows are those of the setting it is served at
    (`_served_rows`): its metrics then hold table_<metric> and table_floor_<metric>; the
    headline ones (tasks/table_rows.py HEADLINE) go on the flow's run `parent_run_id` too, so the
    runs list compares table runs by them.  Rows that copy the training rows beyond
    pipeline.rows_guard (tasks/steps/register_guard.py) are refused before anything is
    registered: RowsRefused, its one line also the step run's `rows_guard` tag.
    details: version, model_dir (the served copy), candidate (text), same_as_champion (True:
    nothing registered, version is the champion's, made from the same inputs); for a table model also
    rows_setting {"model", "sampler", "steps", "nfe"}: the setting those rows are of."""
    from tasks.steps.register import register_candidate

    settings = config.pipeline
    with tracking.step_run("register_model", parent_run_id) as run:
        tracking.log_json(config.model_dump(mode="json"), "lineage/config.json")
        rows, setting = _served_rows(config, evaluation, folders, work_dir)
        if rows is not None:
            _guard_rows(rows, setting, settings.rows_guard, parent_run_id)
        registered = register_candidate(evaluation.details["table"], folders, weights, work_dir,
                                        settings.model_name, settings.max_fid_ratio, tags,
                                        run.info.run_id, table_quality=rows)
        metrics = registered.metrics
        mlflow.log_metrics(metrics)
        mlflow.set_tag("served_as", registered.candidate.name)
        details = {"version": registered.version, "model_dir": str(registered.model_dir),
                   "candidate": registered.candidate.describe(),
                   "same_as_champion": registered.same_as_champion}
        if registered.same_as_champion:
            mlflow.set_tag("same_as_champion", registered.version)
        if setting is not None:
            details["rows_setting"] = setting
            mlflow.set_tag("rows_setting", served_setting(setting["sampler"], setting["nfe"]))
        return StepResult(step="register_model", run_id=run.info.run_id, metrics=metrics,
                          details=details,
                          folders={registered.candidate.name: str(registered.model_dir)})


def _served_rows(config: PipelineConfig, evaluation: StepResult, folders: dict[str, str],
                 work_dir: str) -> tuple[dict | None, dict | None]:
    """(rows scores in table_quality's shape, the setting they are of) of the model the register
    step will serve (select_candidate's rule on the evaluation table), scored now when the
    evaluation scored it at another setting (its files logged under table_quality/served);
    (None, None) for a model that is not a table's."""
    import pandas as pd

    from tasks.steps.select_candidate import choose_candidate
    from tasks.steps.table_quality import rows_of_served

    quality = evaluation.details.get("table_quality")
    if quality is None:
        return None, None
    candidate = choose_candidate(pd.DataFrame(evaluation.details["table"]),
                                 {k: Path(v) for k, v in folders.items()},
                                 config.pipeline.max_fid_ratio)
    nfe = int(candidate.row["nfe"])
    rows = rows_of_served(quality, candidate.name, candidate.source, candidate.sampler,
                          candidate.steps, nfe, config, evaluation.details.get("data_dir"),
                          Path(work_dir) / "candidate" / "rows")
    for path in rows.pop("files", {}).values():
        mlflow.log_artifact(str(path), "table_quality/served")
    return rows, {"model": candidate.name, "sampler": candidate.sampler,
                  "steps": candidate.steps, "nfe": nfe}


def _guard_rows(rows: dict, setting: dict, guard, parent_run_id: str | None) -> None:
    """Log the served rows' headline scores (and the floor's) on the flow's run `parent_run_id`
    (registration logs them on this step's run; a refusal here, before it does), then refuse
    the rows when they copy the training rows (register_guard.check_served_rows)."""
    from tasks.steps.register_guard import RowsRefused, check_served_rows

    served, = rows["models"].values()
    metrics = headline(served, rows["floor"])
    if parent_run_id is not None:
        mlflow.MlflowClient().log_batch(parent_run_id, metrics=[
            mlflow.entities.Metric(k, v, int(time.time() * 1000), 0) for k, v in metrics.items()])
    try:
        check_served_rows(rows, f"{setting['model']} ({served_setting(setting['sampler'], setting['nfe'])})",
                          guard)
    except RowsRefused as e:   # what registration would have logged here, and why it did not
        mlflow.log_metrics(metrics)
        mlflow.set_tag("rows_guard", str(e))
        raise
    mlflow.set_tag("rows_guard", "passed")


UNCHANGED = "unchanged"   # the promote step's outcome when nothing was registered


def _nothing_to_promote(version: str, parent_run_id: str | None) -> StepResult:
    """The promote step when the register step registered nothing (the champion, `version`,
    was made from the same inputs): no comparison, release, alias move or history entry."""
    reason = f"nothing registered: version {version}, the champion, was made from the same inputs"
    with tracking.step_run("promote", parent_run_id) as run:
        mlflow.log_metric("promoted", 0.0)
        mlflow.set_tags({"promoted": "False", "outcome": UNCHANGED, "reason": reason,
                         "previous_champion": version})
        return StepResult(step="promote", run_id=run.info.run_id, metrics={"promoted": 0.0},
                          details={"promoted": False, "reason": reason, "outcome": UNCHANGED,
                                   "difference": None, "release": None,
                                   "previous_champion": version, "comparable": True,
                                   "champion_metrics": None})


def promote(config: PipelineConfig, challenger: StepResult, dataset: dict, releases_bucket: str,
            work_dir: str, tags: dict[str, str], parent_run_id: str | None = None) -> StepResult:
    """tasks/steps/promote.py under an MLflow step run: the champion scored on `dataset` (the
    versioned folder the challenger was evaluated on), the decision, the release and the alias
    move under the model's promotion lock, one promotion-history entry.  `tags` (lineage of the
    run, with its prefect_flow_run_id) go on the model card.  metrics: the champion's scores
    (champion_*, when there is a champion), the challenger's score on the rule's metric
    (challenger_<metric>), promoted (1 or 0) and, when the paired bootstrap decided,
    difference_estimate / _lo / _hi; params: the rule (promote.*); tags: promoted, outcome
    (promote | keep | tie), reason, ...; details: promoted, outcome, difference, reason,
    release, previous_champion, comparable."""
    from tasks.steps.promote import Challenger, promote as promote_challenger

    version = str(challenger.details["version"])
    if challenger.details.get("same_as_champion"):   # nothing registered: nothing to compare
        return _nothing_to_promote(version, parent_run_id)
    with tracking.step_run("promote", parent_run_id) as run:
        result = promote_challenger(
            Challenger(version, Path(challenger.details["model_dir"]), challenger.metrics),
            config.pipeline.model_name, config.pipeline.promote, releases_bucket,
            dataset["path"], config, work_dir, {**tags, "version": version},
            tags.get("prefect_flow_run_id"))
        decision = result.decision
        rule = config.pipeline.promote
        mlflow.log_params({"model_name": config.pipeline.model_name,
                           "challenger_version": version,
                           **tracking.flatten(rule.model_dump(mode="json"), "promote.")})
        # the decision as numbers: the runs list sorts and compares promote runs by them
        metrics = tracking.numeric(result.champion_metrics or {}, "champion_")
        metrics.update({f"challenger_{k}": v for k, v in challenger.metrics.items()
                        if k == rule.metric})
        metrics["promoted"] = 1.0 if decision.promoted else 0.0
        if decision.difference:  # the paired interval of metric(challenger) - metric(champion)
            metrics.update({f"difference_{k}": float(decision.difference[k])
                            for k in ("estimate", "lo", "hi") if k in decision.difference})
        mlflow.log_metrics(metrics)
        mlflow.set_tags({"promoted": str(decision.promoted), "reason": decision.reason,
                         "outcome": str(decision.outcome),
                         "challenger_version": version,
                         "previous_champion": str(result.previous_champion),
                         "comparable": str(result.comparable),
                         "promotion_history": f"s3://{releases_bucket}/{result.history_key}"})
        return StepResult(step="promote", run_id=run.info.run_id, metrics=metrics,
                          details={"promoted": decision.promoted, "reason": decision.reason,
                                   "outcome": decision.outcome, "difference": decision.difference,
                                   "release": decision.release_uri,
                                   "previous_champion": result.previous_champion,
                                   "comparable": result.comparable,
                                   "champion_metrics": result.champion_metrics})
