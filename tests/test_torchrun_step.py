"""The train step launched as torchrun ranks from the pipeline (train.nproc_per_node=2, the tiny
profile, 2 CPU processes with gloo), against the real test stack, through the Prefect task's
function as the flow runs it:

- it completes in one MLflow run (the ranks open none), with the metrics and params of a
  single-process run; the registered weights are rank 1's (each rank's EMA sha256, gathered
  before rank 0 saves, equals the saved model's);
- a rank that fails fails the step with one error naming that rank and ending with its log's
  tail (not torchrun's wall of tracebacks);
- a rank killed mid-training fails the step naming the signal, and the retried step resumes
  from the last checkpoint.

Plus, without launching anything: a rank's error the single-process step raises for its input
comes out with its own type, and torchrun's failure summary names the rank a signal killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import mlflow
import pytest

from diffusion.config import load_config
from diffusion.model import read_spec
from tasks.adapters import tracking
from diffusion.atomic import WriteError
from diffusion.loop import TrainingError
from tasks.adapters.torchrun import AGENT_LOG, TAIL_LINES, TorchrunError, failure
from tasks.prefect_tasks import train_teacher_task
from tasks.steps.lineage import model_weights_sha256
from tasks.steps.prepare_dataset import prepare_dataset
from tasks.steps.train_ranks import FAIL_RANK_ENV, _as_step_error


PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, stack):
    cfg = load_config(PARAMS, "tiny")
    folder = prepare_dataset(cfg.data, tmp_path_factory.mktemp("torchrun-data") / "processed")
    return {"path": str(folder), "md5": "0" * 32, "name": cfg.data.name}


@pytest.fixture
def parent(stack):
    """A flow-like parent MLflow run in an experiment of its own; yields its id."""
    mlflow.set_experiment(f"test-torchrun-{uuid.uuid4().hex[:6]}")
    with tracking.tracked_run("flow") as run:
        yield run.info.run_id


def tiny(*overrides: str) -> dict:
    cfg = load_config(PARAMS, "tiny", list(overrides))
    return cfg.model_dump(mode="json", exclude={"out_dir", "pipeline", "profile"})


def step_runs(parent_run_id: str):
    return mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


@pytest.mark.stack
@pytest.mark.slow
def test_two_ranks_train_in_one_mlflow_run_and_agree(dataset, parent, tmp_path, one_torch_thread):
    out = train_teacher_task.fn(tiny("train.nproc_per_node=2"), dataset, str(tmp_path / "ddp"),
                                parent)
    runs = step_runs(parent)
    assert [r.info.run_id for r in runs] == [out.run_id]   # one run for the step, not two
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["train.nproc_per_node"] == "2"
    # the ranks agree: rank 1's EMA weights (hashed in rank 1 before rank 0 saved) are the model's
    ranks = run.data.tags["rank_weights_sha256"].split(",")
    model = Path(out.folders["teacher"])
    assert len(ranks) == 2 and ranks[1] == ranks[0] == model_weights_sha256(model)
    assert out.weights["teacher"] == ranks[1]
    assert read_spec(model).provenance.settings["train"]["world_size"] == 2
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(out.run_id, "torchrun")}
    assert {"torchrun/rank0.log", "torchrun/rank1.log"} <= logged

    # the same metrics (keys and steps) and params (keys) as a single-process run of the step
    single = train_teacher_task.fn(tiny(), dataset, str(tmp_path / "single"), parent)
    client = mlflow.MlflowClient()
    one = client.get_run(single.run_id).data
    assert set(run.data.metrics) == set(one.metrics)
    assert set(run.data.params) == set(one.params)
    for key in ("train/loss", "train/grad_norm", "train/lr"):
        assert ([m.step for m in client.get_metric_history(out.run_id, key)]
                == [m.step for m in client.get_metric_history(single.run_id, key)] == [10, 20])
    assert single.weights["teacher"] != ranks[0]   # 2 ranks draw other batches: another model


@pytest.mark.stack
@pytest.mark.slow
def test_a_failing_rank_fails_the_step_with_the_tail_of_its_log(dataset, parent, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv(FAIL_RANK_ENV, "1")
    with pytest.raises(TorchrunError) as caught:
        train_teacher_task.fn(tiny("train.nproc_per_node=2"), dataset, str(tmp_path), parent)
    message = str(caught.value)
    first, *tail = message.splitlines()
    assert first.startswith(f"rank 1 of 2 failed: RuntimeError: rank 1 failed on purpose "
                            f"({FAIL_RANK_ENV}=1); the last lines of "), first
    assert first.endswith("rank1.log:")
    assert 0 < len(tail) <= TAIL_LINES and tail[-1].startswith("RuntimeError: rank 1 failed")
    assert message.count("Traceback") == 1 and "ChildFailedError" not in message
    [run] = step_runs(parent)
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_dmops_train_with_a_failing_rank_says_which_in_one_line_and_the_tail(tmp_path):
    """The same failure through `dmops train`: exit 1 (not the user's input), an `error:` line
    naming the rank, then the tail of its log as it is (one traceback: the rank's)."""
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "train", "-c", str(PARAMS), "-p",
                           "tiny", "--set", "train.nproc_per_node=2", "--out", str(tmp_path / "out")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, FAIL_RANK_ENV: "1"})
    assert proc.returncode == 1, proc.stderr
    first, *tail = proc.stderr.splitlines()
    assert first.startswith("error: rank 1 of 2 failed: RuntimeError: rank 1 failed on purpose"), first
    assert 0 < len(tail) <= TAIL_LINES and tail[-1].startswith("RuntimeError: rank 1 failed")
    assert proc.stderr.count("Traceback") == 1


