"""What both distillation methods share: loading and checking a teacher, the provenance of a
distillation run, and resuming.

Resuming uses diffusion/checkpoint.py, the trainer's checkpoint format; everything random in
step k is drawn from a generator seeded by (seed, stream, k), so a resumed run draws what an
uninterrupted one does.  A finished student or round and an interrupted one's checkpoint are
reused only when their recorded provenance -- settings, training data, teacher weights,
code -- matches the request (diffusion/provenance.py).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import FRESH_START, Resumed, load_into, resume_checkpoint
from ..model import ModelError, ModelSpec, load_for_sampling, read_spec
from ..objectives import Denoiser, EDMPreconditioning
from ..provenance import (Lineage, Provenance, code_sha256, stored_provenance, tensor_sha256,
                          weights_sha256)

logger = logging.getLogger(__name__)

class DistillationError(ModelError):
    """A teacher or data that cannot be distilled; the message says why."""


def check_teacher(spec: ModelSpec, data_shape) -> None:
    """Raise DistillationError when a model of `spec` cannot teach on data of `data_shape`."""
    if spec.precond.get("kind") == "consistency":
        raise DistillationError("the teacher is a consistency-distilled student (precond kind "
                                "'consistency'); it is not a diffusion denoiser and cannot be "
                                "distilled further by progressive or consistency distillation")
    if spec.method not in (None, "progressive"):
        raise DistillationError(f"the teacher was distilled by {spec.method!r} "
                                "and cannot be distilled further")
    got = tuple(int(v) for v in data_shape)
    if spec.shape != got:
        raise DistillationError(f"the teacher was made for samples of shape {list(spec.shape)}, "
                                f"but the data has samples of shape {list(got)}")


def load_teacher(path, data_shape, device="cpu") -> tuple[Denoiser, ModelSpec]:
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


def student_sigma_data(setting: float | None, teacher: Denoiser, data: torch.Tensor) -> float:
    """A student's sigma_data: the setting when given, else the EDM teacher's own, else the
    training data's std (a VP teacher has none)."""
    if setting is not None:
        return setting
    if isinstance(teacher.precond, EDMPreconditioning):
        return teacher.precond.sigma_data
    return float(data.std())


# --- provenance and reuse ------------------------------------------------------------

def student_request(method: str, cfg, teacher: Denoiser, teacher_spec: ModelSpec,
                    data: torch.Tensor, out_dir, lineage: Lineage | None,
                    module: str) -> tuple[Path, Provenance]:
    """Check the teacher and the data, then (out_dir/model, the provenance a one-student method
    `method` with settings `cfg` requests).  Raises DistillationError."""
    check_data(data)
    check_teacher(teacher_spec, data.shape[1:])
    settings = {"method": method, "config": cfg.result_settings()}
    return Path(out_dir) / "model", distillation_provenance(
        settings, tensor_sha256(data), teacher, teacher_spec, lineage, module)


def distillation_provenance(settings: dict, data_sha256: str, teacher: Denoiser,
                            teacher_spec: ModelSpec, lineage: Lineage | None,
                            module: str) -> Provenance:
    """What determines a student: its settings, the training tensor (`data_sha256`, its
    provenance.tensor_sha256, computed once per run by the caller), the teacher (its weights,
    and its network and preconditioning, which with the weights make its denoiser) and the
    code (the caller's, from `lineage`, else `module` and its imports)."""
    lineage = lineage or Lineage()
    net = teacher.net if isinstance(teacher, Denoiser) else teacher
    settings = {**settings, "teacher": {"net": teacher_spec.net, "precond": teacher_spec.precond}}
    return Provenance(settings=settings, data_sha256=data_sha256,
                      code_sha256=lineage.code_sha256 or code_sha256([module]),
                      teacher_sha256=weights_sha256(net), dataset_md5=lineage.dataset_md5,
                      git_commit=lineage.git_commit)


def finished_student(folder: Path, requested: Provenance, what: str) -> bool:
    """True when `folder` holds a finished student made from `requested`'s inputs, False when
    it holds none; ProvenanceError naming the differences when it holds another one."""
    if not (Path(folder) / "model.json").exists():
        return False
    spec = read_spec(folder)
    stored = spec.provenance or stored_provenance({}, f"{what} {folder}", FRESH_START)
    stored.require_same(requested, f"{what} {folder}", FRESH_START)
    logger.info("%s: reusing the finished student in %s (made from the same inputs)", what, folder)
    return True


def resume_run(ckpt_dir: Path, opt, ema, modules: dict[str, nn.Module], requested: Provenance,
               total: int, what: str) -> Resumed | None:
    """Continue from ckpt_dir's latest checkpoint when it was made from `requested`'s inputs
    (weights loaded into `modules` by name and into `ema`; optimizer and RNG restored)."""
    resumed = resume_checkpoint(ckpt_dir, opt, requested, total, what)
    if resumed is not None:
        for name, module in modules.items():
            load_into(module, resumed.weights[name], resumed.path)
        ema.load(resumed.weights["ema"])
        logger.info("%s: resuming from %s (step %d)", what, resumed.path, resumed.step)
    return resumed


def resume_or_start(ckpt_dir: Path, opt, ema, modules: dict[str, nn.Module],
                    requested: Provenance, total: int, what: str, resume: bool) -> tuple[int, float]:
    """(first step, the loss recorded with it): with `resume`, where ckpt_dir's checkpoint made
    from `requested`'s inputs left off (resume_run), else 0 after clearing ckpt_dir's
    checkpoints of another run."""
    resumed = resume_run(ckpt_dir, opt, ema, modules, requested, total, what) if resume else None
    if not resume:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # checkpoints of another run: not ours
    return (resumed.step, resumed.loss) if resumed else (0, float("nan"))
