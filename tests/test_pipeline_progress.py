"""The pipeline's progress line: one per step, with the elapsed time and an estimate of the
rest from the step durations of an earlier finished run (flows/progress.py)."""

from __future__ import annotations

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
