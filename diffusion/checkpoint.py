"""Resumable checkpoints, one format for the trainer and both distillers.

A checkpoint is a folder `<ckpt_dir>/step_XXXXXXXX/` holding

    <name>.safetensors    one file per weight set ("model", "ema", "target", ...)
    optimizer.safetensors the optimizer's tensors (Adam moments, step counts)
    rng.safetensors       torch / CUDA / numpy generator states
    state.json            step, loss, the optimizer's non-tensor state, Python's RNG state,
                          the run's metadata, `provenance` included, and `files`: the sha256
                          of every safetensors file above

No pickle anywhere: everything is safetensors or JSON.  A folder is written under a temporary
name and renamed (diffusion/atomic.py), and `<ckpt_dir>/latest` is replaced only after it, so a
crash never leaves a checkpoint that looks complete but is not.

Resuming is guarded (`resume_checkpoint`): the latest checkpoint is used only when its recorded
provenance (diffusion/provenance.py) matches the request and it is not beyond the requested
number of steps; otherwise ProvenanceError names what differs.  Its files are then checked
against the sha256 sums in state.json before a tensor is read: a corrupted checkpoint stops the
run naming the file instead of resuming from wrong weights or optimizer moments.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_folder, atomic_write_text
from .checksums import file_sha256s, find_mismatch, warn_unverified
from .loop import TrainingError
from .provenance import Provenance, ProvenanceError, stored_provenance

STATE_FILE = "state.json"
FRESH_START = "Start afresh in a new --out folder (or delete that one)"


def tensor_state(module_or_dict) -> dict[str, torch.Tensor]:
    sd = module_or_dict.state_dict() if isinstance(module_or_dict, nn.Module) else module_or_dict
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


# --- RNG and optimizer state as tensors + JSON -------------------------------------------

def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = state
    plain = {"python": [version, list(internal), gauss],
             "numpy": {"name": name, "pos": int(pos), "has_gauss": int(has_gauss),
                       "cached": float(cached)}}
    return tensors, plain


def _set_rng_state(tensors: dict[str, torch.Tensor], plain: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    n = plain["numpy"]
    np.random.set_state((n["name"], tensors["numpy_keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for param_id, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{param_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param_id}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], plain: dict) -> None:
    state: dict[int, dict] = {}
    for flat, value in [*tensors.items(), *plain["scalars"].items()]:
        param_id, _, key = flat.partition(".")
        state.setdefault(int(param_id), {})[key] = value
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in plain["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


# --- write / read ----------------------------------------------------------------------

def save_checkpoint(ckpt_dir, step: int, weights: dict[str, dict | nn.Module], opt, meta: dict,
                    loss: float | None = None, keep: int = 2) -> Path:
    """Write checkpoint `step` (see the module docstring), point `latest` at it, and keep only
    the newest `keep` checkpoints.  `meta` must be JSON-able; it should hold `provenance`.
    state.json's `files` records the sha256 of every safetensors file written."""
    ckpt_dir = Path(ckpt_dir)
    target = ckpt_dir / f"step_{step:08d}"
    with atomic_folder(target, "checkpoint") as tmp:
        for name, state in weights.items():
            save_file(tensor_state(state), str(tmp / f"{name}.safetensors"))
        opt_tensors, opt_plain = _optimizer_state(opt)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        rng_tensors, rng_plain = _rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        files = file_sha256s(tmp, [p.name for p in tmp.glob("*.safetensors")])
        state = {"step": step, "loss": loss, "optimizer": opt_plain, "rng": rng_plain, **meta,
                 "files": files}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, default=str))
    atomic_write_text(ckpt_dir / "latest", target.name, "checkpoint pointer")  # only after the folder is complete
    done = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())
    for p in done[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    return target


def latest_checkpoint(ckpt_dir) -> Path | None:
    pointer = Path(ckpt_dir) / "latest"
    if not pointer.exists():
        return None
    path = Path(ckpt_dir) / pointer.read_text().strip()
    if not path.is_dir():
        raise TrainingError(f"{pointer} names {path.name}, which does not exist; remove {pointer} "
                            "to start from scratch")
    return path


def read_state(path) -> dict:
    """The JSON state of checkpoint folder `path` (step, loss, metadata, provenance)."""
    file = Path(path) / STATE_FILE
    if not file.is_file():
        raise ProvenanceError(f"checkpoint {path} has no {STATE_FILE} (written by an older dmops "
                              f"or not a checkpoint); {FRESH_START}")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise TrainingError(f"{file} is not valid JSON: {e}") from None


@dataclass
class Resumed:
    path: Path
    step: int
    loss: float
    weights: dict[str, dict[str, torch.Tensor]]
    state: dict


def resume_checkpoint(ckpt_dir, opt, provenance: Provenance, total_steps: int,
                      what: str) -> Resumed | None:
    """The latest checkpoint under `ckpt_dir`, with `opt` and the RNGs restored, when one exists
    (None otherwise).  Raises ProvenanceError when it was made from other settings, data, code
    or teacher than `provenance`, or has gone past `total_steps`; TrainingError naming the file
    when one of its files differs from the sha256 recorded when it was written, or cannot be read."""
    path = latest_checkpoint(ckpt_dir)
    if path is None:
        return None
    state = read_state(path)
    stored = stored_provenance(state, f"checkpoint {path}", FRESH_START)
    stored.require_same(provenance, f"{what} checkpoint {path}", FRESH_START)
    step = int(state["step"])
    if step > total_steps:
        raise ProvenanceError(f"{what} checkpoint {path} is at step {step}, beyond the requested "
                              f"{total_steps} steps: ask for at least {step} steps. "
                              f"{FRESH_START}")
    verify_checkpoint(path, state)
    try:
        weights = {p.name[: -len(".safetensors")]: _read(p)
                   for p in path.glob("*.safetensors")
                   if p.name not in ("optimizer.safetensors", "rng.safetensors")}
        _load_optimizer(opt, _read(path / "optimizer.safetensors"), state["optimizer"])
        rng = _read(path / "rng.safetensors")
    except (RuntimeError, OSError, KeyError, ValueError) as e:
        raise TrainingError(f"cannot resume from {path}: {e}") from None
    _set_rng_state(rng, state["rng"])
    loss = state.get("loss")
    return Resumed(path, step, float("nan") if loss is None else float(loss), weights, state)


def _read(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except SafetensorError as e:
        raise TrainingError(f"cannot resume from {file.parent}: {file.name} is not a readable "
                            f"safetensors file ({e}); {FRESH_START}") from None


def verify_checkpoint(path, state: dict) -> None:
    """Check every safetensors file of checkpoint `path` against the sha256 its state.json
    (`state`) recorded.  Raises TrainingError naming the first file that differs or is missing
    (or one the record does not list); a checkpoint written before sums were recorded passes
    with a one-line warning."""
    path = Path(path)
    recorded = state.get("files")
    if recorded is None:
        warn_unverified(f"checkpoint {path} was written without file checksums (its {STATE_FILE} "
                        "has no 'files'): resuming from it unverified")
        return
    unlisted = sorted(p.name for p in path.glob("*.safetensors") if p.name not in recorded)
    if unlisted:
        raise TrainingError(f"checkpoint {path}: {unlisted[0]} is not listed in its {STATE_FILE} "
                            f"'files' (added after it was written?); {_other_checkpoint(path)}")
    mismatch = find_mismatch(path, recorded)
    if mismatch is not None:
        raise TrainingError(f"checkpoint {path}: {mismatch.describe('when it was written')}; "
                            f"{_other_checkpoint(path)}")


def _other_checkpoint(path: Path) -> str:
    """What to do about a damaged checkpoint: resume from the one before it, when it is kept."""
    earlier = sorted(p.name for p in path.parent.glob("step_*") if p.is_dir() and p.name < path.name)
    if earlier:
        return (f"to resume from the checkpoint before it, write {earlier[-1]} into "
                f"{path.parent / 'latest'}; or {FRESH_START[0].lower()}{FRESH_START[1:]}")
    return FRESH_START


def load_into(module: nn.Module, state: dict, where) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise TrainingError(f"checkpoint {where} does not fit the network: {e}") from None
