"""Parametrisations and losses against the papers' own targets, written out again here.

A "perfect" network outputs the paper's regression target (eps, v = a eps - s x0, x0, or
EDM's F* = (x0 - c_skip x)/c_out), computed in this file from x0 and eps; the denoiser must
then return x0.  The losses are compared with the papers' formulas on a fixed, non-perfect
linear network, so they are not zero.

Notation: x = x0 + sigma eps (VE view), a = 1/sqrt(1 + sigma^2), s = sigma/sqrt(1 + sigma^2),
the VP sample is a x = a x0 + s eps, SNR = a^2/s^2 = 1/sigma^2.
"""

import math

import pytest
import torch
from torch import nn

from diffusion.objectives import (TIMESTEP_SCALE, WEIGHTINGS, Denoiser, EDMPreconditioning,
                                  VPPrediction, denoising_loss)
from diffusion.schedules import VPCosine, VPLinear

F64, F32 = torch.float64, torch.float32
U64, U32 = 2.0**-53, 2.0**-24  # unit roundoff


class Oracle(nn.Module):
    """Outputs a fixed tensor and records what it was given."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output, self.seen = output, None

    def forward(self, x_in, c_noise):
        self.seen = (x_in.detach().clone(), c_noise.detach().clone())
        return self.output


class FixedLinear(nn.Module):
    """A deterministic, deliberately wrong network: F = x_in W + b + 1e-3 c_noise u."""

    def __init__(self, dim: int, dtype=F32):
        super().__init__()
        g = torch.Generator().manual_seed(1234)
        self.W = torch.randn(dim, dim, generator=g, dtype=F64).to(dtype) / math.sqrt(dim)
        self.b = torch.randn(dim, generator=g, dtype=F64).to(dtype)
        self.u = torch.randn(dim, generator=g, dtype=F64).to(dtype)

    def forward(self, x_in, c_noise):
        flat = x_in.flatten(1)
        out = flat @ self.W.to(flat.dtype) + self.b.to(flat.dtype) \
            + 1e-3 * c_noise.to(flat.dtype)[:, None] * self.u.to(flat.dtype)
        return out.view_as(x_in)


def _vp_scales(sigma):
    return 1 / torch.sqrt(1 + sigma**2), sigma / torch.sqrt(1 + sigma**2)


def _edm_coefficients(sigma, sd):
    """Karras et al. 2022, Table 1."""
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / torch.sqrt(sigma**2 + sd**2)
    c_in = 1 / torch.sqrt(sigma**2 + sd**2)
    c_noise = torch.log(sigma) / 4
    return c_skip, c_out, c_in, c_noise


def _draw(n, shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, *shape, generator=g, dtype=F64).to(dtype)
    eps = torch.randn(n, *shape, generator=g, dtype=F64).to(dtype)
    return x0, eps


def _bcast(v, like):
    return v.reshape((-1,) + (1,) * (like.ndim - 1))


PARAMETRISATIONS = [("vp", sched, pred) for sched in ("vp_linear", "vp_cosine")
                    for pred in ("eps", "v", "x0")] + [("edm", 0.5, None), ("edm", 1.4, None)]
IDS = [f"{s}-{p}" if k == "vp" else f"edm-sd{s}" for k, s, p in PARAMETRISATIONS]
SCHEDULES = {"vp_linear": VPLinear(), "vp_cosine": VPCosine()}


def _setup(kind, arg, pred, n):
    """(precond, sigma, t or None): VP sigmas cover the whole schedule, clipped ends included;
    EDM sigmas span 1e-3 .. 1e2."""
    if kind == "vp":
        sched = SCHEDULES[arg]
        t = torch.linspace(0, 1, n, dtype=F64)
        return VPPrediction(sched, pred), sched.sigma(t), t
    return EDMPreconditioning(arg), torch.logspace(-3, 2, n, dtype=F64), None


def _paper_target(kind, arg, pred, x0, eps, sigma):
    """The network output each paper regresses onto, in float64."""
    x0, eps = x0.to(F64), eps.to(F64)
    sig = _bcast(sigma, x0)
    if kind == "vp":
        a, s = _vp_scales(sig)
        return {"eps": eps, "v": a * eps - s * x0, "x0": x0}[pred]
    c_skip, c_out, _, _ = _edm_coefficients(sig, arg)
    return (x0 - c_skip * (x0 + sig * eps)) / c_out


# --- a perfect network gives x0 back ---------------------------------------------

@pytest.mark.parametrize("kind,arg,pred", PARAMETRISATIONS, ids=IDS)
def test_perfect_network_recovers_x0_float64(kind, arg, pred):
    n = 64
    precond, sigma, t = _setup(kind, arg, pred, n)
    x0, eps = _draw(n, (3,), F64)
    net = Oracle(_paper_target(kind, arg, pred, x0, eps, sigma))
    x = x0 + sigma[:, None] * eps
    d = Denoiser(net, precond)(x, sigma)
    # c_skip x + c_out F holds terms up to (1 + sigma) max(|x0|, |eps|) (<= 5 for these draws);
    # a handful of float64 roundings on them: 16 u (1 + sigma) 5 ~ 9e-15 (1 + sigma).
    tol = 16 * U64 * 5 * (1 + sigma[:, None])
    assert bool(((d - x0).abs() <= tol).all()), float(((d - x0).abs() / tol).max())

    x_in, c_noise = net.seen
    if kind == "vp":
        a, s = _vp_scales(sigma[:, None])
        # the VP network sees the VP-scaled sample a x = a x0 + s eps
        torch.testing.assert_close(x_in, a * x, rtol=1e-14, atol=0)
        torch.testing.assert_close(x_in, a * x0 + s * eps, rtol=0, atol=1e-14)
        # and the VP time on DDPM's 0..1000 scale (float32); the clipped ends map back to the
        # clip's own time, so only the inner points invert exactly
        inner = slice(1, -1)
        torch.testing.assert_close(c_noise[inner], (TIMESTEP_SCALE * t[inner]).to(c_noise.dtype),
                                   rtol=1e-6, atol=1e-4)
    else:
        c_skip, c_out, c_in, c_noise_edm = _edm_coefficients(sigma, arg)
        torch.testing.assert_close(x_in, c_in[:, None] * x, rtol=1e-14, atol=0)
        torch.testing.assert_close(c_noise, (1000 * c_noise_edm).to(c_noise.dtype), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("kind,arg,pred", PARAMETRISATIONS, ids=IDS)
def test_perfect_network_recovers_x0_float32(kind, arg, pred):
    n = 64
    precond, sigma, _ = _setup(kind, arg, pred, n)
    x0, eps = _draw(n, (1, 4, 4), F32)
    net = Oracle(_paper_target(kind, arg, pred, x0, eps, sigma).to(F32))
    x = x0 + _bcast(sigma.to(F32), x0) * eps
    d = Denoiser(net, precond)(x, sigma)
    assert d.dtype == F32
    # float32 rounding of x = x0 + sigma eps alone is u32 (1 + sigma) |eps|; allow 16 u32 (1 + sigma) * 5
    tol = 16 * U32 * 5 * (1 + _bcast(sigma, x0))
    assert bool(((d.to(F64) - x0.to(F64)).abs() <= tol).all())


# --- the loss is the paper's loss --------------------------------------------------

def _snr(sigma):
    return 1 / sigma**2


LOSS_CASES = [
    # (kind, arg, prediction, weighting, paper's loss weight on |F - target|^2 as a function of sigma)
    ("vp", "vp_linear", "eps", "eps_mse", lambda sg, sd: torch.ones_like(sg)),
    ("vp", "vp_cosine", "eps", "eps_mse", lambda sg, sd: torch.ones_like(sg)),
    ("vp", "vp_cosine", "v", "min_snr", lambda sg, sd: _snr(sg).clamp(max=5) / (_snr(sg) + 1)),
    ("vp", "vp_linear", "v", "min_snr", lambda sg, sd: _snr(sg).clamp(max=5) / (_snr(sg) + 1)),
    ("vp", "vp_cosine", "eps", "min_snr", lambda sg, sd: _snr(sg).clamp(max=5) / _snr(sg)),
    ("vp", "vp_cosine", "v", "v_mse", lambda sg, sd: torch.ones_like(sg)),
    ("vp", "vp_linear", "x0", "truncated_snr", lambda sg, sd: _snr(sg).clamp(min=1)),
    ("vp", "vp_cosine", "x0", "x0_mse", lambda sg, sd: torch.ones_like(sg)),
    ("edm", 0.5, None, "edm", lambda sg, sd: torch.ones_like(sg)),
    ("edm", 1.4, None, "edm", lambda sg, sd: torch.ones_like(sg)),
]


def _loss_case(case, dtype, n=48, shape=(2, 3)):
    kind, arg, pred, weighting, paper_weight = case
    sd = arg if kind == "edm" else 0.5
    if kind == "vp":
        sched = SCHEDULES[arg]
        t = torch.linspace(0, 1, n, dtype=F64)
        precond, sigma, c_noise = VPPrediction(sched, pred), sched.sigma(t), TIMESTEP_SCALE * t
    else:
        precond = EDMPreconditioning(sd)
        sigma = torch.logspace(-3, 2, n, dtype=F64)
        c_noise = 1000 * torch.log(sigma) / 4
    x0, eps = _draw(n, shape, dtype, seed=7)
    net = FixedLinear(math.prod(shape), dtype)
    weight = WEIGHTINGS[weighting](sigma, gamma=5.0, sigma_data=sd)
    got = denoising_loss(Denoiser(net, precond), x0, sigma, eps, weight)

    # the paper's loss, in float64, from the same draws
    x064, eps64 = x0.to(F64), eps.to(F64)
    sig = _bcast(sigma, x064)
    x = x064 + sig * eps64
    if kind == "vp":
        a, _ = _vp_scales(sig)
        x_in = a * x
    else:
        x_in = _edm_coefficients(sig, sd)[2] * x
    net64 = FixedLinear(math.prod(shape), F64)
    net64.W, net64.b, net64.u = net.W.to(F64), net.b.to(F64), net.u.to(F64)
    F = net64(x_in, c_noise)
    target = _paper_target(kind, arg, pred, x0, eps, sigma)
    per_sample = ((F - target) ** 2).flatten(1).mean(1)
    expected = (paper_weight(sigma, sd) * per_sample).mean()
    return got, expected


@pytest.mark.parametrize("case", LOSS_CASES, ids=[f"{c[1]}-{c[2]}-{c[3]}" for c in LOSS_CASES])
def test_denoising_loss_is_the_papers_loss(case):
    got, expected = _loss_case(case, F32)
    assert float(expected) > 1e-2  # the network is not perfect: the comparison means something
    # float32: F and the target carry a few u32 ~ 1e-7 relative error each, |F - target| is O(1)
    # for this random network, so the mean square is good to ~1e-6 relative; allow 1e-5.
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_denoising_loss_float64_is_float64_accurate():
    got, expected = _loss_case(LOSS_CASES[-1], F64)
    assert got.dtype == F64
    # float64 end to end: a few u64 per element, so 1e-12 relative is ample
    assert float(got) == pytest.approx(float(expected), rel=1e-12)


def test_loss_weight_is_applied_per_sample():
    """Min-SNR weights vary by orders of magnitude across the batch's sigmas: the loss must be
    the mean of each sample's own weighted error, which differs clearly from the plain mean."""
    case = LOSS_CASES[2]  # v + min-SNR: weights differ strongly across sigma
    got_all, exp_all = _loss_case(case, F32, n=48)
    assert float(got_all) == pytest.approx(float(exp_all), rel=1e-5)
    # a loss that ignored the weight would be the plain mean: make sure that differs
    kind, arg, pred, weighting, _ = case
    unweighted = (kind, arg, pred, weighting, lambda sg, sd: torch.ones_like(sg))
    _, plain = _loss_case(unweighted, F32, n=48)
    assert abs(float(plain) - float(exp_all)) > 0.1 * float(exp_all)


