"""Consistency distillation (Song et al. 2023), in sigma space.

The student f(x, sigma) = c_skip x + c_out F(c_in x, c_noise) with the boundary-condition
coefficients of objectives.ConsistencyPreconditioning, so f(x, sigma_min) = x exactly.  On a
Karras grid sigma_min = sigma_0 < ... < sigma_{N-1} = sigma_max:

    n ~ U{0, ..., N-2},  x_{n+1} = x0 + sigma_{n+1} z,
    x_hat_n = one Heun step of the frozen teacher's probability-flow ODE, sigma_{n+1} -> sigma_n,
    loss = d(f_theta(x_{n+1}, sigma_{n+1}), f_target(x_hat_n, sigma_n)),

with f_target an EMA of the student (decay mu, no gradient) and d the pseudo-Huber distance
sqrt(|a - b|^2 + c^2) - c, c = 0.00054 sqrt(dim).  Sampling: samplers.sample_consistency.

The default ('uniform') pairs are those of the CD paper's grid slid by a uniform offset along
the Karras ramp: adjacent in the grid's spacing, anywhere between sigma_min and sigma_max
('lognormal' slides them by iCT's level distribution).  A
student trained on the N fixed levels alone is only defined there: its noise embedding
(sin/cos of 250 ln sigma, nets.py) lets it fit each level apart, and between levels it is
far off the teacher's ODE.  The multistep sampler's nested grid (2 steps: sigma 2.52 from
80) falls between the 18 levels, which made 2 and 4 steps worse than 1 (churn detection AUC
0.50 at 1 step, 0.65 at 2; on the ring the 2-step log-density 7.6 nats below the 1-step's).

The level pairs can instead follow improved consistency training (iCT, Song & Dhariwal 2023:
lognormal level sampling, a doubling discretisation curriculum) or easy consistency tuning
(ECT, Geng et al. 2024: continuous-time pairs whose gap shrinks over training, weight
1/(sigma - sigma')); LevelPairs draws them, with the teacher's Heun step between the two.
"""

from __future__ import annotations

import copy
import shutil
import math
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import save_checkpoint
from ..loop import optimise
from ..model import ModelSpec, SamplingSpec, save_model
from ..objectives import ConsistencyPreconditioning, Denoiser
from ..provenance import Lineage, Provenance
from ..schedules import karras_sigmas
from ..train import EMA, resolve_device, step_generator
from .settings import ConsistencyConfig
from .shared import (finished_student, freeze, resume_or_start, student_request,
                     student_sigma_data)

SUPPORTED_STEPS = (1, 2, 4)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """Per-sample sqrt(|a - b|^2 + c^2) - c (|.| the Euclidean norm over all but the batch
    dimension): |a-b|^2/(2c) for |a-b| << c, |a-b| - c for |a-b| >> c.  Formed as
    |a-b|^2 / (sqrt(|a-b|^2 + c^2) + c), which does not cancel when |a-b| << c."""
    sq = (a - b).flatten(1).pow(2).sum(1)
    return sq / (torch.sqrt(sq + c * c) + c)


def training_grid(cfg: ConsistencyConfig) -> torch.Tensor:
    """The N Karras levels, increasing, with the ends set to sigma_min and sigma_max exactly
    (the ramp's rounding would otherwise miss sigma_min, where the boundary condition holds)."""
    grid = karras_sigmas(cfg.levels, cfg.sigma_min, cfg.sigma_max, cfg.rho)[:-1].flip(0).clone()
    grid[0], grid[-1] = cfg.sigma_min, cfg.sigma_max
    return grid


def _col(v, like):
    return v.to(like.dtype).reshape((-1,) + (1,) * (like.ndim - 1))


