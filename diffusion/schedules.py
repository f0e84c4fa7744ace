"""Noise schedules, written in sigma space (Karras et al. 2022, "EDM").

Every schedule is reduced to the one quantity samplers need: the noise level
sigma of the variance-exploding (VE) form x = x0 + sigma * eps.  A
variance-preserving (VP) model sees x_vp = a * x0 + s * eps with a^2 + s^2 = 1;
the two are related by

    sigma = s / a,   a = 1 / sqrt(1 + sigma^2),   x_vp = a * x_ve,
    SNR = a^2 / s^2 = 1 / sigma^2,   log-SNR lambda = -2 log sigma.

VP schedules are parametrised by continuous time t in [0, 1] through their
log-SNR lambda(t); the inverse t(lambda) is closed form for both, so a VP
network can be queried at any sigma a sampler asks for.
"""

from __future__ import annotations

import math

import torch

LOGSNR_MIN, LOGSNR_MAX = -20.0, 20.0  # clip so that both ends stay finite


# --- conversions between the VE and VP views --------------------------------

def sigma_from_logsnr(logsnr: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * logsnr)


def logsnr_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    return -2.0 * torch.log(sigma)


def alpha_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """VP signal scale a = 1 / sqrt(1 + sigma^2)."""
    return torch.rsqrt(1.0 + sigma**2)


def vp_sigma_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """VP noise scale s = sigma / sqrt(1 + sigma^2)."""
    return sigma * torch.rsqrt(1.0 + sigma**2)


def snr(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.pow(-2)


# --- VP schedules in continuous time ----------------------------------------

class VPSchedule:
    """A VP schedule: log-SNR lambda(t) decreasing on t in [0, 1]."""

    name = "vp"

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def t_from_logsnr(self, logsnr: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return sigma_from_logsnr(self.logsnr(t))

    def t_from_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.t_from_logsnr(logsnr_from_sigma(sigma))

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(torch.tensor(0.0, dtype=torch.float64)))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(torch.tensor(1.0, dtype=torch.float64)))


class VPLinear(VPSchedule):
    """Linear beta(t) = b0 + (b1 - b0) t (Ho et al. 2020; Song et al. 2021, continuous form).

    abar(t) = exp(-(b0 t + (b1 - b0) t^2 / 2)), lambda = log(abar / (1 - abar)).
    """

    name = "vp_linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.b0, self.b1 = beta_min, beta_max

    def _log_abar(self, t):
        return -(self.b0 * t + 0.5 * (self.b1 - self.b0) * t**2)

    def logsnr(self, t):
        log_abar = self._log_abar(t)
        # log(abar / (1 - abar)) = -log(expm1(-log abar)), stable for small t
        return (-torch.log(torch.expm1(-log_abar))).clamp(LOGSNR_MIN, LOGSNR_MAX)

    def t_from_logsnr(self, logsnr):
        # -log abar = log1p(exp(-lambda)) =: c; solve (b1-b0)/2 t^2 + b0 t - c = 0
        c = torch.nn.functional.softplus(-logsnr)
        a = 0.5 * (self.b1 - self.b0)
        return (2 * c) / (self.b0 + torch.sqrt(self.b0**2 + 4 * a * c))


class VPCosine(VPSchedule):
    """Cosine schedule (Nichol & Dhariwal 2021): abar(t) = f(t)/f(0),
    f(t) = cos^2(((t + s)/(1 + s)) pi/2), s = 0.008; log-SNR clipped to [-20, 20]."""

    name = "vp_cosine"

    def __init__(self, s: float = 0.008):
        self.s = s
        self._f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2

    def logsnr(self, t):
        t = torch.as_tensor(t)
        phase = ((t + self.s) / (1 + self.s)) * math.pi / 2
        abar = (torch.cos(phase) ** 2 / self._f0).clamp(max=1.0)
        return (torch.log(abar) - torch.log1p(-abar)).clamp(LOGSNR_MIN, LOGSNR_MAX)

    def t_from_logsnr(self, logsnr):
        abar = torch.sigmoid(logsnr)
        phase = torch.acos(torch.sqrt(abar * self._f0).clamp(max=1.0))
        return (phase * 2 / math.pi * (1 + self.s) - self.s).clamp(0.0, 1.0)


VP_SCHEDULES = {"vp_linear": VPLinear, "vp_cosine": VPCosine}


# --- sampling grids: decreasing sigmas, ending with 0 ------------------------

def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                  dtype=torch.float64) -> torch.Tensor:
    """EDM eq. (5): sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho,
    followed by sigma_n = 0.  n noise levels give n steps."""
    if n < 1:
        raise ValueError(f"need at least 1 step, got {n}")
    if n == 1:
        return append_zero(torch.tensor([sigma_max], dtype=dtype))
    ramp = torch.linspace(0, 1, n, dtype=dtype)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((hi + ramp * (lo - hi)) ** rho)


def nested_karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                         dtype=torch.float64) -> torch.Tensor:
    """The Karras ramp sampled at u_i = i/n for i < n, then sigma_n = 0 (progressive distillation).

    Unlike karras_sigmas (which ends its ramp at sigma_min), the grids nest: the n/2-step grid
    is every other point of the n-step grid, so one student step spans exactly two teacher
    steps.  sigma_min itself is never visited; the last step jumps from sigma_{n-1} to 0."""
    if n < 1:
        raise ValueError(f"need at least 1 step, got {n}")
    u = torch.arange(n, dtype=dtype) / n
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((hi + u * (lo - hi)) ** rho)


def vp_time_sigmas(schedule: VPSchedule, n: int, t_min: float = 1e-3,
                   dtype=torch.float64) -> torch.Tensor:
    """Uniform steps in VP time from t = 1 down to t_min (the DDPM/DDIM convention), then 0."""
    if n < 1:
        raise ValueError(f"need at least 1 step, got {n}")
    t = torch.linspace(1.0, t_min, n, dtype=dtype)
    return append_zero(schedule.sigma(t))


def logsnr_sigmas(n: int, sigma_min: float, sigma_max: float, dtype=torch.float64) -> torch.Tensor:
    """Steps uniform in log-SNR (the DPM-Solver "logSNR" spacing), then 0."""
    if n < 1:
        raise ValueError(f"need at least 1 step, got {n}")
    return append_zero(torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n,
                                                dtype=dtype)))


def sampling_sigmas(grid: str, steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                    dtype=torch.float64) -> torch.Tensor:
    """The noise grid a sampler walks, by name: 'karras' (EDM, rho), 'karras_nested' (the
    nested Karras grid of progressive distillation) or 'logsnr' (uniform in log-SNR)."""
    if grid == "karras":
        return karras_sigmas(steps, sigma_min, sigma_max, rho, dtype)
    if grid == "karras_nested":
        return nested_karras_sigmas(steps, sigma_min, sigma_max, rho, dtype)
    if grid == "logsnr":
        return logsnr_sigmas(steps, sigma_min, sigma_max, dtype)
    raise ValueError(f"unknown grid {grid!r}; allowed: 'karras', 'karras_nested', 'logsnr'")
