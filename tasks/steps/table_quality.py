"""The evaluation step's part for tables: each evaluated model's best setting, scored as rows.

The quality-versus-NFE sweep compares models in the vectors they generate (a Frechet distance
in the encoder's space: what selection and promotion use, as for any data).  For a table, a
data scientist reads rows: so each model's best setting (the teacher's best sampler and every
student) generates as many rows as the test split holds, decoded to the table's columns and
dtypes (at most MAX_ROWS), and diffusion/tabular/metrics.py scores them -- fidelity (SDMetrics column shapes and
pair trends), utility (train on synthetic, test on real), detection AUC and privacy (distance
to the closest record) -- beside the floor: half of the held-out rows scored the same way.

Writes into the evaluation folder:
    table_quality.json    {"floor": metrics, "models": {name: metrics}, "rows", "seconds"}
    table_quality.csv     one row per model (and the floor), one column per metric
    association_<name>.png  the difference of the association matrices, synthetic minus real

The rows a release serves are always scored: the served setting (tasks/steps/select_candidate.py
picks it from the sweep) may be a student's other than its best (a consistency student served at
1 NFE whose best FID is at 4).  `served_rows` hands on the evaluation's scores when they are of
that setting, else `score_setting` scores it (same rows, seed and floor: seconds to a minute),
so the card, the registered version's metrics and the summary state exactly what is served.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from diffusion.atomic import atomic_write_text
from diffusion.data import Dataset
from diffusion.samplers import generate, grid_options
from tasks.say import say
from tasks.table_rows import scores_text, served_setting, utility_note, with_derived

# rows generated per model: the test split's, at most this many (the scores' sampling noise is
# ~1/sqrt(rows) and their cost grows with rows: 5,000 keeps each model to seconds)
MAX_ROWS = 5000

def _line(name: str, metrics: dict, seconds: float) -> str:
    shown = scores_text(metrics)
    note = utility_note(metrics)   # a missing figure says why, in its place
    if note is not None:
        shown.insert(2, note)
    return f"rows of {name}: {', '.join(shown)} ({seconds:.0f} s)"


def rows_name(model: str, sampler: str) -> str:
    """The name a model's rows scores go by: the teacher's by its sampler (it is scored per
    sampler), a student's by its own name."""
    return sampler if model == "teacher" else model


def _score(denoiser, sampling: dict, sampler: str, steps: int, ds: Dataset, real: tuple, n: int,
           png: Path, *, seed: int, device: str):
    """(metrics, seconds, association png) of n rows generated at (sampler, steps)."""
    from diffusion.tabular.metrics import evaluate_table
    from diffusion.tabular.plots import plot_association_difference
    from diffusion.tabular.vectors import decode

    schema = ds.table["schema"]
    real_train, real_test = real
    with torch.no_grad():
        x = generate(denoiser, tuple(ds.sample_shape), n, sampler=sampler, steps=int(steps),
                     seed=seed, device=device, **grid_options(sampling)).x
    synthetic = decode(ds.table, x.cpu())
    scored = evaluate_table(real_train, real_test, synthetic, schema, seed=seed)
    return (_derived(scored.metrics, schema), round(sum(scored.seconds.values()), 2),
            plot_association_difference(real_train, synthetic, schema, png))


def _derived(metrics: dict, schema: dict) -> dict:
    """The scores with the pair count's whole (`column_pairs`) and the F1 ratio beside them
    (tasks/table_rows.py with_derived): what every reader of the rows is shown."""
    from diffusion.tabular.metrics_inputs import column_types

    return with_derived(metrics, len(column_types(schema)))


def _real_rows(ds: Dataset) -> tuple:
    from diffusion.tabular.vectors import decode

    return decode(ds.table, ds.subset("train").x), decode(ds.table, ds.subset("test").x)


