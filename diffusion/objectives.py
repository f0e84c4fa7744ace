"""Parametrisations, loss weightings and the training loss, all in the denoiser form.

Every parametrisation is written as EDM's preconditioning (Karras et al. 2022, Table 1):

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)),

with x = x0 + sigma * eps in the VE view.  Then eps-, v- and x0-prediction of a VP
model are just other coefficient choices, and samplers and distillation only ever
see D.  The network target is F* = (x0 - c_skip x) / c_out, and an error e in F is an
error c_out * e in x0.  A weighting lambda(sigma) is defined on the x0 error, so the
loss on F is lambda c_out^2 |F - F*|^2; this reproduces e.g. min-SNR-gamma as
min(SNR, g)/SNR on eps and min(SNR, g)/(SNR + 1) on v.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .schedules import VPSchedule, alpha_from_sigma, vp_sigma_from_sigma

# c_noise is handed to the network on DDPM's timestep scale (0..1000), which is what
# diffusers' sinusoidal embedding is built for.
TIMESTEP_SCALE = 1000.0


@dataclass
class Coefficients:
    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor
    one_minus_c_skip: torch.Tensor  # computed directly: 1 - c_skip cancels badly at small sigma


class Preconditioning:
    name = "base"

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        raise NotImplementedError


class VPPrediction(Preconditioning):
    """A VP network F(x_vp, t) predicting eps, v or x0, with x_vp = a x, a = 1/sqrt(1+sigma^2).

    eps: x0 = x - sigma eps                      -> c_skip = 1,   c_out = -sigma
    v:   x0 = a x_vp - s v = a^2 x - s v         -> c_skip = a^2, c_out = -s
    x0:  x0 = F                                  -> c_skip = 0,   c_out = 1
    """

    def __init__(self, schedule: VPSchedule, prediction: str = "eps"):
        if prediction not in ("eps", "v", "x0"):
            raise ValueError(f"prediction must be 'eps', 'v' or 'x0', got {prediction!r}")
        self.schedule, self.prediction = schedule, prediction
        self.name = f"{schedule.name}/{prediction}"

    def coefficients(self, sigma):
        a, s = alpha_from_sigma(sigma), vp_sigma_from_sigma(sigma)
        one, zero = torch.ones_like(sigma), torch.zeros_like(sigma)
        if self.prediction == "eps":
            c_skip, c_out, rest = one, -sigma, zero
        elif self.prediction == "v":
            c_skip, c_out, rest = a**2, -s, s**2
        else:
            c_skip, c_out, rest = zero, one, one
        c_noise = TIMESTEP_SCALE * self.schedule.t_from_sigma(sigma)
        return Coefficients(c_skip, c_out, a, c_noise, rest)


class EDMPreconditioning(Preconditioning):
    """EDM: c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2),
    c_noise = ln(s)/4 (here times TIMESTEP_SCALE, the scale the network embeds)."""

    name = "edm"

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = sigma_data

    def coefficients(self, sigma):
        sd2 = self.sigma_data**2
        denom = sigma**2 + sd2
        c_skip = sd2 / denom
        c_out = sigma * self.sigma_data * torch.rsqrt(denom)
        c_in = torch.rsqrt(denom)
        c_noise = TIMESTEP_SCALE * torch.log(sigma) / 4
        return Coefficients(c_skip, c_out, c_in, c_noise, sigma**2 / denom)


class ConsistencyPreconditioning(Preconditioning):
    """A consistency model's boundary-condition parametrisation (Song et al. 2023, appendix C):
    c_skip = sd^2/((s - smin)^2 + sd^2), c_out = (s - smin) sd/sqrt(s^2 + sd^2),
    c_in = 1/sqrt(s^2 + sd^2), c_noise as EDM.  At s = smin, c_skip = 1 and c_out = 0 exactly,
    so f(x, smin) = x bit for bit -- provided sigma reaches here as float64 smin (the grids are
    float64; float32(0.002) is not 0.002)."""

    name = "consistency"

    def __init__(self, sigma_data: float = 0.5, sigma_min: float = 0.002):
        self.sigma_data, self.sigma_min = sigma_data, sigma_min

    def coefficients(self, sigma):
        sd2 = self.sigma_data**2
        d = sigma - self.sigma_min
        denom_skip = d**2 + sd2
        c_skip = sd2 / denom_skip
        c_out = d * self.sigma_data * torch.rsqrt(sigma**2 + sd2)
        c_in = torch.rsqrt(sigma**2 + sd2)
        c_noise = TIMESTEP_SCALE * torch.log(sigma) / 4
        return Coefficients(c_skip, c_out, c_in, c_noise, d**2 / denom_skip)


class DiscreteEpsPrediction(Preconditioning):
    """An eps network trained on N discrete DDPM steps (e.g. a diffusers UNet with its
    scheduler's alphas_cumprod).  sigma is mapped to a fractional timestep by linear
    interpolation of log sigma over the training grid, as k-diffusion does."""

    name = "discrete_eps"

    def __init__(self, alphas_cumprod: torch.Tensor):
        abar = alphas_cumprod.to(torch.float64)
        self.log_sigmas = 0.5 * torch.log((1 - abar) / abar)  # increasing with t

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        ls = self.log_sigmas.to(sigma.device)
        log_sigma = torch.log(sigma.to(torch.float64)).clamp(ls[0], ls[-1])
        hi = torch.searchsorted(ls, log_sigma).clamp(1, len(ls) - 1)
        lo = hi - 1
        w = (log_sigma - ls[lo]) / (ls[hi] - ls[lo])
        return (lo + w).to(sigma.dtype)

    def coefficients(self, sigma):
        one = torch.ones_like(sigma)
        return Coefficients(one, -sigma, alpha_from_sigma(sigma), self.timestep(sigma),
                            torch.zeros_like(sigma))


class Denoiser(nn.Module):
    """D(x, sigma): the network with its preconditioning.  x is in the VE view."""

    def __init__(self, net: nn.Module, precond: Preconditioning):
        super().__init__()
        self.net, self.precond = net, precond

    def _coefficients(self, x, sigma):
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float64)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        c = self.precond.coefficients(sigma)
        shape = (-1,) + (1,) * (x.ndim - 1)
        # coefficients are computed in float64 and cast, so tiny sigmas stay exact
        cast = lambda t: t.to(x.dtype).reshape(shape)  # noqa: E731
        return Coefficients(cast(c.c_skip), cast(c.c_out), cast(c.c_in),
                            c.c_noise.to(torch.promote_types(x.dtype, torch.float32)),
                            cast(c.one_minus_c_skip))

    def raw(self, x, sigma):
        """(F(c_in x; c_noise), coefficients): what the training loss needs."""
        c = self._coefficients(x, sigma)
        return self.net(c.c_in * x, c.c_noise).to(x.dtype), c

    def forward(self, x, sigma):
        out, c = self.raw(x, sigma)
        return c.c_skip * x + c.c_out * out


# --- loss weightings lambda(sigma) on the x0 error ----------------------------

def weight_eps_mse(sigma, **_):
    """The 'simple' eps loss of DDPM: |eps err|^2 = SNR |x0 err|^2."""
    return sigma.pow(-2)


def weight_v_mse(sigma, **_):
    return sigma.pow(-2) + 1


def weight_x0_mse(sigma, **_):
    return torch.ones_like(sigma)


def weight_min_snr(sigma, gamma: float = 5.0, **_):
    """Min-SNR-gamma (Hang et al. 2023): min(SNR, gamma) on the x0 error."""
    return sigma.pow(-2).clamp(max=gamma)


def weight_truncated_snr(sigma, **_):
    """Truncated SNR (Salimans & Ho 2022): max(SNR, 1) on the x0 error."""
    return sigma.pow(-2).clamp(min=1.0)


def weight_edm(sigma, sigma_data: float = 0.5, **_):
    """EDM: (s^2 + sd^2) / (s sd)^2, i.e. unit weight on F."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


WEIGHTINGS = {
    "eps_mse": weight_eps_mse,
    "v_mse": weight_v_mse,
    "x0_mse": weight_x0_mse,
    "min_snr": weight_min_snr,
    "truncated_snr": weight_truncated_snr,
    "edm": weight_edm,
}


# --- training noise levels ---------------------------------------------------

def _device_of(generator):
    """Draw where the generator lives (a CUDA generator cannot fill a CPU tensor)."""
    return generator.device if generator is not None else "cpu"


def sample_sigma_vp(schedule: VPSchedule, n: int, generator=None, device="cpu"):
    """t ~ U(0, 1), sigma = sigma(t)."""
    t = torch.rand(n, generator=generator, dtype=torch.float64, device=_device_of(generator))
    return schedule.sigma(t.to(device))


def sample_sigma_lognormal(n: int, p_mean: float = -1.2, p_std: float = 1.2,
                           generator=None, device="cpu"):
    """EDM: ln sigma ~ N(P_mean, P_std^2)."""
    z = torch.randn(n, generator=generator, dtype=torch.float64, device=_device_of(generator)).to(device)
    return torch.exp(p_mean + p_std * z)


def denoising_loss(denoiser: Denoiser, x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor,
                   weight: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of lambda(sigma) c_out^2 |F - F*|^2 / dim, F* = (x0 - c_skip x)/c_out.

    F* is formed as ((1 - c_skip) x0 - c_skip sigma eps) / c_out so that no two nearly equal
    numbers are subtracted (for eps-prediction it is eps up to rounding of sigma eps / sigma)."""
    shape = (-1,) + (1,) * (x0.ndim - 1)
    s = sigma.to(x0.dtype).reshape(shape)
    x = x0 + s * eps
    out, c = denoiser.raw(x, sigma)
    target = (c.one_minus_c_skip * x0 - c.c_skip * s * eps) / c.c_out
    w = (weight * c.c_out.reshape(-1).to(torch.float64) ** 2).to(x0.dtype).reshape(shape)
    # the network may run in bf16 under autocast; the loss is formed in the data's precision
    per_sample = (w * (out.to(target.dtype) - target) ** 2).flatten(1).mean(1)
    return per_sample.mean()
