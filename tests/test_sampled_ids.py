"""Generated rows keep the table's id column (diffusion/tabular/row_ids.py): the id is never
modelled, so `dmops sample` and the served model's `predict` used to answer without it (the
trial's customers table: "1000 rows (consistency, 6 columns)", customer_id silently gone).  Now
it comes back first, in its dtype, holding fresh ids that no real row has."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffusion.tabular.row_ids import id_note, id_recipe, with_fresh_ids
from test_table_data_step import small_table

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _modelled(n: int) -> pd.DataFrame:
    return pd.DataFrame({"plan": ["basic"] * n, "calls": np.arange(n, dtype="int64")})


@pytest.mark.parametrize("ids, dtype", [([7, 3, 41], "int64"), ([7, 3, 41], "Int32"),
                                         (["c01", "c02", "c07"], "object"),
                                         (["c01", "c02", "c07"], "str")])
def test_fresh_ids_have_the_columns_dtype_and_place_and_are_no_real_rows(ids, dtype):
    real = pd.DataFrame({"plan": ["a", "b", "a"], "customer": pd.Series(ids, dtype=dtype),
                         "calls": [1, 2, 3]})
    recipe = id_recipe(real, "customer")
    rows = with_fresh_ids(_modelled(5), recipe)
    assert list(rows.columns) == ["customer", "plan", "calls"]   # the id first
    assert rows["customer"].dtype == real["customer"].dtype
    assert rows["customer"].is_unique and not set(rows["customer"]) & set(real["customer"])
    assert id_note(recipe).startswith("customer: fresh ids ")


def test_a_text_prefix_that_real_ids_use_is_not_taken():
    real = pd.DataFrame({"id": ["synthetic-0", "xsynthetic-1", "c9"], "x": [1.0, 2.0, 3.0]})
    recipe = id_recipe(real, "id")
    assert recipe["prefix"] == "xxsynthetic-"
    made = with_fresh_ids(pd.DataFrame({"x": [0.5, 0.7]}), recipe)
    assert list(made["id"]) == ["xxsynthetic-0", "xxsynthetic-1"] and list(made.columns) == ["id", "x"]


def test_an_id_of_another_dtype_is_left_out_and_said():
    real = pd.DataFrame({"when": pd.to_datetime(["2024-01-01", "2024-01-02"]), "x": [1.0, 2.0]})
    recipe = id_recipe(real, "when")
    assert list(with_fresh_ids(pd.DataFrame({"x": [0.5]}), recipe).columns) == ["x"]
    assert "left out" in id_note(recipe) and "when" in id_note(recipe)
    assert id_recipe(real, None) is None and id_note(None) is None
    assert with_fresh_ids(real, None) is real


@pytest.fixture(scope="module")
def table_model(tmp_path_factory, one_torch_thread):
    """A table teacher (id column `customer`, first in the file) trained for the tiny steps."""
    from diffusion.config import load_config
    from tasks.steps.train_teacher import train_teacher

    folder = tmp_path_factory.mktemp("ids")
    real = small_table(n=300)
    real.to_csv(folder / "rows.csv", index=False)
    cfg = load_config(PARAMS, "tiny", [
        "data.name=table", f"data.path={folder / 'rows.csv'}", "data.target=churned",
        "data.id_column=customer", "model.net.kind=mlp", "model.precond.sigma_data=1.0",
        f"out_dir={folder / 'teacher'}"])
    return train_teacher(cfg, resume=False).model_dir, real


def test_sampled_rows_and_predict_keep_the_id_column(table_model, tmp_path, capsys):
    import mlflow

    from diffusion.model import load_for_sampling
    from tasks.adapters.pyfunc_model import ARTIFACT, signature
    from tasks.adapters.pyfunc_package import ENTRY, code_paths, pip_requirements
    from tasks.adapters.registry import files_sha256, model_config
    from tasks.steps.sample import sample_to_file

    model_dir, real = table_model
    out = sample_to_file(model_dir, tmp_path / "synthetic.csv", n=50, seed=3)
    rows = pd.read_csv(out)
    said = capsys.readouterr().out
    assert list(rows.columns) == list(real.columns), rows.columns   # the id first, as in the file
    assert rows["customer"].is_unique and not set(rows["customer"]) & set(real["customer"])
    assert "5 columns; customer: fresh ids synthetic-0, ..., no real row's" in said, said

    _, spec = load_for_sampling(model_dir)
    path = tmp_path / "pyfunc"
    with code_paths() as code, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        mlflow.pyfunc.save_model(path, python_model=str(ENTRY), code_paths=code,
                                 artifacts={ARTIFACT: str(model_dir)},
                                 signature=signature(spec.shape, spec.data.table),
                                 pip_requirements=pip_requirements(),
                                 model_config=model_config(files_sha256(model_dir)))
    served = mlflow.pyfunc.load_model(str(path))
    answer = served.predict(pd.DataFrame({"n": [50], "seed": [3]}))
    assert list(answer.columns) == list(real.columns)
    assert str(answer["customer"].dtype) == spec.data.table["id"]["dtype"]   # the processed table's
    pd.testing.assert_frame_equal(answer.drop(columns="customer"),
                                  rows.drop(columns="customer").astype(answer.drop(columns="customer").dtypes),
                                  check_exact=False, rtol=1e-6)
    assert list(answer["customer"]) == list(rows["customer"])
    assert [c.name for c in served.metadata.get_output_schema().inputs] == list(real.columns)