@torch.no_grad()
def heun_step(teacher, x, sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> torch.Tensor:
    """One Heun step of dx/dsigma = (x - D(x, sigma))/sigma from sigma_from to sigma_to > 0
    (per-sample float64 sigmas)."""
    h = _col(sigma_to - sigma_from, x)
    d1 = (x - teacher(x, sigma_from)) / _col(sigma_from, x)
    x_euler = x + h * d1
    d2 = (x_euler - teacher(x_euler, sigma_to)) / _col(sigma_to, x)
    return x + h * (d1 + d2) / 2


def consistency_student(teacher: Denoiser, sigma_data: float, sigma_min: float) -> Denoiser:
    """f = c_skip x + c_out F(...) with F a copy of the teacher's network.  From an EDM teacher
    this is a near-perfect start at large sigma (the coefficients and c_noise coincide there);
    a VP teacher's network expects VP inputs and timesteps, so it is only a weaker start."""
    return Denoiser(copy.deepcopy(teacher.net), ConsistencyPreconditioning(sigma_data, sigma_min))


def curriculum_levels(cfg: ConsistencyConfig, step: int) -> int:
    """The grid's level count N at optimiser step `step` (iCT's discretisation curriculum):
    `levels` without `start_levels`; else the intervals double from start_levels - 1 towards
    levels - 1 in equal stages over the run (the last one at levels), N = min((start_levels - 1) 2^stage, levels - 1) + 1."""
    if cfg.start_levels is None:
        return cfg.levels
    lo, hi = cfg.start_levels - 1, cfg.levels - 1
    stages = math.ceil(math.log2(hi / lo)) + 1  # the last stage reaches `levels`
    stage = step // max(1, cfg.steps // stages)
    return min(lo * 2 ** stage, hi) + 1


def truncated_lognormal(u: torch.Tensor, p_mean: float, p_std: float, low: float,
                        high: float) -> torch.Tensor:
    """sigma with ln sigma ~ N(p_mean, p_std^2) restricted to [low, high], by the inverse CDF
    at u ~ U[0, 1) (float64, any shape; the result has u's shape): iCT's level distribution
    (Song & Dhariwal 2023, eq. 10), continuous."""
    a, b = (torch.special.ndtr(torch.tensor((math.log(v) - p_mean) / p_std, dtype=torch.float64))
            for v in (low, high))
    q = (a + u * (b - a)).clamp(torch.finfo(torch.float64).tiny, 1 - 1e-16)
    return (p_mean + p_std * torch.special.ndtri(q)).exp().clamp(low, high)


def ect_partner(sigma: torch.Tensor, stage: int, sigma_min: float) -> torch.Tensor:
    """ECT's smaller partner level (Geng et al. 2024): sigma (1 - n(sigma) / 2^stage) with
    n(sigma) = 1 + 8 sigmoid(-sigma), floored at sigma_min; the gap halves with each stage."""
    n = 1.0 + 8.0 * torch.sigmoid(-sigma)
    return (sigma * (1.0 - n / 2.0 ** stage)).clamp_min(sigma_min)


def karras_ramp(v: torch.Tensor, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """The Karras ramp (EDM eq. 5) at positions v in [0, 1]: sigma_min at 0, sigma_max at 1,
    (smin^(1/rho) + v (smax^(1/rho) - smin^(1/rho)))^rho, clamped to [sigma_min, sigma_max] (the
    power's rounding); training_grid(N) is v = n / (N - 1).  v: float64 tensor, any shape."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((lo + v * (hi - lo)) ** rho).clamp(sigma_min, sigma_max)


def ramp_position(sigma: torch.Tensor, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """karras_ramp's inverse: the position v in [0, 1] of sigma on the ramp."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (sigma ** (1 / rho) - lo) / (hi - lo)


class LevelPairs:
    """Draws the (sigma_{n+1}, sigma_n, weight) triples of a batch at a step, by
    cfg.level_sampling (settings.ConsistencyConfig explains the three); float64 (B,) each."""

    def __init__(self, cfg: ConsistencyConfig, device):
        self.cfg, self.device = cfg, device

    def __call__(self, step: int, batch: int, g: torch.Generator):
        cfg = self.cfg
        if cfg.level_sampling == "continuous":
            z = torch.randn(batch, generator=g, device=self.device, dtype=torch.float64)
            s_hi = (cfg.level_p_mean + cfg.level_p_std * z).exp().clamp(2 * cfg.sigma_min,
                                                                      cfg.sigma_max)
            stage = 1 + min(cfg.ect_stages - 1, step * cfg.ect_stages // cfg.steps)
            s_lo = ect_partner(s_hi, stage, cfg.sigma_min)
            w = 1.0 / (s_hi - s_lo)
            return s_hi, s_lo, w / w.mean()  # relative weights: the scale stays the loss's
        # the grid's adjacent pairs (v, v + 1/(N-1)) on the ramp, slid anywhere along it, so
        # that every sigma the multistep sampler may ask for is trained: v ~ U[0, 1 - 1/(N-1))
        # ('uniform'), or the lower level's ln sigma ~ N(level_p_mean, level_p_std^2) on that
        # range ('lognormal')
        ramp = (cfg.sigma_min, cfg.sigma_max, cfg.rho)
        du = 1.0 / (curriculum_levels(cfg, step) - 1)
        u = torch.rand(batch, generator=g, device=self.device, dtype=torch.float64)
        if cfg.level_sampling == "uniform":
            v_lo = (1.0 - du) * u
        else:
            top = float(karras_ramp(torch.tensor(1.0 - du, dtype=torch.float64), *ramp))
            s = truncated_lognormal(u, cfg.level_p_mean, cfg.level_p_std, cfg.sigma_min, top)
            v_lo = ramp_position(s, *ramp).clamp(0.0, 1.0 - du)
        return karras_ramp(v_lo + du, *ramp), karras_ramp(v_lo, *ramp), None


def consistency_loss(student, target, teacher, x0, z, s_hi, s_lo, c, weight=None):
    """Mean over the batch of weight * d(f(x_hi, s_hi), f_target(x_lo, s_lo)): x_hi = x0 +
    s_hi z, x_lo one Heun step of the teacher from s_hi to s_lo; d the pseudo-Huber distance.
    `s_hi`, `s_lo`, `weight`: (B,) float64 (weight None: 1)."""
    x_hi = x0 + _col(s_hi, x0) * z
    with torch.no_grad():
        x_lo = heun_step(teacher, x_hi, s_hi, s_lo)
        y = target(x_lo, s_lo)
    # Weight 1 on the Karras-spaced pairs (the CD paper's choice).  iCT's 1/(sigma_{n+1} - sigma_n)
    # weighting balances the small per-level differences of consistency TRAINING; here the
    # teacher's Heun step already gives a clean target at every level, and on an 18-level rho-7
    # grid that weight would span four orders of magnitude and hand the loss to the smallest
    # levels, which matter least for 1-4 step sampling.  ECT's continuous pairs keep the gap a
    # share of sigma, so there its weight only evens out the levels.
    d = pseudo_huber(student(x_hi, s_hi), y, c)
    return (d if weight is None else d * weight.to(d.dtype)).mean()


def student_spec(teacher_spec: ModelSpec, cfg: ConsistencyConfig, sigma_data: float, c: float,
                 trained_steps: int, provenance: Provenance) -> ModelSpec:
    sampling = SamplingSpec(sampler="consistency", steps=1, grid="karras_nested",
                            sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, rho=cfg.rho, eta=0.0)
    distillation = {"method": "consistency", "supported_steps": list(SUPPORTED_STEPS),
                    "levels": cfg.levels, "level_sampling": cfg.level_sampling,
                    "start_levels": cfg.start_levels, "steps": trained_steps,
                    "target_decay": cfg.target_decay, "ema_decay": cfg.ema_decay,
                    "huber_c": c, "weights": "ema", "teacher_precond": teacher_spec.precond,
                    "base_trained_steps": teacher_spec.trained_steps}
    return teacher_spec.model_copy(update={
        "precond": {"kind": "consistency", "sigma_data": sigma_data, "sigma_min": cfg.sigma_min},
        "sampling": sampling, "distillation": distillation, "trained_steps": None,
        "served_as": None, "provenance": provenance})


def consistency_distillation(teacher: Denoiser, teacher_spec: ModelSpec, data: torch.Tensor,
                             cfg: ConsistencyConfig, out_dir, resume: bool = True,
                             on_log: Callable[[int, dict], None] | None = None,
                             lineage: Lineage | None = None) -> Path:
    """Distil `teacher` into a consistency model; writes out_dir/model (slow-EMA weights,
    sampling defaults: 1 step; 1, 2 and 4 steps are supported on the nested Karras grid) and
    returns it.  With `resume`, a finished student is returned as is and an interrupted run
    continues from out_dir/checkpoints/latest, both only when made from the same settings,
    data, teacher and code (else ProvenanceError, nothing written)."""
    folder, requested = student_request("consistency", cfg, teacher, teacher_spec, data, out_dir,
                                        lineage, __name__)
    if resume and finished_student(folder, requested, "consistency student"):
        return folder
    device = resolve_device(cfg.device)
    data = data.to(device)
    teacher = freeze(copy.deepcopy(teacher).to(device))
    sigma_data = student_sigma_data(cfg.sigma_data, teacher, data)
    dim = math.prod(data.shape[1:])
    c = cfg.huber_c if cfg.huber_c is not None else 0.00054 * math.sqrt(dim)

    student = consistency_student(teacher, sigma_data, cfg.sigma_min).to(device).train()
    for p in student.parameters():
        p.requires_grad_(True)
    net = student.net
    target = freeze(copy.deepcopy(student))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    # The target EMA (mu = 0.95) is what the loss chases; a separate slow EMA with warm-up is
    # what gets exported: on the 2-D ring it sampled with less between-mode mass than the raw
    # weights (see tests/test_distill.py), as in the CM paper (0.9999 for sampling).
    ema = EMA(net, cfg.ema_decay, warmup=True)
    target_params = list(target.net.parameters())
    live_params = list(net.parameters())
    pairs = LevelPairs(cfg, device)

    ckpt_dir = folder.parent / "checkpoints"
    step, last_loss = resume_or_start(ckpt_dir, opt, ema, {"model": net, "target": target.net},
                                      requested, cfg.steps, "consistency distillation", resume)
    meta = {"method": "consistency", "provenance": requested.model_dump(mode="json")}

    def loss_at(step: int) -> torch.Tensor:
        g = step_generator(cfg.seed, 0, step, device)
        x0 = data[torch.randint(len(data), (cfg.batch_size,), generator=g, device=device)]
        s_hi, s_lo, weight = pairs(step, cfg.batch_size, g)
        z = torch.randn(x0.shape, generator=g, device=device, dtype=x0.dtype)
        return consistency_loss(student, target, teacher, x0, z, s_hi, s_lo, c, weight)

    @torch.no_grad()
    def update_target(step: int):
        torch._foreach_lerp_(target_params, live_params, 1.0 - cfg.target_decay)

    def save(step: int, loss: float):
        save_checkpoint(ckpt_dir, step, {"model": net, "target": target.net, "ema": ema.shadow},
                        opt, meta, loss=loss)

    optimise(net, opt, ema, step=step, total=cfg.steps, loss_at=loss_at, lr=cfg.lr,
             lr_warmup_steps=cfg.lr_warmup_steps, grad_clip=cfg.grad_clip, log_every=cfg.log_every,
             checkpoint_every=cfg.checkpoint_every, samples_per_step=cfg.batch_size, save=save,
             after_step=update_target, on_log=on_log, progress=cfg.progress, desc="consistency",
             what="consistency distillation", loss=last_loss, noun=teacher_spec.data.noun)
    exported = copy.deepcopy(net).cpu()
    ema.copy_to(exported)
    saved = save_model(exported.eval(),
                       student_spec(teacher_spec, cfg, sigma_data, c, cfg.steps, requested), folder)
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # the model folder is the result; as in progressive
    return saved
