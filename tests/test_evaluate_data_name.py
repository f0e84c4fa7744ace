"""`dmops evaluate` against data of another shape names the dataset as the user chose it (the
params.yaml entry), not its loader (every CSV's loader is 'table')."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from diffusion.config import load_config
from diffusion.model import ModelError
from tasks.steps.evaluate import evaluate_model

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_a_shape_mismatch_names_the_entry_the_user_chose(tiny_model, tmp_path):
    params = yaml.safe_load(PARAMS.read_text())
    params["datasets"]["nightly_points"] = {"name": "moons", "n": 256}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cfg = load_config(tmp_path / "params.yaml", "tiny", ["dataset=nightly_points"])
    with pytest.raises(ModelError, match=r"but data 'nightly_points' has \(2,\)") as caught:
        evaluate_model(tiny_model, cfg, tmp_path / "evaluation")
    assert "moons" not in str(caught.value)
