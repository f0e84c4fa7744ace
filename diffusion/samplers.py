"""Samplers in sigma space, one function each, one shared signature (after k-diffusion).

    sampler(denoiser, x, sigmas, *, generator=None, callback=None, **options) -> SamplerOutput

`denoiser(x, sigma)` returns E[x0 | x] for x = x0 + sigma * eps (see objectives.Denoiser);
`x` is the starting noise already scaled by sigmas[0]; `sigmas` is the decreasing noise
grid, normally ending with 0 (schedules.karras_sigmas and friends).  Each sampler counts
its network evaluations (NFE) and returns them with the sample.  `callback(i, sigma, x,
denoised)` sees every step (used for filmstrips and progress).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .schedules import sampling_sigmas

@dataclass
class SamplerOutput:
    x: torch.Tensor
    nfe: int


class _Counted:
    """Wraps a denoiser, broadcasting scalar sigma over the batch and counting calls."""

    def __init__(self, denoiser):
        self.denoiser, self.nfe = denoiser, 0

    def __call__(self, x, sigma):
        self.nfe += 1
        return self.denoiser(x, sigma.to(x.dtype).expand(x.shape[0]) if sigma.ndim == 0 else sigma)


def _check_grid(x, sigmas):
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D grid with at least 2 levels, got shape "
                         f"{tuple(sigmas.shape)}")
    if not bool((sigmas[:-1] > sigmas[1:]).all()):
        raise ValueError("sigmas must be strictly decreasing")
    if not torch.isfinite(x).all():
        raise ValueError("the starting noise x contains NaN or inf")
    return sigmas.to(x.device, torch.float64)


def ancestral_step(sigma_from, sigma_to, eta=1.0):
    """Split a step into a deterministic move to sigma_down and fresh noise sigma_up.

    sigma_up^2 = eta^2 sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2 is the VE form of
    DDIM's sigma_t(eta) (Song et al. 2021, eq. 16): eta = 1 gives DDPM's posterior q(x_s|x_t, x0).
    """
    if eta == 0:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2)
                                             / sigma_from**2).sqrt())
    sigma_down = (sigma_to**2 - sigma_up**2).sqrt()
    return sigma_down, sigma_up


@torch.no_grad()
def sample_ddim(denoiser, x, sigmas, *, eta: float = 0.0, generator=None,
                callback: Callable | None = None) -> SamplerOutput:
    """DDIM (Song et al. 2021).  With eta = 0 it is Euler's method on the probability-flow ODE
    dx/dsigma = (x - D(x, sigma)) / sigma, exact for sigma -> 0 in one step (x = D)."""
    sigmas = _check_grid(x, sigmas)
    d = _Counted(denoiser)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = d(x, s)
        if callback:
            callback(i, s, x, denoised)
        s_down, s_up = ancestral_step(s, s_next, eta)
        x = denoised + (s_down / s).to(x.dtype) * (x - denoised)
        if s_up > 0:
            x = x + s_up.to(x.dtype) * _noise_like(x, generator)
    return SamplerOutput(x, d.nfe)


def sample_ddpm(denoiser, x, sigmas, *, generator=None, callback=None) -> SamplerOutput:
    """DDPM ancestral sampling (Ho et al. 2020): each step draws from the posterior
    q(x_s | x_t, x0 = D(x_t)), which is DDIM with eta = 1."""
    return sample_ddim(denoiser, x, sigmas, eta=1.0, generator=generator, callback=callback)


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, *, generator=None, callback=None) -> SamplerOutput:
    """DPM-Solver++(2M) (Lu et al. 2022), multistep, in lambda = -log sigma.

    First step (and any step to sigma = 0): x <- (s_next/s) x - expm1(-h) D.
    Later steps: D' = (1 + 1/(2r)) D - 1/(2r) D_prev with r = h_prev / h."""
    sigmas = _check_grid(x, sigmas)
    d = _Counted(denoiser)
    old_denoised, h_prev = None, None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = d(x, s)
        if callback:
            callback(i, s, x, denoised)
        if s_next == 0:
            x = denoised
            break
        h = torch.log(s) - torch.log(s_next)
        if old_denoised is None:
            d_prime = denoised
        else:
            r = h_prev / h
            d_prime = ((1 + 1 / (2 * r)).to(x.dtype) * denoised
                       - (1 / (2 * r)).to(x.dtype) * old_denoised)
        x = (s_next / s).to(x.dtype) * x - torch.expm1(-h).to(x.dtype) * d_prime
        old_denoised, h_prev = denoised, h
    return SamplerOutput(x, d.nfe)


