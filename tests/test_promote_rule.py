"""The promotion rule (tasks/steps/promote.py `decide`): promote, keep or tie by the paired
bootstrap interval of metric(challenger) - metric(champion); a tie promotes only a cheaper
challenger.  Pure: no servers."""

from __future__ import annotations

import pytest
import torch

from tasks.steps.evaluate import Score
from tasks.steps.promote import KEEP, PROMOTE, TIE, PromotionError, decide, paired_interval
from tasks.steps.promote_settings import PromoteSettings


def _interval(lo: float, hi: float) -> dict:
    return {"estimate": (lo + hi) / 2, "lo": lo, "hi": hi, "level": 0.95, "replicates": 1000}


CHAMPION = {"fid": 0.40, "nfe": 32}


def test_better_beyond_noise_is_promoted():
    d = decide({"fid": 0.30, "nfe": 32}, CHAMPION, "fid", 0.02, difference=_interval(-0.15, -0.05))
    assert (d.promoted, d.outcome) == (True, PROMOTE)
    assert d.reason.startswith("promote: ") and "[-0.15, -0.05]" in d.reason
    assert "better beyond the measurement noise" in d.reason and d.difference["lo"] == -0.15


def test_worse_beyond_noise_is_kept_out():
    d = decide({"fid": 0.50, "nfe": 1}, CHAMPION, "fid", 0.02, difference=_interval(0.05, 0.15))
    # cheaper does not matter when it is worse beyond the noise
    assert (d.promoted, d.outcome) == (False, KEEP) and d.reason.startswith("keep: ")


def test_a_tie_keeps_the_champion():
    d = decide({"fid": 0.41, "nfe": 32}, CHAMPION, "fid", 0.02, difference=_interval(-0.03, 0.05))
    assert (d.promoted, d.outcome) == (False, TIE)
    assert "equal within the noise" in d.reason and "the champion stays" in d.reason
    assert "32 NFE per sample against the champion's 32" in d.reason


def test_a_tie_promotes_a_challenger_cheaper_to_sample():
    d = decide({"fid": 0.41, "nfe": 1}, CHAMPION, "fid", 0.02, difference=_interval(-0.03, 0.05))
    assert (d.promoted, d.outcome) == (True, TIE)
    assert "cheaper to sample (1 NFE per sample against the champion's 32): promoted" in d.reason
    # NFE unknown for one of them: not cheaper, the champion stays
    d = decide({"fid": 0.41}, CHAMPION, "fid", 0.02, difference=_interval(-0.03, 0.05))
    assert (d.promoted, d.outcome) == (False, TIE) and "NFE not known for both" in d.reason


def test_identical_models_read_as_a_zero_difference_not_float_noise():
    d = decide({"fid": 0.40, "nfe": 32}, CHAMPION, "fid", 0.02,
               difference=_interval(-3.1e-17, 2.2e-17))
    assert d.outcome == TIE
    assert "difference 0.0000, 95 % paired bootstrap interval [0.0000, 0.0000]" in d.reason
    assert "e-1" not in d.reason


def test_higher_is_better_flips_the_sides():
    champion = {"precision": 0.8, "nfe": 4}
    up = decide({"precision": 0.9, "nfe": 4}, champion, "precision", 0.02, False, _interval(0.05, 0.15))
    down = decide({"precision": 0.7, "nfe": 4}, champion, "precision", 0.02, False, _interval(-0.15, -0.05))
    assert (up.outcome, up.promoted, down.outcome, down.promoted) == (PROMOTE, True, KEEP, False)


def test_without_an_interval_the_tolerance_rule_still_decides():
    d = decide({"fid": 0.405}, CHAMPION, "fid", 0.02)
    assert (d.promoted, d.outcome, d.difference) == (True, PROMOTE, None) and " <= " in d.reason
    assert decide({"fid": 0.5}, None, "fid", 0.02, difference=_interval(1, 2)).outcome == PROMOTE


def test_a_broken_interval_is_a_clear_error():
    with pytest.raises(PromotionError, match="is not an interval"):
        decide({"fid": 0.4}, CHAMPION, "fid", 0.02, difference=_interval(0.1, float("nan")))


def test_paired_interval_is_placed_at_the_recorded_difference_and_needs_one_test_split():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 3, generator=g, dtype=torch.float64)
    a = torch.randn(300, 3, generator=g, dtype=torch.float64)
    b = a + 0.3
    settings = PromoteSettings(replicates=200)
    champion, challenger = Score({}, real, a), Score({}, real, b)
    interval = paired_interval(challenger, champion, settings, 0.9, 0.4)
    assert interval["estimate"] == pytest.approx(0.5) and interval["lo"] < 0.5 < interval["hi"]
    assert interval["level"] == 0.95 and interval["replicates"] == 200
    # the challenger shifted by 0.3 in every dimension is worse beyond the noise
    assert decide({"fid": 0.9}, {"fid": 0.4}, "fid", 0.02, difference=interval).outcome == KEEP
    with pytest.raises(PromotionError, match="different test features"):
        paired_interval(Score({}, real + 1, b), champion, settings, 0.9, 0.4)
