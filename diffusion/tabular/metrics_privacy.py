"""Privacy: distance to the closest record (DCR) of the real training rows.

Each row's DCR is its distance to the nearest real training row, in a Gower-style distance:
the mean over the described columns of a per-column difference in [0, 1]:
- numerical and integer columns: |F(a) - F(b)|, F the training column's empirical CDF taken
  at mid-rank (F(x) = (#{train < x} + #{train <= x}) / 2n).  Ranks make every column count
  alike whatever its unit and tails, and a value gets the rank of a training value only when
  it equals it, so a DCR of 0 means an exact copy.  A null has rank 0.5 and adds a
  missing-indicator difference of 1 (in columns that hold nulls anywhere).
- categorical columns: 0 when equal, 1 when not (nulls are a category of their own).
The nearest neighbour is found by scikit-learn's NearestNeighbors (Manhattan metric on the
rank columns and on one-hot columns of weight 1/2, which is exactly the sum above).

The reference is the same distance for real held-out rows, fresh draws from the data that the
training rows did not include: a generator that does not copy makes rows about as far from
the training rows as those are.

- dcr_median, dcr_holdout_median: the medians of the two (in [0, 1]).
- dcr_ratio = dcr_median / dcr_holdout_median: about 1 is right; below 1 the synthetic rows
  sit closer to the training rows than fresh data does (a memorisation warning); above 1 they
  are further off (usually a fidelity problem, not a privacy one).  Omitted when the held-out
  median is 0 (over half of the held-out rows repeat a training row: no reference).
- dcr_below_holdout_p05: the share of synthetic rows strictly closer than the 5th percentile
  of held-out DCRs: about 0.05 without copying, towards 1 with it.
- exact_copies: the share of synthetic rows equal on every described column to some training
  row; exact_copies_holdout: the same share for held-out rows (tables with duplicate rows,
  such as diamonds, have some: the level a generator cannot be blamed for).  Lower is better
  down to that level.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .metrics_inputs import canonical, column_types, limited_threads, row_keys


def _features(frames: list[pd.DataFrame], train: pd.DataFrame, types: dict[str, str]) -> list[np.ndarray]:
    """Each frame as the columns whose Manhattan distance / len(types) is the DCR distance."""
    blocks = [[] for _ in frames]
    for column, kind in types.items():
        if kind == "categorical":
            values = pd.concat([f[column] for f in frames], ignore_index=True).fillna("\0null")
            categories = sorted(values.unique())
            for block, f in zip(blocks, frames):
                cat = pd.Categorical(f[column].fillna("\0null"), categories=categories)
                onehot = np.zeros((len(f), len(categories)))
                onehot[np.arange(len(f)), cat.codes] = 0.5
                block.append(onehot)
            continue
        ref = np.sort(train[column].dropna().to_numpy())
        has_null = any(f[column].isna().any() for f in frames)
        for block, f in zip(blocks, frames):
            x = f[column].to_numpy()
            null = np.isnan(x)
            if len(ref):
                rank = (np.searchsorted(ref, x, "left") + np.searchsorted(ref, x, "right")) / (2 * len(ref))
            else:
                rank = np.zeros(len(x))
            rank[null] = 0.5
            block.append(rank[:, None])
            if has_null:
                block.append(null[:, None].astype(float))
    return [np.hstack(b) for b in blocks]


def closest_record_distances(real_train, others: list, columns, threads: int = 1) -> list[np.ndarray]:
    """DCR (float64 (n_i,), each in [0, 1 + share of columns with nulls]) of every row of
    each frame in `others` to the nearest row of `real_train`.

    real_train and others: DataFrames holding the described columns; columns: a column
    description; threads: of the neighbour search.  Raises TableEvaluationError for bad
    input."""
    from sklearn.neighbors import NearestNeighbors

    types = column_types(columns)
    train = canonical(real_train, types, "real_train")
    rest = [canonical(f, types, f"table {i}") for i, f in enumerate(others)]
    X = _features([train, *rest], train, types)
    with limited_threads(threads):
        search = NearestNeighbors(n_neighbors=1, metric="manhattan").fit(X[0])
        return [search.kneighbors(x)[0][:, 0] / len(types) for x in X[1:]]


def privacy_scores(real_train, real_holdout, synthetic, columns, threads: int = 1) -> dict[str, float]:
    """The DCR summary of `synthetic` against that of `real_holdout` (module docstring).

    real_train, real_holdout, synthetic: DataFrames holding the described columns; columns:
    a column description; threads: of the neighbour search.  Returns {"dcr_median", "dcr_holdout_median", "dcr_ratio" (omitted
    when dcr_holdout_median is 0), "dcr_below_holdout_p05", "exact_copies",
    "exact_copies_holdout"}, all floats.  Raises TableEvaluationError for bad input."""
    types = column_types(columns)
    train = canonical(real_train, types, "real_train")
    holdout = canonical(real_holdout, types, "real_holdout")
    synthetic = canonical(synthetic, types, "synthetic")
    dcr_synthetic, dcr_holdout = closest_record_distances(train, [synthetic, holdout], types, threads)
    train_keys = set(row_keys(train))
    out = {
        "dcr_median": float(np.median(dcr_synthetic)),
        "dcr_holdout_median": float(np.median(dcr_holdout)),
    }
    if out["dcr_holdout_median"] > 0:
        out["dcr_ratio"] = out["dcr_median"] / out["dcr_holdout_median"]
    out["dcr_below_holdout_p05"] = float(np.mean(dcr_synthetic < np.quantile(dcr_holdout, 0.05)))
    out["exact_copies"] = float(row_keys(synthetic).isin(train_keys).mean())
    out["exact_copies_holdout"] = float(row_keys(holdout).isin(train_keys).mean())
    return out
