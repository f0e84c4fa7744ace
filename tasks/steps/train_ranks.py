"""The train step as torchrun ranks: what tasks/steps/train_teacher.py does when
train.nnodes x train.nproc_per_node > 1.

Parent (`train_with_torchrun`, in the step's own process): writes the request (the config, data
folder, dataset md5, resume) to a fresh attempt folder <out_dir>/torchrun/<UTC time>-<pid>/,
launches the ranks (tasks/adapters/torchrun.py) and, while they train, hands rank 0's loss points
to `on_log` (so the caller's MLflow run gets them as a single-process run would, live) and
prints rank 0's output as its own.  Its answer is rank 0's result, a TeacherRun like the
in-process one.  Only the parent talks to anything outside: the ranks write files.

Rank (this module as __main__, one per process): the in-process step
(`train_teacher.train_in_process`); diffusion/train.py makes rank 0 alone write checkpoints and
the model, and resume from the last checkpoint, so a retried step continues where the failed
attempt's last checkpoint left it.  Rank 0 appends each loss point to metrics.jsonl and writes
result.json at the end.

Errors: a rank that fails fails the step with one error: the rank's own error type and message
when it is one the single-process step raises for bad input or a full disk (TrainingError,
ProvenanceError, DataError, ModelError, ConfigError, WriteError), its log's tail chained as the
cause; else TorchrunError, whose message names the rank and ends with its log's tail.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from diffusion.atomic import WriteError
from diffusion.config import Config, ConfigError
from diffusion.data import DataError
from diffusion.loop import TrainingError
from diffusion.model import ModelError
from diffusion.provenance import ProvenanceError
from diffusion.train import TrainResult

from tasks.adapters.torchrun import Launch, TorchrunError, run_torchrun
from tasks.steps.train_teacher import TeacherRun, train_in_process

REQUEST, METRICS, RESULT = "request.json", "metrics.jsonl", "result.json"
# for tests of the failure path: the rank of this number raises before it trains
FAIL_RANK_ENV = "DMOPS_TRAIN_FAIL_RANK"
# errors of the single-process step that a rank's failure is raised as (message-only classes)
SAME_ERRORS = {f"{c.__module__}.{c.__qualname__}": c
               for c in (TrainingError, ProvenanceError, DataError, ModelError, ConfigError)}


def train_with_torchrun(cfg: Config, resume: bool = True, on_log=None, data_dir=None,
                        dataset_md5: str | None = None, log=print) -> TeacherRun:
    """Train as `cfg.train.world_size` data-parallel ranks (see the module docstring); returns
    rank 0's TeacherRun, its `launch_dir` the attempt folder (logs of every rank).  `log`:
    where rank 0's output lines go.  Raises the rank's error (see the module docstring),
    TorchrunError, or what `on_log` raised (the ranks are stopped first)."""
    t = cfg.train
    attempt = Path(cfg.out_dir) / "torchrun" / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
    attempt.mkdir(parents=True, exist_ok=False)
    request = {"config": cfg.model_dump(mode="json"), "resume": resume,
               "data_dir": None if data_dir is None else str(data_dir), "dataset_md5": dataset_md5}
    (attempt / REQUEST).write_text(json.dumps(request, indent=1))
    # every machine launching this step with these inputs meets under the same id
    rdzv_id = "dmops-train-" + hashlib.sha256(json.dumps(
        [request["config"], dataset_md5], sort_keys=True).encode()).hexdigest()[:16]
    relay = _Relay(attempt, on_log, log)
    try:
        run_torchrun(__name__, [str(attempt / REQUEST)],
                     Launch(t.nproc_per_node, t.nnodes, t.rdzv_endpoint, rdzv_id),
                     attempt, on_poll=relay.poll)
    except TorchrunError as e:
        raise _as_step_error(e) from e
    result_file = attempt / RESULT
    if not result_file.exists():
        raise TorchrunError("the ranks finished but rank 0 wrote no result (rank 0 runs on "
                            "another machine, or its out_dir is not shared)", 0, t.world_size,
                            None, attempt / "rank0.log", "")
    return _teacher_run(json.loads(result_file.read_text()), attempt)


class _Relay:
    """Rank 0's loss points to `on_log` and its output lines to `log`, as they arrive: whole
    lines only (a line being written is read at the next poll)."""

    def __init__(self, attempt: Path, on_log, log):
        self.metrics, self.output = attempt / METRICS, attempt / "rank0.log"
        self.on_log, self.log = on_log, log
        self.offsets = {self.metrics: 0, self.output: 0}

    def _new_lines(self, path: Path) -> list[str]:
        if not path.exists():
            return []
        with open(path, "rb") as f:
            f.seek(self.offsets[path])
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]
        self.offsets[path] += len(complete)
        return complete.decode(errors="replace").splitlines()

    def poll(self) -> None:
        for line in self._new_lines(self.output):
            self.log(line)
        for line in self._new_lines(self.metrics):
            point = json.loads(line)
            if self.on_log is not None:
                self.on_log(point["step"], point["metrics"])


def _as_step_error(e: TorchrunError) -> Exception:
    error = e.error or {}
    where = f" (rank {e.rank} of {e.world}; its log: {e.log_path})"
    if error.get("type") in SAME_ERRORS:
        return SAME_ERRORS[error["type"]](error["message"] + where)
    if error.get("type") == "diffusion.atomic.WriteError" and "errno" in error:
        return WriteError(error.get("path"), int(error["errno"]), error.get("what"),
                          error.get("filesystem"))
    return e


def _teacher_run(result: dict, attempt: Path) -> TeacherRun:
    r = result["result"]
    train = TrainResult(r["step"], r["loss"], r["seconds"], r["samples_per_second"],
                        Path(r["model_dir"]) if r["model_dir"] else None,
                        tuple(r["rank_weights_sha256"]))
    png = result["samples_png"]
    return TeacherRun(Path(result["out_dir"]), train.model_dir, Path(png) if png else None,
                      train, result["parameters"], attempt)


# --- one rank ------------------------------------------------------------------------------

def _rank(request_path: Path) -> None:
    import torch.distributed as dist

    try:
        _train_rank(request_path)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train_rank(request_path: Path) -> None:
    attempt = request_path.parent
    fail = os.environ.get(FAIL_RANK_ENV)
    if fail is not None and fail == os.environ.get("RANK"):
        raise RuntimeError(f"rank {fail} failed on purpose ({FAIL_RANK_ENV}={fail})")
    request = json.loads(request_path.read_text())
    cfg = Config.model_validate(request["config"])
    main = os.environ.get("RANK", "0") == "0"
    points = open(attempt / METRICS, "a") if main else None

    def on_log(step: int, metrics: dict) -> None:
        points.write(json.dumps({"step": step, "metrics": metrics}) + "\n")
        points.flush()

    run = train_in_process(cfg, resume=request["resume"], on_log=on_log if main else None,
                           data_dir=request["data_dir"], dataset_md5=request["dataset_md5"])
    if main:
        points.close()
        r = run.result
        result = {"out_dir": str(run.out_dir), "parameters": run.parameters,
                  "samples_png": None if run.samples_png is None else str(run.samples_png),
                  "result": {"step": r.step, "loss": r.loss, "seconds": r.seconds,
                             "samples_per_second": r.samples_per_second,
                             "model_dir": None if r.model_dir is None else str(r.model_dir),
                             "rank_weights_sha256": list(r.rank_weights_sha256)}}
        partial = attempt / (RESULT + ".partial")
        partial.write_text(json.dumps(result, indent=1))
        os.replace(partial, attempt / RESULT)


if __name__ == "__main__":
    _rank(Path(sys.argv[1]))
