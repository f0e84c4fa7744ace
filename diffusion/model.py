"""A saved diffusion model: network + preconditioning + default sampling, as files.

Layout of a model folder (weights as safetensors, never pickles):

    model.json                      a `ModelSpec`: what to rebuild (net, precond), how to sample,
                                    the data it was made for, and its provenance
    unet/config.json                for a UNet: diffusers' own layout, so UNet2DModel.from_pretrained
    unet/diffusion_pytorch_model.safetensors    reads it as well
    net.safetensors                 for any other network

`build_denoiser(spec)` turns a ModelSpec into a Denoiser; `save_model` and `load_model` write
and read the folder atomically.  `net` and `precond` stay plain mappings here: they are the
constructor arguments of nets.build_net and of the preconditionings, validated when built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file

from .atomic import atomic_folder
from .nets import UNet, build_net
from .objectives import (ConsistencyPreconditioning, Denoiser, EDMPreconditioning, Preconditioning,
                         VPPrediction)
from .provenance import Provenance
from .schedules import VP_SCHEDULES

FORMAT = "dmops-model/1"


class ModelError(ValueError):
    """A model folder or spec that cannot be used; the message says why."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingSpec(_Record):
    """The sampling procedure stored with a model: `samplers.generate`'s keyword arguments."""
    sampler: str = "heun"
    steps: int = Field(18, gt=0)
    grid: str = "karras"
    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(80.0, gt=0)
    rho: float = Field(7.0, gt=0)
    eta: float = Field(0.0, ge=0, le=1)

    def grid_options(self) -> dict:
        """Everything but sampler and steps: what another sampler or step count keeps."""
        return self.model_dump(exclude={"sampler", "steps"})


class DataSpec(_Record):
    """The data a model was made for."""
    shape: tuple[int, ...]            # one sample: (C, H, W) images or (D,) vectors
    dataset: str | None = None
    kind: Literal["image", "vector"] | None = None
    train_samples: int | None = None


class ModelSpec(_Record):
    """The typed content of model.json (and of a checkpoint's "model" record)."""
    format: Literal["dmops-model/1"] = FORMAT
    net: dict[str, Any]
    precond: dict[str, Any]
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    data: DataSpec
    trained_steps: int | None = None       # optimiser steps of a trained (not distilled) model
    distillation: dict[str, Any] | None = None   # method, round, steps, ... of a student
    served_as: str | None = None           # the evaluation row a registered model is served at
    provenance: Provenance | None = None   # what made its weights (diffusion/provenance.py)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def method(self) -> str | None:
        """'progressive' / 'consistency' for a distilled student, None for a trained model."""
        return (self.distillation or {}).get("method")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), indent=2, sort_keys=True)


def parse_spec(record: dict, where: str) -> ModelSpec:
    """A ModelSpec from a JSON record; ModelError naming `where` and every bad field."""
    if record.get("format", FORMAT) != FORMAT:
        raise ModelError(f"{where} has format {record.get('format')!r}; this version reads {FORMAT!r}")
    try:
        return ModelSpec.model_validate(record)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(top)'}: {err['msg']}"
                             for err in e.errors())
        raise ModelError(f"{where} is not a valid model spec: {problems}") from None


def build_precond(spec: dict) -> Preconditioning:
    kind = spec.get("kind")
    if kind == "edm":
        return EDMPreconditioning(sigma_data=float(spec.get("sigma_data", 0.5)))
    if kind == "vp":
        schedule = spec.get("schedule", "vp_cosine")
        if schedule not in VP_SCHEDULES:
            raise ModelError(f"unknown VP schedule {schedule!r}; allowed: {sorted(VP_SCHEDULES)}")
        return VPPrediction(VP_SCHEDULES[schedule](), spec.get("prediction", "eps"))
    if kind == "consistency":
        return ConsistencyPreconditioning(sigma_data=float(spec.get("sigma_data", 0.5)),
                                          sigma_min=float(spec.get("sigma_min", 0.002)))
    raise ModelError(f"unknown preconditioning kind {kind!r}; allowed: ['consistency', 'edm', 'vp']")