def kill_rank_at_first_checkpoint(work: Path, rank: int) -> dict:
    """A thread that SIGKILLs `rank` (its pid from the first line of its log) as soon as the
    step's first checkpoint exists; returns a dict that gets the checkpoint step it saw."""
    state: dict = {}

    def watch():
        teacher = work / "teacher"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            latest = teacher / "checkpoints" / "latest"
            logs = sorted(teacher.glob(f"torchrun/*/rank{rank}.log"))
            if latest.exists() and logs:
                state["checkpoint"] = latest.read_text().strip()
                pid = int(logs[-1].read_text().splitlines()[0].split(", pid ")[1].split(",")[0])
                os.kill(pid, signal.SIGKILL)
                state["killed"] = pid
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    state["thread"] = thread
    return state


@pytest.mark.stack
@pytest.mark.slow
def test_a_killed_rank_fails_the_step_and_the_retry_resumes(dataset, parent, tmp_path):
    cfg = tiny("train.nproc_per_node=2", "train.steps=60", "train.checkpoint_every=10")
    state = kill_rank_at_first_checkpoint(tmp_path, rank=1)
    with pytest.raises(TorchrunError, match=r"^rank 1 of 2 failed: killed by signal 9 \(SIGKILL\)"):
        train_teacher_task.fn(cfg, dataset, str(tmp_path), parent)
    state["thread"].join(10)
    assert "killed" in state
    # the retry (what Prefect's retries=1 runs): the same task, the same work folder
    out = train_teacher_task.fn(cfg, dataset, str(tmp_path), parent)
    first, second = sorted((tmp_path / "teacher" / "torchrun").iterdir())
    resumed_at = int(state["checkpoint"].removeprefix("step_"))
    points = [json.loads(line)["step"] for line in (second / "metrics.jsonl").read_text().splitlines()]
    # a fresh start would log step 10 first; the retry continued after a checkpoint
    assert points[0] > resumed_at >= 10 and points[-1] == 60, points
    assert read_spec(Path(out.folders["teacher"])).trained_steps == 60
    assert [r.info.status for r in step_runs(parent)].count("FINISHED") == 1


def _failed_launch(tmp_path, error: dict | None, agent: str = "") -> TorchrunError:
    (tmp_path / AGENT_LOG).write_text(agent)
    (tmp_path / "rank1.log").write_text("rank 1 of 2 (local rank 1), pid 1, host h\nlast words\n")
    if error is not None:
        (tmp_path / "rank1.error.json").write_text(json.dumps({"rank": 1, "time": 1.0, **error}))
    return failure(tmp_path, 2, 1)


def test_a_rank_error_of_the_single_process_step_keeps_its_type(tmp_path):
    e = _failed_launch(tmp_path, {"type": "diffusion.loop.TrainingError",
                                  "message": "training diverged by step 10"})
    raised = _as_step_error(e)
    assert type(raised) is TrainingError
    assert str(raised).startswith("training diverged by step 10 (rank 1 of 2; its log: ")
    full = _failed_launch(tmp_path, {"type": "diffusion.atomic.WriteError", "message": "x",
                                     "errno": 28, "path": "/r/checkpoints/step_10",
                                     "what": "checkpoint"})
    raised = _as_step_error(full)
    assert type(raised) is WriteError and raised.errno == 28 and raised.what == "checkpoint"
    other = _failed_launch(tmp_path, {"type": "builtins.KeyError", "message": "'x'"})
    assert _as_step_error(other) is other
    assert str(other).splitlines()[0].startswith("rank 1 of 2 failed: KeyError: 'x'; the last")
    assert str(other).splitlines()[-1] == "last words"


def test_a_rank_killed_by_a_signal_is_named_before_the_errors_it_caused(tmp_path):
    summary = ("Root Cause (first observed failure):\n[0]:\n  time      : t\n  host      : h\n"
               "  rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: 7)\n"
               "Failures:\n  rank      : 0 (local_rank: 0)\n  exitcode  : -15 (pid: 6)\n")
    # rank 0 met the lost peer and recorded that: the kill of rank 1 is still the cause
    (tmp_path / "rank0.error.json").write_text(json.dumps(
        {"rank": 0, "time": 0.5, "type": "builtins.RuntimeError", "message": "Connection closed"}))
    e = _failed_launch(tmp_path, None, summary)
    assert e.rank == 1
    assert str(e).startswith("rank 1 of 2 failed: killed by signal 9 (SIGKILL); the last lines")
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = failure(empty, 2, 3)   # torchrun failed before any rank ran
    assert nothing.rank is None and str(nothing).startswith(
        "torchrun exited with code 3 before any of the 2 ranks reported an error")
