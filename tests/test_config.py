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
