"""Pipeline step: the quality-versus-NFE report of a trained model on held-out data.

Writes into the output folder:
    quality_vs_nfe.csv / .json   one row per (model, sampler, NFE): model 'teacher' for the
                                 evaluated model, e.g. 'progressive-4' / 'consistency' for
                                 distilled students, with fid_lo / fid_hi / kid_lo / kid_hi
                                 (bootstrap intervals, diffusion/bootstrap.py); the JSON adds
                                 the floor, the feature extractor's report, the best setting
                                 and `intervals` (level, replicates, what they are of), and
                                 `dropped`: settings that cannot work, not run, each with
                                 its reason (diffusion/samplers.py unusable_setting)
    quality_vs_nfe.png           FID against NFE, one line per sampler (students dashed), the floor dotted
    samples_<sampler>.png        a grid from each teacher sampler's best setting
    samples_<student>.png        a grid from each student's best setting
    filmstrip.png                x0 predictions along a few trajectories
    table_quality.csv / .json    tables: each model's best setting scored as rows beside the
                                 floor (tasks/steps/table_quality.py), association_<name>.png
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from diffusion.config import Config
from diffusion.evaluation import Student, best_rows, denoising_filmstrip, quality_vs_nfe
from diffusion.features import load_or_train_feature_extractor
from diffusion.images import plot_quality_vs_nfe, save_filmstrip, save_samples
from diffusion.atomic import atomic_write_text, writing
from diffusion.model import ModelError, load_for_sampling, read_spec, resolve_model_path
from diffusion.provenance import weights_sha256
from diffusion.samplers import generate, grid_options, nfe_for
from diffusion.tabular.vectors import received_vectors
from diffusion.train import resolve_device

from tasks.steps.prepare_dataset import load_data
from tasks.steps.train_teacher import data_name


@dataclass
class EvaluationReport:
    out_dir: Path
    table: pd.DataFrame
    floor: float
    best: dict
    files: dict
    # tables: each model's best setting scored as rows (tasks/steps/table_quality.py)
    table_quality: dict | None = None
    noun: str = "samples"   # what the samples are, for the rate's unit: images, rows, samples
    # the scored features: "real" -> test features, (model, sampler, steps) -> generated ones
    features: dict | None = None


def evaluate_model(model_path, cfg: Config, out_dir, *, samplers=None, nfes=None, n=None,
                   students: list[Path] | None = None, data_dir=None,
                   drop_unusable: bool = True, score_rows: bool = True) -> EvaluationReport:
    """The teacher at `model_path` with every sampler at every NFE budget, plus one row group per
    student model folder in `students` at its own sampler and step count(s).  drop_unusable:
    leave out the sweep's settings that cannot work (diffusion.evaluation.quality_vs_nfe);
    False scores every setting asked for (a model's own served setting is scored as it is).
    score_rows: for a table, also score the best settings as rows (table_quality); False when
    only the FID row and its features are wanted (a promotion's scoring)."""
    ev = cfg.evaluate
    device = str(resolve_device(ev.device))
    denoiser, spec = load_for_sampling(model_path, device)
    ds = load_data(cfg.data, data_dir)
    shape = spec.shape
    if shape != tuple(ds.sample_shape):
        raise ModelError(f"the model generates samples of shape {shape} but data '{data_name(cfg)}' "
                         f"has {tuple(ds.sample_shape)}: evaluate with the dataset it was trained on")
    loaded, lineage = [], {}
    for path in students or ():
        s_denoiser, s_spec = load_for_sampling(path, device)
        if s_spec.shape != shape:
            raise ModelError(f"student {path} generates samples of shape {s_spec.shape}, "
                             f"the teacher {shape}")
        student = Student.from_spec(s_denoiser, s_spec)
        if student.name == "teacher":
            raise ModelError(f"{path} is not a distilled student (its model.json has no "
                             "'distillation' block)")
        if any(s.name == student.name for s in loaded):
            raise ModelError(f"two students are both named {student.name!r} (second: {path}); "
                             "pass a folder holding one distillation run")
        loaded.append(student)
        lineage[Path(path)] = (weights_sha256(s_denoiser.net),
                               s_spec.provenance.teacher_sha256 if s_spec.provenance else None)
    require_students_of(weights_sha256(denoiser.net), lineage, model_path)
    train, test = ds.subset("train"), ds.subset("test")
    n = min(n or ev.n_samples, len(train.ids))  # the floor compares n training samples with test
    extractor, extractor_report, reused = load_or_train_feature_extractor(
        ds, ev.feature_cache, seed=ev.seed, device=device)
    labelled = extractor.kind == "classifier"
    features: dict = {}
    dropped: list = []
    table = quality_vs_nfe(
        denoiser, shape, extractor, train_x=train.x, test_x=test.x,
        samplers=samplers or ev.samplers, nfes=nfes or ev.nfes, n=n, seed=ev.seed,
        sampling=spec.sampling.model_dump(), test_labels=test.y if labelled else None,
        n_classes=ds.n_classes if labelled else None, kid_subsets=ev.kid_subsets,
        device=device, students=loaded, noun=spec.data.noun,
        replicates=ev.bootstrap_replicates, level=ev.confidence_level, features=features,
        dropped=dropped, drop_unusable=drop_unusable,
        # a table model is scored on the rows a user receives (their vectors re-encoded)
        received=(partial(received_vectors, spec.data.table) if spec.data.kind == "table" else None))
    report = write_report(table, denoiser, spec, out_dir, extractor_report, n=n, seed=ev.seed,
                          device=device, reference=train.x if ds.kind in ("vector", "table") else None,
                          students=loaded, intervals=intervals_note(ev), dropped=dropped)
    report.noun = spec.data.noun
    report.features = features
    if ds.kind == "table" and score_rows:   # the best settings as rows (tasks/steps/table_quality.py)
        from tasks.steps.table_quality import table_quality

        report.table_quality = table_quality(evaluated_models(denoiser, spec, loaded), best_rows(table),
                                             ds, Path(out_dir),
                                             seed=ev.seed, device=device)
        report.files.update(report.table_quality.pop("files"))
    return report


def evaluated_models(denoiser, spec, students: list[Student] | None) -> dict[str, tuple]:
    """Evaluation-table name -> (denoiser, its sampling settings): the teacher and each student."""
    models = {"teacher": (denoiser, spec.sampling.model_dump())}
    models.update({s.name: (s.denoiser, s.sampling) for s in students or ()})
    return models


def intervals_note(ev) -> dict | None:
    """What the table's fid_lo / fid_hi / kid_lo / kid_hi are (the JSON report's `intervals`);
    None when the evaluate section asks for none (bootstrap_replicates 0)."""
    if not ev.bootstrap_replicates:
        return None
    return {"level": ev.confidence_level, "replicates": ev.bootstrap_replicates,
            "method": "bootstrap percentile interval recentred on the estimate (generated and "
                      "test features resampled); an interval of the estimator at this n, "
                      "not of the population FID (diffusion/bootstrap.py)"}


def write_report(table, denoiser, spec, out_dir, extractor_report, *, n, seed, device,
                 reference=None, students: list[Student] | None = None,
                 intervals: dict | None = None, dropped: list | None = None) -> EvaluationReport:
    """The table, its plot and the sample grids into `out_dir` (see the module docstring),
    each file replaced in one rename.  Raises diffusion.atomic.WriteError (path and cause)
    when the disk refuses one; the files not yet replaced keep their previous content."""
    out_dir = Path(out_dir)
    with writing(out_dir, "evaluation folder"):
        out_dir.mkdir(parents=True, exist_ok=True)
    shape = spec.shape
    floor = float(table["fid_floor"].median())
    best = best_rows(table)
    files = {"csv": out_dir / "quality_vs_nfe.csv", "json": out_dir / "quality_vs_nfe.json",
             "plot": out_dir / "quality_vs_nfe.png"}
    atomic_write_text(files["csv"], table.to_csv(index=False), "evaluation table")
    atomic_write_text(files["json"], json.dumps({
        "n_samples": n, "fid_floor": floor, "feature_extractor": extractor_report,
        "best": best.iloc[0].to_dict(), "intervals": intervals, "dropped": dropped or [],
        "rows": table.to_dict(orient="records")},
        indent=2, default=float), "evaluation table")
    plot_quality_vs_nfe(table, files["plot"], floor=floor)
    models = evaluated_models(denoiser, spec, students)
    for _, row in best[best["model"].isin(list(models))].iterrows():
        model, sampling = models[row["model"]]
        # a teacher's grids are named by sampler, a student's by its own name
        name = row["sampler"] if row["model"] == "teacher" else row["model"]
        out = generate(model, shape, 64, sampler=row["sampler"], steps=int(row["steps"]),
                       seed=seed, device=device, **grid_options(sampling))
        path = out_dir / f"samples_{name}.png"
        save_samples(out.x.cpu(), path, title=f"{name}, {int(row['nfe'])} NFE", reference=reference,
                     table=spec.data.table)
        files[f"samples_{name}"] = path
    if len(shape) == 3:
        strip = denoising_filmstrip(denoiser, shape, n=8, frames=8, seed=seed, device=device,
                                    sampling=spec.sampling.model_dump(),
                                    sampler=spec.sampling.sampler, steps=spec.sampling.steps)
        files["filmstrip"] = save_filmstrip(strip, out_dir / "filmstrip.png")
    return EvaluationReport(out_dir, table, floor, best.iloc[0].to_dict(), files)


def require_students_of(teacher_sha256: str, students: dict[Path, tuple[str, str | None]],
                        teacher_path) -> None:
    """Refuse students that were not distilled from the evaluated teacher: a table that put
    another teacher's students beside this one would compare models of other inputs.

    students: folder -> (its weights sha256, the teacher_sha256 its provenance records).  A
    student descends from the teacher when its recorded teacher is the teacher or another
    student that does (progressive round k is distilled from round k-1).  Raises ModelError
    naming the first other student; one that records no teacher (made before dmops recorded
    provenance) is named in a warning and kept."""
    ours, pending = {teacher_sha256}, dict(students)
    while True:
        found = {path for path, (_, teacher) in pending.items() if teacher in ours}
        if not found:
            break
        ours |= {pending.pop(path)[0] for path in found}
    for path, (_, teacher) in pending.items():
        if teacher is None:
            print(f"warning: student {path} records no teacher; it is evaluated beside "
                  f"{teacher_path} unchecked", file=sys.stderr)
            continue
        raise ModelError(f"student {path} was distilled from another teacher (weights sha256 "
                         f"{teacher[:12]}) than {teacher_path} ({teacher_sha256[:12]}): evaluate "
                         "it with its own teacher, or distill this one (dmops distill --out "
                         "<its run folder>)")


def score_model(model_path, cfg: Config, out_dir, *, data_dir=None) -> dict:
    """One model at its own stored setting (the sampler and steps in its model.json) on the
    held-out evaluation: the row the promotion step compares, computed the same way (same
    data, feature extractor, sample count and seed) for the challenger and the champion."""
    return score_with_features(model_path, cfg, out_dir, data_dir=data_dir).row


@dataclass(frozen=True)
class Score:
    """A model's row at its stored setting and the features behind it: real_f (N_test, d)
    test features, fake_f (n, d) its generated samples' features (float64, CPU)."""
    row: dict
    real_f: Any
    fake_f: Any


def score_with_features(model_path, cfg: Config, out_dir, *, data_dir=None) -> Score:
    """`score_model` with the features it scored, for the promotion's paired bootstrap
    (diffusion/bootstrap.py paired_difference)."""
    spec = read_spec(resolve_model_path(model_path))
    sampler, steps = spec.sampling.sampler, spec.sampling.steps
    # what the model serves is scored as it is, however poor (it is what users get)
    report = evaluate_model(model_path, cfg, out_dir, samplers=[sampler],
                            nfes=[nfe_for(sampler, steps)], data_dir=data_dir,
                            drop_unusable=False, score_rows=False)
    row = report.best
    return Score(row, report.features["real"],
                 report.features[(row["model"], row["sampler"], int(row["steps"]))])
