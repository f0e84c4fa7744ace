"""The rows of what is served are always scored (tasks/steps/table_quality.py): the evaluation
scores each model's best setting, but the pipeline may serve a student at another one (the
trial's consistency student served at 1 NFE, scored at its best, 4).  `rows_of_served` hands on
the evaluation's scores when they are of the served setting, else scores that setting now with
the evaluation's rows, seed and floor; what it scores must be exactly what the evaluation would
have scored at that setting."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from diffusion.config import load_config
from diffusion.model import load_for_sampling
from tasks.steps.prepare_dataset import load_data
from tasks.steps.table_quality import rows_of_served, served_rows, table_quality
from test_table_data_step import small_table

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def table_teacher(tmp_path_factory, one_torch_thread):
    """A table teacher trained for 20 steps, its config and dataset."""
    from tasks.steps.train_teacher import train_teacher

    folder = tmp_path_factory.mktemp("served-rows")
    small_table(n=600).to_csv(folder / "rows.csv", index=False)
    cfg = load_config(PARAMS, "tiny", [
        "data.name=table", f"data.path={folder / 'rows.csv'}", "data.target=churned",
        "data.id_column=customer", "model.net.kind=mlp", "model.precond.sigma_data=1.0",
        f"out_dir={folder / 'teacher'}"])
    model_dir = train_teacher(cfg, resume=False).model_dir
    return cfg, load_data(cfg.data), model_dir


def _scored_at(cfg, ds, model_dir, steps: int, out: Path) -> dict:
    denoiser, spec = load_for_sampling(model_dir, "cpu")
    best = pd.DataFrame([{"model": "teacher", "sampler": "ddim", "steps": steps, "nfe": steps}])
    return table_quality({"teacher": (denoiser, spec.sampling.model_dump())}, best, ds, out,
                         seed=cfg.evaluate.seed, device="cpu", log=lambda line: None)


def test_the_served_setting_is_scored_when_the_evaluation_scored_another(table_teacher, tmp_path):
    cfg, ds, model_dir = table_teacher
    evaluated = _scored_at(cfg, ds, model_dir, 4, tmp_path / "evaluation")   # its "best": 4 steps
    quality = json.loads((tmp_path / "evaluation" / "table_quality.json").read_text())

    # served at its evaluated setting: the evaluation's own numbers, nothing scored again
    same = rows_of_served(quality, "teacher", model_dir, "ddim", 4, 4, cfg, None, tmp_path / "unused")
    assert same["models"] == {"ddim": evaluated["models"]["ddim"]} and "files" not in same
    assert not (tmp_path / "unused").exists()

    # served at 2 steps: scored now, exactly as the evaluation scores that setting
    said = []
    served = rows_of_served(quality, "teacher", model_dir, "ddim", 2, 2, cfg, None,
                            tmp_path / "served", log=said.append)
    assert served["settings"] == {"ddim": {"sampler": "ddim", "steps": 2}}
    assert served["floor"] == quality["floor"] and served["rows"] == quality["rows"]
    reference = _scored_at(cfg, ds, model_dir, 2, tmp_path / "at-2")
    assert served["models"]["ddim"] == reference["models"]["ddim"]
    assert served["models"]["ddim"] != evaluated["models"]["ddim"]   # another setting, other rows
    assert said and said[0].startswith("rows of ddim (ddim, 2 NFE, the setting it is served at): column shapes")
    saved = json.loads((tmp_path / "served" / "served_rows.json").read_text())
    assert saved["models"] == served["models"] and saved["settings"] == served["settings"]
    assert served["files"]["association_ddim"].stat().st_size > 1000
    # the registered version takes rows only of the setting it serves (tasks/steps/register.py)
    assert served_rows(served, "teacher", "ddim", 2) is not None
    assert served_rows(quality, "teacher", "ddim", 2) is None


def test_a_table_model_is_named_by_its_params_entry_not_by_its_loader(table_teacher, tmp_path, capsys):
    """model.json's data.dataset and the train step's line name the params.yaml entry the run
    chose (`dataset`), which the card shows ("made for the table `customers`"), not the loader
    every CSV shares ('table'); a config built without an entry keeps the loader's name."""
    from diffusion.model import read_spec
    from tasks.steps.train_teacher import train_teacher

    cfg, _, model_dir = table_teacher
    # params.yaml's entry is digits; --set data.name=table (this fixture's): the loader's name
    assert cfg.dataset == "digits" and read_spec(model_dir).data.dataset == "table"
    named = cfg.model_copy(update={"dataset": "customers", "datasets": {"customers": cfg.data},
                                   "out_dir": str(tmp_path / "teacher"),
                                   "train": cfg.train.model_copy(update={"steps": 1})})
    capsys.readouterr()
    folder = train_teacher(named, resume=False).model_dir
    assert read_spec(folder).data.dataset == "customers"
    said = capsys.readouterr().out
    assert "dataset customers: " in said and "dataset table" not in said, said
    # as a pipeline step gets it: the config as JSON, without its `datasets`
    from diffusion.config import Config
    from tasks.steps.train_teacher import data_name

    as_json = Config.model_validate(named.model_dump(mode="json"))
    assert as_json.datasets == {} and data_name(as_json) == "customers"
