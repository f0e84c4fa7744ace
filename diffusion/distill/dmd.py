"""Distribution matching distillation (DMD, Yin et al. 2024; DMD2's two time-scale rule, Yin et
al. 2024; the generator parametrisation of SiD, Zhou et al. 2024), in sigma space.

Three denoisers of the teacher's shape:

    real  D_r   the frozen teacher: E[x0 | x_sigma] under the data distribution;
    G     the 1-step generator, a copy of the teacher evaluated at one fixed level sigma_g:
          G(z) = D_G(sigma_g z, sigma_g), z ~ N(0, I);
    fake  D_f   a copy of the teacher trained by denoising score matching on G's samples
          (EDM loss, lognormal levels), so it tracks E[x0 | x_sigma] under G's distribution.

With score(x_t) = (D(x_t) - x_t) / sigma^2, the gradient of KL(p_G || p_data) after noising
to level sigma is E[(s_fake - s_real)(x_t) dG/dtheta] = E[(D_f - D_r)(x_t) / sigma^2 dG/dtheta].
DMD drops the 1/sigma^2 for a per-sample normalisation: for x = G(z), x_t = x + sigma eps,

    grad(x) = (D_f(x_t) - D_r(x_t)) / mean_i |x - D_r(x_t)|_i,

and the generator descends it through the surrogate 0.5 |x - stopgrad(x - grad)|^2 / dim, whose
gradient in x is grad / dim.  It vanishes exactly when the two denoisers agree, i.e. when G's
noised distribution is the data's.  Each generator step is preceded by `fake_updates` steps of
the fake network on fresh G samples (DMD2: the fake score must keep up with G, else its gradient
describes a distribution G has left).  Optional: DMD's paired regression on the teacher's ODE
samples, |G(z) - ODE_teacher(sigma_max z)|^2, which anchors G to the teacher's noise-to-data map.

The result is a model folder like the teacher's whose sampling block is one DDIM step from
sigma_g to 0 on the teacher's preconditioning, i.e. exactly G (samplers.sample_ddim: with one
step to 0, x = D(x, sigma_g)); the evaluation and serving code need nothing new to sample it.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import save_checkpoint
from ..loop import optimise
from ..model import ModelSpec, SamplingSpec, save_model
from ..objectives import Denoiser, denoising_loss, sample_sigma_lognormal, weight_edm
from ..provenance import Lineage, Provenance
from ..samplers import sample_dpmpp_2m
from ..schedules import karras_sigmas
from ..train import EMA, resolve_device, step_generator
from .settings import DMDConfig
from .shared import (finished_student, freeze, resume_or_start, student_request,
                     student_sigma_data)

SUPPORTED_STEPS = (1,)
# the per-sample normaliser mean|x - D_r| is floored here: a sample the real denoiser already
# returns unchanged carries no direction to normalise (and would divide by ~0)
NORM_FLOOR = 1e-6


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.dtype).reshape((-1,) + (1,) * (like.ndim - 1))


@torch.no_grad()
def distribution_matching_gradient(x: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor,
                                   real: Callable, fake: Callable) -> torch.Tensor:
    """DMD's per-sample descent direction for generator samples `x` (N, ...): with
    x_t = x + sigma eps, (D_fake(x_t) - D_real(x_t)) / mean|x - D_real(x_t)| (mean over all but
    the batch dimension, floored at NORM_FLOOR).  `sigma`: (N,) float64 noise levels (> 0);
    `eps`: standard normal noise shaped like x; `real`, `fake`: denoisers D(x, sigma) -> E[x0|x].
    Moving x against it moves p_G toward p_real; it is exactly 0 where the denoisers agree."""
    x_t = x + _col(sigma, x) * eps
    d_real, d_fake = real(x_t, sigma), fake(x_t, sigma)
    norm = (x - d_real).abs().flatten(1).mean(1).clamp_min(NORM_FLOOR)
    return (d_fake - d_real) / _col(norm, x)


def distribution_matching_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """0.5 |x - stopgrad(x - grad)|^2 averaged over dimensions and batch: its gradient in x is
    grad / (N dim), so backpropagating it through x = G(z) applies `grad` to G's weights."""
    target = (x - grad).detach()
    return 0.5 * (x - target).pow(2).flatten(1).mean(1).mean()


