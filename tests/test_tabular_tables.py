"""diffusion.tabular.tables: CSV, Parquet and built-in tables; seeded stratified splits; the
processed folder; errors naming the file or column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diffusion.data import DataError
from diffusion.tabular.tables import (PROCESSED_FILES, TableDataset, load_table,
                                      load_table_processed, save_table)


def _customers(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "customer": [f"c{i:04d}" for i in range(n)],
        "zip": [f"{z:05d}" for z in rng.integers(0, 3, n) * 1000 + 7],  # "00007": text, not a number
        "plan": rng.choice(["basic", "pro"], n, p=[0.8, 0.2]),
        "spend": np.round(rng.gamma(2.0, 30.0, n), 2),
        "visits": rng.integers(0, 20, n),
        "churned": rng.choice(["no", "yes"], n, p=[0.85, 0.15]),
    })


@pytest.fixture
def csv(tmp_path):
    path = tmp_path / "customers.csv"
    _customers().to_csv(path, index=False)
    return path


def test_csv_inferred_and_declared(csv):
    ds = load_table(csv, target="churned", id_column="customer")
    assert isinstance(ds, TableDataset) and ds.name == "customers" and ds.kind == "table"
    assert ds.schema.names == ["zip", "plan", "spend", "visits", "churned"]
    assert ds.schema.column("zip").type == "integer"  # as read: digits make numbers
    assert ds.ids[:2] == ["c0000", "c0001"] and list(ds.table.columns)[-1] == "customer"
    assert ds.ingestion["schema"] == "inferred" and ds.ingestion["source"] == "csv"
    assert any("<- target" in line for line in ds.summary())
    declared = {"columns": [{"name": "zip", "type": "categorical", "dtype": "object"},
                            {"name": "plan", "type": "categorical", "dtype": "category",
                             "categories": ["basic", "pro", "max"], "ordered": True},
                            {"name": "spend"}, {"name": "visits"}, {"name": "churned"}],
                "target": "churned", "id": "customer"}
    ds = load_table(csv, schema=declared)
    assert ds.schema.column("zip").categories == ("00007", "01007", "02007")  # text kept
    assert ds.table["plan"].dtype == pd.CategoricalDtype(["basic", "pro", "max"], ordered=True)
    assert ds.ingestion["schema"] == "declared, completed from the data"
    assert "spend.type" in ds.ingestion["inferred"] and "zip.type" not in ds.ingestion["inferred"]


def test_parquet_keeps_dtypes(tmp_path):
    # without its id column `customer`, which as a category would be refused (every row differs)
    table = _customers().drop(columns="customer").assign(
        plan=lambda t: pd.Categorical(t["plan"]), visits=lambda t: t["visits"].astype("int16"))
    table.to_parquet(tmp_path / "c.parquet")
    ds = load_table(tmp_path / "c.parquet")
    assert ds.ids[0] == "row-00000" and ds.schema.id is None
    assert ds.schema.column("plan").dtype == "category"
    assert ds.schema.column("visits").dtype == "int16"
    pd.testing.assert_frame_equal(ds.table, table)


def test_built_in_tables():
    diamonds = load_table("diamonds")
    assert diamonds.table.shape == (53940, 11) and diamonds.schema.target == "price"
    assert diamonds.schema.id == "rownames" and len(diamonds.schema.columns) == 10
    assert diamonds.table["cut"].dtype == pd.CategoricalDtype(
        ["Fair", "Good", "Very Good", "Premium", "Ideal"], ordered=True)
    assert list(diamonds.table["clarity"].cat.categories) == ["I1", "SI2", "SI1", "VS2", "VS1",
                                                              "VVS2", "VVS1", "IF"]
    assert diamonds.table["price"].dtype == np.int64 and diamonds.table["carat"].dtype == np.float64
    assert diamonds.ingestion["schema"] == "declared" and diamonds.ids[0] == "1"
    churn = load_table("churn")
    assert churn.table.shape == (5000, 21) and len(churn.schema.columns) == 20
    assert churn.schema.target == "churn" and churn.schema.column("churn").categories == ("no", "yes")
    assert churn.schema.column("total_day_calls").type == "integer"
    assert churn.schema.column("total_day_minutes").type == "numerical"
    assert churn.schema.column("state").type == "categorical"
    assert len(churn.schema.column("state").categories) == 51
    assert {s: int((churn.split == s).sum()) for s in ("train", "val", "test")} == {
        "train": 3500, "val": 500, "test": 1000}


def _within_one_of_proportional(strata: np.ndarray, split: np.ndarray, fraction_of: dict):
    for value in np.unique(strata):
        rows = strata == value
        for name, fraction in fraction_of.items():
            assert abs((split[rows] == name).sum() - fraction * rows.sum()) <= 1, (value, name)


def test_splits_are_seeded_and_stratified(csv):
    a = load_table(csv, target="churned", id_column="customer", seed=3)
    assert np.array_equal(a.split, load_table(csv, target="churned", id_column="customer",
                                              seed=3).split)
    assert not np.array_equal(a.split, load_table(csv, target="churned", id_column="customer",
                                                  seed=4).split)
    fractions = {"val": 30 / 300, "test": 60 / 300}
    assert {s: int((a.split == s).sum()) for s in fractions} == {"val": 30, "test": 60}
    _within_one_of_proportional(a.table["churned"].to_numpy(), a.split, fractions)
    # a numeric target: stratified on its rank's quantile bins (300 rows: 10 bins of 30)
    b = load_table(csv, target="spend", id_column="customer", seed=3)
    bins = (b.table["spend"].rank(method="first").to_numpy() - 1) * 10 // 300
    _within_one_of_proportional(bins, b.split, fractions)
    assert (b.split == "test").sum() == 60


def test_processed_folder_round_trip(csv, tmp_path):
    ds = load_table(csv, target="churned", id_column="customer")
    out = save_table(ds, tmp_path / "processed")
    assert sorted(p.name for p in out.iterdir()) == sorted(PROCESSED_FILES)
    frame = pd.read_parquet(out / "table.parquet")
    assert list(frame.columns[-2:]) == ["_id", "_split"]
    manifest = pd.read_csv(out / "manifest.csv")
    assert list(manifest.columns) == ["id", "split", "sha256"] and len(manifest) == 300
    back = load_table_processed(out)
    pd.testing.assert_frame_equal(back.table, ds.table)
    assert back.schema == ds.schema and back.ids == ds.ids
    assert np.array_equal(back.split, ds.split) and back.name == "customers"
    first = (out / "table.parquet").read_bytes()
    save_table(back, out)  # replacing its own folder; the same table, the same bytes
    assert (out / "table.parquet").read_bytes() == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_processed_folder_guards(csv, tmp_path):
    ds = load_table(csv, target="churned", id_column="customer")
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="mine: exists and is not a processed-table folder"):
        save_table(ds, other)
    assert (other / "notes.txt").read_text() == "keep me"
    out = save_table(ds, tmp_path / "p")
    changed = pd.read_parquet(out / "table.parquet")
    changed.loc[7, "spend"] = 1e6
    changed.to_parquet(out / "table.parquet", index=False)
    with pytest.raises(DataError, match=r"1 row\(s\) of table.parquet differ from manifest.csv, "
                                        r"first id 'c0007'"):
        load_table_processed(out)
    (out / "schema.json").unlink()
    with pytest.raises(DataError, match="no schema.json"):
        load_table_processed(out)


@pytest.mark.parametrize("write, options, message", [
    (lambda p: p.with_suffix(".xlsx").write_bytes(b"x"), {}, r"unknown table format '\.xlsx'"),
    (lambda p: p.with_suffix(".parquet").write_bytes(b"not parquet"), {},
     r"t\.parquet: unreadable as parquet"),
    (lambda p: p.with_suffix(".csv").write_text(""), {}, r"t\.csv: the file is empty"),
    (lambda p: p.with_suffix(".csv").write_text("a,b\n"), {}, r"t\.csv: the table is empty \(0 rows"),
    (lambda p: p.with_suffix(".csv").write_text("a,b\n1,2\n"), {"target": "c"},
     r"t\.csv: target 'c' is not a column of the table; columns: \['a', 'b'\]"),
    (lambda p: p.with_suffix(".csv").write_text("a,b\n1,2\n1,3\n"), {"id_column": "a"},
     r"t\.csv: id column 'a': 1 value repeats: 1 at rows 0 and 1; ids"),
    (lambda p: p.with_suffix(".csv").write_text("a,_split\n1,2\n"), {}, r"\['_split'\] are reserved"),
    (lambda p: None, {}, r"t\.csv: does not exist"),
])
def test_errors_name_the_file_and_column(tmp_path, write, options, message):
    path = tmp_path / "t.csv"
    write(path)
    source = next((p for p in tmp_path.iterdir()), path)
    with pytest.raises(DataError, match=message):
        load_table(source, val_fraction=0.0, test_fraction=0.0, **options)


def test_a_declared_column_that_does_not_fit_is_named(csv):
    with pytest.raises(DataError, match=r"customers\.csv: .*column 'plan': value\(s\) \['pro'\]"):
        load_table(csv, schema={"columns": [
            {"name": "plan", "type": "categorical", "categories": ["basic"]},
            {"name": "zip"}, {"name": "spend"}, {"name": "visits"}, {"name": "churned"}],
            "id": "customer"})
