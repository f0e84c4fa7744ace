"""Pipeline step: distil a trained teacher into few-step samplers (progressive, consistency or
distribution matching).

Students are written under <run>/distill/<method>/:

    progressive/round_01_32_to_16/model/   one student per round (DDIM on the nested Karras grid)
    progressive/round_01_32_to_16/samples.png
    ...
    consistency/model/                     one consistency student (1, 2 or 4 steps)
    consistency/samples.png
    dmd/model/                             one distribution-matching student (1 step)
    dmd/samples.png

Each model folder is a model like the teacher's (model.json + safetensors) whose `sampling`
block is the procedure and step count it was distilled for, and whose `distillation` block
says how; `dmops sample -d <folder>` and `dmops evaluate --students <run>/distill` use them.
"""

from __future__ import annotations

from pathlib import Path

from diffusion.config import Config
from diffusion.distill.shared import load_teacher
from diffusion.distill.consistency import consistency_distillation
from diffusion.distill.dmd import dmd_distillation
from diffusion.distill.progressive import progressive_distillation
from diffusion.evaluation import student_name
from diffusion.model import ModelError, read_spec, resolve_model_path
from diffusion.samplers import nfe_for
from diffusion.train import resolve_device

from tasks.steps.lineage import step_lineage
from tasks.steps.prepare_dataset import load_data
from tasks.steps.sample import sample_to_png
from tasks.say import say

METHODS = ("progressive", "consistency", "dmd")


def distill_dir(cfg: Config, method: str, out_dir=None) -> Path:
    return Path(out_dir or cfg.out_dir) / "distill" / method


def distill_sampler(cfg: Config, method: str, teacher_path, out_dir=None, resume: bool = True,
                    on_log=None, log=say, data_dir=None,
                    dataset_md5: str | None = None) -> list[Path]:
    """Distil the teacher at `teacher_path` with `method` on the configured dataset's TRAIN split;
    returns the students' model folders (progressive: one per round, in order).  Raises
    ProvenanceError when `out_dir` holds a distillation made from other inputs."""
    if method not in METHODS:
        raise ValueError(f"unknown distillation method {method!r}; allowed: {', '.join(METHODS)}")
    method_cfg = getattr(cfg.distill, method)
    resolve_model_path(teacher_path)  # a path that holds no model fails before the data loads
    ds = load_data(cfg.data, data_dir)
    train_split = ds.subset("train")
    device = resolve_device(method_cfg.device)
    teacher, spec = load_teacher(teacher_path, tuple(ds.sample_shape), device)
    work = distill_dir(cfg, method, out_dir)
    lineage = step_lineage("distill", dataset_md5)
    if method == "progressive":
        students = progressive_distillation(teacher, spec, train_split.x, method_cfg, work,
                                            resume=resume, on_log=on_log, lineage=lineage)
    else:
        one_student = consistency_distillation if method == "consistency" else dmd_distillation
        students = [one_student(teacher, spec, train_split.x, method_cfg, work,
                                resume=resume, on_log=on_log, lineage=lineage)]
    reference = train_split.x if ds.kind == "vector" else None
    for folder in students:
        student = read_spec(folder)
        sampling = student.sampling
        png = sample_to_png(folder, folder.parent / "samples.png", n=cfg.sample.n,
                            seed=cfg.sample.seed, reference=reference)
        log(f"{student_name(student)}: {sampling.sampler}, {sampling.steps} step(s) = "
            f"{nfe_for(sampling.sampler, sampling.steps)} NFE on the {sampling.grid} grid -> "
            f"{folder} (samples: {png})")
    return students


def find_students(root) -> list[Path]:
    """The distilled model folders under `root` (a model folder itself, or any folder above
    some, e.g. runs/digits/distill), consistency first, then dmd, then progressive by falling
    steps."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of distilled students")
    found = []
    for path in sorted([root / "model.json", *root.rglob("model.json")]):
        if not path.exists() or "checkpoints" in path.parts or path.parent in found:
            continue
        if read_spec(path.parent).distillation:
            found.append(path.parent)
    if not found:
        raise ModelError(f"{root} holds no distilled students (no model.json with a "
                         "'distillation' block); run `dmops distill` first")

    def order(folder):
        spec = read_spec(folder)
        return ({"consistency": 0, "dmd": 1}.get(spec.method, 2), -spec.sampling.steps)

    return sorted(found, key=order)