def build_denoiser(spec: ModelSpec) -> Denoiser:
    try:
        return Denoiser(build_net(spec.net), build_precond(spec.precond))
    except KeyError as e:
        raise ModelError(f"model spec lacks {e.args[0]!r}") from None
    except ValueError as e:
        raise ModelError(str(e)) from None


def write_weights(net: torch.nn.Module, folder: Path):
    """The network's weights in its native layout inside `folder`."""
    if isinstance(net, UNet):
        net.unet.save_pretrained(folder / "unet", safe_serialization=True)
    else:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(folder / "net.safetensors"))


def read_weights(net: torch.nn.Module, folder: Path):
    if isinstance(net, UNet):
        path = folder / "unet" / "diffusion_pytorch_model.safetensors"
        target = net.unet
    else:
        path, target = folder / "net.safetensors", net
    if not path.exists():
        raise ModelError(f"{folder} has no weights file {path.relative_to(folder)}")
    state = load_file(str(path))
    try:
        missing, unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even with strict=False
        raise ModelError(f"weights in {path} do not fit the network in model.json: {e}") from None
    if missing or unexpected:
        raise ModelError(f"weights in {path} do not fit the network in model.json: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")


def save_model(net: torch.nn.Module, spec: ModelSpec, folder) -> Path:
    """Write `spec` as model.json and `net`'s weights to `folder`, atomically."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        write_weights(net, tmp)
        write_spec(spec, tmp)
    return folder


def write_spec(spec: ModelSpec, folder) -> None:
    (Path(folder) / "model.json").write_text(spec.to_json())


def read_spec(folder) -> ModelSpec:
    """The ModelSpec of a model folder; ModelError when it has none or it is not valid."""
    folder = Path(folder)
    path = folder / "model.json"
    if not path.exists():
        raise ModelError(f"{folder} is not a model folder: it has no model.json")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(record, dict):
        raise ModelError(f"{path} must hold a JSON object")
    return parse_spec(record, str(path))


def load_model(folder, device="cpu") -> tuple[Denoiser, ModelSpec]:
    """(denoiser in eval mode, spec) from a model folder."""
    folder = Path(folder)
    spec = read_spec(folder)
    denoiser = build_denoiser(spec)
    read_weights(denoiser.net, folder)
    return denoiser.to(device).eval(), spec


def resolve_model_path(path) -> Path:
    """Accept a model folder, a training run folder (holding model/ or checkpoints/) or one
    checkpoint folder, and return the folder to load from."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path} does not exist")
    if (path / "model.json").exists() or (path / "ema.safetensors").exists():
        return path
    if (path / "model" / "model.json").exists():
        return path / "model"
    pointer = path / "checkpoints" / "latest"
    if pointer.exists():
        return path / "checkpoints" / pointer.read_text().strip()
    raise ModelError(f"{path} holds no model: expected model.json (a model folder), model/ or "
                     "checkpoints/latest (a training run), or ema.safetensors (a checkpoint)")


def load_for_sampling(path, device="cpu") -> tuple[Denoiser, ModelSpec]:
    """(denoiser, spec) from any folder resolve_model_path accepts; a checkpoint gives its
    EMA weights, the ones that sample best."""
    folder = resolve_model_path(path)
    if (folder / "model.json").exists():
        return load_model(folder, device)
    state_path = folder / "state.json"
    if not state_path.exists():
        raise ModelError(f"checkpoint {folder} has no state.json; cannot tell which network it holds")
    record = json.loads(state_path.read_text()).get("model") or {}
    if not record:
        raise ModelError(f"checkpoint {folder} was written without a model spec; sample from the "
                         "run's model/ folder instead")
    spec = parse_spec(record, f"checkpoint {state_path}")
    denoiser = build_denoiser(spec)
    state = load_file(str(folder / "ema.safetensors"))
    try:
        denoiser.net.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"EMA weights in {folder} do not fit its model spec: {e}") from None
    return denoiser.to(device).eval(), spec
