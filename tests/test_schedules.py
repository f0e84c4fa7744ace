"""Noise schedules against the formulas of the papers, written out again here in plain math.

Tolerances: every quantity is computed in float64 (unit roundoff u = 1.1e-16).  The
closed-form inverses lose at most a few hundred u on the grids used (the worst step is
acos near its end point, amplification ~ 1/sin(phase) ~ 100), so 1e-9 relative leaves six
orders of magnitude of margin while still catching any formula error (which is O(1)).
"""

import math

import pytest
import torch

from diffusion.schedules import (LOGSNR_MAX, LOGSNR_MIN, VPCosine, VPLinear, alpha_from_sigma,
                                 karras_sigmas, logsnr_from_sigma, sigma_from_logsnr, snr,
                                 vp_sigma_from_sigma)

F64 = torch.float64
SCHEDULES = [VPLinear(), VPCosine()]
# Un-clipped on both schedules: the cosine log-SNR reaches -20 only at t > 1 - 3e-5 and
# both reach +20 only for t < 1e-7 (asserted in the test that uses the grid).
T_GRID = torch.linspace(1e-3, 1 - 1e-3, 999, dtype=F64)


def _cosine_abar(t: float, s: float = 0.008) -> float:
    """Nichol & Dhariwal 2021, eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2(((t+s)/(1+s)) pi/2)."""
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0.0)


def _linear_abar(t: float, b0: float = 0.1, b1: float = 20.0) -> float:
    """Song et al. 2021 (VP SDE): abar(t) = exp(-(b0 t + (b1 - b0) t^2 / 2))."""
    return math.exp(-(b0 * t + (b1 - b0) * t * t / 2))


def _abar(schedule, t):
    # abar = a^2 = 1/(1 + sigma^2) = sigmoid(log-SNR)
    return torch.sigmoid(schedule.logsnr(t))


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_t_from_sigma_inverts_sigma(schedule):
    lam = schedule.logsnr(T_GRID)
    assert bool(((lam > LOGSNR_MIN) & (lam < LOGSNR_MAX)).all()), "grid must avoid the clipped ends"
    back = schedule.t_from_sigma(schedule.sigma(T_GRID))
    torch.testing.assert_close(back, T_GRID, rtol=1e-9, atol=0)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_logsnr_strictly_decreasing_in_t(schedule):
    lam = schedule.logsnr(T_GRID)
    assert bool((lam[1:] < lam[:-1]).all())
    sigma = schedule.sigma(T_GRID)
    assert bool((sigma[1:] > sigma[:-1]).all())


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_logsnr_clipped_and_finite_at_the_ends(schedule):
    t = torch.linspace(0, 1, 10_001, dtype=F64)
    lam = schedule.logsnr(t)
    assert bool(torch.isfinite(lam).all())
    assert float(lam.min()) >= LOGSNR_MIN and float(lam.max()) <= LOGSNR_MAX
    # at t = 0 abar = 1 exactly, the unclipped log-SNR is +inf: it must sit on the clip
    assert float(lam[0]) == LOGSNR_MAX
    assert schedule.sigma_min == pytest.approx(math.exp(-LOGSNR_MAX / 2), rel=1e-12)
    assert math.isfinite(schedule.sigma_max) and schedule.sigma_max > 1


def test_cosine_clips_at_t_one():
    # f(1) = cos^2(pi/2) ~ 4e-33: abar ~ 0 and the unclipped log-SNR is ~ -74, below the clip
    assert float(VPCosine().logsnr(torch.tensor(1.0, dtype=F64))) == LOGSNR_MIN
    assert VPCosine().sigma_max == pytest.approx(math.exp(-LOGSNR_MIN / 2), rel=1e-12)


