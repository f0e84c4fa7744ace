"""Quality against cost: every sampler at every NFE budget, measured on held-out data.

For a trained denoiser, `quality_vs_nfe` draws the same number of samples from the same
seed with each (sampler, NFE) setting and scores them with metrics.sample_quality in the
feature space of an extractor trained on the training split (features.py).  Train and test
features are extracted once and reused for every setting, so the table costs little more
than the sampling itself.  `denoising_filmstrip` records the x0 prediction along one
trajectory, to be looked at rather than read.

Distilled students join the same table as extra models (`Student`): each is run with its own
sampling procedure at the step counts it was distilled for, so teacher samplers and students
are compared on one plot.

Measurement noise: each row carries bootstrap intervals of its FID and KID (fid_lo / fid_hi,
kid_lo / kid_hi; diffusion/bootstrap.py: intervals of the estimator at this n, from resampling
the generated and the test features): their width is the evaluation's noise.  Two models are
compared with a paired interval of their difference instead (bootstrap.paired_difference),
which is narrower: the test split's noise is shared and cancels.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd
import torch

from .bootstrap import DEFAULT_LEVEL, DEFAULT_REPLICATES, quality_intervals
from .evaluation_settings import RATE
from .metrics import extract_features, sample_quality
from .model import ModelSpec
from .samplers import generate, grid_options, nfe_for, steps_for_nfe, unusable_setting

logger = logging.getLogger(__name__)

DEFAULT_NFES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Setting:
    sampler: str
    steps: int

    @property
    def nfe(self) -> int:
        return nfe_for(self.sampler, self.steps)


def student_name(spec: ModelSpec) -> str:
    """The model column of a model.json: 'progressive-4' (a progressive student and its step
    count), 'consistency', or 'teacher' for a model that was not distilled."""
    dist = spec.distillation or {}
    if spec.method == "progressive":
        return f"progressive-{dist.get('student_steps', spec.sampling.steps)}"
    return str(spec.method) if spec.method else "teacher"


def student_steps(spec: ModelSpec) -> tuple[int, ...]:
    """The step counts a student is evaluated at: a consistency model at 1, 2 and 4 steps (those
    it supports), a progressive student at the step count it was distilled for."""
    if spec.method == "consistency":
        supported = [int(k) for k in (spec.distillation or {}).get("supported_steps") or (1, 2, 4)]
        return tuple(k for k in (1, 2, 4) if k in supported) or tuple(supported)
    return (spec.sampling.steps,)


@dataclass
class Student:
    """A distilled model as a row group of the table: its denoiser, its own sampling block
    (sampler, grid, sigmas) and the step counts to run it at."""
    name: str
    denoiser: Any
    sampling: dict
    steps: tuple[int, ...] = field(default=(1,))

    @classmethod
    def from_spec(cls, denoiser, spec: ModelSpec) -> "Student":
        return cls(student_name(spec), denoiser, spec.sampling.model_dump(), student_steps(spec))


def settings_for(samplers, nfes) -> list[Setting]:
    """One setting per sampler and NFE budget (Heun's 2N - 1 rounds odd budgets down; a
    budget that maps onto an already listed setting is not repeated)."""
    out: list[Setting] = []
    for sampler in samplers:
        for nfe in sorted(set(nfes)):
            setting = Setting(sampler, steps_for_nfe(sampler, nfe))
            if setting not in out:
                out.append(setting)
    return out


def quality_vs_nfe(denoiser, shape, extractor, *, train_x, test_x, samplers, nfes=DEFAULT_NFES,
                   n: int = 1000, seed: int = 0, sampling: dict | None = None,
                   test_labels=None, n_classes: int | None = None, kid_subsets: int = 50,
                   device="cpu", extra_rows: list[dict] | None = None,
                   students: list[Student] | None = None, noun: str = "samples",
                   replicates: int = DEFAULT_REPLICATES, level: float = DEFAULT_LEVEL,
                   features: dict | None = None, dropped: list | None = None,
                   drop_unusable: bool = True,
                   received: Callable[[torch.Tensor], torch.Tensor] | None = None) -> pd.DataFrame:
    """A table with one row per (model, sampler, steps): the teacher (model 'teacher') with every
    sampler at every NFE budget, then each student at its own steps; columns NFE, FID and its
    real-data floor, KID, precision/recall/density/coverage, memorisation, class balance, wall
    time, samples_per_s (evaluation_settings.RATE: samples per second, whatever they are), and, unless `replicates` is 0,
    fid_lo / fid_hi / kid_lo / kid_hi: `level` bootstrap intervals from `replicates`
    resamples (diffusion/bootstrap.py).  One info record per row on this module's logger as
    it is measured, its rate named `noun`/s (ModelSpec.data.noun).

    features: a dict to fill with the features scored, float64 on the CPU: "real" -> the
    test features (N_test, d), (model, sampler, steps) -> that row's generated features
    (n, d): what a paired comparison of two models needs (diffusion/bootstrap.py).

    received: what a user gets from generated samples, applied to each generated set before it
    is scored, e.g. a table's vectors re-encoded from the rows they decode to
    (tabular/vectors.py received_vectors); None: the samples as generated.

    A teacher setting that cannot work (samplers.unusable_setting: Heun with too few steps
    from sigma_max) is not run and not in the table: one info record says why, and
    `dropped`, when given, receives {"sampler", "steps", "nfe", "reason"} for it; with
    `drop_unusable` False every setting is run.  Raises ValueError when no setting is left
    to run."""
    sampling = grid_options(sampling)
    train_f = extract_features(extractor, train_x)
    test_f = extract_features(extractor, test_x)
    if features is not None:
        features["real"] = test_f
    rows = list(extra_rows or [])
    runs, unusable = [], 0
    for setting in settings_for(samplers, nfes):
        reason = (unusable_setting(setting.sampler, setting.steps, **sampling)
                  if drop_unusable else None)
        if reason is None:
            runs.append(("teacher", denoiser, setting.sampler, setting.steps, sampling))
            continue
        logger.info(f"skipped: {reason}")
        unusable += 1
        if dropped is not None:
            dropped.append({"sampler": setting.sampler, "steps": setting.steps,
                            "nfe": setting.nfe, "reason": reason})
    for student in students or ():
        options = grid_options(student.sampling)
        runs += [(student.name, student.denoiser, student.sampling.get("sampler", "heun"), k, options)
                 for k in student.steps]
    if not runs:
        raise ValueError(f"no sampler setting left to evaluate: {unusable} dropped "
                         "as unusable; ask for more NFE (evaluate.nfes) or another sampler")
    for i, (model, net, sampler, steps, options) in enumerate(runs, 1):
        t0 = time.perf_counter()
        out = generate(net, shape, n, sampler=sampler, steps=steps, seed=seed, device=device,
                       **options)
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        fake = out.x.cpu() if received is None else received(out.x.cpu())
        fake_f = extract_features(extractor, fake, name="fake")
        scores = sample_quality(extractor, fake, train=train_x, test=test_x, train_f=train_f,
                                test_f=test_f, test_labels=test_labels, n_classes=n_classes,
                                kid_subsets=kid_subsets, seed=seed, fake_f=fake_f)
        if replicates:
            scores.update(quality_intervals(test_f, fake_f, replicates=replicates, level=level,
                                            seed=seed, centres={"kid": scores["kid_mean"]}))
        if features is not None:
            features[(model, sampler, steps)] = fake_f
        row = {"model": model, "sampler": sampler, "steps": steps,
               "nfe": out.nfe, "n_samples": n, **_scalars(scores), "seconds": seconds,
               RATE: n / seconds if seconds > 0 else math.inf}
        rows.append(row)
        who = sampler if model in ("teacher", sampler) else f"{model} ({sampler})"
        noise = (f" [{row['fid_lo']:.3f}, {row['fid_hi']:.3f}]" if replicates else "")
        logger.info(f"[{i}/{len(runs)}] {who:9s} NFE {out.nfe:3d}: FID {row['fid']:.3f}{noise} "
                    f"({row['fid_ratio']:.2f}x floor), KID {row['kid_mean']:.4f}, "
                    f"{row[RATE]:.0f} {noun}/s")
    return pd.DataFrame(rows)


def _scalars(scores: dict) -> dict:
    """Flatten the metrics dict to table cells (lists such as the class histogram are dropped;
    they go to the JSON report instead)."""
    return {k: v for k, v in scores.items() if isinstance(v, (int, float)) or v is None}


def best_rows(table: pd.DataFrame, metric: str = "fid") -> pd.DataFrame:
    """The best-scoring row of each (model, sampler)."""
    idx = table.groupby(["model", "sampler"])[metric].idxmin()
    return table.loc[idx].sort_values(metric)


@torch.no_grad()
def denoising_filmstrip(denoiser, shape, *, n: int = 8, frames: int = 8, sampler: str = "heun",
                        steps: int = 18, seed: int = 0, sampling: dict | None = None,
                        device="cpu") -> torch.Tensor:
    """(n, frames, *shape): the denoiser's x0 prediction along one trajectory per sample at
    `frames - 1` noise levels evenly spaced in log sigma (evenly spaced steps would show the
    mean image several times, since Karras grids spend many steps at high noise), then the
    final sample."""
    sampling = grid_options(sampling)
    predictions, log_sigmas = [], []

    def keep(i, sigma, x, denoised):
        predictions.append(denoised.detach().cpu())
        log_sigmas.append(float(torch.log(sigma)))

    out = generate(denoiser, shape, n, sampler=sampler, steps=steps, seed=seed, device=device,
                   callback=keep, **sampling)
    wanted = torch.linspace(log_sigmas[0], log_sigmas[-1], max(1, frames - 1))
    have = torch.tensor(log_sigmas)
    picks = [int((have - w).abs().argmin()) for w in wanted]
    strip = [predictions[i] for i in picks] + [out.x.cpu()]
    return torch.stack(strip, 1)
