"""Sampler distillation: few-step students from a trained diffusion teacher.

    progressive.py   progressive distillation (Salimans & Ho 2022): rounds that halve the steps
    consistency.py   consistency distillation (Song et al. 2023): a one-step consistency model

This module holds what both share: loading and checking a teacher, and resumable
checkpoints written in train.py's atomic style (a folder per step, a `latest` pointer
replaced only after the folder is complete, everything random in step k drawn from a
generator seeded by (seed, stream, k) so a resumed run draws what an uninterrupted one does).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass as validated_dataclass
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import atomic_folder, atomic_write_text
from ..model import ModelError, load_for_sampling
from ..objectives import Denoiser
from ..train import (_STRICT, Device, Positive, TrainingError, _rng_state, _set_rng_state,
                     _tensor_state, latest_checkpoint)

__all__ = ["DistillationError", "load_teacher", "check_teacher", "model_data_shape"]


@validated_dataclass(config=_STRICT)
class DistillRunConfig:
    """Settings every distillation run shares; the methods' configs add their own."""

    lr_warmup_steps: Annotated[int, Field(ge=0)] = 0
    grad_clip: Annotated[float, Field(ge=0)] = 1.0
    sigma_min: Annotated[float, Field(gt=0)] = 0.002
    sigma_max: Annotated[float, Field(gt=0)] = 80.0
    rho: Annotated[float, Field(gt=0)] = 7.0
    seed: Annotated[int, Field(ge=0)] = 0
    device: Device = "auto"
    checkpoint_every: Positive = 500
    log_every: Positive = 100
    progress: bool = True

    @model_validator(mode="after")
    def _sigma_range(self):
        if self.sigma_min >= self.sigma_max:
            raise ValueError("sigma_min must be below sigma_max")
        return self


class DistillationError(ModelError):
    """A teacher or data that cannot be distilled; the message says why."""


def model_data_shape(spec: dict) -> tuple[int, ...] | None:
    """The shape of one sample the model was made for: spec["data"]["shape"] when recorded,
    else what its network implies (an MLP's dim, a UNet's channels x size x size)."""
    shape = (spec.get("data") or {}).get("shape")
    if shape is not None:
        return tuple(int(v) for v in shape)
    net = spec.get("net") or {}
    if net.get("kind") == "mlp":
        return (int(net.get("dim", 2)),)
    if net.get("kind") == "unet":
        size = int(net.get("sample_size", 8))
        return (int(net.get("in_channels", 1)), size, size)
    return None


def check_teacher(spec: dict, data_shape) -> None:
    """Raise DistillationError when a model of `spec` cannot teach on data of `data_shape`."""
    kind = (spec.get("precond") or {}).get("kind")
    if kind == "consistency":
        raise DistillationError("the teacher is a consistency-distilled student (precond kind "
                                "'consistency'); it is not a diffusion denoiser and cannot be "
                                "distilled further by progressive or consistency distillation")
    if "distillation" in spec and spec["distillation"].get("method") != "progressive":
        raise DistillationError(f"the teacher was distilled by {spec['distillation'].get('method')!r} "
                                "and cannot be distilled further")
    expected = model_data_shape(spec)
    got = tuple(int(v) for v in data_shape)
    if expected is not None and expected != got:
        raise DistillationError(f"the teacher was made for samples of shape {list(expected)}, "
                                f"but the data has samples of shape {list(got)}")


def load_teacher(path, data_shape, device="cpu") -> tuple[Denoiser, dict]:
    """(frozen teacher denoiser, spec) from a model folder, run folder or checkpoint, checked
    against the data's sample shape.  Raises ModelError (DistillationError) naming the problem."""
    try:
        teacher, spec = load_for_sampling(path, device)
    except ModelError:
        raise
    except (OSError, RuntimeError, ValueError) as e:
        raise DistillationError(f"{path} cannot be loaded as a teacher: {e}") from None
    check_teacher(spec, data_shape)
    return freeze(teacher), spec


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def check_data(data: torch.Tensor) -> None:
    if data.ndim < 2 or len(data) == 0:
        raise DistillationError(f"distillation data must be a non-empty (N, ...) tensor, got shape "
                                f"{tuple(data.shape)}")
    if not torch.isfinite(data).all():
        raise DistillationError("distillation data contains NaN or inf")


# --- checkpoints ---------------------------------------------------------------------

def save_state(ckpt_dir: Path, step: int, weights: dict[str, dict], opt, meta: dict,
               keep: int = 2) -> Path:
    """A checkpoint folder step_XXXXXXXX holding one safetensors file per entry of `weights`,
    state.pt (step, optimizer, RNG) and meta.json; `latest` is replaced after it is complete."""
    ckpt_dir = Path(ckpt_dir)
    target = ckpt_dir / f"step_{step:08d}"
    with atomic_folder(target) as tmp:
        for name, state in weights.items():
            save_file(_tensor_state(state), str(tmp / f"{name}.safetensors"))
        torch.save({"step": step, "optimizer": opt.state_dict(), "rng": _rng_state()}, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=2, default=str))
    atomic_write_text(ckpt_dir / "latest", target.name)
    done = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())
    for p in done[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    return target


def load_state(ckpt_dir: Path, opt) -> tuple[int, dict[str, dict]] | None:
    """(step, {name: state dict}) from ckpt_dir/latest, with the optimizer and RNG restored;
    None when there is no checkpoint."""
    path = latest_checkpoint(Path(ckpt_dir))
    if path is None:
        return None
    try:
        weights = {p.name[: -len(".safetensors")]: load_file(str(p))
                   for p in path.glob("*.safetensors")}
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        opt.load_state_dict(state["optimizer"])
    except (RuntimeError, OSError, KeyError, ValueError) as e:
        raise TrainingError(f"cannot resume from {path}: {e}") from None
    _set_rng_state(state["rng"])
    return int(state["step"]), weights


def resume_from(ckpt_dir: Path, opt, ema, modules: dict[str, nn.Module], resume: bool) -> int:
    """The step to continue from: 0 without a checkpoint (or with resume off), else the latest
    checkpoint's, with its weights loaded into `modules` (by name) and `ema`, and the optimizer
    and RNG restored."""
    state = load_state(ckpt_dir, opt) if resume else None
    if state is None:
        return 0
    step, weights = state
    for name, module in modules.items():
        load_into(module, weights[name], str(ckpt_dir))
    ema.load(weights["ema"])
    return step


def load_into(module: nn.Module, state: dict, where: str):
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise TrainingError(f"checkpoint {where} does not fit the network: {e}") from None
