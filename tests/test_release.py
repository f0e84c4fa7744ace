"""S3 releases against the stack's real SeaweedFS: a release is the model folder plus a card,
metrics and a manifest of sha256 checksums written last; it is immutable, an interrupted one is
never read, a tampered file is caught by name, and `dmops sample --release` draws exactly what the
local model draws for the same seed."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffusion.config import load_config
from diffusion.model import load_for_sampling, read_spec
from diffusion.samplers import generate
from flows.cli import app
from tasks.release import (ReleaseError, folder_files, model_card, prepare_release_files,
                           read_manifest, read_release, write_release)
from tasks.train_teacher import train_teacher
from cli_assertions import fails_cleanly

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
METRICS = {"fid": 0.41, "kid": 0.0123}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, one_torch_thread) -> Path:
    """A digits UNet trained for the `tiny` profile's 20 steps: a diffusers `unet/` sub-folder."""
    out = tmp_path_factory.mktemp("tiny")
    return train_teacher(load_config(PARAMS, "tiny", [f"out_dir={out}"]), resume=False).model_dir


@pytest.fixture
def release_files(tiny_model, tmp_path) -> dict[str, Path]:
    card = model_card("digits", "1", METRICS, {"dataset_md5": "d41d8cd9"}, spec=read_spec(tiny_model))
    return prepare_release_files(tiny_model, card, METRICS, tmp_path / "extra")


@pytest.fixture
def bucket(stack) -> str:
    return stack.settings.releases_bucket


def _name() -> str:
    """A model name of its own per test: the stack (and its buckets) is shared by the session."""
    return f"digits-{uuid.uuid4().hex[:8]}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _object(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


# --- no server needed ---------------------------------------------------------------------

def test_folder_files_keep_the_diffusers_sub_folder(tiny_model):
    files = folder_files(tiny_model)
    assert set(files) == {"model.json", "unet/config.json",
                          "unet/diffusion_pytorch_model.safetensors"}


def test_model_card_says_what_how_good_and_how_to_load(tiny_model):
    card = model_card("digits", "7", {**METRICS, "sampler": "heun"},
                      {"dataset_md5": "d41d8cd9", "git_commit": "abc1234", "validation": "passed"},
                      spec=read_spec(tiny_model), uri="s3://dmops-releases/digits/7/")
    for fragment in ("# digits, version 7", "| data hash | d41d8cd9 |", "| git commit | abc1234 |",
                     "| validation | passed |", "| network | unet [8, 16] |", "| fid | 0.41 |",
                     "| kid | 0.0123 |", "| sampler | heun |", "Default sampler `heun`, 4 steps",
                     "dmops sample --release s3://dmops-releases/digits/7/", "load_for_sampling"):
        assert fragment in card, fragment
    bare = model_card("digits", "7", {}, None)  # without spec or lineage it still says what it can
    assert "| data hash | unknown |" in bare and "No metrics were recorded." in bare
    assert "stored in `model.json`" in bare


@pytest.mark.parametrize("bad", ["../escape.json", "/etc/passwd", "unet/../../x", "manifest.json"])
def test_release_file_names_cannot_escape_or_replace_the_manifest(bad, tiny_model):
    # refused before any request is sent: None as the client would fail on first use
    with pytest.raises(ReleaseError, match="manifest.json|relative path"):
        write_release(None, "bucket", "digits", "1", {bad: tiny_model / "model.json"}, {})


# --- against the stack's S3 ---------------------------------------------------------------

@pytest.mark.stack
def test_release_round_trip_with_manifest_written_last(stack, bucket, release_files, tiny_model,
                                                       tmp_path):
    s3, name = stack.s3_client(), _name()
    uri = write_release(s3, bucket, name, "1", release_files, {"git_commit": "abc1234"})
    assert uri == f"s3://{bucket}/{name}/1/"

    manifest = json.loads(_object(s3, bucket, f"{name}/1/manifest.json"))
    assert manifest["metadata"] == {"git_commit": "abc1234"}
    listed = {e["path"]: e for e in manifest["files"]}
    assert set(listed) == set(release_files) >= {"model.json", "README.md", "metrics.json",
                                                 "unet/diffusion_pytorch_model.safetensors"}
    for path, entry in listed.items():  # every stored object is what the manifest says
        data = _object(s3, bucket, f"{name}/1/{path}")
        assert (_sha256(data), len(data)) == (entry["sha256"], entry["size"]), path
        assert data == release_files[path].read_bytes(), path
    # written last: the manifest is the newest object of the release
    objects = s3.list_objects_v2(Bucket=bucket, Prefix=f"{name}/1/")["Contents"]
    newest = max(objects, key=lambda o: o["LastModified"])["LastModified"]
    assert next(o for o in objects if o["Key"].endswith("manifest.json"))["LastModified"] == newest

    folder = read_release(s3, uri, tmp_path / "downloaded")
    assert json.loads((folder / "metrics.json").read_text()) == METRICS
    local, spec = load_for_sampling(tiny_model)
    released, released_spec = load_for_sampling(folder)
    assert released_spec == spec
    shape = tuple(spec["data"]["shape"])
    a = generate(local, shape, 6, seed=11, **spec["sampling"]).x
    b = generate(released, shape, 6, seed=11, **spec["sampling"]).x
    assert torch.equal(a, b)