def adams_bashforth_weights(nodes: list[float], start: float, end: float) -> list[float]:
    """Weights b_j with  integral_start^end f  ~=  (end - start) * sum_j b_j f(nodes[j]):  the
    integral of the polynomial through the points (nodes[j], f(nodes[j])), i.e. the
    Adams-Bashforth rule of order len(nodes) for those (possibly unequal) step sizes.  With
    nodes start, start - h, start - 2h, ... (the current point and earlier ones, equal steps
    h = end - start) it gives the classical weights (1), (3, -1)/2, (23, -16, 5)/12, (55, -59, 37, -9)/24 (Hairer,
    Norsett & Wanner, Solving ODEs I, III.1).  Computed in a frame scaled by the step, so the
    weights are well conditioned whatever the sigmas' scale.  Raises ValueError for repeated
    nodes or an empty step."""
    import numpy as np
    from numpy.polynomial import polynomial as P

    h = end - start
    if h == 0 or len(set(nodes)) != len(nodes):
        raise ValueError(f"Adams-Bashforth needs distinct nodes and a non-empty step: nodes "
                         f"{nodes}, step {start} -> {end}")
    u = [(t - start) / h for t in nodes]  # the step is [0, 1] in u
    weights = []
    for j, uj in enumerate(u):
        basis = np.array([1.0])  # the Lagrange polynomial of node j, coefficients low -> high
        for k, uk in enumerate(u):
            if k != j:
                basis = P.polymul(basis, np.array([-uk, 1.0]) / (uj - uk))
        integral = P.polyint(basis)
        weights.append(float(P.polyval(1.0, integral) - P.polyval(0.0, integral)))
    return weights


@torch.no_grad()
def sample_ipndm(denoiser, x, sigmas, *, order: int = 4, generator=None,
                 callback=None) -> SamplerOutput:
    """iPNDM (Zhang & Chen 2023, "Fast sampling of diffusion models with exponential
    integrator", the improved pseudo-numerical method): a linear multistep Adams-Bashforth
    method on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma, one network
    evaluation per step, using the derivatives of up to `order` - 1 earlier steps (the first
    steps use what there is: iPNDM's lower-order warm start, no extra evaluations).

    The weights follow the grid's actual steps (`adams_bashforth_weights`; Zhou et al. 2024's
    iPNDM with variable steps): the classical fixed weights assume equal steps and, on the
    Karras grid, fall to second order.  A step to sigma = 0 returns x = D, as DDIM and
    DPM-Solver++ do (the ODE's derivative is singular there).  order: 1 (Euler = DDIM) to 4."""
    if order not in (1, 2, 3, 4):
        raise ValueError(f"iPNDM order must be 1, 2, 3 or 4, got {order}")
    sigmas = _check_grid(x, sigmas)
    d = _Counted(denoiser)
    history: list[tuple[float, torch.Tensor]] = []  # (sigma, dx/dsigma), newest first
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = d(x, s)
        if callback:
            callback(i, s, x, denoised)
        if s_next == 0:
            x = denoised
            break
        history = [(float(s), (x - denoised) / s.to(x.dtype)), *history][:order]
        weights = adams_bashforth_weights([t for t, _ in history], float(s), float(s_next))
        slope = sum(w * deriv for w, (_, deriv) in zip(weights, history))
        x = x + (s_next - s).to(x.dtype) * slope
    return SamplerOutput(x, d.nfe)


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, *, s_churn: float = 0.0, s_tmin: float = 0.0,
                s_tmax: float = float("inf"), s_noise: float = 1.0, generator=None,
                callback=None) -> SamplerOutput:
    """EDM's Heun sampler (Karras et al. 2022, Algorithm 2; Algorithm 1 when s_churn = 0).

    Second-order Heun on dx/dsigma = (x - D)/sigma, with an Euler step to sigma = 0 at the
    end, so N steps to 0 cost 2N - 1 evaluations."""
    sigmas = _check_grid(x, sigmas)
    d = _Counted(denoiser)
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + ((s_hat**2 - s**2).sqrt() * s_noise).to(x.dtype) * _noise_like(x, generator)
        denoised = d(x, s_hat)
        if callback:
            callback(i, s_hat, x, denoised)
        slope = (x - denoised) / s_hat.to(x.dtype)
        x_next = x + (s_next - s_hat).to(x.dtype) * slope
        if s_next > 0:
            slope_next = (x_next - d(x_next, s_next)) / s_next.to(x.dtype)
            x_next = x + (s_next - s_hat).to(x.dtype) * (slope + slope_next) / 2
        x = x_next
    return SamplerOutput(x, d.nfe)


