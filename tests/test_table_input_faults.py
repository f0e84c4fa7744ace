"""A user's table that reads wrongly is refused where it is read, with the setting that reads it
right (issue 13's third new-user trial): a CSV split on the wrong delimiter (one column named
'customer_id;age;...'), a column of labels that differ in every row (an id the model would
copy), repeated ids named at both rows.  No servers: the loader, the entry's quick check and
the data section's settings."""

from __future__ import annotations

import re
from pathlib import Path

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


# --- the gate against the last validated version --------------------------------------------

def _prepared(tmp_path, name: str, table: pd.DataFrame, columns=None) -> str:
    """`table` through the real loader into a processed folder, as `dmops prepare` writes it."""
    from diffusion.tabular.tables import save_table

    path = tmp_path / f"{name}.csv"
    table.to_csv(path, index=False)
    schema = None if columns is None else {"columns": columns}
    ds = load_table(path, schema=schema, target="churned", id_column="customer_id")
    return str(save_table(ds, tmp_path / "processed" / name))


def _gate(folder: str, reference: dict | None = None):
    from tasks.steps.validate_data import validate_dataset

    return validate_dataset(folder, reference=reference, dataset="customers")


def test_a_type_change_shows_a_value_and_a_missing_column_no_internal_columns(tmp_path):
    table = customers()
    first = _gate(_prepared(tmp_path, "v1", table))
    text = table.assign(age=table["age"].astype(str) + " yrs")
    (line,) = _gate(_prepared(tmp_path, "v2", text), first.statistics).failures
    assert line == ("type_vs_reference (age): an integer column as in the last validated "
                    f"version; observed object holding str, e.g. '{table['age'][0]} yrs'; "
                    "expected integer values"), line
    (line,) = _gate(_prepared(tmp_path, "v3", table.drop(columns="segment")),
                    first.statistics).failures
    assert line.endswith("observed missing 'segment'; expected exactly the columns the last "
                         "validated version had (customer_id, age, income, segment, balance, "
                         "churned)"), line


def test_a_null_burst_names_its_rows_by_the_id_column_and_says_the_schema_was_inferred(tmp_path):
    table = customers()
    first = _gate(_prepared(tmp_path, "v1", table))
    burst = table.copy()
    burst.loc[burst.index[::3], "balance"] = np.nan
    (line,) = _gate(_prepared(tmp_path, "v2", burst), first.statistics).failures
    # before: "(nullable in schema.json: ...)" of an inferred schema, and "e.g. _id C00000"
    assert line.startswith("nulls (balance): at most 10.0% nulls (nullable, inferred from the "
                           "data: max_null_fraction); observed "), line
    assert ", e.g. customer_id C00000, C00003, C00006); expected at most 10.0%" in line, line


# --- repeated ids ------------------------------------------------------------------------------

def test_repeated_ids_are_named_at_every_row_that_holds_them(tmp_path):
    table = customers()
    path = tmp_path / "customers.csv"
    pd.concat([table, table.head(3)], ignore_index=True).to_csv(path, index=False)
    # before: "value(s) ['C00000', 'C00001', 'C00002'] repeat (rows 0, 1, 2)": the first
    # occurrences only, not the appended rows 200-202
    with pytest.raises(DataError) as caught:
        load_table(path, id_column="customer_id")
    assert str(caught.value) == (
        f"{path}: id column 'customer_id': 3 values repeat: 'C00000' at rows 0 and 200, "
        "'C00001' at rows 1 and 201, 'C00002' at rows 2 and 202; ids must be unique")
    many = pd.concat([table.head(60)] * 3 + [table.tail(5)], ignore_index=True)
    many.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"id column 'customer_id': 60 values repeat: 'C00000' at "
                                        r"rows 0, 60 and 120, .*, \.\.\. \(60 in all\); ids must"):
        load_table(path, id_column="customer_id")


