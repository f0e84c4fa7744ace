"""Progressive distillation (Salimans & Ho 2022), in sigma space.

A student taking ONE DDIM step t -> s must land where the teacher lands after TWO DDIM steps
t -> mid -> s.  The student's DDIM step is z_s = x_hat + (sigma_s/sigma_t)(z_t - x_hat), so
requiring z_s = z'' (the teacher's result) gives its x0 target in closed form:

    x_hat = (z'' - (sigma_s/sigma_t) z_t) / (1 - sigma_s/sigma_t)            (VE form)
          = (z''_vp - (s_s/s_t) z_vp_t) / (a_s - (s_s/s_t) a_t)             (VP form, the paper's
                                                                             Algorithm 2)

and x_hat = z'' when sigma_s = 0.  The loss is the x0 MSE with truncated-SNR weighting
max(SNR, 1).  Grids nest (schedules.nested_karras_sigmas): the student's N/2-step grid is
every other point of the teacher's N-step grid.  Rounds halve N; each student starts as a
copy of its teacher, and its EMA weights (with warm-up) become the next round's teacher.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import save_checkpoint
from ..loop import optimise
from ..model import ModelSpec, SamplingSpec, load_model, save_model
from ..objectives import Denoiser, weight_truncated_snr
from ..provenance import Lineage, Provenance, tensor_sha256
from ..schedules import nested_karras_sigmas
from ..train import EMA, resolve_device, step_generator
from .settings import ProgressiveConfig
from .shared import (check_data, check_teacher, distillation_provenance, finished_student, freeze,
                     resume_or_start)


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample (or scalar) sigma as a column broadcasting over `like`, in its dtype."""
    v = torch.as_tensor(v, dtype=torch.float64, device=like.device)
    if v.ndim == 0:
        v = v.expand(like.shape[0])
    return v.to(like.dtype).reshape((-1,) + (1,) * (like.ndim - 1))


def _sigma(v, like):
    v = torch.as_tensor(v, dtype=torch.float64, device=like.device)
    return v.expand(like.shape[0]) if v.ndim == 0 else v


def ddim_step(denoiser, z: torch.Tensor, sigma_from, sigma_to) -> torch.Tensor:
    """One deterministic DDIM step z_to = D + (sigma_to/sigma_from)(z - D)."""
    d = denoiser(z, _sigma(sigma_from, z))
    return d + (_col(sigma_to, z) / _col(sigma_from, z)) * (z - d)


@torch.no_grad()
def progressive_target(teacher, z_t: torch.Tensor, sigma_t, sigma_mid, sigma_s) -> torch.Tensor:
    """x_hat such that one student DDIM step t -> s from z_t lands on the teacher's two DDIM
    steps t -> mid -> s.  Sigmas are scalars or per-sample tensors; sigma_s may be 0."""
    z_mid = ddim_step(teacher, z_t, sigma_t, sigma_mid)
    z2 = ddim_step(teacher, z_mid, sigma_mid, sigma_s)
    ratio = _col(sigma_s, z_t) / _col(sigma_t, z_t)
    return (z2 - ratio * z_t) / (1 - ratio)


def progressive_target_vp(z2_vp, z_vp_t, alpha_t, s_t, alpha_s, s_s):
    """The same target in VP variables (Salimans & Ho 2022, Algorithm 2):
    (z'' - (s_s/s_t) z_t)/(a_s - (s_s/s_t) a_t)."""
    ratio = s_s / s_t
    return (z2_vp - ratio * z_vp_t) / (alpha_s - ratio * alpha_t)


def progressive_loss(student: Denoiser, teacher, x0, eps, grid: torch.Tensor, j: torch.Tensor):
    """Mean over the batch of max(SNR_t, 1) |D_student(z_t, sigma_t) - x_hat|^2 / dim, for
    student step j: sigma_t = grid[2j], mid = grid[2j+1], s = grid[2j+2] of the teacher's grid."""
    sigma_t, sigma_mid, sigma_s = grid[2 * j], grid[2 * j + 1], grid[2 * j + 2]
    z_t = x0 + _col(sigma_t, x0) * eps
    x_hat = progressive_target(teacher, z_t, sigma_t, sigma_mid, sigma_s)
    err = (student(z_t, sigma_t) - x_hat) ** 2
    w = weight_truncated_snr(sigma_t).to(x0.dtype)
    return (w * err.flatten(1).mean(1)).mean()


def student_spec(teacher_spec: ModelSpec, cfg: ProgressiveConfig, round_: int, teacher_steps: int,
                 trained_steps: int, provenance: Provenance) -> ModelSpec:
    prior = teacher_spec.distillation or {}
    sampling = SamplingSpec(sampler="ddim", steps=teacher_steps // 2, grid="karras_nested",
                            sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, rho=cfg.rho, eta=0.0)
    distillation = {"method": "progressive", "round": round_, "teacher_steps": teacher_steps,
                    "student_steps": teacher_steps // 2, "steps_per_round": trained_steps,
                    "weights": "ema", "weighting": "truncated_snr",
                    "first_teacher_steps": cfg.start_steps,
                    "base_trained_steps": prior.get("base_trained_steps", teacher_spec.trained_steps)}
    return teacher_spec.model_copy(update={"sampling": sampling, "distillation": distillation,
                                           "trained_steps": None, "served_as": None,
                                           "provenance": provenance})


