"""Fidelity: SDMetrics' quality report (sdmetrics 0.32, `sdmetrics.reports.QualityReport`).

Column shapes: one score per column, 1 - the distance between its real and synthetic
marginals: KSComplement (1 - the Kolmogorov-Smirnov statistic, the largest gap between the
two empirical CDFs) for numerical and integer columns, TVComplement (1 - the total variation
distance between the category shares) for categorical ones.  Nulls are left out of both; a column that cannot be scored (all null on one side) scores 0,
and so does a related pair whose synthetic relation is undefined (a constant column).

Column-pair trends: one score per pair of columns: CorrelationSimilarity (1 - |r_real -
r_synthetic| / 2, Pearson r) for two numbers; ContingencySimilarity (1 - the total variation
distance between the two normalised contingency tables, numbers binned on the real data's
edges) for a pair with a category.  SDMetrics 0.32 averages only the pairs that are related in
the real table: |r_real| > 0.5, or a real association (Cramer's V) > 0.3.  A pair of
unrelated columns scores near 1 whatever a generator does, so the average would hide broken
dependence; the pairs that count are marked `counts` in the pair table.  When the real
table has no related pair at all, SDMetrics' average is undefined and every pair counts.

All scores lie in [0, 1]; higher is better; a fresh real sample scores below 1 by sampling
noise of order 1 / sqrt(rows) (see `floor` in diffusion/tabular/metrics.py).

Measured time of one report (the whole table, no subsample), 2 shared CPU cores:
5,000 rows x 20 columns (churn against a copy) 2.4 s; 50,000 rows x 10 columns (diamonds)
2.5 s.  The cost grows with the number of column pairs, so no rows are subsampled.

The single-table `sdmetrics.reports.single_table.QualityReport` is deprecated in 0.32 (a
FutureWarning on import); the unified report used here computes the same two properties with
the same thresholds on a one-table metadata dict.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .metrics_inputs import canonical, column_types

_TABLE = "table"
_SDTYPE = {"numerical": "numerical", "integer": "numerical", "categorical": "categorical"}


def sdmetrics_metadata(types: dict[str, str]) -> dict:
    """SDMetrics' metadata for one table: numerical and integer columns as `numerical`,
    categorical as `categorical`."""
    return {"tables": {_TABLE: {"columns": {c: {"sdtype": _SDTYPE[t]} for c, t in types.items()}}}}


def quality_report(real, synthetic, columns) -> tuple[dict[str, float], pd.DataFrame, pd.DataFrame]:
    """SDMetrics' quality report of `synthetic` against `real` on the described columns.

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
    from sdmetrics.reports import QualityReport

    types = column_types(columns)
    real = canonical(real, types, "real")
    synthetic = canonical(synthetic, types, "synthetic")
    report = QualityReport()
    with warnings.catch_warnings():
        # SDMetrics' own deprecation and pandas notices: not the caller's to act on
        warnings.simplefilter("ignore")
        report.generate({_TABLE: real}, {_TABLE: synthetic}, sdmetrics_metadata(types), verbose=False)
        shapes = report.get_details("Column Shapes")
        pair_details = report.get_details("Column Pair Trends") if len(types) > 1 else pd.DataFrame()

    per_column = pd.DataFrame({
        "column": list(types),
        "type": list(types.values()),
    })
    shapes = shapes.set_index("Column")
    per_column["shape_metric"] = per_column["column"].map(shapes["Metric"])
    # a column SDMetrics cannot score (all null on one side) reproduces nothing of the real one
    per_column["column_shape"] = per_column["column"].map(shapes["Score"]).astype(float).fillna(0.0)
    column_shapes = float(per_column["column_shape"].mean())

    if len(pair_details):
        pairs = pd.DataFrame({
            "column_1": pair_details["Column 1"], "column_2": pair_details["Column 2"],
            # undefined (a constant synthetic column has no correlation): the real relation
            # is not reproduced, so it scores 0 rather than dropping out of the average
            "metric": pair_details["Metric"], "score": pair_details["Score"].astype(float).fillna(0.0),
            "real_correlation": pair_details["Real Correlation"].astype(float),
            "synthetic_correlation": pair_details["Synthetic Correlation"].astype(float),
            "real_association": pair_details["Real Association"].astype(float),
            "counts": pair_details["Meets Threshold?"].astype("boolean").fillna(False).astype(bool),
        }).reset_index(drop=True)
        if not pairs["counts"].any():  # no related pair: every pair SDMetrics could score counts
            pairs["counts"] = pair_details["Score"].notna().to_numpy()
        counted = pairs[pairs["counts"]]
        pair_trends = float(counted["score"].mean()) if len(counted) else 0.0
        long = pd.concat([counted.rename(columns={"column_1": "column"})[["column", "score"]],
                          counted.rename(columns={"column_2": "column"})[["column", "score"]]])
        per_column["pair_trend"] = per_column["column"].map(long.groupby("column")["score"].mean())
    else:  # one column: no pair to score; the shapes say it all
        pairs = pd.DataFrame(columns=["column_1", "column_2", "metric", "score", "real_correlation",
                                      "synthetic_correlation", "real_association", "counts"])
        pair_trends = column_shapes
        per_column["pair_trend"] = np.nan
    scores = {
        "column_shapes": column_shapes,
        "column_pair_trends": pair_trends,
        "quality_score": (column_shapes + pair_trends) / 2,
        "column_pair_trends_pairs": float(pairs["counts"].sum()),
    }
    return scores, per_column, pairs