@torch.no_grad()
def sample_consistency(denoiser, x, sigmas, *, sigma_min: float | None = None, generator=None,
                       callback=None) -> SamplerOutput:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1): x0 = f(x, sigma_0); then
    for every later sigma_i > 0, x = x0 + z sqrt(sigma_i^2 - smin^2) and x0 = f(x, sigma_i).
    A final 0 in the grid is skipped (f already returns a clean sample), so NFE = the number
    of positive sigmas.  sigma_min defaults to the denoiser's preconditioning's."""
    sigmas = _check_grid(x, sigmas)
    if sigma_min is None:
        sigma_min = getattr(getattr(denoiser, "precond", None), "sigma_min", None)
        if sigma_min is None:
            raise ValueError("sample_consistency needs sigma_min: pass it, or a denoiser whose "
                             "preconditioning has one (a consistency model)")
    if bool((sigmas[sigmas > 0] <= sigma_min).any()):
        raise ValueError(f"every positive sigma must exceed sigma_min = {sigma_min}")
    d = _Counted(denoiser)
    positive = sigmas[sigmas > 0]
    denoised = x
    for i, s in enumerate(positive):
        if i > 0:
            scale = (s**2 - sigma_min**2).sqrt().to(x.dtype)
            x = denoised + scale * _noise_like(x, generator)
        # the grid's float64 sigma goes to the denoiser as is (the boundary condition needs it)
        denoised = d(x, s.expand(x.shape[0]))
        if callback:
            callback(i, s, x, denoised)
    return SamplerOutput(denoised, d.nfe)


def _noise_like(x, generator):
    return torch.randn(x.shape, generator=generator, dtype=x.dtype,
                       device="cpu" if generator is None else generator.device).to(x.device)


SAMPLERS = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
    "ipndm": sample_ipndm,
    "heun": sample_heun,
    "consistency": sample_consistency,
}


# Heun's corrector evaluates the denoiser at sigma_to on an Euler estimate and divides its
# error by sigma_to: a step sigma_from -> sigma_to multiplies that error by
# (sigma_from - sigma_to) / (2 sigma_to).  On the quick digits teacher: factor 2e4 (2 steps
# from sigma 80, 3 NFE) gave FID 9e5, 117 (4 steps, 7 NFE) FID 883, 8.3 (8 steps) FID 1.85.
HEUN_MAX_AMPLIFICATION = 50.0


def unusable_setting(sampler: str, steps: int, *, grid: str = "karras", sigma_min: float = 0.002,
                     sigma_max: float = 80.0, rho: float = 7.0, **_) -> str | None:
    """Why `sampler` with `steps` steps on this grid cannot work, in one line, or None.

    Only Heun has such settings: a Heun step whose corrector amplifies the denoiser's error by
    more than HEUN_MAX_AMPLIFICATION (see above; Karras et al. 2022 use Heun with >= 18 steps).
    Other options of a sampling block (eta, sampler, steps) are accepted and ignored."""
    if sampler != "heun" or steps < 2:
        return None  # one step is a single Euler step to sigma = 0: DDIM's 1 step
    sigmas = [float(s) for s in sampling_sigmas(grid, steps, sigma_min, sigma_max, rho)]
    # Heun steps are those to a positive sigma (the last, to 0, is an Euler step)
    factor, s_from, s_to = max(((a - b) / (2 * b), a, b)
                               for a, b in zip(sigmas[:-1], sigmas[1:]) if b > 0)
    if factor <= HEUN_MAX_AMPLIFICATION:
        return None
    return (f"heun at {nfe_for(sampler, steps)} NFE cannot work: its step from sigma {s_from:.3g} "
            f"to {s_to:.3g} multiplies the denoiser's error by {factor:.3g} (more than "
            f"{HEUN_MAX_AMPLIFICATION:g}); it needs more steps")


def nfe_for(sampler: str, steps: int) -> int:
    """Network evaluations of `steps` steps to sigma = 0 (Heun: 2N - 1, others: N)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """The most steps whose NFE does not exceed `nfe` (at least 1)."""
    return max(1, (nfe + 1) // 2) if sampler == "heun" else max(1, nfe)


def grid_options(sampling: dict | None) -> dict:
    """A model's stored sampling block without sampler and steps: what `generate` takes
    besides them (grid, sigma range, rho, eta) when another sampler or step count is asked for."""
    return {k: v for k, v in (sampling or {}).items() if k not in ("sampler", "steps")}


@torch.no_grad()
def generate(denoiser, shape: tuple[int, ...], n: int, *, sampler: str = "heun", steps: int = 18,
             grid: str = "karras", sigma_min: float = 0.002, sigma_max: float = 80.0,
             rho: float = 7.0, eta: float = 0.0, seed: int = 0, device="cpu",
             callback=None) -> SamplerOutput:
    """n samples of `shape` from noise drawn with `seed`: the one call the CLI, evaluation and
    the served model use, so the same seed gives the same images everywhere."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; allowed: {sorted(SAMPLERS)}")
    sigmas = sampling_sigmas(grid, steps, sigma_min, sigma_max, rho)
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn((n, *shape), generator=g) * sigma_max).to(device)
    options = {"eta": eta} if sampler == "ddim" else {}
    return SAMPLERS[sampler](denoiser, x, sigmas, generator=g, callback=callback, **options)