# --- coefficients ------------------------------------------------------------------

@pytest.mark.parametrize("sd", [0.5, 1.4])
def test_edm_coefficients_match_the_paper(sd):
    sigma = torch.logspace(-4, 3, 50, dtype=F64)
    c = EDMPreconditioning(sd).coefficients(sigma)
    c_skip, c_out, c_in, c_noise = _edm_coefficients(sigma, sd)
    torch.testing.assert_close(c.c_skip, c_skip, rtol=1e-14, atol=0)
    torch.testing.assert_close(c.c_out, c_out, rtol=1e-14, atol=0)
    torch.testing.assert_close(c.c_in, c_in, rtol=1e-14, atol=0)
    # ln(sigma)/4 on the network's 0..1000 scale
    torch.testing.assert_close(c.c_noise, TIMESTEP_SCALE * c_noise, rtol=1e-14, atol=1e-12)
    # 1 - c_skip, computed without cancellation: sigma^2 / (sigma^2 + sd^2)
    torch.testing.assert_close(c.one_minus_c_skip, sigma**2 / (sigma**2 + sd**2), rtol=1e-14, atol=0)


@pytest.mark.parametrize("pred,c_skip,c_out", [
    ("eps", lambda a, s, sg: torch.ones_like(sg), lambda a, s, sg: -sg),
    ("v", lambda a, s, sg: a**2, lambda a, s, sg: -s),
    ("x0", lambda a, s, sg: torch.zeros_like(sg), lambda a, s, sg: torch.ones_like(sg)),
])
def test_vp_coefficients(pred, c_skip, c_out):
    sigma = torch.logspace(-4, 4, 50, dtype=F64)
    a, s = _vp_scales(sigma)
    c = VPPrediction(VPCosine(), pred).coefficients(sigma)
    torch.testing.assert_close(c.c_skip, c_skip(a, s, sigma), rtol=1e-14, atol=0)
    torch.testing.assert_close(c.c_out, c_out(a, s, sigma), rtol=1e-14, atol=0)
    torch.testing.assert_close(c.c_in, a, rtol=1e-14, atol=0)
    torch.testing.assert_close(c.one_minus_c_skip, 1 - c_skip(a, s, sigma), rtol=1e-12, atol=1e-15)


