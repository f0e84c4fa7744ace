"""The typed config: profiles, overrides, and errors that name the key and the allowed values."""

from pathlib import Path

import pytest

from diffusion.config import ConfigError, load_config, parse_override, validate
from diffusion.train import TrainConfig

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_params_yaml_profiles_load_and_differ():
    quick = load_config(PARAMS, "quick")
    full = load_config(PARAMS, "full")
    assert quick.profile == "quick" and full.profile == "full"
    assert quick.train.device == "cpu" and full.train.device == "cuda"
    assert full.model.net.channels != quick.model.net.channels
    assert isinstance(quick.train, TrainConfig)
    # the default profile is the file's `profile` key
    assert load_config(PARAMS).profile == "quick"


def test_overrides_apply_last_and_are_typed():
    cfg = load_config(PARAMS, "quick", ["train.steps=7", "model.net.channels=[16, 32]",
                                        "train.objective.weighting=min_snr"])
    assert cfg.train.steps == 7
    assert cfg.model.net.channels == [16, 32]
    assert cfg.train.objective.weighting == "min_snr"
    assert parse_override("a.b.c=1.5") == {"a": {"b": {"c": 1.5}}}


@pytest.mark.parametrize("override,expected", [
    ("train.stepz=5", ["train.stepz", "unknown key", "allowed keys", "steps"]),
    ("train.steps=-3", ["train.steps", "greater than 0"]),
    ("train.steps=many", ["train.steps", "valid integer", "'many'"]),
    ("sample.sampler=euler", ["sample.sampler", "'ddpm'", "'heun'", "'euler'"]),
    ("model.precond.kind=ve", ["model.precond", "'edm'", "'vp'"]),
    ("model.net.channels=[30, 60]", ["norm_num_groups", "[30, 60]"]),
    ("data.name=folder", ["data.path is required"]),
    ("data.test_fraction=0.95", ["must be below 1"]),
    ("train.device=gpu", ["train.device", "'gpu'"]),
    ("sample.sigma_min=100", ["sigma_min must be below"]),
])
def test_bad_values_name_the_key_and_the_allowed_values(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(PARAMS, "quick", [override])
    for fragment in expected:
        assert fragment in str(err.value), str(err.value)


def test_unknown_profile_and_malformed_inputs(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'huge'.*full.*quick"):
        load_config(PARAMS, "huge")
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("train.steps")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_model_spec_takes_the_network_size_from_the_data():
    spec = validate({}).model_spec((1, 8, 8))
    assert spec.net["in_channels"] == 1 and spec.net["sample_size"] == 8 and spec.shape == (1, 8, 8)
    mlp = validate({"model": {"net": {"kind": "mlp"}}}).model_spec((2,))
    assert mlp.net["dim"] == 2
    with pytest.raises(ConfigError, match="square images"):
        validate({}).model_spec((2,))
    with pytest.raises(ConfigError, match="vectors"):
        validate({"model": {"net": {"kind": "mlp"}}}).model_spec((1, 8, 8))


def test_changing_a_sections_kind_replaces_its_settings():
    cfg = load_config(PARAMS, "quick", ["model.net.kind=mlp", "model.net.hidden=64"])
    assert cfg.model.net.kind == "mlp" and cfg.model.net.hidden == 64
    cfg = load_config(PARAMS, "quick", ["model.precond={kind: vp, prediction: eps}"])
    assert cfg.model.precond.kind == "vp" and cfg.model.precond.prediction == "eps"


def _file(tmp_path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


TWO_DATASETS = """
dataset: points
datasets:
  points: {name: gmm8, n: 256}
  digits: {name: digits, seed: 1}
profiles:
  other: {dataset: digits}
  bigger: {data: {n: 512}}
  rewrite: {datasets: {points: {n: 9}}}
"""


def test_data_is_the_dataset_that_dataset_names(tmp_path):
    path = _file(tmp_path, TWO_DATASETS)
    cfg = load_config(path)
    assert cfg.dataset == "points" and cfg.data.name == "gmm8" and cfg.data.n == 256
    # a profile or --set picks another; neither changes the entries
    assert load_config(path, "other").data.seed == 1
    assert load_config(path, None, ["dataset=digits"]).data.name == "digits"
    # data.* overrides apply on top of the entry, for the plain commands
    assert load_config(path, "bigger").data.n == 512
    assert load_config(path, None, ["data.seed=4"]).data.seed == 4
    # what a run records: the dataset it uses, not every entry of the file
    assert "datasets" not in cfg.model_dump() and cfg.model_dump()["data"]["n"] == 256


@pytest.mark.parametrize("profile, overrides, expected", [
    (None, ["dataset=nope"], "dataset: 'nope' is not one of the datasets of"),
    ("rewrite", [], "profile 'rewrite' changes `datasets`, which only"),
    (None, ["datasets.points.n=3"], "--set datasets.points.n=3 changes `datasets`"),
    (None, ["dataset=a/b"], "dataset: 'a/b' is not one of the datasets"),
])
def test_a_dataset_that_is_not_named_or_an_entry_changed_is_refused(tmp_path, profile, overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(_file(tmp_path, TWO_DATASETS), profile, overrides)
    assert expected in str(err.value)


def test_what_dvc_versions_cannot_be_changed_by_a_profile_or_set(tmp_path):
    """The pipeline, `dmops prepare` and `dmops fingerprint` use the entry as written (DVC's
    stage prepare@<name> reads it from the file): `data.*` overrides are refused, naming the
    stage and the entry, while picking another dataset is fine."""
    path = _file(tmp_path, TWO_DATASETS)
    assert load_config(path, "other", pin_data=True).data.name == "digits"
    for profile, overrides, source in [("bigger", [], "profile 'bigger'"),
                                       (None, ["data.n=3"], "--set data.n=3")]:
        with pytest.raises(ConfigError) as err:
            load_config(path, profile, overrides, pin_data=True)
        said = str(err.value)
        assert source in said and "prepare@points" in said and "datasets.points" in said, said


@pytest.mark.parametrize("text, expected", [
    ("data: {name: moons}\n", "not a top-level `data` section"),
    ("datasets: {a: {name: moons}}\n", "dataset: not set; pick one of the datasets"),
    ("dataset: a\n", "names no datasets"),
    ("dataset: 'x y'\ndatasets: {'x y': {name: moons}}\n", "datasets.x y"),
    ("dataset: a\ndatasets: {a: {name: mnist}}\n", "datasets.a.name"),
])
def test_malformed_datasets_are_named(tmp_path, text, expected):
    with pytest.raises(ConfigError) as err:
        load_config(_file(tmp_path, text))
    assert expected in str(err.value), str(err.value)


ONE_BAD_ENTRY = """
dataset: points
datasets:
  points: {name: gmm8, n: 256}
  sheet: {name: table, path: rows.xlsx}
  loose: 3
  typo: {name: moons, nn: 3}
profiles:
  sheet: {dataset: sheet}
"""


def test_a_bad_entry_blocks_only_what_uses_it_and_is_said_once_by_its_name(tmp_path):
    """Only the entry in use is validated: another's fault (an .xlsx path, not a mapping, an
    unknown key) blocks nothing else; used, each is one line naming `datasets.<name>`, once (it
    was validated as the entry and again as `data`)."""
    path = _file(tmp_path, ONE_BAD_ENTRY)
    cfg = load_config(path)
    assert cfg.data.n == 256 and list(cfg.datasets) == ["points"]
    for profile, overrides, expected in [
            ("sheet", [], "datasets.sheet: data.path 'rows.xlsx': a table is read from a .csv"),
            (None, ["dataset=loose"], "datasets.loose: 3 is not a dataset's settings"),
            (None, ["dataset=typo"], "datasets.typo.nn: unknown key; allowed keys: name, path")]:
        with pytest.raises(ConfigError) as err:
            load_config(path, profile, overrides)
        said = str(err.value)
        assert expected in said and said.count("unknown key") <= 1, said
        assert len(said.splitlines()) <= 2 and "\n  data:" not in said and "\n  data." not in said, said
    # an override on top of a bad entry: the entry's fault still said once, by the entry
    with pytest.raises(ConfigError) as err:
        load_config(path, "sheet", ["data.seed=3"])
    assert str(err.value).count("a table is read from") == 1, str(err.value)
    # with a data.* override the section is no longer the entry as written: named `data`
    with pytest.raises(ConfigError, match=r"data\.n: Input should be greater than 0"):
        load_config(path, None, ["data.n=-1"])


def test_an_entry_name_dvc_cannot_name_a_stage_by_blocks_every_dataset(tmp_path):
    """dvc.yaml's foreach makes stage names of every entry's name: one with an '@' makes DVC
    refuse the whole file, so that name is refused whichever dataset is in use."""
    path = _file(tmp_path, "dataset: points\ndatasets:\n  points: {name: gmm8}\n  'a@b': {name: moons}\n")
    with pytest.raises(ConfigError, match=r"datasets\.a@b: 'a@b' is not a dataset name .*rename"):
        load_config(path)
