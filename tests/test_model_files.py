"""A model folder's model.json and a checkpoint's state.json that are missing, not JSON or not a
JSON object: one ModelError naming the file, never an AttributeError or a traceback."""

from __future__ import annotations

import pytest

from diffusion.model import ModelError, load_for_sampling, read_spec

CASES = [(None, "has no {name}"), ("{not json", "{name} is not valid JSON"),
         ("[1, 2]", "{name} must hold a JSON object")]


@pytest.mark.parametrize("content, message", CASES)
def test_a_bad_model_json_is_named(tmp_path, content, message):
    if content is not None:
        (tmp_path / "model.json").write_text(content)
    with pytest.raises(ModelError, match=message.format(name="model.json")):
        read_spec(tmp_path)


@pytest.mark.parametrize("content, message", CASES)
def test_a_bad_checkpoint_state_json_is_named(tmp_path, content, message):
    (tmp_path / "ema.safetensors").write_bytes(b"")  # a checkpoint folder, as resolve_model_path sees it
    if content is not None:
        (tmp_path / "state.json").write_text(content)
    with pytest.raises(ModelError, match=message.format(name="state.json")):
        load_for_sampling(tmp_path)
