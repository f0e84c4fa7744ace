"""A saved diffusion model: network + preconditioning + default sampling, as files.

Layout of a model folder (weights as safetensors, never pickles):

    model.json                      what to rebuild: {"format", "net", "precond", "sampling", "data", ...}
    unet/config.json                for a UNet: diffusers' own layout, so UNet2DModel.from_pretrained
    unet/diffusion_pytorch_model.safetensors    reads it as well
    net.safetensors                 for any other network

`build_denoiser(spec)` turns the plain-dict spec into a Denoiser; `save_model` and
`load_model` write and read the folder atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_folder
from .nets import UNet, build_net
from .objectives import (ConsistencyPreconditioning, Denoiser, EDMPreconditioning, Preconditioning,
                         VPPrediction)
from .schedules import VP_SCHEDULES

FORMAT = "dmops-model/1"


class ModelError(ValueError):
    """A model folder or spec that cannot be used; the message says why."""


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


def build_denoiser(spec: dict) -> Denoiser:
    try:
        return Denoiser(build_net(spec["net"]), build_precond(spec["precond"]))
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


def save_model(net: torch.nn.Module, spec: dict, folder, **extra) -> Path:
    """Write `spec` (+ `extra` metadata) and `net`'s weights to `folder`, atomically."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        write_weights(net, tmp)
        meta = {"format": FORMAT, **spec, **extra}
        (tmp / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return folder


def read_spec(folder) -> dict:
    folder = Path(folder)
    path = folder / "model.json"
    if not path.exists():
        raise ModelError(f"{folder} is not a model folder: it has no model.json")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from None
    if spec.get("format") != FORMAT:
        raise ModelError(f"{path} has format {spec.get('format')!r}; this version reads {FORMAT!r}")
    return spec


def load_model(folder, device="cpu") -> tuple[Denoiser, dict]:
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


def load_for_sampling(path, device="cpu") -> tuple[Denoiser, dict]:
    """(denoiser, spec) from any folder resolve_model_path accepts; a checkpoint gives its
    EMA weights, the ones that sample best."""
    folder = resolve_model_path(path)
    if (folder / "model.json").exists():
        return load_model(folder, device)
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise ModelError(f"checkpoint {folder} has no meta.json; cannot tell which network it holds")
    spec = json.loads(meta_path.read_text()).get("model") or {}
    if not spec:
        raise ModelError(f"checkpoint {folder} was written without a model spec; sample from the "
                         "run's model/ folder instead")
    denoiser = build_denoiser(spec)
    state = load_file(str(folder / "ema.safetensors"))
    try:
        denoiser.net.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"EMA weights in {folder} do not fit its model spec: {e}") from None
    return denoiser.to(device).eval(), spec
