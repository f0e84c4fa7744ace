"""Pipeline step: the quality-versus-NFE report of a trained model on held-out data.

Writes into the output folder:
    quality_vs_nfe.csv / .json   one row per (model, sampler, NFE): model 'teacher' for the
                                 evaluated model, e.g. 'progressive-4' / 'consistency' for
                                 distilled students; the JSON adds the floor, the feature
                                 extractor's report and the best setting
    quality_vs_nfe.png           FID against NFE, one line per sampler (students dashed), the floor dotted
    samples_<sampler>.png        a grid from each teacher sampler's best setting
    samples_<student>.png        a grid from each student's best setting
    filmstrip.png                x0 predictions along a few trajectories
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from diffusion.config import Config
from diffusion.data import load_dataset
from diffusion.evaluation import Student, best_rows, denoising_filmstrip, quality_vs_nfe
from diffusion.features import load_or_train_feature_extractor
from diffusion.images import plot_quality_vs_nfe, save_filmstrip, save_samples
from diffusion.model import ModelError, load_for_sampling
from diffusion.samplers import generate, grid_options
from diffusion.train import resolve_device


@dataclass
class EvaluationReport:
    out_dir: Path
    table: pd.DataFrame
    floor: float
    best: dict
    files: dict


def evaluate_model(model_path, cfg: Config, out_dir, *, samplers=None, nfes=None, n=None,
                   students: list[Path] | None = None, log=print) -> EvaluationReport:
    """The teacher at `model_path` with every sampler at every NFE budget, plus one row group per
    student model folder in `students` at its own sampler and step count(s)."""
    ev = cfg.evaluate
    device = str(resolve_device(ev.device))
    denoiser, spec = load_for_sampling(model_path, device)
    ds = load_dataset(cfg.data.name, **cfg.data.loader_options())
    shape = tuple(spec["data"]["shape"])
    if shape != tuple(ds.sample_shape):
        raise ModelError(f"the model generates samples of shape {shape} but data '{cfg.data.name}' "
                         f"has {tuple(ds.sample_shape)}: evaluate with the dataset it was trained on")
    loaded = []
    for path in students or ():
        s_denoiser, s_spec = load_for_sampling(path, device)
        if tuple(s_spec["data"]["shape"]) != shape:
            raise ModelError(f"student {path} generates samples of shape "
                             f"{tuple(s_spec['data']['shape'])}, the teacher {shape}")
        student = Student.from_spec(s_denoiser, s_spec)
        if student.name == "teacher":
            raise ModelError(f"{path} is not a distilled student (its model.json has no "
                             "'distillation' block)")
        if any(s.name == student.name for s in loaded):
            raise ModelError(f"two students are both named {student.name!r} (second: {path}); "
                             "pass a folder holding one distillation run")
        loaded.append(student)
    train, test = ds.subset("train"), ds.subset("test")
    n = min(n or ev.n_samples, len(train.ids))  # the floor compares n training samples with test
    extractor, extractor_report, reused = load_or_train_feature_extractor(
        ds, ev.feature_cache, seed=ev.seed, device=device)
    labelled = extractor.kind == "classifier"
    table = quality_vs_nfe(
        denoiser, shape, extractor, train_x=train.x, test_x=test.x,
        samplers=samplers or ev.samplers, nfes=nfes or ev.nfes, n=n, seed=ev.seed,
        sampling=spec.get("sampling"), test_labels=test.y if labelled else None,
        n_classes=len(ds.class_names) if labelled else None, kid_subsets=ev.kid_subsets,
        device=device, log=log, students=loaded)
    return write_report(table, denoiser, spec, out_dir, extractor_report, n=n, seed=ev.seed,
                        device=device, reference=train.x if ds.kind == "vector" else None,
                        students=loaded)


def write_report(table, denoiser, spec, out_dir, extractor_report, *, n, seed, device,
                 reference=None, students: list[Student] | None = None) -> EvaluationReport:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = tuple(spec["data"]["shape"])
    floor = float(table["fid_floor"].median())
    best = best_rows(table)
    files = {"csv": out_dir / "quality_vs_nfe.csv", "json": out_dir / "quality_vs_nfe.json",
             "plot": out_dir / "quality_vs_nfe.png"}
    table.to_csv(files["csv"], index=False)
    files["json"].write_text(json.dumps({
        "n_samples": n, "fid_floor": floor, "feature_extractor": extractor_report,
        "best": best.iloc[0].to_dict(), "rows": table.to_dict(orient="records")},
        indent=2, default=float))
    plot_quality_vs_nfe(table, files["plot"], floor=floor)
    models = {"teacher": (denoiser, spec["sampling"])}
    models.update({s.name: (s.denoiser, s.sampling) for s in students or ()})
    for _, row in best[best["model"].isin(list(models))].iterrows():
        model, sampling = models[row["model"]]
        # a teacher's grids are named by sampler, a student's by its own name
        name = row["sampler"] if row["model"] == "teacher" else row["model"]
        out = generate(model, shape, 64, sampler=row["sampler"], steps=int(row["steps"]),
                       seed=seed, device=device, **grid_options(sampling))
        path = out_dir / f"samples_{name}.png"
        save_samples(out.x.cpu(), path, title=f"{name}, {int(row['nfe'])} NFE", reference=reference)
        files[f"samples_{name}"] = path
    if len(shape) == 3:
        strip = denoising_filmstrip(denoiser, shape, n=8, frames=8, seed=seed, device=device,
                                    sampling=spec["sampling"],
                                    sampler=spec["sampling"].get("sampler", "heun"),
                                    steps=spec["sampling"].get("steps", 18))
        files["filmstrip"] = save_filmstrip(strip, out_dir / "filmstrip.png")
    return EvaluationReport(out_dir, table, floor, best.iloc[0].to_dict(), files)
