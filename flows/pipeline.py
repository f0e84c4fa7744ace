"""The training pipeline, as one Prefect flow that reads top to bottom like the process:

    versioned dataset (DVC) -> data-quality gate (GX) -> teacher -> students -> evaluation
    -> registered challenger (MLflow) -> champion + S3 release when it wins

MLflow gets one parent run per flow run and a nested run per step; Prefect gets a markdown
summary. Steps are cached on their inputs (settings, dataset md5, the sha256 of every model's
weights they consume) and the code they run (tasks/prefect_tasks.py), so a rerun skips only
what nothing has changed for; `refresh=True` recomputes everything: no step comes from the
cache, and the teacher and students train again from step 0 rather than resume a finished
checkpoint or reuse a finished student.  `accept_data_change=True` (`dmops run
--accept-data-change`) takes a version that fails only the gate's comparisons with the last
validated one (a new category, a dropped column, drift) as a meant change: it is validated on
its own checks and becomes the next run's reference; the layout check against the registered
model still applies.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

import mlflow

# the core's messages (the `diffusion` logger) in the flow run's Prefect logs; Prefect reads it
# when it is imported, and a user's own setting wins
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "diffusion")
from prefect import flow  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from diffusion.config import ConfigError  # noqa: E402
from diffusion.messages import show_messages  # noqa: E402
from tasks import prefect_tasks as steps
from tasks.adapters.drift_reference import load_reference, save_reference
from tasks.adapters.dvc import put_back_new_version, put_back_version
from tasks.adapters.gx.report import DataValidationError
from tasks.adapters.missing_env import holds_team_account, missing_message
from tasks.adapters.experiment import use_experiment
from tasks.adapters.servers import MLFLOW, ServerUnavailable, bound_client_env
from tasks.adapters.tracking import cached_steps, source_commit_tag, tracked_run
from tasks.pipeline_settings import load_pipeline_config
from tasks.step_result import StepResult
from tasks.steps.dataset_entry import check_dataset
from tasks.steps.headline import HEADLINE_PARAMS, headline_columns, headline_metrics, headline_params
from tasks.steps.lineage import git_commit
from tasks.steps.register import check_comparable
from tasks.table_rows import rows_line

from flows.progress import step_done, track_pipeline
from flows.run_logs import send_core_messages_to_prefect
from flows.summary import summary_markdown

REQUIRED_ENV = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL_S3")
# the flow's MLflow run says why it failed: the error's message in one line (the runs list can
# show it as a column), at most this long
FAILURE_TAG, FAILURE_CHARS = "failure_reason", 1000


class PipelineError(RuntimeError):
    """The pipeline cannot start: the message says what to fix."""


def _require_stack_env() -> None:
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if missing:
        raise PipelineError(missing_message(missing, [n for n in REQUIRED_ENV if n not in missing],
                                            team=holds_team_account(os.environ)))


def _work_dir(repo: Path, cfg_json: dict, dataset_md5: str, code: dict[str, str]) -> Path:
    """One folder per (settings, dataset, code of every step): cached steps find their outputs
    again, and a run of other code never resumes or reuses another's files."""
    key = hashlib.sha256(json.dumps([cfg_json, dataset_md5, code], sort_keys=True).encode()).hexdigest()
    return repo / "runs" / "pipeline" / key[:12]


def failure_reason(error: BaseException) -> str:
    """`error`'s message as one line (at most FAILURE_CHARS) for the flow run's FAILURE_TAG:
    the data gate's failed expectations, the rows guard's refusal, a server that did not answer.
    Never a credential: a message that looks like it holds one (tasks/adapters/registry.py
    check_tags' rules) is replaced by the error's class and where to read it."""
    from tasks.adapters.registry import RegistryError, check_tags

    text = " ".join(str(error).split()) or type(error).__name__
    if len(text) > FAILURE_CHARS:
        text = text[:FAILURE_CHARS - 3] + "..."
    try:
        check_tags({FAILURE_TAG: text}, "the flow run's failure reason")
    except RegistryError:
        text = (f"{type(error).__name__}: its message is not recorded here (it looks like it holds "
                "a credential); the flow run's log has it")
    return text


