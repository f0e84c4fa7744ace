"""dmops reproduce's verdict reads a version registered under the sampling rate's old name."""

from __future__ import annotations

from tasks.steps.reproduce_compare import compare

TAGS = {"served_as": "teacher", "sampler": "heun", "nfe": "7", "weights_sha256": "abc"}
ROW = {"model": "teacher", "sampler": "heun", "steps": 4, "nfe": 7, "n_samples": 100,
       "fid": 0.4, "samples_per_s": 250.0}
RESULT = {"table": [ROW], "weights": {"teacher": "abc"}, "provenance": {},
          "candidate": {"name": "teacher", "sampler": "heun", "nfe": 7}}


def test_the_rate_under_its_old_name_is_shown_beside_the_reproduced_one_not_compared():
    verdict = compare("m", "1", TAGS, {"fid": 0.4, "images_per_s": 900.0}, {}, RESULT)
    assert verdict.reproduced, verdict.differences
    rate = next(line for line in verdict.metrics if line.name == "images_per_s")
    assert (rate.registered, rate.reproduced, rate.equal) == (900.0, 250.0, None)


def test_the_rate_under_its_name_is_shown_not_compared():
    verdict = compare("m", "1", TAGS, {"fid": 0.4, "samples_per_s": 900.0}, {}, RESULT)
    assert verdict.reproduced, verdict.differences
    rate = next(line for line in verdict.metrics if line.name == "samples_per_s")
    assert (rate.registered, rate.reproduced, rate.equal) == (900.0, 250.0, None)