def test_unknown_prediction_rejected():
    with pytest.raises(ValueError, match="prediction"):
        VPPrediction(VPCosine(), "score")


# --- precision at the smallest noise level ------------------------------------------

@pytest.mark.parametrize("pred", ["eps", "v", "x0"])
def test_loss_target_has_no_cancellation_at_tiny_sigma(pred):
    """At the linear schedule's log-SNR clip (sigma = e^-10 = 4.5e-5) in float32, a target
    formed as (x0 - c_skip x)/c_out would lose ~ u32 |x0| / sigma ~ 1e-3 relative (x0 + sigma eps
    rounds away most of sigma eps).  The loss forms it without subtraction, so a network that
    outputs the exact target must see a loss at float32 rounding level."""
    sched = VPLinear()
    n = 4096
    sigma = torch.full((n,), sched.sigma_min, dtype=F64)
    assert sched.sigma_min == pytest.approx(4.54e-5, rel=1e-3)
    x0, eps = _draw(n, (2,), F32, seed=3)
    target = _paper_target("vp", "vp_linear", pred, x0, eps, sigma).to(F32)
    weight_name = {"eps": "eps_mse", "v": "v_mse", "x0": "x0_mse"}[pred]
    # these weightings make lambda c_out^2 = 1: the loss is mean((F - target)^2)
    weight = WEIGHTINGS[weight_name](sigma)
    loss = float(denoising_loss(Denoiser(Oracle(target), VPPrediction(sched, pred)), x0, sigma, eps,
                                weight))
    scale = float(((x0.abs() + eps.abs()) ** 2).mean())
    bound = (4 * U32) ** 2 * scale   # a few roundings of terms no larger than |x0| + |eps|
    assert loss <= bound, (loss, bound)
    # the bound is tight enough to see cancellation: the naive formula breaks it by far
    s32 = sigma.to(F32)[:, None]
    x = x0 + s32 * eps
    a2 = (1 / (1 + sigma**2)).to(F32)[:, None]
    naive = {"eps": (x0 - x) / (-s32), "v": (x0 - a2 * x) / (-s32), "x0": None}[pred]
    if naive is not None:
        assert float(((naive - target) ** 2).mean()) > 100 * bound
    if pred == "eps":
        # eps-prediction's target is eps itself: (sigma eps)/sigma is off by at most the two
        # roundings of one product and one quotient, 2 u32 relative
        assert loss <= (2 * U32) ** 2 * float((eps**2).mean())