@contextmanager
def _failure_recorded(run_id: str, model_name: str):
    """On an error: the flow's MLflow run `run_id` gets FAILURE_TAG (`failure_reason`), and for
    a fault that is the user's to fix (the data, the gate, the served rows, a setting) the flow
    run's summary artifact says it in one line; then the error goes on.  Neither may replace
    the error: a server that fails here is left to the error to name."""
    try:
        yield
    except Exception as e:
        reason = failure_reason(e)
        try:   # not against an MLflow server that the error says is gone (its retries: seconds)
            if not (isinstance(e, ServerUnavailable) and e.server == MLFLOW):
                mlflow.MlflowClient().set_tag(run_id, FAILURE_TAG, reason)
        except Exception:
            pass
        if _user_fault(e):
            try:
                create_markdown_artifact(f"# {model_name}: the pipeline stopped\n\n**Reason:** {reason}\n",
                                         key="training-pipeline-summary",
                                         description="why the run stopped")
            except Exception:
                pass
        raise


def _user_fault(error: BaseException) -> bool:
    from diffusion.config import ConfigError
    from diffusion.data_errors import DataError
    from tasks.adapters.gx.report import DataValidationError

    return isinstance(error, (ConfigError, DataError, DataValidationError))


def _fresh(task, output: StepResult, **kwargs) -> StepResult:
    """A cached step whose model folders were deleted since is run again."""
    if all(Path(p).exists() for p in output.folders.values()):
        return output
    print(f"{task.name}: cached outputs are gone from this machine; running it again")
    return task.with_options(refresh_cache=True)(**kwargs)


