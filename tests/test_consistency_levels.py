"""Which noise-level pairs consistency distillation trains on: the CD grid's adjacent levels
slid along the Karras ramp (uniformly, or by iCT's lognormal level distribution), iCT's doubling
curriculum, ECT's continuous-time pairs whose gap halves per stage."""

import math

import pytest
import torch

from diffusion.distill.consistency import (ConsistencyConfig, LevelPairs, curriculum_levels,
                                           ect_partner, training_grid)


def test_the_curriculum_doubles_the_intervals_in_equal_stages():
    cfg = ConsistencyConfig(steps=4000, levels=81, start_levels=11)
    # intervals 10 -> 20 -> 40 -> 80: four stages of 1000 steps
    assert [curriculum_levels(cfg, k) for k in (0, 999, 1000, 1999, 2000, 3000, 3999)] == \
        [11, 11, 21, 21, 41, 81, 81]
    # a last stage that would overshoot stops at `levels`
    cfg = ConsistencyConfig(steps=300, levels=30, start_levels=11)
    assert [curriculum_levels(cfg, k) for k in (0, 150, 299)] == [11, 21, 30]
    assert curriculum_levels(ConsistencyConfig(levels=18), 123) == 18  # no curriculum


def test_start_levels_above_levels_is_refused():
    with pytest.raises(ValueError, match="start_levels"):
        ConsistencyConfig(levels=18, start_levels=30)


def test_lognormal_pairs_put_the_lower_level_on_the_truncated_normal_in_log_sigma():
    # iCT's level distribution, continuous: ln sigma_lo ~ N(-1.1, 2^2) restricted to the ramp
    # below its top spacing, sigma_hi one grid spacing (1/17 of the ramp) above it
    cfg = ConsistencyConfig(levels=18, level_sampling="lognormal", level_p_mean=-1.1,
                            level_p_std=2.0)
    draws = 200_000
    s_hi, s_lo, weight = LevelPairs(cfg, "cpu")(0, draws, torch.Generator().manual_seed(0))
    assert weight is None
    spacing = 1 / 17
    v_lo, v_hi = _ramp_position(s_lo, cfg), _ramp_position(s_hi, cfg)
    assert torch.allclose(v_hi - v_lo, torch.full_like(v_hi, spacing), atol=1e-9)
    top = float(training_grid(cfg)[-2])   # the ramp at 1 - spacing: the 17th level
    assert bool((s_lo >= cfg.sigma_min).all() and (s_lo <= top * (1 + 1e-12)).all())
    cdf = lambda s: torch.special.ndtr((torch.log(torch.as_tensor(s, dtype=torch.float64)) + 1.1) / 2.0)
    a, b = cdf(cfg.sigma_min), cdf(top)
    expected = ((cdf(s_lo.sort().values) - a) / (b - a)).clamp(0, 1)
    ecdf = torch.arange(1, draws + 1, dtype=torch.float64) / draws
    ks = float(torch.maximum(ecdf - expected, expected - (ecdf - 1 / draws)).max())
    # DKW at P(false failure) = 1e-6; on the fixed grid (before) it was the grid's steps, > 0.02
    assert ks < math.sqrt(math.log(2e6) / (2 * draws)), ks


def test_ect_partners_halve_their_gap_with_each_stage_and_stop_at_sigma_min():
    sigma = torch.tensor([0.01, 0.5, 2.0, 40.0], dtype=torch.float64)
    n = 1 + 8 * torch.sigmoid(-sigma)  # 5 at sigma 0, 1 for large sigma
    for stage in (4, 5, 6):
        gap = sigma - ect_partner(sigma, stage, 0.002)
        assert torch.allclose(gap, sigma * n / 2**stage, rtol=1e-12)
        assert torch.allclose(gap, 2 * (sigma - ect_partner(sigma, stage + 1, 0.002)), rtol=1e-12)
    # stage 1 asks for a gap larger than sigma where n > 2: the partner is sigma_min
    assert torch.equal(ect_partner(sigma, 1, 0.002)[:2], torch.full((2,), 0.002, dtype=torch.float64))


def test_continuous_pairs_follow_the_stage_schedule_with_relative_weights():
    cfg = ConsistencyConfig(steps=800, level_sampling="continuous", ect_stages=8)
    pairs = LevelPairs(cfg, "cpu")
    for step, stage in ((0, 1), (99, 1), (100, 2), (799, 8)):
        s_hi, s_lo, w = pairs(step, 4096, torch.Generator().manual_seed(step))
        assert bool((s_hi >= 2 * cfg.sigma_min).all() and (s_hi <= cfg.sigma_max).all())
        assert bool((s_lo < s_hi).all())
        assert torch.allclose(s_lo, ect_partner(s_hi, stage, cfg.sigma_min))
        assert math.isclose(float(w.mean()), 1.0, rel_tol=1e-12)
        assert torch.allclose(w * (s_hi - s_lo), (w * (s_hi - s_lo))[0].expand(4096))  # w ~ 1/gap
    # ln sigma ~ N(level_p_mean, level_p_std^2) where the clamp does not bite
    s_hi, _, _ = pairs(0, 100_000, torch.Generator().manual_seed(1))
    inner = s_hi.log()[(s_hi > 0.01) & (s_hi < 10)]
    assert abs(float(torch.special.ndtr(torch.tensor((math.log(10) + 1.1) / 2.0)))
               - float(torch.special.ndtr(torch.tensor((math.log(0.01) + 1.1) / 2.0)))
               - len(inner) / 100_000) < 0.01


def _ramp_position(sigma, cfg):
    lo, hi = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho)
    return (sigma ** (1 / cfg.rho) - lo) / (hi - lo)


@pytest.mark.parametrize("curriculum", [{}, {"start_levels": 5, "steps": 100}],
                         ids=["fixed", "curriculum"])
def test_uniform_pairs_are_a_grid_spacing_apart_anywhere_on_the_ramp(curriculum):
    # the CD grid's adjacent pairs slid along the Karras ramp: a student trained on the fixed
    # levels alone is off between them, where multistep sampling's sigmas fall (2 steps from
    # 80: 2.52, between the 18-level grid's 1.92 and 3.26)
    cfg = ConsistencyConfig(levels=18, **curriculum)
    spacing = 1 / (curriculum_levels(cfg, 0) - 1)
    draws = 200_000
    s_hi, s_lo, weight = LevelPairs(cfg, "cpu")(0, draws, torch.Generator().manual_seed(0))
    assert weight is None and s_hi.dtype == torch.float64
    assert bool((s_lo >= cfg.sigma_min).all() and (s_hi <= cfg.sigma_max).all())
    v_lo, v_hi = _ramp_position(s_lo, cfg), _ramp_position(s_hi, cfg)
    assert torch.allclose(v_hi - v_lo, torch.full_like(v_hi, spacing), atol=1e-9)
    # v_lo ~ U[0, 1 - spacing): Kolmogorov-Smirnov distance within the DKW bound at
    # P(false failure) = 1e-6, sqrt(ln(2e6) / (2 n)) = 0.006 (the fixed grid's steps: 1/17)
    u = (v_lo / (1 - spacing)).sort().values
    ecdf = torch.arange(1, draws + 1, dtype=torch.float64) / draws
    ks = float(torch.maximum(ecdf - u, u - (ecdf - 1 / draws)).max())
    assert ks < math.sqrt(math.log(2e6) / (2 * draws)), ks