def table_quality(models: dict[str, tuple], best: pd.DataFrame, ds: Dataset, out_dir: Path, *,
                  seed: int, device: str, log=say) -> dict:
    """Score each model's best setting as rows (module docstring); one line per model (and the
    floor) goes to `log` as it is scored.

    models: evaluation-table name -> (denoiser, its sampling settings); best: the sweep's best
    row per model (diffusion.evaluation.best_rows); ds: the table's dataset (kind "table",
    its encoder state in ds.table).  Returns {"floor": {metric: float}, "models": {name:
    {metric: float}}, "settings": {name: {"sampler", "steps"}} (what was scored), "rows": n,
    "seconds": {name: s}, "files": {key: Path}}.  Raises
    diffusion.tabular.metrics_inputs.TableEvaluationError for rows that cannot be scored."""
    from diffusion.tabular.metrics import floor

    schema = ds.table["schema"]
    real = _real_rows(ds)
    n = min(len(ds.subset("test").ids), MAX_ROWS)
    scored_floor = floor(*real, schema, seed=seed)
    floor_metrics = _derived(scored_floor.metrics, schema)
    log(_line("the floor (held-out real rows)", floor_metrics, sum(scored_floor.seconds.values())))
    out = {"floor": floor_metrics, "models": {},
           "settings": {}, "rows": n, "seconds": {}, "files": {}}
    for _, row in best[best["model"].isin(list(models))].iterrows():
        denoiser, sampling = models[row["model"]]
        name = rows_name(row["model"], row["sampler"])
        path = out_dir / f"association_{name}.png"
        metrics, seconds, png = _score(denoiser, sampling, row["sampler"], int(row["steps"]), ds,
                                       real, n, path, seed=seed, device=device)
        out["models"][name] = metrics
        out["settings"][name] = {"sampler": row["sampler"], "steps": int(row["steps"])}
        out["seconds"][name] = seconds
        log(_line(f"{name} ({served_setting(row['sampler'], row['nfe'])})", metrics, seconds))
        out["files"][f"association_{name}"] = png
    rows = [{"model": "floor (held-out real rows)", **out["floor"]}]
    rows += [{"model": name, **metrics} for name, metrics in out["models"].items()]
    out["files"]["table_csv"] = out_dir / "table_quality.csv"
    out["files"]["table_json"] = out_dir / "table_quality.json"
    atomic_write_text(out["files"]["table_csv"], pd.DataFrame(rows).to_csv(index=False), "table quality")
    atomic_write_text(out["files"]["table_json"],
                      json.dumps({k: out[k] for k in ("floor", "models", "settings", "rows", "seconds")},
                                 indent=2),
                      "table quality")
    return out


def _one_setting(quality: dict, name: str, metrics: dict, setting: dict, seconds) -> dict:
    """table_quality's shape narrowed to one scored setting, beside the evaluation's floor."""
    return {"floor": quality["floor"], "models": {name: metrics}, "settings": {name: setting},
            "rows": quality["rows"], "seconds": {name: seconds}}


def served_rows(quality: dict, model: str, sampler: str, steps: int) -> dict | None:
    """The evaluation's rows scores (`quality`: table_quality's result or its JSON) of model
    `model` (its evaluation-table name) at the setting it is served at, in table_quality's shape
    narrowed to that one setting ({"floor", "models": {name: metrics}, "settings": {name:
    setting}, "rows", "seconds"}), or None when the evaluation scored it at another setting."""
    name = rows_name(model, sampler)
    setting = {"sampler": sampler, "steps": int(steps)}
    if quality.get("settings", {}).get(name) != setting:
        return None
    return _one_setting(quality, name, quality["models"][name], setting,
                        quality.get("seconds", {}).get(name))


def score_setting(quality: dict, model: str, denoiser, sampling: dict, sampler: str, steps: int,
                  nfe: int, ds: Dataset, out_dir: Path, *, seed: int, device: str,
                  log=say) -> dict:
    """Score one setting the evaluation did not (the served one, `served_rows` None): n =
    quality["rows"] rows of `denoiser` (its sampling settings `sampling`: the noise grid) at
    (sampler, steps, nfe NFE), with the evaluation's seed, beside the evaluation's floor (same
    real rows, n and seed: the numbers compare).  One progress line to `log`.  Writes
    out_dir/served_rows.json and association_<name>.png.  Returns served_rows' shape plus
    "files" {key: Path}.  Raises TableEvaluationError for rows that cannot be scored."""
    name = rows_name(model, sampler)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics, seconds, png = _score(denoiser, sampling, sampler, steps, ds, _real_rows(ds),
                                   int(quality["rows"]), out_dir / f"association_{name}.png",
                                   seed=seed, device=device)
    log(_line(f"{name} ({served_setting(sampler, nfe)}, the setting it is served at)", metrics, seconds))
    out = _one_setting(quality, name, metrics, {"sampler": sampler, "steps": int(steps)}, seconds)
    path = out_dir / "served_rows.json"
    atomic_write_text(path, json.dumps(out, indent=2), "table quality")
    return {**out, "files": {"served_json": path, f"association_{name}": png}}


def rows_of_served(quality: dict, model: str, folder, sampler: str, steps: int, nfe: int, cfg,
                   data_dir, out_dir: Path, log=say) -> dict:
    """The rows scores of what is served: model `model` (its model folder `folder`) at (sampler,
    steps), as the evaluation scored it, else scored now (`score_setting`) on the versioned
    table at `data_dir` with `cfg`'s data and evaluate settings (seed, device) -- what the
    evaluation used.  Returns served_rows' shape (plus "files" when scored now)."""
    served = served_rows(quality, model, sampler, steps)
    if served is not None:
        return served
    from diffusion.model import load_for_sampling
    from diffusion.train import resolve_device
    from tasks.steps.prepare_dataset import load_data

    device = str(resolve_device(cfg.evaluate.device))
    denoiser, spec = load_for_sampling(folder, device)
    return score_setting(quality, model, denoiser, spec.sampling.model_dump(), sampler, steps, nfe,
                         load_data(cfg.data, data_dir), out_dir, seed=cfg.evaluate.seed,
                         device=device, log=log)
