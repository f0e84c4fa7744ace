"""The pipeline's progress line: one per step, with the elapsed time and an estimate of the
rest from the step durations of an earlier finished run (flows/progress.py)."""

from __future__ import annotations

import contextlib
import logging

from flows.progress import PipelineProgress, pipeline_steps
from flows.run_logs import send_core_messages_to_prefect

STEPS = pipeline_steps(["progressive", "consistency"])
# seconds each step took in the earlier run
EARLIER = {"prepare_dataset": 10, "validate_data": 5, "train_teacher": 300,
           "distill_progressive": 120, "distill_consistency": 180, "evaluate": 240,
           "register_model": 15, "promote": 30}


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t


def test_a_line_per_step_with_elapsed_time_and_the_rest_from_the_earlier_run():
    clock, said = Clock(), []
    progress = PipelineProgress(STEPS, EARLIER, "sage-penguin", started=clock.t - 2, clock=clock,
                                say=said.append)
    assert said == ["pipeline: 8 steps; time left estimated from the step durations of flow run "
                    "sage-penguin"]
    for step, seconds, cached in [("prepare_dataset", 12, False), ("validate_data", 1, True),
                                  ("train_teacher", 290, False), ("distill_progressive", 130, False)]:
        clock.t += seconds
        progress.done(step, cached)
    assert said[1] == ("pipeline [1/8] prepare_dataset done in 12 s (cached: no); 14 s elapsed, "
                       "about 14.8 min left")   # 5 + 300 + 120 + 180 + 240 + 15 + 30 = 890 s
    assert said[2].startswith("pipeline [2/8] validate_data done in 1 s (cached: yes)")
    assert said[4] == ("pipeline [4/8] distill_progressive done in 2.2 min (cached: no); "
                       "7.2 min elapsed, about 7.8 min left")   # 180 + 240 + 15 + 30 = 465 s
    for step in STEPS[4:]:
        clock.t += 1
        progress.done(step, False)
    assert said[-1] == "pipeline [8/8] promote done in 1 s (cached: no); 7.3 min elapsed"
    assert len(said) == 1 + len(STEPS)


def test_a_step_never_timed_makes_it_a_lower_bound_and_no_earlier_run_no_estimate():
    clock, said = Clock(), []
    earlier = {k: v for k, v in EARLIER.items() if k != "evaluate"}
    progress = PipelineProgress(STEPS, earlier, "sage-penguin", started=clock.t, clock=clock,
                                say=said.append)
    clock.t += 60
    progress.done("prepare_dataset", False)
    # 5 + 300 + 120 + 180 + 15 + 30 = 650 s, and evaluate's unknown time
    assert said[-1].endswith("1.0 min elapsed, at least 10.8 min left (evaluate not timed yet)")

    said.clear()
    progress = PipelineProgress(STEPS, {}, None, started=clock.t, clock=clock, say=said.append)
    clock.t += 60
    progress.done("prepare_dataset", False)
    assert said == ["pipeline: 8 steps; no finished run to estimate the time left from yet",
                    "pipeline [1/8] prepare_dataset done in 1.0 min (cached: no); 1.0 min elapsed"]


def test_the_core_logger_gets_prefects_handlers_for_extra_loggers_once():
    extra, core = logging.getLogger("prefect.extra"), logging.getLogger("diffusion")
    handler = logging.NullHandler()
    extra.addHandler(handler)
    try:
        send_core_messages_to_prefect()
        send_core_messages_to_prefect()
        assert core.handlers.count(handler) == 1
    finally:
        extra.removeHandler(handler)
        core.removeHandler(handler)


# --- where the earlier durations come from (tasks/adapters/tracking.py) -----------------------

@contextlib.contextmanager
def local_tracking(tmp_path, monkeypatch):
    """MLflow pointed at a SQLite store in tmp_path for the block, then back to exactly what it
    followed before: set_tracking_uri writes a process-wide value that outranks the
    environment, so 'restoring' what get_tracking_uri answered would pin every later test of
    this worker to the SQLite store (CI: the promotion tests then never saw their server stop)."""
    import mlflow
    import mlflow.tracking._tracking_service.utils as tracking_uri_state

    pinned = tracking_uri_state._tracking_uri     # None: the environment decides
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(pinned)


def _flow_run(client, experiment_id, start_ms, steps, reused=()):
    """A finished flow run of profile `quick` with one finished nested run per step of `steps`
    (name -> seconds), those in `reused` tagged as having reused a finished result."""
    from tasks.adapters.tracking import REUSED_TAG

    parent = client.create_run(experiment_id, start_time=start_ms, tags={"profile": "quick"},
                               run_name=f"flow-{start_ms}")
    end = start_ms
    for step, seconds in steps.items():
        tags = {"mlflow.parentRunId": parent.info.run_id, "step": step,
                **({REUSED_TAG: "true"} if step in reused else {})}
        child = client.create_run(experiment_id, start_time=end, tags=tags)
        end += int(seconds * 1000)
        client.set_terminated(child.info.run_id, end_time=end)
    client.set_terminated(parent.info.run_id, end_time=end)


def test_the_estimate_never_learns_from_a_step_that_reused_a_finished_result(tmp_path, monkeypatch):
    """The trial's case: a run whose teacher resumed its finished checkpoint (2 s) and whose
    student was the finished one (1 s) made the next run's estimate 15 s for a 3-minute run."""
    import mlflow

    from tasks.adapters.tracking import recent_step_seconds

    with local_tracking(tmp_path, monkeypatch):
        client = mlflow.MlflowClient()
        experiment = client.create_experiment("progress")
        full = {"prepare_dataset": 6, "validate_data": 4, "train_teacher": 90,
                "distill_consistency": 80, "evaluate": 10, "register_model": 2, "promote": 1}
        _flow_run(client, experiment, 1_000_000, full)
        # later: every model step from Prefect's cache (no nested run), then a rerun that
        # trained nothing because the finished results were there
        _flow_run(client, experiment, 2_000_000, {"prepare_dataset": 3, "validate_data": 4,
                                                  "register_model": 1, "promote": 1})
        _flow_run(client, experiment, 3_000_000, {**full, "train_teacher": 2,
                                                  "distill_consistency": 1},
                  reused={"train_teacher", "distill_consistency"})
        seconds, source = recent_step_seconds(experiment, "quick")
    assert source == "flow-3000000"
    assert seconds["train_teacher"] == 90 and seconds["distill_consistency"] == 80, seconds
    assert seconds["evaluate"] == 10 and seconds["prepare_dataset"] == 6, seconds


def test_a_step_that_logged_no_training_point_is_tagged_reused(tmp_path, monkeypatch):
    import mlflow

    from tasks.adapters.tracking import REUSED_TAG, ReuseWatch, metric_logger

    with local_tracking(tmp_path, monkeypatch):
        tags = {}
        # an experiment of this store: the process's active one may be another server's
        experiment = mlflow.MlflowClient().create_experiment("reuse")
        for trained in (True, False):
            with mlflow.start_run(experiment_id=experiment) as run:
                watch = ReuseWatch(metric_logger("train/"))
                if trained:
                    watch(1, {"loss": 0.5})
                watch.close()
            tags[trained] = mlflow.MlflowClient().get_run(run.info.run_id).data.tags
    assert REUSED_TAG not in tags[True] and tags[False][REUSED_TAG] == "true", tags