def log_uniform_sigmas(n: int, lo: float, hi: float, generator: torch.Generator,
                       device) -> torch.Tensor:
    """(n,) float64 levels with ln sigma ~ U(ln lo, ln hi)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device).to(device)
    return torch.exp(torch.log(torch.tensor(lo, dtype=torch.float64))
                     + u * torch.log(torch.tensor(hi / lo, dtype=torch.float64)))


def generate_one_step(generator: Denoiser, z: torch.Tensor, sigma_g: float) -> torch.Tensor:
    """G(z) = D_G(sigma_g z, sigma_g): what one DDIM step from sigma_g to 0 returns for the
    starting noise sigma_g z (z: (N, ...) standard normal)."""
    sigma = torch.full((len(z),), sigma_g, dtype=torch.float64, device=z.device)
    return generator(sigma_g * z, sigma)


@torch.no_grad()
def teacher_pairs(teacher: Denoiser, shape, n: int, cfg: DMDConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, y): n standard-normal noises and the teacher's DPM-Solver++(2M) ODE samples from
    sigma_max z (`cfg.regression_steps` steps on the Karras grid), seeded by cfg.seed."""
    g = torch.Generator().manual_seed(cfg.seed + 7_777)
    z = torch.randn((n, *shape), generator=g).to(device)
    sigmas = karras_sigmas(cfg.regression_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho).to(device)
    ys = [sample_dpmpp_2m(teacher, chunk * cfg.sigma_max, sigmas).x for chunk in z.split(1024)]
    return z, torch.cat(ys)


def student_spec(teacher_spec: ModelSpec, cfg: DMDConfig, trained_steps: int,
                 provenance: Provenance) -> ModelSpec:
    sampling = SamplingSpec(sampler="ddim", steps=1, grid="karras", sigma_min=cfg.sigma_min,
                            sigma_max=cfg.generator_sigma, rho=cfg.rho, eta=0.0)
    distillation = {"method": "dmd", "supported_steps": list(SUPPORTED_STEPS),
                    "steps": trained_steps, "generator_sigma": cfg.generator_sigma,
                    "fake_updates": cfg.fake_updates, "regression_weight": cfg.regression_weight,
                    "dm_sigma_range": [cfg.dm_sigma_min, cfg.dm_sigma_max],
                    "ema_decay": cfg.ema_decay, "weights": "ema",
                    "teacher_precond": teacher_spec.precond,
                    "base_trained_steps": teacher_spec.trained_steps}
    return teacher_spec.model_copy(update={
        "sampling": sampling, "distillation": distillation, "trained_steps": None,
        "served_as": None, "provenance": provenance})