def round_provenance(cfg: ProgressiveConfig, round_: int, n_teacher: int, data_sha256: str,
                     teacher, teacher_spec: ModelSpec, lineage: Lineage | None) -> Provenance:
    settings = {"method": "progressive", "round": round_, "teacher_steps": n_teacher,
                "config": cfg.result_settings()}
    return distillation_provenance(settings, data_sha256, teacher, teacher_spec, lineage, __name__)


def round_dir(out_dir: Path, round_: int, teacher_steps: int) -> Path:
    return Path(out_dir) / f"round_{round_:02d}_{teacher_steps}_to_{teacher_steps // 2}"


def progressive_distillation(teacher: Denoiser, teacher_spec: ModelSpec, data: torch.Tensor,
                             cfg: ProgressiveConfig, out_dir, resume: bool = True,
                             on_log: Callable[[int, dict], None] | None = None,
                             lineage: Lineage | None = None) -> list[Path]:
    """Distil `teacher` from cfg.start_steps DDIM steps down to cfg.end_steps, halving per round.

    Round r (teacher N = start_steps / 2^(r-1) steps) writes out_dir/round_RR_N_to_N/2/model
    (the student's EMA weights, sampling defaults for N/2 DDIM steps on the nested grid) and
    returns those folders in order.  With `resume`, a finished round is loaded instead of
    trained and an interrupted one continues from its latest checkpoint, both only when made
    from the same settings, data, teacher and code (else ProvenanceError, nothing written);
    without it, existing rounds are replaced.  `on_log(step, metrics)` gets {"round", "loss",
    "lr", ...} every cfg.log_every steps."""
    check_data(data)
    check_teacher(teacher_spec, data.shape[1:])
    device = resolve_device(cfg.device)
    data = data.to(device)
    out_dir = Path(out_dir)
    teacher = freeze(copy.deepcopy(teacher).to(device))
    folders, n_teacher, round_ = [], cfg.start_steps, 1
    data_sha256 = tensor_sha256(data)  # once: every round trains on the same tensor
    spec = teacher_spec
    while n_teacher > cfg.end_steps:
        folder = round_dir(out_dir, round_, n_teacher) / "model"
        requested = round_provenance(cfg, round_, n_teacher, data_sha256, teacher, spec, lineage)
        if resume and finished_student(folder, requested, f"progressive round {round_}"):
            student, spec = load_model(folder, device)
        else:
            student = _train_round(teacher, data, cfg, round_, n_teacher, folder.parent, resume,
                                   on_log, device, requested, teacher_spec.data.noun)
            spec = student_spec(spec, cfg, round_, n_teacher, cfg.steps_per_round, requested)
            save_model(student.net, spec, folder)
            shutil.rmtree(folder.parent / "checkpoints", ignore_errors=True)  # done with them
        folders.append(folder)
        teacher = freeze(student)
        n_teacher //= 2
        round_ += 1
    return folders


def _train_round(teacher: Denoiser, data, cfg: ProgressiveConfig, round_: int, n_teacher: int,
                 work: Path, resume: bool, on_log, device, provenance: Provenance,
                 noun: str = "samples") -> Denoiser:
    """One round: a copy of the teacher learns to take one step for every two of the teacher's.
    Returns the student holding its EMA weights."""
    student = copy.deepcopy(teacher).train()
    for p in student.parameters():
        p.requires_grad_(True)
    net = student.net
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    # EMA weights become the next teacher: a round's last raw iterate carries the noise of its
    # last few minibatches, which the next round would then distil as if it were signal; the
    # warm-up keeps the short round's average from being dominated by the teacher's weights.
    ema = EMA(net, cfg.ema_decay, warmup=True)
    grid = nested_karras_sigmas(n_teacher, cfg.sigma_min, cfg.sigma_max, cfg.rho).to(device)
    ckpt_dir = work / "checkpoints"
    what = f"progressive round {round_}"
    step, last_loss = resume_or_start(ckpt_dir, opt, ema, {"model": net}, provenance,
                                      cfg.steps_per_round, what, resume)
    meta = {"method": "progressive", "round": round_, "teacher_steps": n_teacher,
            "provenance": provenance.model_dump(mode="json")}

    def loss_at(step: int) -> torch.Tensor:
        # stream = round: every round draws its own batches, reproducibly per step
        g = step_generator(cfg.seed, round_, step, device)
        x0 = data[torch.randint(len(data), (cfg.batch_size,), generator=g, device=device)]
        j = torch.randint(n_teacher // 2, (cfg.batch_size,), generator=g, device=device)
        eps = torch.randn(x0.shape, generator=g, device=device, dtype=x0.dtype)
        return progressive_loss(student, teacher, x0, eps, grid, j)

    def save(step: int, loss: float):
        save_checkpoint(ckpt_dir, step, {"model": net, "ema": ema.shadow}, opt, meta, loss=loss)

    optimise(net, opt, ema, step=step, total=cfg.steps_per_round, loss_at=loss_at, lr=cfg.lr,
             lr_warmup_steps=cfg.lr_warmup_steps, grad_clip=cfg.grad_clip, log_every=cfg.log_every,
             checkpoint_every=cfg.checkpoint_every, samples_per_step=cfg.batch_size, save=save,
             on_log=on_log, log_extra={"round": round_, "teacher_steps": n_teacher},
             progress=cfg.progress, desc=f"progressive {n_teacher}->{n_teacher // 2}",
             what=what, loss=last_loss, noun=noun)
    ema.copy_to(net)
    return student.eval()
