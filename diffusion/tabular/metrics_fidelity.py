"""Fidelity: SDMetrics' quality report (sdmetrics 0.32): column shapes and column-pair trends,
computed with SDMetrics' own metrics and thresholds, numbers binned on the real data's edges.

Column shapes: one score per column, 1 - the distance between its real and synthetic
marginals: KSComplement (1 - the Kolmogorov-Smirnov statistic, the largest gap between the
two empirical CDFs) for numerical and integer columns, TVComplement (1 - the total variation
distance between the category shares) for categorical ones.  Nulls are left out of both; a
column that cannot be scored (all null on one side) scores 0.

Column-pair trends: one score per pair of columns: CorrelationSimilarity (1 - |r_real -
r_synthetic| / 2, Pearson r, rows with a null in the pair left out) for two numbers;
ContingencySimilarity (1 - the total variation distance between the two normalised
contingency tables, nulls a category) for a pair with a category, its number binned into 10
equal bins of the REAL column's range, the end bins open (sdmetrics.utils.discretize_column,
what `ContingencySimilarity(continuous_column_names=...)` does).  As in SDMetrics' report
only the pairs related in the real table count towards the average: |r_real| > 0.5, or
Cramer's V of the real (binned) contingency table > 0.3 (sdmetrics.reports.utils' defaults);
a pair of unrelated columns scores near 1 whatever a generator does, so the average would
hide broken dependence.  The pairs that count are marked `counts` in the pair table; a
counted pair whose synthetic score is undefined (a constant synthetic column) scores 0.
When the real table has no related pair, every pair with a defined score counts.

Why not `QualityReport.generate` itself: in sdmetrics 0.32 its Column Pair Trends property
bins the real and the synthetic column each on its OWN 10 equal bins (each table's own
min-max), so one extreme synthetic value, or a fresh real sample with another range, moves
every bin edge.  Measured on diamonds: a disjoint real sample of 1,500 rows against 7,000
training rows scored cut x table 0.60 in the report (table ranges 50-95 and 52-73) and 0.96
with the real data's edges; the report's pair-trend score of real against real was 0.95,
0.84 and 0.90 at 1,500, 7,000 and 40,000 rows.  SDMetrics' maintainers describe the
real-edges binning as the intended behaviour (sdv-dev/SDMetrics pull request 368).  Where the
two binnings agree (a synthetic table with the real table's range) the scores here equal the
report's (tests/test_tabular_metrics.py).

All scores lie in [0, 1]; higher is better; a fresh real sample scores below 1 by sampling
noise of order 1 / sqrt(rows) (see `floor` in diffusion/tabular/metrics.py).

Measured time (2 shared, loaded CPU cores, the whole table, no subsample), against a
column-shuffled copy of as many rows: churn, 5,000 rows x 20 columns (190 pairs), 2.6 s;
diamonds, 50,000 rows x 10 columns (45 pairs), 3.0 s.  So no rows are subsampled.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .metrics_inputs import canonical, column_types

_PAIR_COLUMNS = ["column_1", "column_2", "metric", "score", "real_correlation",
                 "synthetic_correlation", "real_association", "counts"]


_SDTYPE = {"numerical": "numerical", "integer": "numerical", "categorical": "categorical"}


def sdmetrics_metadata(types: dict[str, str], table: str = "table") -> dict:
    """SDMetrics' metadata for one table named `table` (the unified reports' form):
    numerical and integer columns as `numerical`, categorical as `categorical`."""
    return {"tables": {table: {"columns": {c: {"sdtype": _SDTYPE[t]} for c, t in types.items()}}}}


def _column_shape(metric, real: pd.Series, synthetic: pd.Series) -> float:
    real, synthetic = real.dropna(), synthetic.dropna()
    if len(real) == 0 or len(synthetic) == 0:
        return 0.0
    score = float(metric.compute(real, synthetic))
    return 0.0 if np.isnan(score) else score


def _pair(a: str, b: str, types: dict[str, str], real: pd.DataFrame, synthetic: pd.DataFrame,
          correlation_threshold: float, association_threshold: float) -> dict:
    from scipy.stats.contingency import association
    from sdmetrics.column_pairs import ContingencySimilarity, CorrelationSimilarity
    from sdmetrics.errors import ConstantInputError
    from sdmetrics.utils import discretize_column

    numbers = [c for c in (a, b) if types[c] != "categorical"]
    row = {"column_1": a, "column_2": b, "real_correlation": np.nan, "synthetic_correlation": np.nan,
           "real_association": np.nan}
    if len(numbers) == 2:
        r, s = real[[a, b]].dropna(), synthetic[[a, b]].dropna()
        row["metric"] = "CorrelationSimilarity"
        row["score"] = np.nan
        if len(r) >= 2 and r[a].nunique() > 1 and r[b].nunique() > 1:
            row["real_correlation"] = float(r[a].corr(r[b]))
        try:
            out = CorrelationSimilarity.compute_breakdown(r, s, coefficient="Pearson")
        except (ConstantInputError, ValueError):  # a constant or (nearly) empty column: undefined
            pass
        else:
            row.update(score=float(out["score"]), real_correlation=float(out["real"]),
                       synthetic_correlation=float(out["synthetic"]))
        row["counts"] = bool(abs(row["real_correlation"]) > correlation_threshold)
        return row
    r, s = real[[a, b]].copy(), synthetic[[a, b]].copy()
    for c in numbers:
        r[c], s[c] = discretize_column(r[c], s[c], num_discrete_bins=10)
    row["metric"] = "ContingencySimilarity"
    row["score"] = float(ContingencySimilarity.compute_breakdown(r, s)["score"])
    table = r.groupby([a, b], dropna=False).size().unstack(fill_value=0)
    if min(table.shape) >= 2:
        row["real_association"] = float(association(table.to_numpy(), method="cramer"))
    row["counts"] = bool(row["real_association"] > association_threshold)
    return row


def quality_report(real, synthetic, columns) -> tuple[dict[str, float], pd.DataFrame, pd.DataFrame]:
    """SDMetrics' column shapes and column-pair trends of `synthetic` against `real`
    (module docstring) on the described columns.

    real, synthetic: DataFrames holding the described columns (any row counts; other columns
    ignored).  columns: a column description (diffusion/tabular/metrics_inputs.py).

    Returns (scores, per_column, pairs):
      scores: {"column_shapes", "column_pair_trends", "quality_score" (their mean),
               "column_pair_trends_pairs" (how many pairs counted)}, floats in [0, 1] (the
               count as a float);
      per_column: one row per described column: column, type, shape_metric ("KSComplement"
               or "TVComplement"), column_shape, pair_trend (the mean score of the counted
               pairs it belongs to; NaN when none);
      pairs: one row per column pair: column_1, column_2, metric, score, real_correlation,
               synthetic_correlation, real_association, counts (bool).
    Raises TableEvaluationError for bad input (see `canonical`)."""
    from sdmetrics.reports.utils import DEFAULT_REAL_ASSOCIATION_THRESHOLD, DEFAULT_REAL_CORRELATION_THRESHOLD
    from sdmetrics.single_column import KSComplement, TVComplement

    types = column_types(columns)
    real = canonical(real, types, "real")
    synthetic = canonical(synthetic, types, "synthetic")
    names = list(types)
    with warnings.catch_warnings():
        # SDMetrics' and scipy's notices on constant columns: the score says it (0 or NaN)
        warnings.simplefilter("ignore")
        per_column = pd.DataFrame({"column": names, "type": [types[c] for c in names]})
        per_column["shape_metric"] = ["TVComplement" if types[c] == "categorical" else "KSComplement"
                                      for c in names]
        per_column["column_shape"] = [
            _column_shape(TVComplement if types[c] == "categorical" else KSComplement, real[c], synthetic[c])
            for c in names]
        rows = [_pair(a, b, types, real, synthetic, DEFAULT_REAL_CORRELATION_THRESHOLD,
                      DEFAULT_REAL_ASSOCIATION_THRESHOLD)
                for i, a in enumerate(names) for b in names[i + 1:]]
    column_shapes = float(per_column["column_shape"].mean())
    pairs = pd.DataFrame(rows, columns=_PAIR_COLUMNS)
    pairs["counts"] = pairs["counts"].astype(bool)
    if len(pairs) and not pairs["counts"].any():  # no related pair: every defined pair counts
        pairs["counts"] = pairs["score"].notna()
    # a related pair the synthetic table cannot reproduce at all (undefined score) scores 0
    pairs["score"] = pairs["score"].astype(float).fillna(0.0)
    counted = pairs[pairs["counts"]]
    if len(counted):
        pair_trends = float(counted["score"].mean())
        long = pd.concat([counted.rename(columns={"column_1": "column"})[["column", "score"]],
                          counted.rename(columns={"column_2": "column"})[["column", "score"]]])
        per_column["pair_trend"] = per_column["column"].map(long.groupby("column")["score"].mean())
    else:  # one column, or no pair with a defined score: the shapes say it all
        pair_trends = column_shapes
        per_column["pair_trend"] = np.nan
    scores = {
        "column_shapes": column_shapes,
        "column_pair_trends": pair_trends,
        "quality_score": (column_shapes + pair_trends) / 2,
        "column_pair_trends_pairs": float(pairs["counts"].sum()),
    }
    return scores, per_column, pairs
