"""The evaluation of a synthetic table: fidelity, utility, detection and privacy, beside a
floor (a held-out real sample scored the same way).

`evaluate_table(real_train, real_holdout, synthetic, columns, target, seed)` scores
`synthetic` rows against the real rows the generator was trained on (`real_train`) and real
rows it never saw (`real_holdout`); `floor(real_train, real_holdout, columns, target, seed)`
gives the same numbers for a perfect generator: fresh real rows (one half of the held-out
rows, scored as if synthetic, against the other half as held-out rows).  Read every number
beside its floor: a fresh real sample does not score 1 on column shapes (sampling noise of
order 1 / sqrt(rows)), nor exactly 0.5 on detection, and with half as many training rows its
utility ratio is below 1.

Each metric (its module says how it is computed):

| key | meaning | better |
|---|---|---|
| column_shapes | SDMetrics column shapes: mean over columns of 1 - KS statistic (numbers) or 1 - total variation distance (categories) | higher, up to 1 |
| column_pair_trends | SDMetrics column-pair trends over the pairs related in the real table | higher, up to 1 |
| quality_score | mean of the two above (SDMetrics' overall score) | higher, up to 1 |
| column_pair_trends_pairs | how many column pairs column_pair_trends averages (a count) | - |
| utility_auc / utility_f1 | AUC / F1 on real held-out rows of a model trained on synthetic rows (categorical target) | higher |
| utility_auc_real / utility_f1_real | the same model trained on as many real training rows (a seeded subsample, stratified) | - (the reference) |
| utility_r2 / utility_r2_real | R^2 on held-out rows, synthetic-trained / real-trained (numerical target) | higher, up to 1 |
| utility_ratio | synthetic-trained over real-trained AUC (or R^2; negative when the synthetic-trained R^2 is) | near 1 (above 1 is noise) |
| detection_auc | cross-validated AUC of a classifier telling real training rows from synthetic rows | near 0.5 |
| dcr_median / dcr_holdout_median | median distance to the closest training row of synthetic / held-out rows | - |
| dcr_ratio | dcr_median / dcr_holdout_median | near 1; below 1 = copying |
| dcr_below_holdout_p05 | share of synthetic rows closer than the held-out 5th percentile | about 0.05; higher = copying |
| exact_copies / exact_copies_holdout | share of synthetic / held-out rows equal to a training row | lower, down to the held-out share |

Utility keys appear only with a target (AUC and F1 for a categorical one, R^2 for a numerical
or integer one); `dcr_ratio` and `utility_ratio` are left out where their denominator is 0 or
below.  Every value is a Python float (JSON-able, finite), so the keys can be MLflow metric
names as they are; they are deterministic for fixed inputs and seed (the times are kept apart
in `TableEvaluation.seconds`).

Measured on 2 shared, loaded CPU cores (one thread), a 70/30 split of each table, synthetic
= the training rows with each column shuffled, floor = half of the held-out rows:
churn (train 3,500, holdout 1,500, 20 columns): evaluate_table 8.7 s (fidelity 2.9, utility
1.5, detection 2.6, privacy 1.5), floor 6.0 s; diamonds, a 10,000-row sample (train 7,000,
holdout 3,000, 10 columns): 7.1 s (0.7, 0.8, 3.0, 2.6), floor 5.8 s.  Importing SDMetrics
adds about 4 s once per process.  Floors there: churn column_shapes 0.970, pair trends 0.979,
utility_ratio 0.956, detection_auc 0.472, dcr_ratio 1.03; diamonds 0.973, 0.991, 0.983,
0.493, 0.96.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import pandas as pd

from .metrics_detection import detection_auc
from .metrics_fidelity import quality_report
from .metrics_inputs import (TableEvaluationError, canonical, column_types, described_target,
                             task_of)
from .metrics_privacy import privacy_scores
from .metrics_utility import utility_scores

__all__ = ["TableEvaluation", "TableEvaluationError", "evaluate_table", "floor", "split_holdout"]


class TableEvaluation(NamedTuple):
    """metrics: {name: float} (keys in the module docstring); per_column: one row per
    described column (column, type, shape_metric, column_shape, pair_trend); pairs: one row
    per column pair (column_1, column_2, metric, score, real_correlation,
    synthetic_correlation, real_association, counts); seconds: {"fidelity", "utility",
    "detection", "privacy"}: wall time of each part."""
    metrics: dict[str, float]
    per_column: pd.DataFrame
    pairs: pd.DataFrame
    seconds: dict[str, float]


def evaluate_table(real_train, real_holdout, synthetic, columns, target: str | None = None,
                   seed: int = 0, threads: int = 1) -> TableEvaluation:
    """Fidelity, utility, detection and privacy of `synthetic` (module docstring).

    real_train: the real rows the generator was fit on; real_holdout: real rows it never
    saw; synthetic: generated rows.  DataFrames of any row counts holding the described
    columns (other columns, e.g. `_id` and `_split`, are ignored).  columns: a column
    description ({name: type}, schema.json's dict, or a TableSchema); target: the column the
    utility models predict (default: the description's target; None with a plain mapping:
    no utility scores).  seed: every random choice (subsamples, folds, models).  threads:
    OpenMP threads of the models and the neighbour search (the numbers do not depend on it;
    more than the free cores is much slower: diffusion/tabular/metrics_inputs.py
    `limited_threads`).

    Fidelity and detection compare `synthetic` with `real_train`; utility tests on
    `real_holdout`; privacy measures distances to `real_train` against those of
    `real_holdout`.

    Time: about 9 s for churn (3,500 training rows) and 7 s for 10,000 rows of diamonds on
    2 shared cores (module docstring).

    Raises TableEvaluationError for bad input: a missing or mistyped column, an empty
    table, a target that is not described or has one class."""
    types = column_types(columns)
    target = described_target(columns, target)
    task_of(types, target)
    frames = {name: canonical(f, types, name) for name, f in
              (("real_train", real_train), ("real_holdout", real_holdout), ("synthetic", synthetic))}
    seconds = {}
    start = time.perf_counter()
    metrics, per_column, pairs = quality_report(frames["real_train"], frames["synthetic"], types)
    seconds["fidelity"] = time.perf_counter() - start

    start = time.perf_counter()
    metrics.update(utility_scores(frames["real_train"], frames["real_holdout"], frames["synthetic"],
                                  types, target, seed, threads))
    seconds["utility"] = time.perf_counter() - start

    start = time.perf_counter()
    metrics["detection_auc"] = detection_auc(frames["real_train"], frames["synthetic"], types, seed,
                                             threads=threads)
    seconds["detection"] = time.perf_counter() - start

    start = time.perf_counter()
    metrics.update(privacy_scores(frames["real_train"], frames["real_holdout"], frames["synthetic"], types,
                                  threads))
    seconds["privacy"] = time.perf_counter() - start

    bad = [k for k, v in metrics.items() if not np.isfinite(v)]
    if bad:  # every path above is meant to give finite numbers: say so rather than log NaN
        raise TableEvaluationError(f"evaluation produced non-finite values for {', '.join(bad)}")
    return TableEvaluation({k: float(v) for k, v in metrics.items()}, per_column, pairs, seconds)


def split_holdout(real_holdout, columns, target: str | None = None, seed: int = 0
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`real_holdout` in two seeded halves (a, b), stratified on the target (its class, or
    quintile bins of a numerical target) where every stratum has 2 rows or more.
    Raises TableEvaluationError for fewer than 4 rows."""
    from sklearn.model_selection import train_test_split

    types = column_types(columns)
    target = described_target(columns, target)
    task = task_of(types, target)
    holdout = canonical(real_holdout, types, "real_holdout")
    if len(holdout) < 4:
        raise TableEvaluationError(f"real_holdout: a floor needs at least 4 held-out rows, got {len(holdout)}")
    strata = None
    if task == "classification":
        strata = holdout[target].fillna("\0null")
    elif task == "regression":
        strata = pd.qcut(holdout[target].rank(method="first"), 5, labels=False).fillna(-1)
    if strata is not None and strata.value_counts().min() < 2:
        strata = None
    index = np.arange(len(holdout))
    a, b = train_test_split(index, test_size=0.5, random_state=seed, stratify=strata)
    rows = real_holdout.reset_index(drop=True)
    return rows.iloc[np.sort(a)].reset_index(drop=True), rows.iloc[np.sort(b)].reset_index(drop=True)


def floor(real_train, real_holdout, columns, target: str | None = None, seed: int = 0,
          threads: int = 1) -> TableEvaluation:
    """What a perfect generator scores: `evaluate_table` with one half of `real_holdout`
    (fresh real rows) as the synthetic table and the other half as the held-out rows
    (`split_holdout`).  Same arguments, result and errors as `evaluate_table`.

    The "synthetic" half has len(real_holdout) / 2 rows: to compare like with like, score a
    generator on about as many synthetic rows (fidelity and detection noise shrink with the
    row count; utility compares it with a real-trained model fit on as many of `real_train`'s
    rows, so the floor's utility ratio centres on 1)."""
    fresh, holdout = split_holdout(real_holdout, columns, target, seed)
    return evaluate_table(real_train, holdout, fresh, columns, target, seed, threads)