def dmd_distillation(teacher: Denoiser, teacher_spec: ModelSpec, data: torch.Tensor,
                     cfg: DMDConfig, out_dir, resume: bool = True,
                     on_log: Callable[[int, dict], None] | None = None,
                     lineage: Lineage | None = None) -> Path:
    """Distil `teacher` into a 1-step generator by distribution matching; writes out_dir/model
    (slow-EMA generator weights; sampling: ddim, 1 step from cfg.generator_sigma on the
    teacher's preconditioning) and returns it.  `data`: the (N, ...) training tensor the teacher
    was trained on; only its sample shape, its std (sigma_data for a non-EDM teacher) and its
    sha256 (provenance) are used: the matching needs the teacher and G's own samples only.
    `on_log(step, metrics)` gets the loop's numbers plus `fake_loss` (the last fake update's).
    With `resume`, a finished student is returned as is and an interrupted run continues from
    out_dir/checkpoints/latest, both only when made from the same settings, data, teacher and
    code (else ProvenanceError, nothing written).  Raises DistillationError for a teacher that
    cannot teach or data of another shape, TrainingError when the run diverges."""
    folder, requested = student_request("dmd", cfg, teacher, teacher_spec, data, out_dir, lineage,
                                        __name__)
    if resume and finished_student(folder, requested, "DMD student"):
        return folder
    device = resolve_device(cfg.device)
    shape = tuple(data.shape[1:])
    real = freeze(copy.deepcopy(teacher).to(device))
    sigma_data = student_sigma_data(cfg.sigma_data, teacher, data)

    def trainable_copy() -> Denoiser:
        d = Denoiser(copy.deepcopy(teacher.net), teacher.precond).to(device).train()
        for p in d.parameters():
            p.requires_grad_(True)
        return d

    gen, fake = trainable_copy(), trainable_copy()
    net = gen.net
    # one optimiser, two parameter groups: the loop's lr schedule then drives both and a
    # checkpoint holds both moments.  A group whose grads are None is skipped by Adam's step,
    # so the fake's steps (inside loss_at) leave G alone and the loop's step leaves the fake.
    opt = torch.optim.AdamW([{"params": list(net.parameters())},
                             {"params": list(fake.net.parameters())}],
                            lr=cfg.lr, betas=(cfg.adam_beta1, 0.999), weight_decay=0.0)
    ema = EMA(net, cfg.ema_decay, warmup=True)
    pairs = (teacher_pairs(real, shape, cfg.regression_pairs, cfg, device)
             if cfg.regression_weight > 0 else None)

    ckpt_dir = folder.parent / "checkpoints"
    step, last_loss = resume_or_start(ckpt_dir, opt, ema, {"model": net, "fake": fake.net},
                                      requested, cfg.steps, "DMD distillation", resume)
    meta = {"method": "dmd", "provenance": requested.model_dump(mode="json")}
    fake_params = list(fake.net.parameters())
    clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    extra = {"fake_loss": float("nan")}
    n = cfg.batch_size

    def noise(g):
        return torch.randn((n, *shape), generator=g, device=device)

    def update_fake(g) -> float:
        """One denoising-score-matching step of the fake network on fresh G samples."""
        with torch.no_grad():
            x0 = generate_one_step(gen, noise(g), cfg.generator_sigma)
        sigma = sample_sigma_lognormal(n, cfg.fake_p_mean, cfg.fake_p_std, generator=g,
                                       device=device)
        loss = denoising_loss(fake, x0, sigma, noise(g), weight_edm(sigma, sigma_data))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(fake_params, clip)
        opt.step()
        return float(loss.detach())

    def loss_at(step: int) -> torch.Tensor:
        g = step_generator(cfg.seed, 0, step, device)
        for _ in range(cfg.fake_updates):
            extra["fake_loss"] = update_fake(g)
        x = generate_one_step(gen, noise(g), cfg.generator_sigma)
        sigma = log_uniform_sigmas(n, cfg.dm_sigma_min, cfg.dm_sigma_max, g, device)
        grad = distribution_matching_gradient(x.detach(), sigma, noise(g), real, fake)
        loss = distribution_matching_loss(x, grad)
        if pairs is not None:
            idx = torch.randint(len(pairs[0]), (n,), generator=g, device=device)
            y_hat = generate_one_step(gen, pairs[0][idx], cfg.generator_sigma)
            loss = loss + cfg.regression_weight * (y_hat - pairs[1][idx]).pow(2).flatten(1).mean(1).mean()
        return loss

    def save(step: int, loss: float):
        save_checkpoint(ckpt_dir, step, {"model": net, "fake": fake.net, "ema": ema.shadow},
                        opt, meta, loss=loss)

    def logged(step: int, metrics: dict):
        if on_log:
            on_log(step, {**metrics, **extra})

    optimise(net, opt, ema, step=step, total=cfg.steps, loss_at=loss_at, lr=cfg.lr,
             lr_warmup_steps=cfg.lr_warmup_steps, grad_clip=cfg.grad_clip, log_every=cfg.log_every,
             checkpoint_every=cfg.checkpoint_every, samples_per_step=n * (1 + cfg.fake_updates),
             save=save, on_log=logged, progress=cfg.progress, desc="dmd",
             what="DMD distillation", loss=last_loss, noun=teacher_spec.data.noun)
    exported = copy.deepcopy(net).cpu()
    ema.copy_to(exported)
    saved = save_model(exported.eval(), student_spec(teacher_spec, cfg, cfg.steps, requested), folder)
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # the model folder is the result, as for the others
    return saved
