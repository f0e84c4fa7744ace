"""Bootstrap intervals of FID and KID (diffusion/bootstrap.py) on Gaussian features, where the
FID is known in closed form, and the paired difference the promotion rule decides on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom

from diffusion.bootstrap import (_kid_replicates, kid_feature_map, metric_interval,
                                 paired_difference, quality_intervals, resample_counts)
from diffusion.metrics import EvaluationError, fid_from_features

D = 4
SHIFT = 0.5          # mean shift per dimension: FID = D x SHIFT^2 + sum (sqrt(s_i) - 1)^2
SCALES = torch.tensor([0.5, 0.8, 1.2, 1.5], dtype=torch.float64)   # the fake set's stds


def _population_fid() -> float:
    # N(0, I) against N(SHIFT, diag(SCALES^2)): ||mu||^2 + sum (1 + s^2 - 2 s)
    return D * SHIFT ** 2 + float(((SCALES - 1) ** 2).sum())


def _draw(g: torch.Generator, n_real: int, n_fake: int):
    real = torch.randn(n_real, D, generator=g, dtype=torch.float64)
    fake = torch.randn(n_fake, D, generator=g, dtype=torch.float64) * SCALES + SHIFT
    return real, fake


def test_counts_are_draws_with_replacement():
    counts = resample_counts(50, 400, np.random.default_rng(0))
    assert counts.shape == (400, 50) and bool((counts.sum(1) == 50).all())
    # each row's count is Binomial(50, 1/50): mean 1, and about 1 - (49/50)^50 = 63.6 % of rows
    # are drawn at least once; 400 x 50 draws put the share within 0.636 +- 0.01 (> 4 sd)
    assert abs(float((counts > 0).double().mean()) - (1 - (49 / 50) ** 50)) < 0.01


def test_fid_intervals_cover_the_known_fid_at_their_level():
    """200 independent pairs of Gaussian sets, a 95 % interval from each: the number that
    contain the closed-form FID is Binomial(200, p) with p about 0.95.  Here the plug-in bias
    (about D (1/n_r + 1/n_g) = 0.008) is small next to the noise (sd about 0.1), so the
    interval of the estimator at this n is also one of the population FID.  The accepted
    band is Binomial(200, 0.95)'s central 99.9 %; a 90 % interval (p = 0.90) would fall
    outside it with probability about 0.99."""
    g = torch.Generator().manual_seed(0)
    truth, trials = _population_fid(), 200
    covered = 0
    for t in range(trials):
        real, fake = _draw(g, 1000, 1000)
        interval = metric_interval("fid", real, fake, replicates=200, level=0.95, seed=t)
        assert interval.estimate == pytest.approx(fid_from_features(real, fake), rel=1e-9)
        assert interval.lo <= interval.estimate <= interval.hi
        covered += interval.lo <= truth <= interval.hi
    lo, hi = binom.ppf(0.0005, trials, 0.95), binom.ppf(0.9995, trials, 0.95)
    assert lo <= covered <= hi, (covered, (lo, hi))


def test_kid_interval_is_of_the_unbiased_estimate_and_holds_zero_for_equal_distributions():
    """KID's estimate is the unbiased MMD^2 on the full sets: for two samples of one
    distribution its expectation is 0, so intervals hold 0 in most trials; for shifted
    distributions they hold the (positive) estimate and not 0."""
    g = torch.Generator().manual_seed(1)
    holds_zero = 0
    for t in range(40):
        a = torch.randn(300, D, generator=g, dtype=torch.float64)
        b = torch.randn(300, D, generator=g, dtype=torch.float64)
        holds_zero += metric_interval("kid", a, b, replicates=200, seed=t).lo <= 0
    # a degenerate U-statistic: the naive bootstrap is not exact here, so only a loose bound:
    # at 95 % nominal, fewer than 30 of 40 would mean the interval is badly off
    assert holds_zero >= 30, holds_zero
    real, fake = _draw(g, 500, 500)
    kid = metric_interval("kid", real, fake, replicates=200)
    assert 0 < kid.lo <= kid.estimate <= kid.hi


def _unbiased_mmd2(real: torch.Tensor, fake: torch.Tensor) -> float:
    """KID's unbiased MMD^2 with its kernel (x.y / d + 1)^3, written out from the definition."""
    def k(x, y):
        return (x @ y.T / x.shape[1] + 1.0) ** 3
    m, n = len(real), len(fake)
    k_rr, k_ff = k(real, real), k(fake, fake)
    return float((k_rr.sum() - k_rr.trace()) / (m * (m - 1)) + (k_ff.sum() - k_ff.trace()) / (n * (n - 1))
                 - 2 * k(real, fake).mean())


@pytest.mark.parametrize("d", [1, 3, 16])
def test_kid_feature_map_reproduces_the_kernel(d):
    g = torch.Generator().manual_seed(d)
    x, y = (torch.randn(n, d, generator=g, dtype=torch.float64) for n in (7, 5))
    phi_x, phi_y = kid_feature_map(x), kid_feature_map(y)
    assert phi_x.shape == (7, math.comb(d + 3, 3))
    assert torch.allclose(phi_x @ phi_y.T, (x @ y.T / d + 1) ** 3, rtol=1e-12, atol=1e-12)