@flow(name="training-pipeline", log_prints=True)
def training_pipeline(config: str = "params.yaml", profile: str | None = None,
                      overrides: list[str] | None = None, repo: str = ".",
                      refresh: bool = False, accept_data_change: bool = False) -> dict:
    """Versioned data to a promoted model; returns the registered version, the promotion
    decision and the release path."""
    _require_stack_env()
    show_messages()
    send_core_messages_to_prefect()   # also where Prefect was imported first (a worker's run)
    repo_path = Path(repo).resolve()
    cfg = load_pipeline_config(repo_path / config, profile, overrides or [])
    # a missing or unreadable source, a target that is no column: one line naming the entry
    # before any run or stage starts (`dmops run` checked already; a worker's run has not)
    check_dataset(cfg.data, cfg.dataset or cfg.data.name, repo_path)
    settings = cfg.pipeline
    # the model steps' settings (their cache key): not the run's name, folder or orchestration
    cfg_json = cfg.model_dump(mode="json", exclude={"out_dir", "pipeline", "profile"})
    cache = Path(cfg_json["evaluate"]["feature_cache"])  # relative to the repo, not to the cwd
    cfg_json["evaluate"]["feature_cache"] = str(cache if cache.is_absolute() else repo_path / cache)
    opts = {"refresh_cache": True} if refresh else {}

    # MLflow's client retries and timeout bounded (a dead server is reported in seconds, not
    # 4 minutes) before its first request, in whichever process runs the flow; a user's own
    # settings win
    bound_client_env()
    # a model-training experiment whose runs list shows the headline numbers as columns
    use_experiment(settings.experiment, headline_columns(cfg.data.is_table), HEADLINE_PARAMS)
    run_name = flow_run.get_name() or "training-pipeline"
    commit = git_commit(repo_path)
    # tracked_run: an MLflow server gone at the end does not replace the step's one-line error
    with tracked_run(run_name, tags={
            "prefect_flow_run_id": str(flow_run.get_id()), "profile": str(cfg.profile),
            **source_commit_tag(commit)}) as parent, \
            _failure_recorded(parent.info.run_id, settings.model_name):
        pid = parent.info.run_id
        progress = track_pipeline(settings.methods, cfg.profile, parent)  # a line per step
        prepared = steps.prepare_dataset_task(str(repo_path), cfg.dataset, settings.dvc_remote,
                                              os.environ["AWS_ENDPOINT_URL_S3"], parent_run_id=pid)
        step_done(progress, prepared, pid)
        dataset = dict(prepared.details)
        # dvc.lock's entries of the dataset before this run's `dvc repro`: no part of the version
        # (nor of any step's cache key), what a version the gate refuses is put back to
        lock_before = dataset.pop("lock_before", None)
        code = steps.pipeline_code()
        work = _work_dir(repo_path, cfg_json, dataset["md5"], code)
        mlflow.set_tags({"dataset_md5": dataset["md5"], "work_dir": str(work),
                         **{f"code_sha256.{step}": sha for step, sha in code.items()}})
        mlflow.log_params(headline_params(cfg.profile, cfg.dataset, dataset["md5"], commit, code))

        gate = settings.validate_data.model_dump(mode="json")
        reference = load_reference(settings.data_bucket, cfg.dataset)
        try:
            validation = steps.validate_data_task.with_options(**opts)(
                dataset, gate, reference, parent_run_id=pid, accept_change=accept_data_change)
        except DataValidationError as refused:
            # the refused version does not stay the dataset's current one (dvc.lock, its folder);
            # one line after the gate's report says what was put back
            said = put_back_version(repo_path, cfg.dataset, lock_before, dataset["md5"],
                                    settings.dvc_remote)
            print(said)
            refused.report.after_failure = said
            raise DataValidationError(refused.report) from None
        step_done(progress, validation, pid)
        if validation.details.get("changes"):   # the lineage says the reference moved on purpose
            mlflow.set_tag("data_change_accepted", str(len(validation.details["changes"])))
        # before any training: a model of this data must be comparable with the registered one;
        # a new version refused for that is put back as well (the run leaves dvc.lock as it was)
        try:
            check_comparable(settings.model_name, dataset, cfg.data.categorical)
        except ConfigError:
            said = put_back_new_version(repo_path, cfg.dataset, lock_before, dataset["md5"],
                                        settings.dvc_remote)
            if said:
                print(said)
            raise
        # only a version the run goes on with becomes the next drift reference: one refused
        # here would otherwise be what the next version is compared with
        save_reference(settings.data_bucket, cfg.dataset, validation.details["statistics"])

        train_args = dict(cfg_json=cfg_json, dataset=dataset, work_dir=str(work), parent_run_id=pid,
                          fresh=refresh)
        teacher = steps.train_teacher_task.with_options(**opts)(**train_args)
        teacher = _fresh(steps.train_teacher_task, teacher, **train_args)
        step_done(progress, teacher, pid)

        # every model the evaluation compares, by the name its table gives it
        folders, weights = dict(teacher.folders), dict(teacher.weights)
        step_runs = {"validate_data": validation.run_id, "train_teacher": teacher.run_id}
        for method in settings.methods:
            # the distillation folder sits under the teacher's weights: another teacher never
            # meets this one's students
            args = dict(cfg_json=cfg_json, method=method, teacher_dir=teacher.folders["teacher"],
                        teacher_sha256=teacher.weights["teacher"], dataset=dataset,
                        work_dir=str(work / "students" / teacher.weights["teacher"][:12]),
                        parent_run_id=pid, fresh=refresh)
            students = steps.distill_task.with_options(**opts)(**args)
            students = _fresh(steps.distill_task, students, **args)
            step_done(progress, students, pid)
            folders.update(students.folders)
            weights.update(students.weights)
            step_runs[students.step] = students.run_id

        evaluation = steps.evaluate_task.with_options(**opts)(
            cfg_json, folders, weights, dataset, str(work), parent_run_id=pid)
        step_runs["evaluate"] = evaluation.run_id
        step_done(progress, evaluation, pid)

        tags = {"dataset": cfg.dataset, "dataset_md5": dataset["md5"],
                "git_commit": commit,
                "validation": validation.details["summary"].splitlines()[0],
                "prefect_flow_run_id": str(flow_run.get_id()), "mlflow_parent_run_id": pid,
                "mlflow_experiment_id": parent.info.experiment_id,
                "profile": str(cfg.profile)}
        config_json = cfg.model_dump(mode="json")
        challenger = steps.register_task(config_json, evaluation, folders, weights, str(work),
                                         tags, parent_run_id=pid)
        step_done(progress, challenger, pid)
        decision = steps.promote_task(config_json, challenger, dataset, settings.releases_bucket,
                                      str(work), tags, parent_run_id=pid)
        step_done(progress, decision, pid)
        version = challenger.details["version"]
        result = {"model": settings.model_name, "version": version,
                  "candidate": challenger.details["candidate"],
                  # nothing registered: `version` is the champion, made from the same inputs
                  "same_as_champion": bool(challenger.details.get("same_as_champion")),
                  "rows": rows_line(challenger.metrics),
                  "promoted": decision.details["promoted"], "reason": decision.details["reason"],
                  "release": decision.details["release"],
                  "mlflow_run_id": pid, "mlflow_experiment_id": parent.info.experiment_id,
                  "prefect_flow_run_id": str(flow_run.get_id()),
                  "dataset_md5": dataset["md5"], "cached_steps": cached_steps(pid, step_runs)}
        mlflow.set_tags({"promoted": str(decision.details["promoted"]),
                         "registered_version": version, "served_as": challenger.details["candidate"],
                         "same_as_champion": str(result["same_as_champion"])})
        mlflow.log_metrics(headline_metrics(evaluation.details["table"], challenger.metrics,
                                            evaluation.details["floor"], decision.details["promoted"]))
        create_markdown_artifact(summary_markdown(result, evaluation, challenger, decision),
                                 key="training-pipeline-summary",
                                 description="metrics and promotion decision")
        return result
