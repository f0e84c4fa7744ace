"""What a table model is called wherever it is described: its model card (a registered
version's description and a release's README.md) speaks of rows, names the setting its rows
were scored at (the one it is served at), gives code that returns a DataFrame of the table's
columns, and says why a utility figure is missing; the flow summary and the evaluation's
progress line say the same."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from diffusion.config import load_config
from flows.summary import summary_markdown
from tasks.adapters.model_card import model_card
from tasks.step_result import StepResult
from tasks.steps.prepare_dataset import load_data
from tasks.steps.table_quality import _line
from test_table_data_step import small_table

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
# what only an image model's card may say (a noise-level "grid" is the sampler's, not a picture)
IMAGE_WORDS = re.compile(r"image|pixel|\.png|sample grid|grids\b|UNet2DModel\.from_pretrained", re.I)
NOT_PREDICTABLE = ("utility n/a: the real-trained model's R^2 is -0.03, so the target is not "
                   "predictable from the other columns")
ROWS = {"table_column_shapes": 0.912, "table_floor_column_shapes": 0.97,
        "table_column_pair_trends": 0.9, "table_floor_column_pair_trends": 0.95,
        "table_utility_ratio": 0.93, "table_floor_utility_ratio": 0.99,
        "table_detection_auc": 0.61, "table_floor_detection_auc": 0.5,
        "table_dcr_ratio": 1.02, "table_floor_dcr_ratio": 1.0}
EVALUATION = {"fid": 0.34, "fid_floor": 0.18, "nfe": 1, "samples_per_s": 5200.0,
              "memorisation_ratio": 1.3, "n_samples": 280}


@pytest.fixture(scope="module")
def table_spec(tmp_path_factory):
    """A consistency student's model.json for a small table, served at 1 NFE (no training:
    the card reads only the spec)."""
    folder = tmp_path_factory.mktemp("card")
    small_table().to_csv(folder / "rows.csv", index=False)
    cfg = load_config(PARAMS, "tiny", ["data.name=table", f"data.path={folder / 'rows.csv'}",
                                       "data.target=churned", "data.id_column=customer",
                                       "model.net.kind=mlp"])
    ds = load_data(cfg.data)
    spec = cfg.model_spec(ds.sample_shape, dataset="customers", kind=ds.kind, table=ds.table)
    sampling = spec.sampling.model_copy(update={"sampler": "consistency", "steps": 1})
    return spec.model_copy(update={"sampling": sampling, "served_as": "consistency"})


@pytest.mark.parametrize("uri", [None, "s3://dmops-releases/customers-diffusion/3/"])
def test_a_table_models_card_speaks_of_rows_and_its_code_gives_a_dataframe(table_spec, uri):
    utility = {"table_utility_auc": 0.81, "table_utility_auc_real": 0.86, "table_utility_f1": 0.44,
               "table_utility_f1_real": 0.82, "table_floor_utility_f1": 0.52}
    card = model_card("customers-diffusion", "3", {**EVALUATION, **ROWS, **utility},
                      {"dataset_md5": "d41d8cd9", "data_kind": "table"}, spec=table_spec, uri=uri)
    assert not IMAGE_WORDS.search(card), IMAGE_WORDS.search(card)
    assert "It makes rows of 4 columns (target `churned`)" in card
    assert "| rows per second (sampling, evaluation machine) | 5200 |" in card
    assert "| real-data floor: FID of held-out real rows, same n | 0.18 |" in card
    # the rows section is of the setting it is served at, named
    rows = card.split("## Rows", 1)[1].split("\n## ", 1)[0]
    assert "The rows of the setting it is served at (consistency, 1 NFE)" in rows
    assert "| column shapes (SDMetrics: 1 - KS or TV distance, mean over columns) | 0.912 | 0.97 |" in rows
    assert "n/a" not in rows                           # utility is there: nothing to explain
    # the AUC and F1, of the synthetic- and the real-trained model
    assert "| utility: F1 of the synthetic-trained model (binary: the rarer class) | 0.44 | 0.52 |" in rows
    assert "| utility: F1 of the real-trained model | 0.82 | - |" in rows
    assert "| utility: AUC of the real-trained model (as many real rows) | 0.86 | - |" in rows
    # how to load: the pyfunc's DataFrame and a CSV of rows, never a picture
    load = card.split("## How to load", 1)[1]
    assert 'mlflow.pyfunc.load_model("models:/customers-diffusion/3")' in load
    assert 'model.predict(pd.DataFrame({"n": [16], "seed": [0]}))' in load
    assert "--out rows.csv" in load and "the table's columns in their dtypes" in load
    if uri is not None:
        assert f"dmops sample --release {uri} --n 16 --seed 0 --out rows.csv" in load
        assert "rows = generated_rows(spec.data.table, x)" in load   # the id column too, as served
    else:
        assert "dmops sample --model customers-diffusion/3 --n 16 --seed 0 --out rows.csv" in load
    # diffusers: no scheduler, and why its output would be vectors, not rows
    assert "a diffusers pipeline would give those vectors, not rows" in card.split("## Use with diffusers")[1]


def test_a_card_of_a_version_recorded_under_the_rates_old_name_reads_it(table_spec):
    old = {k: v for k, v in EVALUATION.items() if k != "samples_per_s"} | {"images_per_s": 5200.0}
    card = model_card("customers-diffusion", "1", old, {}, spec=table_spec)
    assert "| rows per second (sampling, evaluation machine) | 5200 |" in card
    assert "images_per_s" not in card and "samples_per_s" not in card


def test_the_card_of_a_table_whose_rows_were_not_scored_says_so(table_spec):
    card = model_card("customers-diffusion", "3", EVALUATION, {}, spec=table_spec)
    assert "The rows of the setting it is served at (consistency, 1 NFE) were not scored." in card
    # without a model.json the registry's tags say it is a table and how it is served
    bare = model_card("customers-diffusion", "3", ROWS, {"data_kind": "table", "sampler": "consistency",
                                                         "nfe": "1"})
    assert "The rows of the setting it is served at (consistency, 1 NFE)" in bare
    assert not IMAGE_WORDS.search(bare) and "--out rows.csv" in bare


def test_an_omitted_utility_says_why_on_the_card_the_summary_and_the_progress_line(table_spec):
    regression = {"table_column_shapes": 0.95, "table_utility_r2": -0.2, "table_utility_r2_real": -0.03,
                  "table_floor_column_shapes": 0.97, "table_floor_utility_r2": -0.05,
                  "table_floor_utility_r2_real": -0.03}
    card = model_card("m", "1", {**EVALUATION, **regression}, {}, spec=table_spec)
    assert "U" + NOT_PREDICTABLE[1:] + "." in card.split("## Rows", 1)[1]

    summary = _summary({**EVALUATION, **regression})
    assert NOT_PREDICTABLE in summary.split("## Rows of the served model", 1)[1]

    line = _line("consistency (consistency, 1 NFE)",
                 {k.removeprefix("table_"): v for k, v in regression.items() if "floor" not in k}, 3.0)
    assert line == f"rows of consistency (consistency, 1 NFE): column shapes 0.950, {NOT_PREDICTABLE} (3 s)"
    # a classification target always has its ratio: nothing to explain
    assert "n/a" not in _line("x", {"utility_ratio": 0.9, "utility_auc_real": 0.8}, 1.0)


def _summary(metrics: dict) -> str:
    row = {"model": "consistency", "sampler": "consistency", "nfe": 1, "fid": 0.34,
           "kid_mean": 0.001, "samples_per_s": 5200.0}
    evaluation = StepResult(step="evaluate", run_id="e", details={"table": [row], "floor": 0.18,
                                                                  "noun": "rows"})
    challenger = StepResult(step="register_model", run_id="r", metrics=metrics, details={
        "candidate": "consistency (consistency, 1 NFE): FID 0.340, 5200 rows/s",
        "rows_setting": {"model": "consistency", "sampler": "consistency", "steps": 1, "nfe": 1}})
    decision = StepResult(step="promote", run_id="p", details={
        "promoted": True, "reason": "first version", "release": "s3://b/m/1/"})
    result = {"model": "m", "version": "1", "dataset_md5": "abc", "cached_steps": []}
    return summary_markdown(result, evaluation, challenger, decision)


def test_the_summary_shows_the_scores_of_the_rows_it_serves_naming_sampler_and_nfe():
    summary = _summary({**EVALUATION, **ROWS})
    section = summary.split("## Rows of the served model: consistency (consistency, 1 NFE)", 1)[1]
    assert "| column shapes | 0.912 | 0.970 |" in section
    assert "| detection AUC | 0.610 | 0.500 |" in section
    assert not IMAGE_WORDS.search(summary)
    # an image model's summary has no rows section
    digits = StepResult(step="register_model", run_id="r", metrics=EVALUATION, details={"candidate": "x"})
    assert "## Rows" not in summary_markdown(
        {"model": "m", "version": "1", "dataset_md5": "abc", "cached_steps": []},
        StepResult(step="evaluate", run_id="e", details={"table": [], "floor": 0.1}), digits,
        StepResult(step="promote", run_id="p", details={"promoted": False, "reason": "r", "release": None}))


def test_the_run_ends_with_one_line_of_the_served_rows_scores():
    from tasks.table_rows import rows_line

    line = rows_line({**ROWS, "fid": 0.34})
    assert line.startswith("column shapes 0.912 (floor 0.970), pair trends 0.900 (floor 0.950), "
                           "utility 0.930 (floor 0.990), detection AUC 0.610 (floor 0.500)"), line
    assert rows_line(EVALUATION) is None                   # an image model: no rows line
    assert rows_line({"table_column_shapes": 0.9, "table_utility_r2_real": -0.03}).endswith(
        NOT_PREDICTABLE)


def test_the_registered_models_description_speaks_of_rows(table_spec, tmp_path):
    from diffusion.model import write_spec
    from tasks.steps.register import model_description

    write_spec(table_spec, tmp_path)
    text = model_description("customers-diffusion", "customers", tmp_path)
    columns = len(table_spec.data.table["schema"]["columns"])
    assert f"(rows of {columns} columns, drawn as vectors of {table_spec.shape[0]} numbers)" in text
    assert not IMAGE_WORDS.search(text) and "samples of shape" not in text


# the trial's churn run (issue 13): an AUC ratio of 0.93 beside an F1 of 0.44 against 0.82, and
# pair trends over 8 of its 190 column pairs
CHURN = {"table_utility_ratio": 0.9335, "table_utility_auc": 0.8642, "table_utility_auc_real": 0.9258,
         "table_utility_f1": 0.4423, "table_utility_f1_real": 0.8207,
         "table_floor_utility_ratio": 0.9459, "table_floor_utility_auc": 0.8559,
         "table_floor_utility_f1": 0.5149, "table_floor_utility_f1_real": 0.8548,
         "table_column_pair_trends": 0.9722, "table_column_pair_trends_pairs": 8.0,
         "table_column_pairs": 190.0, "table_floor_column_pair_trends": 0.9726,
         "table_floor_column_pair_trends_pairs": 8.0, "table_floor_column_pairs": 190.0}


def test_utility_is_named_an_auc_ratio_with_the_f1_ratio_beside_it_wherever_it_is_shown(table_spec):
    from tasks.table_rows import rows_line

    line = rows_line(CHURN)
    assert "utility (AUC ratio) 0.933 (floor 0.946), F1 ratio 0.539 (floor 0.602)" in line, line
    summary = _summary({**EVALUATION, **CHURN}).split("## Rows of the served model", 1)[1]
    assert "| utility (AUC ratio) | 0.933 | 0.946 |" in summary
    assert "| F1 ratio | 0.539 | 0.602 |" in summary
    rows = model_card("m", "1", {**EVALUATION, **CHURN}, {}, spec=table_spec).split("## Rows", 1)[1]
    assert "| utility (AUC ratio): synthetic-trained / real-trained model on held-out rows | 0.9335 | 0.9459 |" in rows
    assert "| utility (F1 ratio): F1 of the synthetic-trained / real-trained model | 0.5389 | 0.6024 |" in rows
    served = {k.removeprefix("table_"): v for k, v in CHURN.items() if "floor" not in k}
    assert "utility (AUC ratio) 0.933, F1 ratio 0.539 (2 s)" in _line("consistency", served, 2.0)
    # a regression target: the R^2 ratio, and no F1
    regression = {"table_utility_ratio": 0.9704, "table_utility_r2": 0.9516, "table_utility_r2_real": 0.9807}
    assert rows_line(regression) == "utility (R^2 ratio) 0.970"
    card = model_card("m", "1", {**EVALUATION, **regression}, {}, spec=table_spec)
    assert "| utility (R^2 ratio): synthetic-trained / real-trained model on held-out rows | 0.9704 | - |" in card
    assert "F1 ratio" not in card


def test_pair_trends_say_how_many_of_the_column_pairs_they_rest_on_wherever_they_are_shown(table_spec):
    from tasks.table_rows import rows_line

    assert "pair trends 0.972 (8 of 190 pairs; floor 0.973)" in rows_line(CHURN)
    summary = _summary({**EVALUATION, **CHURN}).split("## Rows of the served model", 1)[1]
    assert "| pair trends (8 of 190 pairs) | 0.972 | 0.973 |" in summary
    rows = model_card("m", "1", {**EVALUATION, **CHURN}, {}, spec=table_spec).split("## Rows", 1)[1]
    assert "| column-pair trends (SDMetrics, related pairs: 8 of 190 pairs) | 0.9722 | 0.9726 |" in rows
    served = {k.removeprefix("table_"): v for k, v in CHURN.items() if "floor" not in k}
    assert "pair trends 0.972 (8 of 190 pairs), " in _line("consistency", served, 2.0)
    # a version scored before the whole was recorded; one pair; one column (no pair at all)
    assert "pair trends 0.900 (1 pair)" in rows_line({"table_column_pair_trends": 0.9,
                                                      "table_column_pair_trends_pairs": 1.0})
    assert rows_line({"table_column_pair_trends": 0.2, "table_column_pair_trends_pairs": 0.0,
                      "table_column_pairs": 0.0}) == \
        "pair trends 0.200 (no column pairs: the column shapes' score)"


def test_the_card_names_the_table_by_its_params_entry_not_by_its_loader(table_spec):
    loader_named = table_spec.model_copy(update={"data": table_spec.data.model_copy(update={"dataset": "table"})})
    card = model_card("customers-diffusion", "1", EVALUATION, {"dataset": "customers"}, spec=loader_named)
    assert "made for the table `customers`." in card and "`table`" not in card.split("## Sampling")[0]
    # a version without the run's tag: what its model.json records
    assert "made for the table `customers`." in model_card("m", "1", EVALUATION, {}, spec=table_spec)


def test_a_kid_whose_subsets_are_the_whole_sets_says_so_instead_of_a_zero_spread(table_spec):
    from diffusion.metrics import _subset_size
    from tasks.adapters.model_card import KID_SUBSET_MAX

    assert _subset_size(None, 10 ** 6, 10 ** 6) == KID_SUBSET_MAX      # the card's bound is the core's
    whole = {**EVALUATION, "kid_mean": -0.004446, "kid_std": 1e-15, "n_fake": 1000, "n_test": 1000,
             "kid_lo": -0.03223, "kid_hi": 0.04}
    card = model_card("churn-diffusion", "1", whole, {}, spec=table_spec)
    assert ("| KID (mean over subsets) | -0.004446 (each subset held all 1000 rows of both sets: no "
            "spread over subsets), bootstrap interval [-0.03223, 0.04] |") in card, card
    assert "± 0.0000" not in card
    # subsets smaller than a set (400 test rows against 1000 generated): a spread is measured
    part = model_card("m", "1", {**whole, "kid_std": 0.02296, "n_test": 400}, {}, spec=table_spec)
    assert "| KID (mean ± std over subsets) | -0.004446 ± 0.02296, bootstrap interval" in part


def test_the_parent_runs_table_metrics_are_named_as_the_registered_versions():
    from tasks.table_rows import headline

    served = {k.removeprefix("table_"): v for k, v in CHURN.items() if "floor" not in k}
    floor = {k.removeprefix("table_floor_"): v for k, v in CHURN.items() if "floor" in k}
    metrics = headline({**served, "exact_copies": 0.0, "detection_auc": 0.4997, "dcr_ratio": 0.9952},
                       {**floor, "exact_copies": 0.0})
    assert metrics == pytest.approx({
        "table_column_pair_trends": 0.9722, "table_utility_ratio": 0.9335,
        "table_utility_f1_ratio": 0.4423 / 0.8207, "table_detection_auc": 0.4997,
        "table_dcr_ratio": 0.9952, "table_exact_copies": 0.0,
        "table_floor_column_pair_trends": 0.9726, "table_floor_utility_ratio": 0.9459,
        "table_floor_utility_f1_ratio": 0.5149 / 0.8548, "table_floor_exact_copies": 0.0})
    # every one of them is a number the card shows for a registered version
    card = model_card("m", "1", {**EVALUATION, **CHURN, **metrics}, {"data_kind": "table"})
    assert "0.5389" in card and "0.6024" in card
