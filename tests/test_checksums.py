"""A corrupted copy of model weights is never used unchecked (issue 15, fault 4).

Every model folder records the sha256 of its weights and config in model.json, every checkpoint
those of its safetensors files in state.json, and every registered version those of all its
files as the tag `files_sha256` (in the tracking database, apart from the artifact store).
A bit flipped in the tensor data of a local folder, a checkpoint or MLflow's stored copy is
refused with one line naming the file and the source -- also the flip of an exponent bit, which
unchecked gave "samples contain NaN or inf" -- while an intact model samples the same picture
from a local folder, the registry and a release."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.models import Model
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from cli_assertions import digest, fails_cleanly
from diffusion.model import ModelError, load_for_sampling, load_model, read_spec
from diffusion.samplers import generate
from flows.cli import app
from tasks.adapters.registry import (FILES_TAG, CorruptCopyError, RegistryError, download_model,
                                     files_tag, register_model, version_tags)
from tasks.adapters.model_card import model_card
from tasks.adapters.release import prepare_release_files, write_release

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dmops(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip(data: bytes, tensor: str | None = None, byte: int = 0, mask: int = 0x01) -> bytes:
    """`data` (a safetensors file) with the bits `mask` of byte `byte` of `tensor`'s data (the
    first tensor when None) flipped: same size, the JSON header untouched."""
    out = bytearray(data)
    n = struct.unpack("<Q", out[:8])[0]
    header = json.loads(out[8:8 + n])
    name = tensor or min((k for k in header if k != "__metadata__"),
                         key=lambda k: header[k]["data_offsets"][0])
    start, end = header[name]["data_offsets"]
    assert 0 <= byte < end - start
    out[8 + n + start + byte] ^= mask
    return bytes(out)


# A float32's byte 3 (little-endian) holds the sign and the 7 high exponent bits: 0x40 is the
# exponent's top bit, so a weight of 1e-3 becomes about 1e35 -- the flip that, unchecked, made
# every sample NaN or inf.
EXPONENT = {"tensor": "conv_in.weight", "byte": 3, "mask": 0x40}


def flip_file(path: Path, **where) -> None:
    path.write_bytes(flip(path.read_bytes(), **where))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny-profile training run folder: model/ (a UNet in diffusers layout) + checkpoints/."""
    out = tmp_path_factory.mktemp("tiny")
    result = dmops("train", "-p", "tiny", "--out", out, "--config", PARAMS)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return out


@pytest.fixture
def copy(run, tmp_path) -> Path:
    """A copy of the run that a test may damage."""
    return Path(shutil.copytree(run, tmp_path / "run"))


# --- what is recorded ----------------------------------------------------------------------

def test_model_json_and_checkpoints_record_every_file(run):
    spec = read_spec(run / "model")
    assert set(spec.files) == {"unet/config.json", WEIGHTS}
    assert all(_sha256(run / "model" / k) == v for k, v in spec.files.items())
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    files = json.loads((latest / "state.json").read_text())["files"]
    assert set(files) == {"model.safetensors", "ema.safetensors", "optimizer.safetensors",
                          "rng.safetensors"}
    assert all(_sha256(latest / k) == v for k, v in files.items())


# --- local folders and checkpoints ---------------------------------------------------------

def test_a_local_model_with_a_flipped_bit_is_refused_by_name(copy, tmp_path):
    flip_file(copy / "model" / WEIGHTS)
    result = dmops("sample", "-d", copy / "model", "--out", tmp_path / "x.png")
    fails_cleanly(result, 2, f"{copy / 'model'}: {WEIGHTS} has sha256", "was recorded when the "
                  "model was saved", "corrupted")
    assert not (tmp_path / "x.png").exists()
    # the run folder resolves to the same model folder, and every loader goes through the check
    fails_cleanly(dmops("sample", "-d", copy, "--out", tmp_path / "x.png"), 2, WEIGHTS, "corrupted")
    with pytest.raises(ModelError, match=f"{WEIGHTS} has sha256 .* corrupted"):
        load_model(copy / "model")


def test_an_exponent_bit_flip_is_corruption_not_nan_samples(copy, tmp_path):
    flip_file(copy / "model" / WEIGHTS, **EXPONENT)
    fails_cleanly(dmops("sample", "-d", copy / "model", "--out", tmp_path / "x.png"), 2,
                  WEIGHTS, "corrupted")
    # the same folder without its record (as every folder was before): the flip is only seen
    # as what it does to the samples, after a one-line warning
    spec = json.loads((copy / "model" / "model.json").read_text())
    del spec["files"]
    (copy / "model" / "model.json").write_text(json.dumps(spec))
    result = dmops("sample", "-d", copy / "model", "--out", tmp_path / "x.png")
    assert result.exit_code == 2 and "NaN or inf" in result.stderr, result.stderr
    assert "saved without file checksums" in result.stderr


