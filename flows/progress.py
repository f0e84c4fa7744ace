"""The pipeline's own progress: one line per finished step, for a person following a run.

    pipeline [4/8] distill_consistency done in 3.1 min (cached: no); 9.8 min elapsed, about 6.0 min left

How the estimate is computed: the time left is the sum, over the steps still to run, of how
long each took the last time it ran in a finished flow run of the same profile -- the start
and end of its nested MLflow step run (`recent_step_seconds`, tasks/adapters/tracking.py; a
step that run took from the cache, or whose run reused a finished checkpoint or student and
so trained nothing, is timed from an earlier run).  It assumes each remaining
step runs again (a cached one takes seconds) on a machine as busy as then.  A remaining step
never timed makes it "at least ..."; with no finished run of the profile there is no
estimate.  The first line says which flow run the timings come from.

Elapsed time counts from the start of the flow's MLflow parent run.  Lines are printed: in a
flow run with log_prints they go to its Prefect logs as well as to the console.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from diffusion.progress import duration


def pipeline_steps(methods) -> list[str]:
    """The flow's steps in order, as its StepResults name them."""
    return ["prepare_dataset", "validate_data", "train_teacher",
            *(f"distill_{method}" for method in methods), "evaluate", "register_model", "promote"]


class PipelineProgress:
    """Progress over `steps` (names in order).  `previous`: seconds each step took when it
    last ran (a step missing has never been timed); `source`: where those come from, for the
    first line.  `started`: when the run started, in `clock`'s seconds (default: the epoch,
    time.time).  `say` gets each line (default: print, looked up at each call)."""

    def __init__(self, steps: list[str], previous: dict[str, float], source: Optional[str],
                 started: float, clock: Callable[[], float] = time.time,
                 say: Optional[Callable[[str], None]] = None):
        self.steps, self.previous, self._clock, self._say = list(steps), dict(previous), clock, say
        self._started, self._last = started, clock()   # the first step starts now
        self._done: list[str] = []
        if source and previous:
            self._emit(f"pipeline: {len(self.steps)} steps; time left estimated from the step "
                       f"durations of flow run {source}")
        else:
            self._emit(f"pipeline: {len(self.steps)} steps; no finished run to estimate the time "
                       "left from yet")

    def done(self, step: str, cached: bool) -> str:
        """Record that `step` finished (`cached`: taken from the cache) and say the line;
        returns it.  A step not in the plan, or one finished twice, is counted again."""
        now = self._clock()
        took, self._last = now - self._last, now
        self._done.append(step)
        line = (f"pipeline [{len(self._done)}/{len(self.steps)}] {step} done in {duration(took)} "
                f"(cached: {'yes' if cached else 'no'}); {duration(now - self._started)} elapsed")
        left = self.time_left()
        if left:
            line += f", {left}"
        self._emit(line)
        return line

    def time_left(self) -> str:
        """'about 6.0 min left', 'at least 2.0 min left (evaluate not timed yet)', or '' when
        nothing is left or nothing left was ever timed."""
        remaining = [s for s in self.steps if s not in self._done]
        if not remaining:
            return ""
        timed = [s for s in remaining if s in self.previous]
        if not timed:
            return ""
        seconds = sum(self.previous[s] for s in timed)
        if len(timed) == len(remaining):
            return f"about {duration(seconds)} left"
        untimed = ", ".join(s for s in remaining if s not in self.previous)
        return f"at least {duration(seconds)} left ({untimed} not timed yet)"

    def _emit(self, line: str) -> None:
        (self._say or print)(line)


def track_pipeline(methods, profile: str, parent) -> PipelineProgress:
    """The progress of a flow run whose MLflow parent run is `parent` (an active run), timed
    from the latest finished flow runs of `profile` in its experiment."""
    from tasks.adapters.tracking import recent_step_seconds

    previous, source = recent_step_seconds(parent.info.experiment_id, str(profile))
    return PipelineProgress(pipeline_steps(methods), previous, source,
                            started=parent.info.start_time / 1000)


def step_done(progress: PipelineProgress, result, parent_run_id: str) -> None:
    """Say that the step of `result` (a StepResult) finished; cached when its MLflow run
    belongs to an earlier flow run than `parent_run_id`."""
    from tasks.adapters.tracking import cached_steps

    try:
        cached = bool(cached_steps(parent_run_id, {result.step: result.run_id}))
    except Exception:  # noqa: BLE001 - a progress line never fails the run
        cached = False
    progress.done(result.step, cached)
