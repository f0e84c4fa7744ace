"""A version of a table whose model layout would differ from the registered model's is stopped
with what changed (issue 13's third new-user trial): nulls in a column the last validated
version had none in fail the gate (an inferred schema would make the column nullable: another
layout), and the layout guard before training names each changed column with its remedy,
instead of two layout hashes and advice to abandon the model name."""

from __future__ import annotations

import numpy as np
import pytest

from test_table_input_faults import _gate, _prepared, customers


def test_nulls_in_a_column_that_had_none_fail_the_gate_naming_rows_by_the_id_column(tmp_path):
    table = customers()
    first = _gate(_prepared(tmp_path, "v1", table))
    assert first.success, first.summary()
    nulls = table.copy()
    nulls.loc[nulls.index[::11], "income"] = np.nan   # 19 of 200 rows: 9.5 %, under max 10 %
    # before: passed (within max_null_fraction), then the run stopped at the layout's hash
    report = _gate(_prepared(tmp_path, "v2", nulls), first.statistics)
    assert not report.success
    (line,) = report.failures
    assert line.startswith("nulls_vs_reference (income): no nulls, as in the last validated "
                           "version (if nulls are now expected here, declare the column "
                           "`nullable: true` in the entry's columns); observed 9.5% nulls (19 of "
                           "200 rows, e.g. customer_id C00000, C00011, C00022); expected none: "
                           "the last validated version had no nulls in this column"), line
    assert "_id" not in line.replace("customer_id", "")
    # a column declared nullable takes its nulls up to max_null_fraction
    declared = [{"name": "income", "nullable": True},
                *({"name": c} for c in table.columns if c not in ("customer_id", "income"))]
    assert _gate(_prepared(tmp_path, "v3", nulls, declared), first.statistics).success


# --- a version whose layout departs from the registered model's -------------------------------

@pytest.fixture
def registered(tmp_path, monkeypatch):
    """Version 1 of 'customers-diffusion' made from the clean table (analog bits); the registry's
    two answers (tasks/steps/register.py) stand in for a server: what it holds and the state in
    the version's model.json."""
    import json
    from pathlib import Path

    import tasks.steps.register as register

    first = _prepared(tmp_path, "v1", customers())
    signature = register.dataset_sample({"path": first}, "analog_bits")[0]
    state = {"schema": json.loads((Path(first) / "schema.json").read_text()),
             "categorical": "analog_bits"}
    monkeypatch.setattr(register, "registered_sample", lambda name: (signature, "table", "1"))
    monkeypatch.setattr(register, "registered_table_state", lambda name, version: state)
    return register


def _refusal(register, folder: str, categorical: str = "analog_bits") -> str:
    from diffusion.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        register.check_comparable("customers-diffusion", {"name": "customers", "path": folder},
                                  categorical)
    return str(caught.value)


def test_a_layout_change_is_named_column_by_column_with_its_remedy(tmp_path, registered):
    table = customers()
    others = [c for c in table.columns if c not in ("customer_id",)]
    nulls = table.copy()
    nulls.loc[nulls.index[::11], "income"] = np.nan
    declared = [{"name": c, **({"nullable": True} if c == "income" else {})} for c in others]
    message = _refusal(registered, _prepared(tmp_path, "nulls", nulls, declared))
    # before: "... holds models of table samples of shape 9 layout ba4e2a168c7e (version 1), but
    # dataset 'customers' has table samples of shape 10 layout c522f6fd674f ..."
    assert message == (
        "dataset 'customers' no longer has the layout of the models registered under "
        "pipeline.model_name 'customers-diffusion' (version 1): income became nullable: this "
        "version has nulls in it, the registered model's data had none (fill or drop those "
        "rows); or, if the change is meant, set pipeline.model_name to a name of its own: a "
        "model of other columns cannot be compared with its champion"), message
    gained = table.assign(segment=table["segment"].where(table.index % 7 > 0, "copper"))
    assert "segment gained category 'copper' (map those rows to known categories or drop " \
           "them)" in _refusal(registered, _prepared(tmp_path, "gained", gained))
    assert "data.categorical is onehot, the registered model's analog_bits (set " \
           "datasets.customers.categorical: analog_bits)" in _refusal(
               registered, _prepared(tmp_path, "same", table), "onehot")
    moved = table[["customer_id", "income", "age", *others[2:]]]
    assert "the columns' order is income, age, segment" in _refusal(
        registered, _prepared(tmp_path, "moved", moved))
    assert "age: integer became numerical (dtype float64; clean its values, or declare " \
           "{name: age, type: integer} under datasets.customers.columns)" in _refusal(
               registered, _prepared(tmp_path, "float", table.assign(age=table["age"] + 0.5)))
    assert "column(s) balance gone (restore them in the file)" in _refusal(
        registered, _prepared(tmp_path, "gone", table.drop(columns="balance")))


def test_the_remedy_a_layout_refusal_names_keeps_the_layout(tmp_path, registered):
    """A column that lost its nulls, or a category, changes an inferred layout; declaring what
    the refusal says restores the registered one."""
    table = customers()
    changed = table.assign(balance=table["balance"].fillna(1500.0),
                           segment=table["segment"].replace("diamond", "gold"))
    message = _refusal(registered, _prepared(tmp_path, "changed", changed))
    assert ("balance is no longer nullable: this version has no nulls in it (declare {name: "
            "balance, nullable: true} under datasets.customers.columns to keep the layout)") \
        in message, message
    categories = ["bronze", "diamond", "gold", "platinum", "silver"]
    assert ("segment lost category 'diamond': no row holds it (declare {name: segment, "
            f"categories: {categories}}} under datasets.customers.columns to keep the layout)") \
        in message, message
    extra = {"balance": {"nullable": True}, "segment": {"categories": categories}}
    declared = [{"name": c, **extra.get(c, {})} for c in table.columns if c != "customer_id"]
    folder = _prepared(tmp_path, "declared", changed, declared)
    registered.check_comparable("customers-diffusion", {"name": "customers", "path": folder},
                                "analog_bits")   # no refusal: the registered layout again