def test_a_checkpoint_with_a_flipped_bit_refuses_to_resume_and_to_sample(copy, tmp_path):
    ckpts = copy / "checkpoints"
    latest = (ckpts / "latest").read_text().strip()
    flip_file(ckpts / latest / "ema.safetensors", byte=5)
    before = digest(copy)
    result = dmops("train", "-p", "tiny", "--out", copy, "--set", "train.steps=30",
                   "--config", PARAMS)
    fails_cleanly(result, 2, f"checkpoint {ckpts / latest}: ema.safetensors has sha256",
                  "corrupted", "step_00000010")   # names the earlier checkpoint to go back to
    assert digest(copy) == before
    fails_cleanly(dmops("sample", "-d", ckpts / latest, "--out", tmp_path / "x.png"), 2,
                  "ema.safetensors", "corrupted")
    # the way out the message gives: resume from the checkpoint before it
    (ckpts / "latest").write_text("step_00000010")
    result = dmops("train", "-p", "tiny", "--out", copy, "--set", "train.steps=30",
                   "--config", PARAMS)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "resuming from" in result.stdout and "step_00000010" in result.stdout


def test_an_unreadable_safetensors_header_is_a_model_error_naming_the_file(copy, tmp_path):
    weights = copy / "model" / WEIGHTS
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])   # the header length itself
    fails_cleanly(dmops("sample", "-d", copy / "model", "--out", tmp_path / "x.png"), 2,
                  WEIGHTS, "corrupted")
    spec = json.loads((copy / "model" / "model.json").read_text())
    del spec["files"]   # unchecked: the library's parse error, as one line naming the file
    (copy / "model" / "model.json").write_text(json.dumps(spec))
    result = dmops("sample", "-d", copy / "model", "--out", tmp_path / "x.png")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    warning, error = result.stderr.strip().splitlines()
    assert "saved without file checksums" in warning
    assert error.startswith(f"error: {weights} is not a readable safetensors file"), error


def test_a_folder_saved_before_checksums_loads_with_one_warning(run, copy, capsys):
    spec = json.loads((copy / "model" / "model.json").read_text())
    del spec["files"]
    (copy / "model" / "model.json").write_text(json.dumps(spec))
    capsys.readouterr()
    old, _ = load_model(copy / "model")
    load_for_sampling(copy / "model")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "saved without file checksums" in err[0], err   # once, not per load
    new, _ = load_model(run / "model")
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))


def test_the_files_tag_fits_a_model_version_tag():
    with pytest.raises(RegistryError, match="more than a model version tag holds"):
        files_tag({f"unet/shard-{i:05d}.safetensors": "0" * 64 for i in range(100)})


# --- the registry's stored copy ------------------------------------------------------------

def _register(model_dir: Path) -> tuple[str, str]:
    name = f"digits-{uuid.uuid4().hex[:8]}"
    with mlflow.start_run():
        return name, register_model(model_dir, name, {"git_commit": "0123abc"})


def _stored_key(stack, name: str, version: str, file: str) -> str:
    """The S3 key under which the stack's MLflow server keeps `file` of the version's model
    folder (it proxies artifacts to its bucket: <experiment>/models/<model id>/artifacts/...)."""
    location = MlflowClient().get_model_version_download_uri(name, version)
    assert location.startswith("mlflow-artifacts:/"), location   # proxied by the server
    prefix = location[len("mlflow-artifacts:/"):].strip("/") + "/"
    s3 = stack.s3_client()
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=stack.settings.artifacts_bucket, Prefix=prefix) for o in page.get("Contents", [])
        if o["Key"].endswith("/" + file)]
    assert len(keys) == 1, keys
    return keys[0]


def _damage_stored(stack, name: str, version: str, file: str = WEIGHTS, **where) -> None:
    """Flip one bit of the tensor data of `file` as the artifact store holds it."""
    s3, bucket = stack.s3_client(), stack.settings.artifacts_bucket
    key = _stored_key(stack, name, version, file)
    data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=flip(data, **where))


@pytest.mark.stack
def test_registration_records_every_file_outside_the_artifact_store(run, experiment):
    name, version = _register(run / "model")
    files = json.loads(version_tags(name, version)[FILES_TAG])
    assert set(files) == {"model.json", "unet/config.json", WEIGHTS}
    assert all(_sha256(run / "model" / k) == v for k, v in files.items())
    # the pyfunc carries them too, for mlflow.pyfunc.load_model (which knows no version tags)
    mlmodel = Model.load(f"models:/{name}/{version}")
    assert mlmodel.flavors["python_function"]["config"][FILES_TAG] == files


