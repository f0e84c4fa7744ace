"""The flow run's markdown summary: the rate's unit follows what the model makes."""

from __future__ import annotations

import pytest

from flows.summary import summary_markdown
from tasks.step_result import StepResult

ROW = {"model": "teacher", "sampler": "dpmpp_2m", "nfe": 16, "fid": 0.51, "kid_mean": 0.001,
       "samples_per_s": 2400.0}


def _summary(**evaluation_details) -> str:
    evaluation = StepResult(step="evaluate", run_id="e", details={
        "table": [ROW, {**ROW, "model": "consistency", "nfe": 1}], "floor": 0.3, **evaluation_details})
    challenger = StepResult(step="register", run_id="r", details={"candidate": "consistency"})
    decision = StepResult(step="promote", run_id="p", details={
        "promoted": True, "reason": "first version", "release": "s3://b/m/1/"})
    result = {"model": "m", "version": "1", "dataset_md5": "abc", "cached_steps": []}
    return summary_markdown(result, evaluation, challenger, decision)


@pytest.mark.parametrize("noun", ["rows", "images", "samples"])
def test_the_rate_is_named_by_what_the_model_makes(noun):
    text = _summary(noun=noun)
    assert f"| model | sampler | NFE | FID | KID | {noun}/s |" in text
    assert "| teacher | dpmpp_2m | 16 | 0.510 | 0.0010 | 2400 |" in text
    # the teacher first, then the students
    assert text.index("| teacher |") < text.index("| consistency |")


def test_an_evaluation_cached_before_the_noun_was_recorded_reads_as_images():
    assert "| images/s |" in _summary()


def test_a_rerun_that_made_the_champion_again_says_nothing_was_registered():
    evaluation = StepResult(step="evaluate", run_id="e", details={"table": [ROW], "floor": 0.3})
    challenger = StepResult(step="register", run_id="r", details={
        "candidate": "teacher", "version": "4", "same_as_champion": True})
    decision = StepResult(step="promote", run_id="p", details={
        "promoted": False, "outcome": "unchanged", "release": None,
        "reason": "nothing registered: version 4, the champion, was made from the same inputs"})
    result = {"model": "m", "version": "4", "same_as_champion": True, "dataset_md5": "abc",
              "cached_steps": ["evaluate"]}
    text = summary_markdown(result, evaluation, challenger, decision)
    assert text.startswith("# m: nothing registered\n"), text
    assert "**Registered:** nothing: version 4, the champion, was made from the same inputs" in text
    assert "# m version 4" not in text and "not promoted" not in text
