"""An MLflow server that stops while a pipeline step trains (issue 15, fault 1), against the real
test stack: the server is killed by its process id (tests/outages.py) while the train step of
the tiny profile logs its loss points through its Prefect task function.

- Back after a few seconds: the step completes and MLflow holds every point it logged.
- Gone for good: the step fails within a bound set by the retry settings, with one line that
  names the MLflow server, its URL and the fix -- no silent hang, no silent loss.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from pathlib import Path

import mlflow
import pytest

from diffusion.config import load_config
from outages import outage
from tasks.adapters import tracking
from tasks.adapters.metric_logger import MetricLogger, MetricsRefused
from tasks.prefect_tasks import train_teacher_task
from tasks.steps.prepare_dataset import prepare_dataset
from tasks.adapters.servers import MLFLOW_RETRY_ENV, ServerUnavailable

pytestmark = pytest.mark.stack

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
LOG_EVERY = 5


@pytest.fixture
def bounded(monkeypatch, stack):
    """The pipeline's MLflow client bounds, and a short retry policy so the tests stay fast."""
    for key, value in MLFLOW_RETRY_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DMOPS_RETRY_BASE_S", "0.2")
    monkeypatch.setenv("DMOPS_RETRY_MAX_WAIT_S", "1")
    mlflow.set_experiment(f"test-step-outages-{uuid.uuid4().hex[:6]}")
    return stack


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, stack):
    cfg = load_config(PARAMS, "tiny")
    folder = prepare_dataset(cfg.data, tmp_path_factory.mktemp("outage-data") / "processed")
    return {"path": str(folder), "md5": "0" * 32, "name": cfg.data.name}


def tiny_config(steps: int) -> dict:
    cfg = load_config(PARAMS, "tiny", [f"train.steps={steps}", f"train.log_every={LOG_EVERY}",
                                       "train.checkpoint_every=10"])
    return cfg.model_dump(mode="json", exclude={"out_dir", "pipeline", "profile"})


def kill_at_first_checkpoint(stack, work: Path, restore_after: float | None):
    """Start a thread that kills MLflow as soon as training wrote its first checkpoint (step
    10, so training is under way and logging), and restores it `restore_after` seconds later
    (None: at the end of the test).  Returns (thread, dict with the outage and its time)."""
    state: dict = {}

    def watch():
        latest = work / "teacher" / "checkpoints" / "latest"
        deadline = time.monotonic() + 300
        while not latest.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        ctx = outage(stack, "mlflow")
        state["killed_at"] = time.monotonic()   # the SIGKILL comes first thing in __enter__
        state["outage"] = ctx.__enter__()
        state["ctx"] = ctx
        if restore_after is not None:
            state["outage"].restore_after(restore_after)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, state


def end_outage(thread, state):
    thread.join(300)
    if "ctx" in state:
        state["ctx"].__exit__(None, None, None)   # waits for a pending restore, else restores


@pytest.mark.slow
def test_points_logged_while_mlflow_restarts_are_all_delivered(bounded, dataset, tmp_path, capfd,
                                                              one_torch_thread):
    steps = 100       # about 10 s of training here: MLflow goes at step 10, is back after 8-15 s
    thread, state = kill_at_first_checkpoint(bounded, tmp_path, restore_after=2.0)
    try:
        out = train_teacher_task.fn(tiny_config(steps), dataset, str(tmp_path))
    finally:
        end_outage(thread, state)
    assert "killed_at" in state, "MLflow was never stopped"
    err = capfd.readouterr().err
    url = mlflow.get_tracking_uri()
    # the outage was met while points were waiting, and said so
    assert f"MLflow server at {url}: " in err and "keeping" in err, err[-3000:]
    client = mlflow.MlflowClient()
    for key in ("train/loss", "train/grad_norm", "train/lr"):
        history = client.get_metric_history(out.run_id, key)
        # one point every LOG_EVERY steps (the last step is a multiple of it): 20 points
        assert sorted(m.step for m in history) == list(range(LOG_EVERY, steps + 1, LOG_EVERY)), key
    run = client.get_run(out.run_id)
    assert run.info.status == "FINISHED"
    assert "final_loss" in run.data.metrics


@pytest.mark.slow
def test_mlflow_gone_for_good_fails_the_step_in_bounded_time_naming_it(bounded, dataset, tmp_path,
                                                                       monkeypatch, one_torch_thread):
    max_outage_s = 4.0
    monkeypatch.setenv("DMOPS_METRICS_MAX_OUTAGE_S", str(max_outage_s))
    thread, state = kill_at_first_checkpoint(bounded, tmp_path, restore_after=None)
    url = mlflow.get_tracking_uri()
    try:
        with pytest.raises(ServerUnavailable) as info:
            train_teacher_task.fn(tiny_config(100_000), dataset, str(tmp_path))
        failed_at = time.monotonic()
    finally:
        end_outage(thread, state)
    message = str(info.value)
    assert "\n" not in message
    assert re.match(rf"MLflow server at {re.escape(url)} did not answer after \d+ tr", message), message
    assert "metric points of run" in message and "were not delivered" in message
    assert "dmops up" in message and "MLFLOW_TRACKING_URI" in message
    # Bound: the points' wait (max_outage_s), plus one log interval of training, plus ending the
    # run against the dead server: MLflow's own retries of a refused connection (2 retries,
    # backoff factor 1: waits of 0 and 2 s, each plus up to 1 s of jitter, about 4 s); 30 s of
    # slack for a busy machine.  Without the bound the step trained 100 000 steps (hours).
    elapsed = failed_at - state["killed_at"]
    # (a point logged up to one send interval, 2 s, before the kill may start the count)
    assert max_outage_s - 2 <= elapsed < max_outage_s + 4 + 30, elapsed