@pytest.mark.stack
def test_a_corrupted_registry_copy_is_refused_by_sample_promote_and_pyfunc(stack, run, experiment,
                                                                          tmp_path):
    name, version = _register(run / "model")
    _damage_stored(stack, name, version)
    where = f"models:/{name}/{version} (MLflow artifact store): {WEIGHTS} has sha256"
    # dmops sample --model: one line, as every failure to fetch a registered model (exit 1)
    for ref in (f"{name}/{version}", f"{name}@challenger"):
        result = dmops("sample", "--model", ref, "--out", tmp_path / "x.png")
        fails_cleanly(result, 1, where, "was recorded at registration", "stored copy is corrupted",
                      "re-register")
    assert not (tmp_path / "x.png").exists()
    # the promotion's way in: download_model of the champion
    with pytest.raises(CorruptCopyError, match=f"{name}/{version} .*{WEIGHTS}.*corrupted"):
        download_model(f"{name}/{version}", tmp_path / "champion")
    assert not (tmp_path / "champion").exists()
    # the served pyfunc
    with pytest.raises(ModelError, match=f"{WEIGHTS} has sha256 .* corrupted"):
        mlflow.pyfunc.load_model(f"models:/{name}/{version}")


@pytest.mark.stack
def test_an_exponent_bit_flip_in_the_store_is_corruption_not_nan(stack, run, experiment, tmp_path):
    name, version = _register(run / "model")
    _damage_stored(stack, name, version, **EXPONENT)
    fails_cleanly(dmops("sample", "--model", f"{name}/{version}", "--out", tmp_path / "x.png"), 1,
                  WEIGHTS, "corrupted")


@pytest.mark.stack
def test_a_corrupted_model_json_in_the_store_is_caught_by_the_tag(stack, run, experiment, tmp_path):
    """model.json cannot hold its own sum: the tag (and the pyfunc's config) cover it."""
    name, version = _register(run / "model")
    s3, bucket = stack.s3_client(), stack.settings.artifacts_bucket
    key = _stored_key(stack, name, version, "model.json")
    text = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert text.count(b'"steps": 4\n') == 1   # the default sampler steps of the tiny profile
    # one bit (0x34 '4' -> 0x35 '5'): still a valid model.json, silently another sampler setting
    s3.put_object(Bucket=bucket, Key=key, Body=text.replace(b'"steps": 4\n', b'"steps": 5\n'))
    with pytest.raises(CorruptCopyError, match="model.json has sha256"):
        download_model(f"{name}/{version}", tmp_path / "m")
    with pytest.raises(ModelError, match="model.json has sha256"):
        mlflow.pyfunc.load_model(f"models:/{name}/{version}")


@pytest.mark.stack
def test_a_version_registered_without_the_tag_downloads_with_one_warning(run, experiment,
                                                                        tmp_path, capsys):
    name, version = _register(run / "model")
    MlflowClient().delete_model_version_tag(name, version, FILES_TAG)
    capsys.readouterr()
    folder = download_model(f"{name}/{version}", tmp_path / "m")
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(ours) == 1 and f"models:/{name}/{version}" in ours[0] and "not verified" in ours[0]
    load_model(folder)   # model.json's own record still checks the weights


@pytest.mark.stack
def test_a_damaged_local_folder_is_never_registered(copy, experiment):
    flip_file(copy / "model" / WEIGHTS)
    with pytest.raises(ModelError, match=f"{WEIGHTS} has sha256 .* corrupted"):
        _register(copy / "model")


@pytest.mark.stack
def test_an_intact_model_samples_the_same_from_folder_registry_release_and_pyfunc(stack, run,
                                                                                  experiment,
                                                                                  tmp_path):
    model_dir = run / "model"
    name, version = _register(model_dir)
    card = model_card(name, version, {"fid": 1.0}, {}, spec=read_spec(model_dir))
    uri = write_release(stack.s3_client(), stack.settings.releases_bucket, name, version,
                        prepare_release_files(model_dir, card, {"fid": 1.0}, tmp_path / "r"), {})
    pictures = {}
    for label, source in (("local", ["-d", model_dir]), ("registry", ["--model", f"{name}/{version}"]),
                          ("release", ["--release", uri])):
        result = dmops("sample", *source, "--n", "9", "--seed", "7", "--out", tmp_path / f"{label}.png")
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        assert "without file checksums" not in result.stderr, result.stderr
        pictures[label] = np.asarray(Image.open(tmp_path / f"{label}.png"))
    assert len(np.unique(pictures["local"])) > 16   # a real picture, not a saturated one
    assert np.array_equal(pictures["local"], pictures["registry"])
    assert np.array_equal(pictures["local"], pictures["release"])

    served = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    denoiser, spec = load_for_sampling(model_dir)
    x = served.predict(pd.DataFrame({"n": [5], "seed": [3]}))
    assert torch.equal(torch.from_numpy(x),
                       generate(denoiser, spec.shape, 5, seed=3, **spec.sampling.model_dump()).x)
