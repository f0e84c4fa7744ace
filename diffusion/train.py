"""The training loop: AdamW, EMA with warm-up, gradient clipping, bf16 autocast on CUDA,
atomic checkpoints with exact resume, and data parallelism under `torchrun`.

Exact resume rests on one rule: everything random in step k (batch indices, noise levels,
noise) is drawn from a generator seeded by (seed, rank, k), so a run resumed at step k
draws exactly what an uninterrupted run draws.  The global RNG states are saved too, for
anything outside the loop that uses them.

Checkpoints (diffusion/checkpoint.py) hold the weights, the EMA, the optimizer and the RNG
states, and the run's provenance: a resume continues only a run made from the same settings,
data and code (diffusion/provenance.py), and never one already past the requested steps.

Data parallelism: under torchrun (WORLD_SIZE > 1) each rank joins the process group (gloo on
CPU, NCCL on GPU), draws its own share of the global batch and DDP averages the gradients.  The
number of ranks changes what is drawn, so it is part of the provenance (`world_size`, from the
process group itself).  Rank 0 alone writes checkpoints and the model, and reads `on_log`; every
rank reads the same checkpoint on resume, so with several machines out_dir must be on a file
system they share.  At the end the ranks compare the sha256 of their EMA weights: the model is
written only when all agree (`TrainResult.rank_weights_sha256`).  Launching the ranks is not
this module's business: tasks/steps/train_ranks.py does it for the pipeline.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import load_into, resume_checkpoint, save_checkpoint
from .loop import TrainingError, optimise
from .model import ModelSpec, save_model
from .train_settings import ObjectiveConfig, TrainConfig
from .provenance import Lineage, Provenance, code_sha256, tensor_sha256, weights_sha256
from .objectives import (WEIGHTINGS, Denoiser, EDMPreconditioning, VPPrediction, denoising_loss,
                         sample_sigma_lognormal, sample_sigma_vp)

logger = logging.getLogger(__name__)


def training_provenance(spec: ModelSpec | None, cfg: TrainConfig, data: torch.Tensor,
                        lineage: Lineage | None = None, world_size: int = 1) -> Provenance:
    """What determines a training run's weights: the network, preconditioning and training
    settings, the number of data-parallel ranks (`world_size`, recorded when > 1, so a
    single-process run records what it always did), the training tensor, and the code (the
    caller's, from `lineage`; else this module and what it imports)."""
    lineage = lineage or Lineage()
    model = {"net": spec.net, "precond": spec.precond} if spec is not None else {}
    train = cfg.result_settings() | ({"world_size": world_size} if world_size > 1 else {})
    return Provenance(settings={**model, "train": train},
                      data_sha256=tensor_sha256(data),
                      code_sha256=lineage.code_sha256 or code_sha256(["diffusion.train"]),
                      dataset_md5=lineage.dataset_md5, git_commit=lineage.git_commit)


@dataclass
class TrainResult:
    step: int
    loss: float
    seconds: float
    samples_per_second: float
    model_dir: Path | None
    # the sha256 of each rank's EMA weights, by rank, when data parallel (all equal); () else
    rank_weights_sha256: tuple[str, ...] = ()


# --- distributed set-up ------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL's collectives then use this rank's GPU, not GPU 0
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError(f"device {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        if name == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return torch.device(name)


def step_generator(seed: int, rank: int, step: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63 - 1))
    return g


# --- EMA ---------------------------------------------------------------------

class EMA:
    """Exponential moving average of the parameters, with the usual warm-up so that early
    averages are not dominated by the random initialisation."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool):
        self.decay, self.warmup = decay, warmup
        live = model.state_dict()  # tensors sharing storage with the model: cached once, since
        self.shadow = {k: v.detach().clone().float() for k, v in live.items()}  # building the
        # state dict each step costs ~2 % of a small network's step
        floats = [k for k, v in live.items() if v.dtype.is_floating_point]
        self._live_float = [live[k] for k in floats]
        self._shadow_float = [self.shadow[k] for k in floats]
        self._others = [(live[k], self.shadow[k]) for k in live if k not in set(floats)]
        if any(v.dtype != torch.float32 for v in self._live_float):
            raise TrainingError("EMA expects float32 parameters (bf16 is used through autocast)")

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int):
        torch._foreach_lerp_(self._shadow_float, self._live_float, 1.0 - self.decay_at(step))
        for live, shadow in self._others:
            shadow.copy_(live)

    def load(self, state: dict):
        """Copy saved averages into the shadow tensors in place (the cached lists stay valid)."""
        if state.keys() != self.shadow.keys():
            raise TrainingError("EMA state does not match the network")
        for k, v in state.items():
            self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module):
        current = model.state_dict()
        model.load_state_dict({k: v.to(current[k].device, current[k].dtype)
                               for k, v in self.shadow.items()})


# --- the loop ----------------------------------------------------------------

class _LossModule(nn.Module):
    """Wraps the denoiser so that DistributedDataParallel sees the whole loss in forward()."""

    def __init__(self, denoiser: Denoiser):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x0, sigma, eps, weight):
        return denoising_loss(self.denoiser, x0, sigma, eps, weight)


def _sample_sigma(denoiser: Denoiser, obj: ObjectiveConfig, n, g, device):
    kind = obj.sigma_sampling
    if kind == "auto":
        kind = "vp" if isinstance(denoiser.precond, VPPrediction) else "lognormal"
    if kind == "vp":
        if not isinstance(denoiser.precond, VPPrediction):
            raise TrainingError("sigma_sampling 'vp' needs a VP preconditioning")
        return sample_sigma_vp(denoiser.precond.schedule, n, g, device)
    return sample_sigma_lognormal(n, obj.p_mean, obj.p_std, g, device)


def _weight(denoiser: Denoiser, obj: ObjectiveConfig, sigma):
    sd = denoiser.precond.sigma_data if isinstance(denoiser.precond, EDMPreconditioning) else 0.5
    return WEIGHTINGS[obj.weighting](sigma, gamma=obj.gamma, sigma_data=sd)


def train(denoiser: Denoiser, data: torch.Tensor, cfg: TrainConfig, out_dir,
          spec: ModelSpec | None = None, resume: bool = True,
          on_log: Callable[[int, dict], None] | None = None,
          lineage: Lineage | None = None) -> TrainResult:
    """Train `denoiser` on `data` (N, ...) for cfg.steps steps, writing checkpoints under
    out_dir/checkpoints and, at the end, the EMA model to out_dir/model (when `spec` is given),
    its model.json carrying its provenance (`training_provenance`, with the caller's `lineage`).

    Resumes from out_dir/checkpoints/latest when `resume` and one exists -- only when that
    checkpoint was made from the same provenance and is not past cfg.steps, else
    ProvenanceError names the difference and nothing is written.  `on_log(step, metrics)` is
    called every cfg.log_every steps on rank 0 (the hook for trackers).

    Under torchrun (see the module docstring) every rank calls this; only rank 0 writes and
    gets a `model_dir`; TrainingError when the ranks end with different EMA weights (nothing
    is written then)."""
    out_dir = Path(out_dir)
    device = resolve_device(cfg.device)
    ddp = init_distributed(device)
    if data.ndim < 2 or len(data) == 0:
        raise TrainingError(f"training data must be a non-empty (N, ...) tensor, got shape "
                            f"{tuple(data.shape)}")
    if not torch.isfinite(data).all():
        raise TrainingError("training data contains NaN or inf; refusing to train on it")
    if cfg.batch_size % ddp.world:
        raise TrainingError(f"batch_size {cfg.batch_size} must be divisible by the "
                            f"{ddp.world} data-parallel ranks")
    local_batch = cfg.batch_size // ddp.world
    amp = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")

    denoiser = denoiser.to(device).train()
    net = denoiser.net
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                            weight_decay=cfg.weight_decay)
    loss_module = _LossModule(denoiser)
    if ddp.world > 1:
        # DDP broadcasts rank 0's parameters, so every rank starts identical
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None)
    ema = EMA(net, cfg.ema_decay, cfg.ema_warmup)  # after the broadcast: same start everywhere
    provenance = training_provenance(spec, cfg, data, lineage, ddp.world)
    ckpt_dir = out_dir / "checkpoints"
    step, last_loss = 0, float("nan")
    resumed = resume_checkpoint(ckpt_dir, opt, provenance, cfg.steps, "training") if resume else None
    if resumed is not None:
        load_into(net, resumed.weights["model"], resumed.path)
        ema.load(resumed.weights["ema"])
        step, last_loss = resumed.step, resumed.loss
        if ddp.main:
            logger.info("resuming from %s (step %d)", resumed.path, step)

    data = data.to(device)

    def loss_at(step: int) -> torch.Tensor:
        g = step_generator(cfg.seed, ddp.rank, step, device)
        x0 = data[torch.randint(len(data), (local_batch,), generator=g, device=device)]
        sigma = _sample_sigma(denoiser, cfg.objective, local_batch, g, device)
        eps = torch.randn(x0.shape, generator=g, device=device, dtype=x0.dtype)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return loss_module(x0, sigma, eps, _weight(denoiser, cfg.objective, sigma))

    meta = {"model": spec.model_dump(mode="json") if spec is not None else None,
            "train": cfg.model_dump(), "provenance": provenance.model_dump(mode="json")}

    def save(step: int, loss: float):
        save_checkpoint(ckpt_dir, step, {"model": net, "ema": ema.shadow}, opt, meta, loss=loss,
                        keep=cfg.keep_checkpoints)

    result = optimise(net, opt, ema, step=step, total=cfg.steps, loss_at=loss_at, lr=cfg.lr,
                      lr_warmup_steps=cfg.lr_warmup_steps, grad_clip=cfg.grad_clip,
                      log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                      samples_per_step=cfg.batch_size, save=save if ddp.main else None,
                      on_log=on_log if ddp.main else None, progress=cfg.progress and ddp.main,
                      loss=last_loss, noun=spec.data.noun if spec is not None else "samples")
    averaged = _ema_copy(net, ema)
    agreed = _ranks_agree(averaged, ddp, device) if ddp.world > 1 else ()
    model_dir = None
    if spec is not None and ddp.main:
        exported = spec.model_copy(update={"trained_steps": result.step, "provenance": provenance})
        model_dir = save_model(averaged, exported, out_dir / "model")
    if ddp.world > 1:
        dist.barrier()
    return TrainResult(result.step, result.loss, result.seconds, result.samples_per_second,
                       model_dir, agreed)


def _ranks_agree(averaged: nn.Module, ddp: Dist, device: torch.device) -> tuple[str, ...]:
    """Every rank's weights_sha256 of its EMA copy, gathered on every rank (32 bytes each, as a
    uint8 tensor: no pickled objects); TrainingError naming them when they differ."""
    digest = bytes.fromhex(weights_sha256(averaged))
    mine = torch.tensor(list(digest), dtype=torch.uint8, device=device)
    gathered = [torch.empty_like(mine) for _ in range(ddp.world)]
    dist.all_gather(gathered, mine)
    sums = tuple(bytes(t.cpu().tolist()).hex() for t in gathered)
    if len(set(sums)) > 1:
        listing = ", ".join(f"rank {r}: {s[:12]}" for r, s in enumerate(sums))
        raise TrainingError(f"the {ddp.world} data-parallel ranks ended with different EMA "
                            f"weights ({listing}); nothing was written")
    return sums


def _ema_copy(net: nn.Module, ema: EMA) -> nn.Module:
    """A CPU copy of the network holding the EMA weights (what gets exported and sampled)."""
    averaged = copy.deepcopy(net).cpu()
    ema.copy_to(averaged)
    return averaged.eval()
