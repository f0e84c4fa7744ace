"""Detection: how well a classifier tells real rows from synthetic ones.

Equal counts of real and synthetic rows (the larger table subsampled without replacement,
seeded), labelled 0 (real) and 1 (synthetic), every described column as a feature (the
target too).  Out-of-fold probabilities come from a k-fold split (seeded): each row is
scored by a model that never saw it.  A synthetic row equal to a real one shares that row's
fold: else the real twin would sit in the training folds with the opposite label and the
model would learn to call it the other kind, so a generator that copies its training rows
would score an AUC far below 0.5 (0.03 measured on churn), not the 0.5 of "cannot tell".
All other rows are spread over the folds at random; the two kinds are balanced overall, so
each fold holds about as many of each (stratified in effect, not by construction).  The score is the ROC AUC of those
probabilities: 0.5 when the classifier cannot tell the two apart (the ideal), 1 when it
separates them perfectly.  Below 0.5 is chance noise around 0.5, not a better generator.

The classifier is scikit-learn's HistGradientBoostingClassifier (default hyper-parameters,
native categorical splits on integer codes, nulls as missing values, `random_state=seed`),
not a logistic regression: a linear model on one-hot and quantile features sees only
differences in the marginals and a few linear relations, so a table with every column
shuffled independently (each marginal exact, every dependence destroyed) passes it as real.
Trees split on one column within another's range and catch that, so a low AUC here is the
stronger claim.

Time: 5-fold on 2 x 4,000 churn rows (20 columns) about 4 s on one thread (`threads`); with
two OpenMP threads on a shared, loaded 2-core machine the same took 63 s, so one is the
default.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .metrics_inputs import (TableEvaluationError, canonical, category_codes, column_types, encode,
                             limited_threads, row_keys)


def _folds(keys: np.ndarray, n: int, folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold per row of [real (n), synthetic (n)]: rows whose content occurs among both
    kinds share one fold; every other row is placed on its own, at random.  Duplicates
    within one kind carry one label and may be split (a collapsed generator's repeated row
    is a true sign of a synthetic table)."""
    shared = np.isin(keys, np.intersect1d(keys[:n], keys[n:]))
    group = np.arange(len(keys))
    if shared.any():
        _, twin = np.unique(keys[shared], return_inverse=True)
        group[shared] = len(keys) + twin
    _, group = np.unique(group, return_inverse=True)
    return rng.permutation(group.max() + 1)[group] % folds


def detection_auc(real, synthetic, columns, seed: int = 0, folds: int = 5,
                  max_rows: int | None = None, threads: int = 1) -> float:
    """Cross-validated ROC AUC of a classifier telling `synthetic` rows from `real` ones.

    real, synthetic: DataFrames holding the described columns (other columns ignored).
    columns: a column description.  seed: subsampling, fold split and model.  folds: k of
    the stratified k-fold (>= 2).  max_rows: at most this many rows of each kind (None: the
    smaller table's row count).  threads: OpenMP threads of the model.
    Returns a float in [0, 1]; 0.5 is indistinguishable, lower distance from 0.5 is better.
    Raises TableEvaluationError for bad input or fewer rows of a kind than `folds`."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import PredefinedSplit, cross_val_predict

    types = column_types(columns)
    real = canonical(real, types, "real")
    synthetic = canonical(synthetic, types, "synthetic")
    if not (isinstance(folds, int) and folds >= 2):
        raise TableEvaluationError(f"detection: folds must be an integer >= 2, got {folds!r}")
    n = min(len(real), len(synthetic), max_rows or len(real))
    if n < folds:
        raise TableEvaluationError(
            f"detection: needs at least {folds} rows of each kind for {folds} folds, got {n}")
    rng = np.random.default_rng(seed)
    real = real.iloc[np.sort(rng.choice(len(real), n, replace=False))]
    synthetic = synthetic.iloc[np.sort(rng.choice(len(synthetic), n, replace=False))]
    both = pd.concat([real, synthetic], ignore_index=True)
    codes = category_codes(both, types)
    X, categorical = encode(both, types, codes)
    y = np.r_[np.zeros(n, dtype=int), np.ones(n, dtype=int)]
    model = HistGradientBoostingClassifier(categorical_features=categorical if categorical.any() else None,
                                           random_state=seed)
    fold = _folds(row_keys(both).to_numpy(), n, folds, rng)
    with limited_threads(threads):
        p = cross_val_predict(model, X, y, cv=PredefinedSplit(fold), method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))