def test_rows_alike_but_for_their_ids_are_repeated_rows(tmp_path):
    """An export that copies records under new ids: the duplicate check compares the rows'
    values without the id column (counted, it made every row unique, since ids must be, and
    the check could never fail on a table with an id column)."""
    table = customers()
    copies = table.head(20).assign(customer_id=[f"C9{i:04d}" for i in range(20)])
    folder = _prepared(tmp_path, "v1", pd.concat([table, copies], ignore_index=True))
    report = _gate(folder)
    assert not report.success
    (line,) = report.failures
    assert line.startswith("duplicates (table): at most 5.0% of rows repeat an earlier row (every "
                           "column but the id column customer_id); observed 9.09% of rows repeat "
                           "an earlier row"), line
    assert _gate(_prepared(tmp_path, "v2", table)).success


# --- a declared schema, checked as configuration ------------------------------------------------

def _config_error(tmp_path, **entry) -> str:
    import yaml

    from diffusion.config import ConfigError, load_config

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["datasets"]["customers"] = {"name": "table", "path": "customers.csv", **entry}
    params["dataset"] = "customers"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "params.yaml")
    return str(caught.value)


def test_a_declared_columns_fault_is_a_configuration_error(tmp_path):
    # before: `dmops config` exited 0; only `dmops prepare` said it
    message = _config_error(tmp_path, columns=[{"name": "age", "type": "float"},
                                               {"name": "income", "nullable": "yes"},
                                               {"name": "segment", "categories": []},
                                               {"name": "visits", "type": "integer", "max": 1,
                                                "min": 5, "colour": 1}])
    assert message.splitlines()[1] == (
        "  datasets.customers.columns: column 'age': type 'float'; accepted: numerical, "
        "integer, categorical; column 'income': nullable 'yes'; accepted: true or false; column "
        "'segment': categories []; accepted: a non-empty list of values; column 'visits': "
        "unknown key(s) ['colour']; accepted: name, type, dtype, nullable, categories, "
        "ordered, min, max; column 'visits': min 5 is above max 1"), message
    assert "target 'churned' is not one of the declared data.columns ['age']" in _config_error(
        tmp_path, columns=[{"name": "age"}], target="churned")
    assert "id_column 'customer_id' is also declared in data.columns" in _config_error(
        tmp_path, columns=[{"name": "age"}, {"name": "customer_id"}], id_column="customer_id")
    assert "column 'age': dtype int64 cannot hold nulls" in _config_error(
        tmp_path, columns=[{"name": "age", "type": "integer", "dtype": "int64", "nullable": True}])


def test_a_partial_declaration_reports_its_type_fault_and_the_undeclared_columns_together():
    table = customers()
    # before: only "the table has column(s) [...] that the declared schema does not list"
    with pytest.raises(DataError) as caught:
        complete_schema({"columns": [{"name": "age", "type": "float"}]}, table,
                        id_column="customer_id")
    assert str(caught.value) == (
        "column 'age': type 'float'; accepted: numerical, integer, categorical; the table has "
        "column(s) ['income', 'segment', 'balance', 'churned'] that the declared schema does not "
        "list; declare them (a name is enough) or drop them from the table")


def test_a_number_column_with_a_few_text_marks_is_named_as_such(tmp_path):
    table = customers()
    # marks pandas does not read as null ('?', '-'): a CSV's number column then reads as text,
    # its values all distinct; the advice is to clean the marks, not to make it the id
    income = table["income"].astype(object)
    income[::25] = ["?", "-", "n.a.", "x", "??", "--", "none?", "tbd"]
    table.assign(income=income).to_csv(tmp_path / "customers.csv", index=False)
    with pytest.raises(DataError, match=r"column 'income' reads as text although 192 of its 200 "
                                        r"values are numbers; the others, e.g. '\?', '-', 'n\.a\.', "
                                        r"are not: leave a missing value empty"):
        load_table(tmp_path / "customers.csv", id_column="customer_id")
    # the same with values that repeat (160 distinct incomes of 200 rows): still numbers
    income = (table["income"] // 100 * 100).astype(object)
    income[::25] = ["?"] * 8
    assert 100 < income.nunique() < 200
    with pytest.raises(DataError, match=r"column 'income' reads as text although 192 of its 200"):
        infer_schema(table.assign(income=income.astype(str)), id_column="customer_id")
    # numbers only, as text (codes a Parquet file keeps as text): a category, as its dtype says
    codes = table.assign(income=(table["income"] // 100 * 100).astype(str))
    assert infer_schema(codes, id_column="customer_id").column("income").type == "categorical"
