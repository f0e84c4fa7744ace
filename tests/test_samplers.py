"""Samplers against exact math: a Gaussian mixture's closed-form denoiser, convergence order,
and agreement with diffusers' schedulers on the same network and time grid."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UNet2DModel

from diffusion.gmm import GaussianMixture
from diffusion.objectives import Denoiser, DiscreteEpsPrediction
from diffusion.samplers import (SAMPLERS, adams_bashforth_weights, ancestral_step, generate, nfe_for,
                                sample_heun)
from diffusion.schedules import karras_sigmas

MIX = GaussianMixture.ring(modes=8, radius=2.0, std=0.15)
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def _moment_tolerances(x: torch.Tensor, z: float = 4.0):
    """z standard errors of the sample mean, covariance entries and mode weights, estimated
    from the sample itself (delta method); mode weights from the binomial."""
    n = len(x)
    centred = x - x.mean(0)
    mean_tol = z * centred.std(0) / math.sqrt(n)
    products = centred[:, :, None] * centred[:, None, :]
    cov_tol = z * products.std(0) / math.sqrt(n)
    w = MIX.weights
    weight_tol = z * torch.sqrt(w * (1 - w) / n)
    return mean_tol, cov_tol, weight_tol


@pytest.mark.parametrize("name,steps", [("ddpm", 256), ("ddim", 256), ("dpmpp_2m", 64), ("heun", 64),
                                        ("ipndm", 64)])
def test_sampler_with_exact_denoiser_reproduces_the_mixture(name, steps):
    n = 20_000
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) * SIGMA_MAX
    out = SAMPLERS[name](MIX.denoiser, x, karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX), generator=g)
    assert out.nfe == nfe_for(name, steps)
    s = out.x
    mean_tol, cov_tol, weight_tol = _moment_tolerances(s)
    assert torch.all((s.mean(0) - MIX.mean).abs() < mean_tol), (s.mean(0), MIX.mean, mean_tol)
    cov = torch.cov(s.T)
    assert torch.all((cov - MIX.cov).abs() < cov_tol), (cov, MIX.cov, cov_tol)
    weights = torch.bincount(MIX.assign(s), minlength=8) / n
    assert torch.all((weights - MIX.weights).abs() < weight_tol), weights
    # the samples sit on the modes, not between them: same log-density as true draws
    true_x, _ = MIX.sample(n, torch.Generator().manual_seed(2))
    assert abs(MIX.log_prob(s).mean() - MIX.log_prob(true_x).mean()) < 0.05


def _ode_solution(name, steps, x):
    # end at sigma_min (no final jump to 0) so the global error of the ODE solver is measured
    sigmas = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)[:-1]
    return SAMPLERS[name](MIX.denoiser, x.clone(), sigmas).x


@pytest.mark.parametrize("name,order", [("ddim", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_ode_samplers_converge_at_their_theoretical_order(name, order):
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * SIGMA_MAX
    reference = _ode_solution("heun", 2048, x)
    steps = [32, 64, 128, 256]
    errors = [(_ode_solution(name, n, x) - reference).norm(dim=1).mean().item() for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.3, (errors, slope)


def test_adams_bashforth_weights_are_the_classical_ones_on_equal_steps_and_exact_for_polynomials():
    classical = [[1], [3 / 2, -1 / 2], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24]]
    for k, expected in enumerate(classical, start=1):
        got = adams_bashforth_weights([-float(j) for j in range(k)], 0.0, 1.0)
        assert got == pytest.approx(expected, abs=1e-12)
    # unequal steps: k nodes integrate a polynomial of degree k - 1 exactly
    nodes, start, end = [80.0, 83.5, 91.0, 104.0], 80.0, 71.2
    f = lambda t: 2.0 - 0.3 * t + 0.01 * t**2 - 4e-5 * t**3  # noqa: E731
    exact = (lambda t: 2.0 * t - 0.15 * t**2 + 0.01 / 3 * t**3 - 1e-5 * t**4)
    quad = (end - start) * sum(w * f(t) for w, t in zip(adams_bashforth_weights(nodes, start, end), nodes))
    assert quad == pytest.approx(exact(end) - exact(start), rel=1e-10)
    with pytest.raises(ValueError, match="distinct nodes"):
        adams_bashforth_weights([1.0, 1.0], 1.0, 0.5)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_ipndm_converges_at_its_order_on_the_karras_grid(order):
    """Variable-step weights keep the order on the Karras grid, whose steps shrink a
    thousandfold.  The error's local slope between 128 and 256 steps is measured (the first
    steps' lower-order warm start and the grid's ends make smaller step counts
    pre-asymptotic: 3.4 from 64 to 128 at order 4); the reference is iPNDM's own solution at
    2048 steps, whose error (~1e-9) is far below the errors compared (>= 5e-6)."""
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * SIGMA_MAX
    reference = _ode_solution("ipndm", 2048, x)
    errors = [(SAMPLERS["ipndm"](MIX.denoiser, x.clone(), karras_sigmas(n, SIGMA_MIN, SIGMA_MAX)[:-1],
                                 order=order).x - reference).norm(dim=1).mean().item() for n in (128, 256)]
    slope = math.log2(errors[0] / errors[1])
    assert abs(slope - order) < 0.25, (errors, slope)


def test_ancestral_step_is_ddpm_posterior():
    """eta = 1 must add exactly the variance of q(x_s | x_t, x0) of the VP process, rescaled
    to the VE view: beta_tilde = (1 - abar_s)/(1 - abar_t) (1 - abar_t/abar_s)."""
    sigma_t, sigma_s = torch.tensor(3.0, dtype=torch.float64), torch.tensor(1.2, dtype=torch.float64)
    abar_t, abar_s = 1 / (1 + sigma_t**2), 1 / (1 + sigma_s**2)
    beta_tilde = (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)
    _, sigma_up = ancestral_step(sigma_t, sigma_s, eta=1.0)
    assert torch.allclose(sigma_up * abar_s.sqrt(), beta_tilde.sqrt(), rtol=1e-12)
    down, up = ancestral_step(sigma_t, sigma_s, eta=0.0)
    assert down == sigma_s and up == 0


def test_nfe_counts_and_heun_is_2n_minus_1():
    calls = []

    def counting(x, sigma):
        calls.append(1)
        return MIX.denoiser(x, sigma)

    x = torch.randn(4, 2, dtype=torch.float64) * SIGMA_MAX
    out = sample_heun(counting, x, karras_sigmas(10, SIGMA_MIN, SIGMA_MAX))
    assert out.nfe == len(calls) == 19
    for name in ("ddim", "ddpm", "dpmpp_2m"):
        assert SAMPLERS[name](MIX.denoiser, x, karras_sigmas(10, SIGMA_MIN, SIGMA_MAX)).nfe == 10


def test_bad_grids_are_rejected_with_a_reason():
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="decreasing"):
        SAMPLERS["ddim"](MIX.denoiser, x, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="at least 2"):
        SAMPLERS["heun"](MIX.denoiser, x, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        SAMPLERS["dpmpp_2m"](MIX.denoiser, torch.full((2, 2), float("nan")), karras_sigmas(4, 0.1, 1))
    with pytest.raises(ValueError, match="unknown sampler"):
        generate(MIX.denoiser, (2,), 4, sampler="euler_a")


# --- cross-check with diffusers ------------------------------------------------

class _DiffusersEpsNet(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, c_noise):
        return self.unet(x, c_noise).sample


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1,
                       norm_num_groups=8)
    return unet.eval()


def _assert_agree(ours, theirs):
    """Agreement to 1e-4 of the samples' scale: an untrained UNet's samples reach |x| ~ 500,
    where float32 itself only resolves ~3e-5, so the bound is relative to max(1, max |x|)."""
    scale = max(1.0, float(theirs.abs().max()))
    assert float((ours - theirs).abs().max()) <= 1e-4 * scale, (ours - theirs).abs().max() / scale


def _run_diffusers(scheduler, unet, x):
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return x


@pytest.mark.parametrize("steps", [5, 12])
def test_ddim_matches_diffusers_ddim_scheduler(tiny_unet, steps):
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                          set_alpha_to_one=True)
    sched.set_timesteps(steps)
    abar = sched.alphas_cumprod.to(torch.float64)
    sigmas = torch.cat([((1 - abar[sched.timesteps]) / abar[sched.timesteps]).sqrt(),
                        torch.zeros(1, dtype=torch.float64)])
    x_vp = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    theirs = _run_diffusers(sched, tiny_unet, x_vp.clone())
    denoiser = Denoiser(_DiffusersEpsNet(tiny_unet), DiscreteEpsPrediction(sched.alphas_cumprod))
    x_ve = x_vp * torch.sqrt(1 + sigmas[0] ** 2).float()  # x_ve = x_vp / a
    ours = SAMPLERS["ddim"](denoiser, x_ve, sigmas)
    assert ours.nfe == steps
    _assert_agree(ours.x, theirs)


@pytest.mark.parametrize("steps", [6, 20])
def test_dpmpp_2m_matches_diffusers_dpm_solver(tiny_unet, steps):
    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                        algorithm_type="dpmsolver++", solver_order=2,
                                        final_sigmas_type="zero")
    sched.set_timesteps(steps)
    sigmas = sched.sigmas.to(torch.float64)  # VE sigmas of the grid, ending with 0
    x_vp = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    theirs = _run_diffusers(sched, tiny_unet, x_vp.clone())
    denoiser = Denoiser(_DiffusersEpsNet(tiny_unet), DiscreteEpsPrediction(sched.alphas_cumprod))
    x_ve = x_vp * torch.sqrt(1 + sigmas[0] ** 2).float()
    ours = SAMPLERS["dpmpp_2m"](denoiser, x_ve, sigmas)
    assert ours.nfe == steps
    _assert_agree(ours.x, theirs)