# a set of fewer than 4 x C(D + 3, 3) = 140 rows goes through its kernel matrix, a larger one
# through the kernel's features; the last case mixes the two (a table's test split against
# 1000 generated rows)
@pytest.mark.parametrize("m, n", [(100, 100), (400, 400), (400, 100)])
def test_kid_estimate_and_replicates_are_the_unbiased_mmd2_of_the_resampled_rows(m, n):
    g = torch.Generator().manual_seed(m + n)
    real, fake = _draw(g, m, n)
    interval = metric_interval("kid", real, fake, replicates=20, seed=0)
    assert interval.estimate == pytest.approx(_unbiased_mmd2(real, fake), rel=1e-9)
    # replicate b is the unbiased MMD^2 over ordered pairs of distinct DRAWS of the resample
    # (a row drawn twice pairs with its copy): the same statistic on the repeated rows
    rng = np.random.default_rng(5)
    w_real, w_fake = resample_counts(m, 3, rng), resample_counts(n, 3, rng)
    replicates = _kid_replicates(real, [fake], w_real, [w_fake])[0]
    for b in range(3):
        rows = [x.repeat_interleave(w[b].long(), dim=0) for x, w in ((real, w_real), (fake, w_fake))]
        assert float(replicates[b]) == pytest.approx(_unbiased_mmd2(*rows), rel=1e-9)


def test_intervals_shrink_with_n():
    """The noise of a plug-in estimate falls like 1 / sqrt(n): four times the rows, about half
    the width (0.35-0.65 allows the replicates' own noise at B = 400)."""
    g = torch.Generator().manual_seed(2)
    small = metric_interval("fid", *_draw(g, 400, 400), replicates=400)
    large = metric_interval("fid", *_draw(g, 1600, 1600), replicates=400)
    assert 0.35 < (large.hi - large.lo) / (small.hi - small.lo) < 0.65


def test_quality_intervals_are_the_table_columns_and_seeded():
    g = torch.Generator().manual_seed(3)
    real, fake = _draw(g, 300, 400)
    a = quality_intervals(real, fake, replicates=50, seed=7)
    b = quality_intervals(real, fake, replicates=50, seed=7)
    assert set(a) == {"fid_lo", "fid_hi", "kid_lo", "kid_hi"} and a == b
    centred = quality_intervals(real, fake, replicates=50, seed=7, centres={"kid": 1.0})
    # placed around the given centre, same width
    assert centred["kid_hi"] - centred["kid_lo"] == pytest.approx(a["kid_hi"] - a["kid_lo"])
    assert centred["kid_lo"] < 1.0 < centred["kid_hi"] and centred["fid_lo"] == a["fid_lo"]


def test_a_fid_interval_never_goes_below_zero():
    """Two draws of one distribution: FID near 0, where the recentred interval's lower end
    would fall below 0 (a FID cannot); KID's unbiased estimate may be negative."""
    g = torch.Generator().manual_seed(5)
    real = torch.randn(30, 2, generator=g, dtype=torch.float64)
    fake = torch.randn(30, 2, generator=g, dtype=torch.float64)  # unclipped: [-0.118, 0.606]
    fid = metric_interval("fid", real, fake, replicates=100, seed=1)
    assert fid.lo == 0.0 < fid.estimate < fid.hi
    columns = quality_intervals(real, fake, replicates=100, seed=1)
    assert columns["fid_lo"] == 0.0 and columns["kid_lo"] < 0.0


def test_paired_difference_cancels_the_shared_noise():
    """Two models whose i-th samples start from the same noise (the challenger's = the
    champion's plus a small perturbation): the paired interval of their difference is far
    narrower than either model's own interval, and holds 0 for a model against itself."""
    g = torch.Generator().manual_seed(4)
    real, champion = _draw(g, 359, 1000)
    challenger = champion + 0.01 * torch.randn(champion.shape, generator=g, dtype=torch.float64)
    own = metric_interval("fid", real, champion, replicates=300)
    diff = paired_difference(real, champion, challenger, "fid", replicates=300)
    assert diff.estimate == pytest.approx(fid_from_features(real, challenger)
                                          - fid_from_features(real, champion), abs=1e-9)
    assert (diff.hi - diff.lo) < 0.2 * (own.hi - own.lo)
    same = paired_difference(real, champion, champion, "fid", replicates=100)
    assert same.lo == same.hi == same.estimate == 0.0
    worse = paired_difference(real, champion, champion + 0.2, "kid", replicates=200)
    assert worse.lo > 0


def test_bad_input_is_one_clear_error():
    real = torch.randn(10, 3, dtype=torch.float64)
    with pytest.raises(EvaluationError, match="unknown metric 'precision'"):
        metric_interval("precision", real, real)
    with pytest.raises(EvaluationError, match="does not match the other set's 3"):
        metric_interval("fid", real, torch.randn(10, 4))
    with pytest.raises(EvaluationError, match="level must lie strictly between 0 and 1"):
        metric_interval("fid", real, real, level=95)
    with pytest.raises(EvaluationError, match="replicates must be an integer"):
        paired_difference(real, real, real, replicates=0)