def test_linear_is_unclipped_at_t_one():
    # abar(1) = exp(-10.05): log-SNR = log(abar/(1-abar)) = -10.05 - log(1 - e^-10.05), inside the clip
    expected = math.log(_linear_abar(1.0) / (1 - _linear_abar(1.0)))
    assert float(VPLinear().logsnr(torch.tensor(1.0, dtype=F64))) == pytest.approx(expected, rel=1e-12)


def test_cosine_abar_matches_nichol_dhariwal():
    got = _abar(VPCosine(), T_GRID)
    expected = torch.tensor([_cosine_abar(float(t)) for t in T_GRID], dtype=F64)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=0)


def test_linear_abar_matches_closed_form():
    got = _abar(VPLinear(), T_GRID)
    expected = torch.tensor([_linear_abar(float(t)) for t in T_GRID], dtype=F64)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=0)


def test_linear_with_other_betas():
    sched = VPLinear(beta_min=0.5, beta_max=5.0)
    t = torch.linspace(0.05, 1.0, 50, dtype=F64)
    expected = torch.tensor([_linear_abar(float(u), 0.5, 5.0) for u in t], dtype=F64)
    torch.testing.assert_close(_abar(sched, t), expected, rtol=1e-9, atol=0)
    torch.testing.assert_close(sched.t_from_sigma(sched.sigma(t)), t, rtol=1e-9, atol=0)


# --- Karras sigmas -------------------------------------------------------------

def _edm_eq5(n, smin, smax, rho=7.0):
    """Karras et al. 2022, eq. 5: sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho."""
    return [(smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
            for i in range(n)] + [0.0]


@pytest.mark.parametrize("n,smin,smax,rho", [(18, 0.002, 80.0, 7.0), (2, 0.01, 10.0, 7.0),
                                             (40, 0.05, 50.0, 3.0)])
def test_karras_sigmas_match_edm_eq5(n, smin, smax, rho):
    s = karras_sigmas(n, smin, smax, rho)
    assert s.dtype == F64 and s.shape == (n + 1,)
    assert float(s[0]) == pytest.approx(smax, rel=1e-12)
    assert float(s[-2]) == pytest.approx(smin, rel=1e-12)
    assert float(s[-1]) == 0.0
    assert bool((s[1:] < s[:-1]).all())
    torch.testing.assert_close(s, torch.tensor(_edm_eq5(n, smin, smax, rho), dtype=F64),
                               rtol=1e-12, atol=0)


def test_karras_single_step():
    s = karras_sigmas(1, 0.002, 80.0)
    assert s.tolist() == [80.0, 0.0]


@pytest.mark.parametrize("n", [0, -3])
def test_karras_needs_a_step(n):
    with pytest.raises(ValueError, match="at least 1 step"):
        karras_sigmas(n, 0.002, 80.0)


# --- VE <-> VP conversions -------------------------------------------------------

SIGMAS = torch.logspace(-5, 4, 91, dtype=F64)


def test_vp_scales_are_a_unit_pair():
    a, s = alpha_from_sigma(SIGMAS), vp_sigma_from_sigma(SIGMAS)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(SIGMAS), rtol=1e-14, atol=0)
    torch.testing.assert_close(s / a, SIGMAS, rtol=1e-14, atol=0)          # sigma = s / a
    torch.testing.assert_close(a, 1 / torch.sqrt(1 + SIGMAS**2), rtol=1e-14, atol=0)


def test_snr_and_logsnr():
    a, s = alpha_from_sigma(SIGMAS), vp_sigma_from_sigma(SIGMAS)
    torch.testing.assert_close(snr(SIGMAS), 1 / SIGMAS**2, rtol=1e-14, atol=0)
    torch.testing.assert_close(snr(SIGMAS), a**2 / s**2, rtol=1e-12, atol=0)
    torch.testing.assert_close(logsnr_from_sigma(SIGMAS), torch.log(1 / SIGMAS**2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sigma_from_logsnr(logsnr_from_sigma(SIGMAS)), SIGMAS, rtol=1e-13, atol=0)