def test_a_step_run_against_a_dead_server_names_it(monkeypatch):
    from infra.ports import free_ports

    for key, value in MLFLOW_RETRY_ENV.items():
        monkeypatch.setenv(key, value)
    url = f"http://127.0.0.1:{free_ports(1)[0]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    mlflow.set_tracking_uri(url)
    try:
        t0 = time.monotonic()
        with pytest.raises(ServerUnavailable) as info:
            with tracking.step_run("train_teacher", None):
                pass
        elapsed = time.monotonic() - t0
    finally:
        mlflow.set_tracking_uri(None)
    assert str(info.value).startswith(f"MLflow server at {url} did not answer after 3 tries: ")
    assert "\n" not in str(info.value)
    assert elapsed < 4 + 10, elapsed      # MLflow's own retries, as above
    assert mlflow.active_run() is None


def test_points_mlflow_refuses_are_reported_not_dropped(bounded):
    client = mlflow.MlflowClient()
    with tracking.step_run("refused", None) as run:
        pass
    client.delete_run(run.info.run_id)
    logger = MetricLogger(run.info.run_id, "x/", interval_s=0.1)
    logger(1, {"loss": 1.0})
    with pytest.raises(MetricsRefused, match=r"refused 1 metric points of run "):
        logger.close()


def test_a_step_delivers_its_points_before_its_run_ends(bounded):
    with tracking.step_run("delivered", None) as run:
        log = tracking.metric_logger("m/")
        for step in range(1, 2501):       # more than one log_batch request (1000 a request)
            log(step, {"loss": 1.0 / step, "flag": True, "name": "not a number"})
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "m/loss")
    assert len(history) == 2500 and log.delivered == 2500 and log.pending == 0
    assert set(mlflow.MlflowClient().get_run(run.info.run_id).data.metrics) == {"m/loss"}


def test_a_step_that_spent_its_server_budget_or_met_a_full_disk_is_not_retried_by_prefect(stack):
    import errno

    from prefect import flow, task

    from diffusion.atomic import WriteError
    from diffusion.data_errors import DataError
    from tasks.prefect_tasks import retry_may_help

    calls = []
    errors = {"server": ServerUnavailable("MLflow server", "http://x", 3, None,
                                          ConnectionRefusedError()),
              "full disk": WriteError("/x/step_00000020", errno.ENOSPC, "checkpoint"),
              "denied": WriteError("/x/step_00000020", errno.EACCES, "checkpoint"),
              "bad data": DataError("datasets.mine: target 'y' is not a column"),
              "other": RuntimeError("another failure")}

    @task(retries=1, retry_delay_seconds=0, retry_condition_fn=retry_may_help)
    def step(error: str):
        calls.append(error)
        raise errors[error]

    @flow
    def steps():
        for error in errors:
            step(error, return_state=True)

    steps()
    # a retry may mend a permission (fixed meanwhile) or another failure, not a spent budget,
    # a disk without room or data that cannot be used
    assert calls == ["server", "full disk", "denied", "denied", "bad data", "other", "other"]


@pytest.mark.slow    # DVC runs the prepare stage first (about 20 s here)
def test_a_store_down_when_dvc_pushes_fails_the_step_with_one_line_naming_it(bounded, tmp_path,
                                                                           monkeypatch):
    from infra.ports import free_ports
    from tasks.prefect_tasks import prepare_dataset_task
    from user_repo import make_user_repo, params_for

    monkeypatch.setenv("DMOPS_RETRY_ATTEMPTS", "2")
    repo = tmp_path / "repo"
    repo.mkdir()
    make_user_repo(repo, bounded.settings.data_bucket, params_for("outage-test", "outage-test"))
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"       # nothing listens there
    with pytest.raises(ServerUnavailable) as info:
        prepare_dataset_task.fn(str(repo), "digits", "dmops", dead)
    message = str(info.value)
    assert message.startswith(f"S3 store at {dead} did not answer after 2 tries over ")
    assert "\n" not in message and "AWS_ENDPOINT_URL_S3" in message
    assert "dvc push" in str(info.value.__cause__)      # DVC's own report stays chained


@pytest.mark.slow    # the server's own S3 retries before each 500, then the store's restart
def test_an_artifact_store_down_behind_mlflow_is_named_as_such(bounded, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")   # each 500 costs the server's own S3 retries
    s3_url = bounded.settings.s3_url
    with outage(bounded, "seaweedfs"):
        with pytest.raises(ServerUnavailable) as info:
            with tracking.step_run("artifacts", None):
                mlflow.log_text("kept", "notes/a.txt")
    message = str(info.value)
    assert message.startswith(f"MLflow server at {mlflow.get_tracking_uri()} did not answer after 1 try")
    assert "it answers, but could not store or serve artifacts" in message
    assert f"check its artifact store (for the local stack the S3 store at {s3_url}" in message
