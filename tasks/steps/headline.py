"""The numbers a flow run is judged by, for the top of its MLflow parent run: what was served,
how good it is against the teacher and the real-data floor, how fast, and what the promotion
decided -- so the runs list has columns to sort and compare runs by.

Pure functions of the evaluation table and the register / promote results; the flow logs them.
"""

from __future__ import annotations

import hashlib
import json
import math

import pandas as pd

from diffusion.evaluation_settings import RATE, sampling_rate

# the parent run's metric names, in the order a reader wants them (the MLflow UI test looks
# for these columns)
HEADLINE_METRICS = ("fid", "fid_vs_teacher_best", "fid_vs_floor", "nfe", RATE, "promoted")
# the parent run's params: what defines the run
HEADLINE_PARAMS = ("profile", "dataset", "dataset_md5", "git_commit", "code_sha256")
# a table model's served rows beside its vectors' FID (tasks/table_rows.py `headline`):
# what a data scientist sorts a table's runs by
TABLE_HEADLINE_METRICS = ("table_column_shapes", "table_column_pair_trends",
                          "table_utility_ratio", "table_detection_auc", "table_dcr_ratio")


def headline_columns(is_table: bool) -> tuple[str, ...]:
    """The runs view's metric columns: HEADLINE_METRICS, and for a table the served rows'
    scores (TABLE_HEADLINE_METRICS) after the FID and NFE they were chosen by."""
    return HEADLINE_METRICS + (TABLE_HEADLINE_METRICS if is_table else ())


def teacher_best_fid(table: list[dict]) -> float:
    """The teacher's lowest FID over its sampler settings in the evaluation `table` (rows with
    model, fid, ...).  ValueError when the table has no teacher row."""
    frame = pd.DataFrame(table)
    if frame.empty or "model" not in frame or not (frame["model"] == "teacher").any():
        raise ValueError("the evaluation table has no teacher row")
    return float(frame.loc[frame["model"] == "teacher", "fid"].min())


def derived_metrics(table: list[dict], row: dict) -> dict[str, float]:
    """What a served model's evaluation `row` (with fid) does not hold by itself: the teacher's
    best FID in the same evaluation `table` and the row's ratio to it.  Registration logs them
    with the row; `dmops reproduce` derives them from its own table the same way."""
    best = teacher_best_fid(table)
    return {"teacher_best_fid": best, "fid_vs_teacher_best": ratio(float(row["fid"]), best)}


def ratio(a: float, b: float) -> float:
    """a / b, or inf where b is not a positive finite number (no ratio to report)."""
    return a / b if b > 0 and math.isfinite(b) else math.inf


def headline_metrics(table: list[dict], served: dict[str, float], floor: float,
                     promoted: bool) -> dict[str, float]:
    """The parent run's metrics: the served model's FID (`served`: the numeric entries of its
    evaluation row), its ratio to the teacher's best FID and to the floor (`floor`: the FID of
    held-out real images against the test split, the best any model can score), its NFE and
    samples_per_s (its rate; images, rows or points per second), and 1.0 when it was promoted to champion, else 0.0.  KID is added when the row
    has it.  The two ratios are dimensionless; FID in the feature space of the evaluation."""
    fid = float(served["fid"])
    metrics = {"fid": fid, **derived_metrics(table, served),
               "fid_vs_floor": ratio(fid, floor),
               "nfe": float(served["nfe"]),
               RATE: sampling_rate(served),
               "promoted": 1.0 if promoted else 0.0,
               "fid_floor": float(floor)}
    if "kid_mean" in served:
        metrics["kid_mean"] = float(served["kid_mean"])
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


def code_sha256(step_code: dict[str, str]) -> str:
    """One hash over every step's code hash (`step_code`: step -> sha256, as
    tasks.steps.lineage.pipeline_code gives them): equal exactly when all of them are."""
    return hashlib.sha256(json.dumps(step_code, sort_keys=True).encode()).hexdigest()


def headline_params(profile: str | None, dataset: str, dataset_md5: str, git_commit: str,
                    step_code: dict[str, str]) -> dict[str, str]:
    """The parent run's params: profile, dataset name and DVC md5, git commit (with '-dirty'
    when the tree differed from it) and the hash over every step's code."""
    return {"profile": str(profile), "dataset": dataset, "dataset_md5": dataset_md5,
            "git_commit": git_commit, "code_sha256": code_sha256(step_code)}
