"""The pipeline's Prefect tasks: each one wraps one function of tasks/tracked_steps.py (a plain
step, logged to MLflow) with retries, a timeout and a cache key, and returns its StepResult.
The only module of tasks/ that imports Prefect.

Caching: a task's key is its inputs, its own source and the sha256 of the project code its
step runs (`cached(step)`: INPUTS + TASK_SOURCE + ProjectCode(step), tasks/steps/lineage.py),
without the flow's MLflow run id.  Inputs are plain JSON-able values -- the config as a dict,
the dataset's version, and the sha256 of every model's weights a step consumes -- so a rerun
reuses a step only when its settings, data, upstream weights and code are all unchanged; the
flow's `refresh` switch bypasses it.  Results are persisted as JSON (never a pickle).

Retries: a step that failed with ServerUnavailable (its server stayed away for the whole
bounded retry budget) or against a full or read-only disk is not run again (`retry_may_help`).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any, Optional

from prefect import task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy

from diffusion.atomic import WriteError
from diffusion.config import Config
from diffusion.data_errors import DataError

from tasks import tracked_steps
from tasks.adapters.servers import ServerUnavailable
from tasks.pipeline_settings import PipelineConfig
from tasks.step_result import StepResult
from tasks.steps.lineage import STEP_MODULES, step_code_sha256

HOUR = 3600
JSON = "json"  # persisted results: StepResult is a pydantic model, which Prefect writes as JSON


@dataclass
class ProjectCode(CachePolicy):
    """Cache-key part: the sha256 of the project code that step `step` runs (its module and
    every project module it imports), so a change to, e.g., diffusion/objectives.py is a miss."""
    step: str = ""

    def compute_key(self, task_ctx: Any, inputs: Optional[dict], flow_parameters: Optional[dict],
                    **kwargs: Any) -> Optional[str]:
        return step_code_sha256(self.step)


def cached(step: str) -> CachePolicy:
    # `fresh` (the flow's refresh) says how to compute, not what: it keys nothing
    return (INPUTS + TASK_SOURCE + ProjectCode(step=step)) - "parent_run_id" - "fresh"


def pipeline_code() -> dict[str, str]:
    """The code hash of every step: part of the pipeline's work-folder key."""
    return {step: step_code_sha256(step) for step in STEP_MODULES}


def retry_may_help(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: a step is not run again after a failure a retry cannot mend --
    a server that stayed away for its whole retry budget (ServerUnavailable: its bounds are
    spent, a retry would only add their time again and replace the error, which already names
    the server and the fix, with its own) or a disk that refused a write for lack of room or
    permission to grow (WriteError with ENOSPC, EDQUOT, EFBIG or EROFS: a retry seconds later
    meets the same disk) or data that cannot be used (DataError, e.g. a dataset stage's
    refusal: a retry reads the same input).  Every other failure goes to the task's retries."""
    error = getattr(state, "data", None)
    if isinstance(error, DataError):
        return False
    if isinstance(error, WriteError):
        return error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
    return not isinstance(error, ServerUnavailable)


# DVC itself skips an unchanged stage; the dataset's hash must be fresh: never cached here
@task(name="prepare-dataset", retries=2, retry_delay_seconds=10, timeout_seconds=HOUR,
      retry_condition_fn=retry_may_help, cache_policy=NO_CACHE)
def prepare_dataset_task(repo: str, data_name: str, remote: str, endpoint_url: str,
                         parent_run_id: str | None = None) -> StepResult:
    """The versioned dataset: details = name, path, md5, remote."""
    return tracked_steps.prepare_dataset(repo, data_name, remote, endpoint_url, parent_run_id)


@task(name="validate-data", retries=0, timeout_seconds=HOUR, cache_policy=cached("validate"),
      persist_result=True, result_serializer=JSON)
def validate_data_task(dataset: dict, settings: dict, reference: dict | None,
                       parent_run_id: str | None = None, accept_change: bool = False) -> StepResult:
    """The data-quality gate; a failure raises DataValidationError, which stops the flow.
    `accept_change`: failed comparisons with `reference` are a meant change, not failures."""
    return tracked_steps.validate_data(dataset, settings, reference, parent_run_id, accept_change)


@task(name="train-teacher", retries=1, retry_delay_seconds=5, timeout_seconds=6 * HOUR,
      retry_condition_fn=retry_may_help, cache_policy=cached("train"), persist_result=True,
      result_serializer=JSON)
def train_teacher_task(cfg_json: dict, dataset: dict, work_dir: str,
                       parent_run_id: str | None = None, fresh: bool = False) -> StepResult:
    """The teacher; a retry resumes from the last checkpoint.  `fresh`: train from step 0
    even where a checkpoint of the same inputs exists (the flow's refresh)."""
    return tracked_steps.train_teacher(Config.model_validate(cfg_json), dataset, work_dir,
                                       parent_run_id, fresh=fresh)


@task(name="distill-sampler", retries=1, retry_delay_seconds=5, timeout_seconds=6 * HOUR,
      retry_condition_fn=retry_may_help, cache_policy=cached("distill"), persist_result=True,
      result_serializer=JSON)
def distill_task(cfg_json: dict, method: str, teacher_dir: str, teacher_sha256: str,
                 dataset: dict, work_dir: str, parent_run_id: str | None = None,
                 fresh: bool = False) -> StepResult:
    """The students of `method`; `teacher_sha256` (the teacher's weights) keys the cache.
    `fresh`: distil again from step 0 even where a finished student of the same inputs exists."""
    return tracked_steps.distill(Config.model_validate(cfg_json), method, teacher_dir,
                                 teacher_sha256, dataset, work_dir, parent_run_id, fresh=fresh)


@task(name="evaluate", retries=1, retry_delay_seconds=5, timeout_seconds=3 * HOUR,
      retry_condition_fn=retry_may_help, cache_policy=cached("evaluate"), persist_result=True,
      result_serializer=JSON)
def evaluate_task(cfg_json: dict, models: dict[str, str], weights: dict[str, str], dataset: dict,
                  work_dir: str, parent_run_id: str | None = None) -> StepResult:
    """Quality versus NFE of every model; `weights` (name -> sha256) keys the cache."""
    return tracked_steps.evaluate(Config.model_validate(cfg_json), models, dataset, work_dir,
                                  parent_run_id)


@task(name="register-model", retries=2, retry_delay_seconds=10, timeout_seconds=HOUR,
      retry_condition_fn=retry_may_help, cache_policy=NO_CACHE)
def register_task(config: dict, evaluation: StepResult, folders: dict[str, str],
                  weights: dict[str, str], work_dir: str, tags: dict[str, str],
                  parent_run_id: str | None = None) -> StepResult:
    """The served model, registered with alias `challenger`."""
    return tracked_steps.register(PipelineConfig.model_validate(config), evaluation, folders,
                                  weights, work_dir, tags, parent_run_id)


@task(name="promote", retries=0, timeout_seconds=HOUR, cache_policy=NO_CACHE)
def promote_task(config: dict, challenger: StepResult, dataset: dict, releases_bucket: str,
                 work_dir: str, tags: dict[str, str], parent_run_id: str | None = None) -> StepResult:
    """Champion or not: the decision, and on a win the release and the alias move."""
    return tracked_steps.promote(PipelineConfig.model_validate(config), challenger, dataset,
                                 releases_bucket, work_dir, tags, parent_run_id)
