"""A user's table that reads wrongly is refused where it is read, with the setting that reads it
right (issue 13's third new-user trial): a CSV split on the wrong delimiter (one column named
'customer_id;age;...'), a column of labels that differ in every row (an id the model would
copy), repeated ids named at both rows.  No servers: the loader, the entry's quick check and
the data section's settings."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from diffusion.data_errors import DataError
from diffusion.data_settings import DataConfig
from diffusion.tabular.schema import complete_schema, infer_schema
from diffusion.tabular.table_files import check_source
from diffusion.tabular.tables import load_table
from tasks.steps.dataset_entry import check_dataset


def customers(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """The trial's table in small: an id, an age, a 2-decimal income, 5 segments, a nullable
    balance and a 0/1 target."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "customer_id": [f"C{i:05d}" for i in range(n)],
        "age": rng.integers(18, 80, n),
        "income": np.round(rng.gamma(4.0, 10000.0, n), 2),
        "segment": rng.choice(["bronze", "silver", "gold", "platinum", "diamond"], n),
        "balance": np.where(rng.random(n) < 0.08, np.nan, np.round(rng.normal(1500, 300, n), 2)),
        "churned": rng.integers(0, 2, n),
    })


# --- the delimiter -------------------------------------------------------------------------

@pytest.mark.parametrize("sep, said", [(";", "';'"), ("\t", '"\\t"'), ("|", "'|'")])
def test_a_csv_split_on_the_wrong_delimiter_is_refused_naming_the_setting(tmp_path, sep, said):
    path = tmp_path / "customers.csv"
    customers().to_csv(path, index=False, sep=sep)
    # before: one column 'customer_id;age;...' of 200 categories, trained and promoted
    with pytest.raises(DataError) as caught:
        load_table(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: split on ',' (data.sep), the file is one column named "
                              "'customer_id"), message
    assert f"it looks delimited by {said}: set `sep: {said}` in its params.yaml entry" in message
    # the quick check before a run says the same, naming the entry
    with pytest.raises(DataError, match=r"^datasets\.mine \(customers\.csv\): split on ','.*"
                                        + r"set `sep: " + _re(said)):
        check_dataset(DataConfig(name="table", path="customers.csv"), "mine", tmp_path)
    # ... before the missing target it would otherwise report
    with pytest.raises(DataError, match="looks delimited by"):
        check_source(path, target="churned")
    # with the setting, the table reads as its columns
    ds = load_table(path, target="churned", id_column="customer_id", sep=sep)
    assert ds.schema.names == ["age", "income", "segment", "balance", "churned"]
    assert ds.ingestion["sep"] == sep
    data = DataConfig(name="table", path="customers.csv", target="churned",
                      id_column="customer_id", sep=sep)
    assert data.loader_options()["sep"] == sep
    check_dataset(data, "mine", tmp_path)


def _re(text: str) -> str:
    return re.escape(text)


def test_the_wrong_declared_delimiter_is_refused_too(tmp_path):
    path = tmp_path / "customers.csv"
    customers().to_csv(path, index=False)
    with pytest.raises(DataError, match=r"split on ';' \(data.sep\).*looks delimited by ','"):
        load_table(path, sep=";")
    # a comma file read with the default: no refusal, and nothing recorded
    assert "sep" not in load_table(path, id_column="customer_id").ingestion


def test_sep_is_one_character_for_a_csv_entry():
    assert DataConfig(name="table", path="t.csv").sep == ","
    for bad in ("", ";;", "a", "\n", '"', "."):
        with pytest.raises(ValidationError, match="data.sep=.*accepted: one character"):
            DataConfig(name="table", path="t.csv", sep=bad)
    for data in ({"name": "table", "path": "t.parquet"}, {"name": "digits"}, {"name": "churn"}):
        with pytest.raises(ValidationError, match="data.sep=';' splits a CSV file's fields; it "
                                                  "applies to data.name 'table' with a .csv"):
            DataConfig(sep=";", **data)


# --- a column of labels that differ in every row --------------------------------------------

def test_a_categorical_column_distinct_in_every_row_is_refused_at_inference(tmp_path):
    table = customers()
    # before: a 200-category column the decoder copied row by row (only a hint was printed)
    with pytest.raises(DataError, match=r"column 'customer_id' holds a different value in every "
                                        r"row \(200 distinct of 200, e.g. 'C00000'\).*declare it "
                                        r"the id column \(data.id_column\) or drop it"):
        infer_schema(table, target="churned")
    # nulls aside: still one value per row
    gappy = table.assign(note=[None if i % 3 else f"n{i}" for i in range(len(table))])
    with pytest.raises(DataError, match=r"column 'note' holds a different value in every row "
                                        r"\(67 distinct of 67"):
        infer_schema(gappy, target="churned", id_column="customer_id")
    # its own id column, a declared categorical type, a small table or a recurring label: kept
    assert "customer_id" not in infer_schema(table, id_column="customer_id").names
    declared = complete_schema({"columns": [{"name": "customer_id", "type": "categorical"},
                                            *({"name": c} for c in table.columns[1:])]}, table)
    assert declared.column("customer_id").type == "categorical"
    assert infer_schema(table.head(19)).column("customer_id").type == "categorical"
    assert infer_schema(table, id_column="customer_id").column("segment").type == "categorical"
    # a CSV's loader says it with the file's name
    table.to_csv(tmp_path / "customers.csv", index=False)
    with pytest.raises(DataError, match=r"customers\.csv: column 'customer_id' holds a different"):
        load_table(tmp_path / "customers.csv", target="churned")
