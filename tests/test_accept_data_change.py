"""A meant change of the data (`dmops run --accept-data-change`): the gate's comparisons with
the last validated version (a table's columns, kinds, categories, nulls, reference ranges and
drift; an image set's drift) are what such a change fails, and what accepting it lets pass,
once: the report lists each as a change, every other check still fails the version, and its
statistics are the next version's reference.  Without the option, a failure of those
comparisons says how to accept it.  Real Great Expectations on processed folders, as in
test_validate_table.py and test_validate_data.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_table_input_faults import _prepared, customers
from test_validate_data import write_digits_like
from test_validate_table import churn_schema, churn_table, write_table
from tasks.adapters.gx.report import ACCEPT_OPTION
from tasks.steps.validate_data import ValidationSettings, validate_dataset


def _checks(report) -> set:
    return {(r["expectation_config"]["meta"]["check"], r["expectation_config"]["meta"].get("column"))
            for r in report.result["results"] if not r["success"]}


def _gate(folder, reference=None, **options):
    return validate_dataset(folder, reference=reference, dataset="customers", **options)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The first version's statistics, through the real loader with an inferred schema."""
    report = _gate(_prepared(tmp_path_factory.mktemp("ref"), "v1", customers()))
    assert report.success, report.summary()
    return json.loads(json.dumps(report.statistics))   # as the S3 store keeps it


def _new_category(f):
    return f.assign(segment=f["segment"].where(f.index >= 12, "titanium"))


def _dropped(f):
    return f.drop(columns=["segment"])


def _retyped(f):
    return f.assign(age=f["age"].astype(str) + " yrs")


def _shifted(f):   # the mean and the range move; nothing else
    return f.assign(income=f["income"] + 0.5 * f["income"].max())


def _nulls_where_none_were(f):
    return f.assign(income=f["income"].where(f.index % 11 != 0))


@pytest.mark.parametrize("edit, changed", [
    (_new_category, {("categories_vs_reference", "segment")}),
    (_dropped, {("columns_vs_reference", None)}),
    (_retyped, {("type_vs_reference", "age")}),
    (_shifted, {("drift_mean", "income"), ("range", "income")}),
    (_nulls_where_none_were, {("nulls_vs_reference", "income")}),
])
def test_a_meant_change_of_a_table_passes_once_and_becomes_the_reference(reference, tmp_path,
                                                                         edit, changed):
    folder = _prepared(tmp_path, "v2", edit(customers()))
    refused = _gate(folder, reference)
    assert not refused.success and _checks(refused) == changed, refused.summary()
    # the refusal says which of its lines are a change of the data, and how to accept one
    assert refused.changes == refused.failures
    assert f"`{ACCEPT_OPTION}`" in refused.summary() and "pipeline.model_name" in refused.summary()

    accepted = _gate(folder, reference, accept_change=True)
    assert accepted.success and accepted.failures == [], accepted.summary()
    assert accepted.changes == refused.changes       # the same lines, now listed as accepted
    summary = accepted.summary()
    assert summary.splitlines()[0] == (
        f"dataset customers passed {accepted.evaluated - len(changed)} of {accepted.evaluated} "
        f"expectations (200 rows); {len(changed)} change(s) since the last validated version "
        "accepted as meant (--accept-data-change), it becomes the gate's reference when the run "
        "goes on:"), summary
    assert all(f"  - {line}" in summary for line in accepted.changes)

    # its statistics are the next reference: the same version passes against them unaided
    again = _gate(folder, json.loads(json.dumps(accepted.statistics)))
    assert again.success and again.changes == [], again.summary()


def test_accepting_a_change_does_not_accept_a_fault_of_the_version_itself(reference, tmp_path):
    """A new category beside nulls beyond max_null_fraction in a nullable column: only the
    category is a change of the data; the nulls fail as ever, and the change stays listed
    apart.  (Repeated ids and values beyond declared bounds never reach the gate: the loader
    refuses them.)"""
    table = _new_category(customers())
    table.loc[:99, "balance"] = np.nan                  # ~54 % nulls, max_null_fraction 10 %
    report = _gate(_prepared(tmp_path, "v2", table), reference, accept_change=True)
    assert not report.success
    assert [line.split(" ", 1)[0] for line in report.failures] == ["nulls"], report.failures
    assert [line.split(" ", 1)[0] for line in report.changes] == ["categories_vs_reference"]
    assert not set(report.changes) & set(report.failures)
    summary = report.summary()   # the accepted change is shown apart from the failures
    assert summary.startswith("dataset customers failed 1 of ")
    assert "Besides, 1 change(s) since the last validated version accepted as meant" in summary
    assert f"  - {report.changes[0]}" in summary


def test_declared_bounds_and_categories_are_the_versions_own_checks(tmp_path):
    """Bounds and categories that schema.json declares belong to the version, not to the last
    one: accepting a change lets no value outside them pass (a folder written by hand: the
    loader refuses such values before the gate)."""
    churn = churn_table()
    schema = churn_schema(churn)
    reference = validate_dataset(write_table(tmp_path / "v1", churn, schema)).statistics
    for column in schema["columns"]:
        if column["name"] == "total_day_minutes":
            column["min"] = 0.0
    frame = churn.copy()
    frame.loc[5, "total_day_minutes"] = -1.0
    frame["state"] = frame["state"].astype(object)
    frame.loc[[3, 30], "state"] = "Atlantis"
    report = validate_dataset(write_table(tmp_path / "v2", frame, schema), reference=reference,
                              accept_change=True)
    assert not report.success
    assert {("range", "total_day_minutes"), ("categories", "state")} <= _checks(report)
    assert not any(line.startswith(("range (", "categories (")) for line in report.changes)


def test_an_unchanged_version_accepts_nothing(reference, tmp_path):
    report = _gate(_prepared(tmp_path, "v2", customers()), reference, accept_change=True)
    assert report.success and report.changes == []
    assert report.summary().startswith("dataset customers passed all ")


# --- images: drift is the change; the value range is the settings' own -----------------------

def test_meant_drift_of_images_passes_once_but_out_of_range_values_do_not(tmp_path):
    from diffusion.data import load_dataset, save_processed

    digits = load_dataset("digits", seed=0)
    reference = validate_dataset(save_processed(digits, tmp_path / "ref")).statistics
    halved = write_digits_like(tmp_path / "halved", digits, 0.5 * digits.x)
    refused = validate_dataset(halved, ValidationSettings(), reference=reference)
    assert {line.split(" ", 1)[0] for line in refused.failures} == {"drift_mean", "drift_std"}
    assert f"`{ACCEPT_OPTION}`" in refused.summary()
    accepted = validate_dataset(halved, ValidationSettings(), reference=reference, accept_change=True)
    assert accepted.success and len(accepted.changes) == 2, accepted.summary()

    # brighter images leave the settings' value range: that is the version's own fault
    brighter = write_digits_like(tmp_path / "brighter", digits, digits.x + 0.3)
    report = validate_dataset(brighter, ValidationSettings(), reference=reference, accept_change=True)
    assert not report.success
    assert [line.split(" ", 1)[0] for line in report.failures] == ["range_max"]
    assert [line.split(" ", 1)[0] for line in report.changes] == ["drift_mean"]