@pytest.mark.stack
def test_a_release_is_immutable(stack, bucket, release_files, tmp_path):
    s3, name = stack.s3_client(), _name()
    write_release(s3, bucket, name, "3", release_files, {"attempt": 1})
    before = _object(s3, bucket, f"{name}/3/manifest.json")
    other = tmp_path / "other.json"
    other.write_text("{}")
    with pytest.raises(ReleaseError, match=rf"{name}/3/ already exists.*immutable"):
        write_release(s3, bucket, name, "3", {**release_files, "model.json": other}, {"attempt": 2})
    assert _object(s3, bucket, f"{name}/3/manifest.json") == before
    assert _object(s3, bucket, f"{name}/3/model.json") == release_files["model.json"].read_bytes()


@pytest.mark.stack
def test_an_interrupted_release_is_incomplete_and_may_be_redone(stack, bucket, release_files,
                                                               tmp_path):
    s3, name = stack.s3_client(), _name()
    s3.upload_file(str(release_files["model.json"]), bucket, f"{name}/2/model.json")
    with pytest.raises(ReleaseError, match="incomplete release"):
        read_release(s3, f"s3://{bucket}/{name}/2/", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert read_manifest(s3, f"s3://{bucket}/{name}/2/") is None

    write_release(s3, bucket, name, "2", release_files, {})  # leftovers overwritten
    assert read_release(s3, f"s3://{bucket}/{name}/2", tmp_path / "x") == tmp_path / "x"
    with pytest.raises(ReleaseError, match="no release at"):
        read_release(s3, f"s3://{bucket}/{name}/9/", tmp_path / "y")


@pytest.mark.stack
def test_a_tampered_file_is_caught_by_name(stack, bucket, release_files, tmp_path):
    s3, name = stack.s3_client(), _name()
    uri = write_release(s3, bucket, name, "1", release_files, {})
    key = f"{name}/1/unet/diffusion_pytorch_model.safetensors"
    data = bytearray(_object(s3, bucket, key))
    data[-1] ^= 0x01  # one flipped bit in the weights, same size
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    with pytest.raises(ReleaseError, match=r"checksum mismatch for "
                                           r"unet/diffusion_pytorch_model\.safetensors"):
        read_release(s3, uri, tmp_path / "model")
    assert not (tmp_path / "model").exists()  # nothing left that looks like a usable model


@pytest.mark.stack
def test_cli_samples_a_release_exactly_like_the_local_model(stack, bucket, release_files,
                                                            tiny_model, tmp_path):
    s3, name = stack.s3_client(), _name()
    uri = write_release(s3, bucket, name, "1", release_files, {})
    runner = CliRunner()
    pictures = {}
    for label, source, seed in (("local", ["-m", tiny_model], 5), ("release", ["--release", uri], 5),
                                ("other_seed", ["--release", uri], 6)):
        result = runner.invoke(app, ["sample", *map(str, source), "--n", "9", "--seed", str(seed),
                                     "--out", str(tmp_path / f"{label}.png")])
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        pictures[label] = np.asarray(Image.open(tmp_path / f"{label}.png"))
    assert len(np.unique(pictures["local"])) > 16  # a real picture, not a saturated one
    assert np.array_equal(pictures["local"], pictures["release"])
    assert not np.array_equal(pictures["release"], pictures["other_seed"])

    s3.upload_file(str(release_files["model.json"]), bucket, f"{name}/2/model.json")
    fails_cleanly(runner.invoke(app, ["sample", "--release", f"s3://{bucket}/{name}/2/",
                                       "--out", str(tmp_path / "no.png")]), 1, "incomplete release")
    fails_cleanly(runner.invoke(app, ["sample", "--release", uri, "-m", str(tiny_model)]), 2,
                   "exactly one of")
    assert not (tmp_path / "no.png").exists()
