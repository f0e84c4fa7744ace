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

Integrity: `save_model` records the sha256 of every other file of the folder (weights and the
diffusers config) in model.json's `files`, and every load verifies them before a tensor is read
(`verify_model_folder`): a corrupted copy is refused naming the file, never sampled.  model.json
itself is not covered here (it cannot hold its own sum, and it is the file a person may edit);
the registry's `files_sha256` tag and a release's manifest cover it.  A folder saved before
checksums were recorded loads with a one-line warning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_folder
from .checksums import file_sha256s, find_mismatch, folder_files, warn_unverified
from .nets import UNet, build_net
from .objectives import (ConsistencyPreconditioning, Denoiser, EDMPreconditioning, Preconditioning,
                         VPPrediction)
from .provenance import Provenance
from .schedules import VP_SCHEDULES

FORMAT = "dmops-model/1"
SPEC_FILE = "model.json"


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
    kind: Literal["image", "vector", "table"] | None = None
    train_samples: int | None = None
    # kind "table": the encoder's state (diffusion/tabular/encoding.py, JSON: schema,
    # quantiles, categories), so a sample of vectors decodes to rows wherever the model goes
    table: dict[str, Any] | None = None

    @property
    def noun(self) -> str:
        """What its samples are called in a rate ("images/s", "rows/s", "samples/s")."""
        return {"image": "images", "table": "rows"}.get(self.kind or "", "samples")


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
    # sha256 of every other file of the folder (relative POSIX path -> hex), set by save_model;
    # None in folders saved before it was recorded
    files: dict[str, str] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def sample_signature(self) -> str:
        """What a model's samples are, as text two models are compared by: the sample shape
        ('1x8x8', '2'); for a table, also its vector layout ('75 layout 3f2a9c0d1e4b',
        diffusion/tabular/encoding.py TableEncoder.layout_signature), since two tables with
        as many dimensions may still mean other columns."""
        if self.data.kind != "table" or self.data.table is None:
            return "x".join(map(str, self.shape))
        from .tabular.encoding import TableEncoder

        return TableEncoder.from_dict(self.data.table).sample_signature()

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
    state = read_safetensors(path)
    try:
        missing, unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even with strict=False
        raise ModelError(f"weights in {path} do not fit the network in model.json: {e}") from None
    if missing or unexpected:
        raise ModelError(f"weights in {path} do not fit the network in model.json: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")


def read_safetensors(path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; ModelError naming the file when it cannot be parsed
    (a truncated or damaged header), instead of the library's bare message."""
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise ModelError(f"{path} is not a readable safetensors file ({e}): the file is damaged "
                         "or not safetensors; restore it from a copy") from None


def save_model(net: torch.nn.Module, spec: ModelSpec, folder) -> Path:
    """Write `net`'s weights to `folder` and `spec` as its model.json, atomically; model.json's
    `files` records the sha256 of every weights and config file written (whatever `spec`
    carried there before: a student's spec is derived from its teacher's)."""
    folder = Path(folder)
    with atomic_folder(folder, "model folder") as tmp:
        write_weights(net, tmp)
        files = file_sha256s(tmp, folder_files(tmp, exclude=[SPEC_FILE]))
        write_spec(spec.model_copy(update={"files": files}), tmp)
    return folder


def write_spec(spec: ModelSpec, folder) -> None:
    """model.json of `folder`; its `files` must describe the folder's other files as they are
    (save_model records them; a copy of a model folder keeps them)."""
    (Path(folder) / SPEC_FILE).write_text(spec.to_json())


def read_spec(folder) -> ModelSpec:
    """The ModelSpec of a model folder; ModelError when it has none or it is not valid."""
    folder = Path(folder)
    path = folder / "model.json"
    record = _read_json_object(path, f"{folder} is not a model folder: it has no model.json")
    return parse_spec(record, str(path))


def _read_json_object(path: Path, missing: str) -> dict:
    """The JSON object stored in `path`.  ModelError: `missing` when there is no such file; one
    naming the file when it is not valid JSON or holds something other than an object."""
    if not path.exists():
        raise ModelError(missing)
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(record, dict):
        raise ModelError(f"{path} must hold a JSON object")
    return record


def verify_model_folder(folder, spec: ModelSpec | None = None) -> ModelSpec:
    """Check every file model.json's `files` lists against its recorded sha256 and return the
    spec (`spec`: the folder's, when already read).  Raises ModelError naming the folder and the
    first file that is missing or differs; a folder without `files` (saved before they were
    recorded) passes with a one-line warning on stderr."""
    folder = Path(folder)
    spec = spec if spec is not None else read_spec(folder)
    if spec.files is None:
        warn_unverified(f"{folder} was saved without file checksums (its model.json has no "
                        "'files'): its weights are loaded unverified; save it again to record them")
        return spec
    mismatch = find_mismatch(folder, spec.files)
    if mismatch is not None:
        raise ModelError(f"{folder}: {mismatch.describe('when the model was saved')}; restore the "
                         "folder from a good copy (its release or registered version) or train "
                         "it again")
    return spec


def load_model(folder, device="cpu") -> tuple[Denoiser, ModelSpec]:
    """(denoiser in eval mode, spec) from a model folder, its files verified first
    (`verify_model_folder`).  Raises ModelError: no or invalid model.json, a corrupted or
    unreadable file, weights that do not fit the network."""
    folder = Path(folder)
    spec = verify_model_folder(folder)
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
    EMA weights, the ones that sample best.  Every file read is verified against the sha256
    recorded when it was written (model.json's `files`, a checkpoint's state.json `files`);
    ModelError names a file that differs."""
    folder = resolve_model_path(path)
    if (folder / SPEC_FILE).exists():
        return load_model(folder, device)
    state_path = folder / "state.json"
    state_record = _read_json_object(
        state_path, f"checkpoint {folder} has no state.json; cannot tell which network it holds")
    record = state_record.get("model") or {}
    if not record:
        raise ModelError(f"checkpoint {folder} was written without a model spec; sample from the "
                         "run's model/ folder instead")
    spec = parse_spec(record, f"checkpoint {state_path}")
    denoiser = build_denoiser(spec)
    _verify_checkpoint_file(folder, state_record.get("files"), "ema.safetensors")
    state = read_safetensors(folder / "ema.safetensors")
    try:
        denoiser.net.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"EMA weights in {folder} do not fit its model spec: {e}") from None
    return denoiser.to(device).eval(), spec


def _verify_checkpoint_file(folder: Path, recorded: dict | None, name: str) -> None:
    """The one checkpoint file sampling reads, against state.json's `files`
    (diffusion/checkpoint.py records them)."""
    if recorded is None:
        warn_unverified(f"checkpoint {folder} was written without file checksums (its state.json "
                        "has no 'files'): its weights are loaded unverified")
        return
    if name not in recorded:
        raise ModelError(f"checkpoint {folder}: its state.json records no sha256 for {name}; "
                         "sample from another checkpoint or the run's model/ folder")
    mismatch = find_mismatch(folder, {name: recorded[name]})
    if mismatch is not None:
        raise ModelError(f"checkpoint {folder}: {mismatch.describe('when it was written')}; sample "
                         "from another checkpoint or the run's model/ folder")
