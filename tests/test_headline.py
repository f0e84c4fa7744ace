"""The parent run's headline numbers (tasks/steps/headline.py): ratios against the teacher's
best FID and the floor, computed from the evaluation table itself."""

from __future__ import annotations

import math

import pytest

from tasks.steps.headline import (HEADLINE_METRICS, code_sha256, headline_metrics,
                                  headline_params, teacher_best_fid)

TABLE = [{"model": "teacher", "sampler": "heun", "nfe": 35, "fid": 0.40},
         {"model": "teacher", "sampler": "euler", "nfe": 8, "fid": 0.90},
         {"model": "consistency", "sampler": "consistency", "nfe": 1, "fid": 0.60}]
SERVED = {"fid": 0.60, "nfe": 1, "samples_per_s": 900.0, "kid_mean": 0.01, "steps": 1}


def test_ratios_are_to_the_teachers_best_setting_and_to_the_floor():
    m = headline_metrics(TABLE, SERVED, floor=0.30, promoted=True)
    assert set(HEADLINE_METRICS) <= set(m)
    assert m["fid"] == 0.60 and m["teacher_best_fid"] == 0.40
    assert m["fid_vs_teacher_best"] == pytest.approx(1.5) and m["fid_vs_floor"] == pytest.approx(2.0)
    assert m["nfe"] == 1.0 and m["samples_per_s"] == 900.0 and m["kid_mean"] == 0.01
    assert m["promoted"] == 1.0
    assert headline_metrics(TABLE, SERVED, floor=0.30, promoted=False)["promoted"] == 0.0


def test_the_rate_has_one_name_for_every_data_and_an_old_rows_name_is_read():
    assert "images_per_s" not in HEADLINE_METRICS and "samples_per_s" in HEADLINE_METRICS
    old = {k: v for k, v in SERVED.items() if k != "samples_per_s"} | {"images_per_s": 700.0}
    m = headline_metrics(TABLE, old, floor=0.30, promoted=False)
    assert m["samples_per_s"] == 700.0 and "images_per_s" not in m


def test_a_ratio_that_cannot_be_formed_is_left_out_not_logged_as_infinity():
    m = headline_metrics(TABLE, SERVED, floor=0.0, promoted=False)
    assert "fid_vs_floor" not in m and all(math.isfinite(v) for v in m.values())


def test_a_table_without_teacher_rows_is_an_error_naming_it():
    with pytest.raises(ValueError, match="no teacher row"):
        teacher_best_fid([{"model": "consistency", "fid": 0.5}])


def test_params_name_the_run_and_the_code_hash_follows_every_step():
    code = {"train_teacher": "a" * 64, "evaluate": "b" * 64}
    p = headline_params("quick", "digits", "3f" * 16 + ".dir", "abc123-dirty", code)
    assert p == {"profile": "quick", "dataset": "digits", "dataset_md5": "3f" * 16 + ".dir",
                 "git_commit": "abc123-dirty", "code_sha256": code_sha256(code)}
    assert code_sha256({**code, "evaluate": "c" * 64}) != p["code_sha256"]
    assert code_sha256(dict(reversed(code.items()))) == p["code_sha256"]


def test_a_long_version_description_is_cut_at_a_line_end_within_mlflows_column():
    from tasks.adapters.registry import DESCRIPTION_LIMIT, fit_description

    text = "".join(f"line {i}: " + "x" * 70 + "\n" for i in range(200))
    cut = fit_description(text)
    assert len(cut) <= DESCRIPTION_LIMIT and cut.endswith("README.md)\n")
    assert text.startswith(cut.split("\n\n(cut")[0])      # whole lines, in order
    assert fit_description("short\n") == "short\n"
