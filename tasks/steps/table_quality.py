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

# rows generated per model: the test split's, at most this many (the scores' sampling noise is
# ~1/sqrt(rows) and their cost grows with rows: 5,000 keeps each model to seconds)
MAX_ROWS = 5000

# the figures of the progress line, in the order a data scientist reads them
SHOWN = (("column_shapes", "column shapes"), ("column_pair_trends", "pair trends"),
         ("utility_ratio", "utility"), ("detection_auc", "detection AUC"), ("dcr_ratio", "DCR ratio"))


def _line(name: str, metrics: dict, seconds: float) -> str:
    shown = ", ".join(f"{label} {metrics[key]:.3f}" for key, label in SHOWN if key in metrics)
    return f"rows of {name}: {shown} ({seconds:.0f} s)"


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
    from diffusion.tabular.metrics import evaluate_table, floor
    from diffusion.tabular.plots import plot_association_difference
    from diffusion.tabular.vectors import decode

    schema = ds.table["schema"]
    train, test = ds.subset("train"), ds.subset("test")
    real_train, real_test = decode(ds.table, train.x), decode(ds.table, test.x)
    n = min(len(test.ids), MAX_ROWS)
    scored_floor = floor(real_train, real_test, schema, seed=seed)
    log(_line("the floor (held-out real rows)", scored_floor.metrics, sum(scored_floor.seconds.values())))
    out = {"floor": scored_floor.metrics, "models": {},
           "settings": {}, "rows": n, "seconds": {}, "files": {}}
    for _, row in best[best["model"].isin(list(models))].iterrows():
        denoiser, sampling = models[row["model"]]
        name = row["sampler"] if row["model"] == "teacher" else row["model"]
        with torch.no_grad():
            x = generate(denoiser, tuple(train.x.shape[1:]), n, sampler=row["sampler"],
                         steps=int(row["steps"]), seed=seed, device=device, **grid_options(sampling)).x
        synthetic = decode(ds.table, x.cpu())
        scored = evaluate_table(real_train, real_test, synthetic, schema, seed=seed)
        out["models"][name] = scored.metrics
        out["settings"][name] = {"sampler": row["sampler"], "steps": int(row["steps"])}
        out["seconds"][name] = round(sum(scored.seconds.values()), 2)
        log(_line(f"{name} ({row['sampler']}, {int(row['nfe'])} NFE)", scored.metrics, out["seconds"][name]))
        path = out_dir / f"association_{name}.png"
        out["files"][f"association_{name}"] = plot_association_difference(real_train, synthetic, schema, path)
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
