"""S3 releases against the stack's real SeaweedFS: a release is the model folder plus a card,
metrics and a manifest of sha256 checksums written last; it is immutable, also against a second
writer of the same version at the same moment; an interrupted one is never read, a tampered file
is caught by name, and `dmops sample --release` draws exactly what the local model draws for the
same seed."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffusion.model import ModelSpec, load_for_sampling, read_spec
from diffusion.samplers import generate
from flows.cli import app
from tasks.adapters import ui_links
from tasks.adapters.model_card import model_card
from tasks.adapters.release import (ReleaseError, folder_files, prepare_release_files, read_manifest,
                                    read_release, verify_release, write_release)
from cli_assertions import fails_cleanly
from lost_responses import LostResponses

METRICS = {"fid": 0.41, "kid": 0.0123}


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
    card = model_card("digits", "7", {**METRICS, "fid_floor": 0.2, "nfe": 7, "kid_mean": 0.004,
                                      "kid_std": 0.001, "teacher_best_fid": 0.205},
                      {"dataset_md5": "d41d8cd9", "git_commit": "abc1234", "validation": "passed"},
                      spec=read_spec(tiny_model), uri="s3://dmops-releases/digits/7/")
    for fragment in ("# digits, version 7", "| data hash (DVC md5) | d41d8cd9 |",
                     "| git commit of the run | abc1234 |", "| validation | passed |",
                     "network unet [8, 16]", "| sampler | `heun`: EDM's Heun (2nd order) |",
                     "| steps | 4 steps = 7 network evaluations (NFE) |",
                     "| noise conditioning | timestep input c_noise = 1000 · ln(sigma) / 4",
                     "| FID against the test split (the evaluation's feature space) | 0.41 |",
                     "| real-data floor: FID of held-out real images, same n | 0.2 |",
                     "| FID / teacher's best FID | 2 |", "| KID (mean ± std over subsets) | 0.004 ± 0.001 |",
                     "| `kid` | 0.0123 |",
                     "dmops sample --release s3://dmops-releases/digits/7/", "load_for_sampling",
                     "## Use with diffusers", "EDMDPMSolverMultistepScheduler"):
        assert fragment in card, fragment
    bare = model_card("digits", "7", {}, None)  # without spec or lineage it still says what it can
    assert "| data hash (DVC md5) | unknown |" in bare and "No evaluation numbers were recorded." in bare
    assert "stored in its `model.json`" in bare and "diffusers" not in bare


def test_model_card_gives_fid_and_kid_with_their_bootstrap_intervals(tiny_model):
    card = model_card("digits", "7", {**METRICS, "fid_lo": 0.37, "fid_hi": 0.46, "kid_mean": 0.004,
                                      "kid_std": 0.001, "kid_lo": 0.003, "kid_hi": 0.005}, {},
                      spec=read_spec(tiny_model))
    assert "| 0.41, bootstrap interval [0.37, 0.46] |" in card
    assert "| 0.004 ± 0.001, bootstrap interval [0.003, 0.005] |" in card
    assert "`fid_lo`" not in card and "`kid_hi`" not in card  # not repeated among the rest


def test_model_card_prints_a_spread_and_interval_no_finer_than_the_value():
    # KID over subsets that are the whole set: a zero spread, computed as float noise
    card = model_card("digits", "7", {"kid_mean": 0.0123, "kid_std": 1.3e-15, "kid_lo": 0.0123 - 2e-17,
                                      "kid_hi": 0.0123 + 4e-17, "fid": 0.41, "fid_lo": 0.41,
                                      "fid_hi": 0.41 + 1e-16}, {})
    assert "| 0.0123 ± 0.00000, bootstrap interval [0.0123, 0.0123] |" in card
    assert "| 0.41, bootstrap interval [0.41, 0.41] |" in card
    assert "e-1" not in card


def _consistency_spec(teacher: ModelSpec) -> ModelSpec:
    """The model.json of a 1-step consistency student of `teacher` (no weights needed)."""
    return teacher.model_copy(update={
        "precond": {"kind": "consistency", "sigma_data": 0.5, "sigma_min": 0.002},
        "sampling": teacher.sampling.model_copy(update={"sampler": "consistency", "steps": 1,
                                                        "grid": "karras_nested"}),
        "distillation": {"method": "consistency", "supported_steps": [1, 2, 4]}})


def test_model_card_counts_steps_and_evaluations_in_words(tiny_model):
    """The issue's card said '? step(s)' and '1 steps'."""
    card = model_card("digits", "7", {"fid": 0.5}, {}, spec=_consistency_spec(read_spec(tiny_model)))
    assert "| steps | 1 step = 1 network evaluation (NFE) |" in card
    assert "A consistency-distillation student" in card
    assert "CMStochasticIterativeScheduler" in card and "no conversion is needed" in card
    assert not re.search(r"\? step|step\(s\)|\b1 steps\b|\b1 network evaluations\b", card), card


def test_model_card_links_the_mlflow_run_the_version_and_the_prefect_flow_run(tiny_model,
                                                                            monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.delenv("PREFECT_UI_URL", raising=False)
    meta = {"mlflow_parent_run_id": "r123", "mlflow_experiment_id": "4",
            "prefect_flow_run_id": "f-456", "dataset_md5": "d41d8cd9"}
    card = model_card("digits", "7", METRICS, meta, spec=read_spec(tiny_model), uri=None)
    # the links are ui_links' own (their form is tested there), into the UIs the environment names
    run, version = ui_links.run_url("4", "r123"), ui_links.model_url("digits", "7")
    assert run.startswith("http://127.0.0.1:5000/#/experiments/4/runs/r123")
    assert version.startswith("http://127.0.0.1:5000/#/models/digits/versions/7")
    assert f"- MLflow run of the flow: [r123]({run})" in card
    assert f"- registered version: [digits v7]({version})" in card
    assert "- Prefect flow run: [f-456](http://127.0.0.1:4200/runs/flow-run/f-456)" in card
    # the registry's tags that repeat what the card states from model.json are not repeated
    tagged = model_card("digits", "7", METRICS, {**meta, "sampler": "heun", "nfe": "7",
                                                 "metrics": '{"fid": 0.41}', "weights_sha256": "ab12"},
                        spec=read_spec(tiny_model))
    assert "| weights sha256 | ab12 |" in tagged
    for repeated in ("| sampler | heun |", "| nfe | 7 |", "| metrics |"):
        assert repeated not in tagged, repeated
    # before a release exists (a registered version's description): no release to point to
    assert "dmops sample --model digits/7" in card and "--release" not in card
    assert "A release of this version holds" in card


def test_a_release_ships_the_diffusers_scheduler_config(tiny_model, release_files):
    config = json.loads(release_files["scheduler/scheduler_config.json"].read_text())
    assert config["_class_name"] == "EDMDPMSolverMultistepScheduler"   # tiny serves heun
    assert (config["sigma_data"], config["sigma_max"], config["final_sigmas_type"]) == (
        read_spec(tiny_model).precond["sigma_data"], 80.0, "zero")


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
        assert entry["key"] == f"objects/{manifest['writer']}/{path}"
        data = _object(s3, bucket, f"{name}/1/{entry['key']}")
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
    shape = spec.shape
    a = generate(local, shape, 6, seed=11, **spec.sampling.model_dump()).x
    b = generate(released, shape, 6, seed=11, **spec.sampling.model_dump()).x
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
    assert verify_release(s3, f"s3://{bucket}/{name}/3/")["metadata"] == {"attempt": 1}


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
    weights = "unet/diffusion_pytorch_model.safetensors"
    entry = next(e for e in read_manifest(s3, uri)["files"] if e["path"] == weights)
    key = f"{name}/1/{entry['key']}"
    data = bytearray(_object(s3, bucket, key))
    data[-1] ^= 0x01  # one flipped bit in the weights, same size
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    for check in (lambda: read_release(s3, uri, tmp_path / "model"), lambda: verify_release(s3, uri)):
        with pytest.raises(ReleaseError, match=r"checksum mismatch for "
                                               r"unet/diffusion_pytorch_model\.safetensors"):
            check()
    assert not (tmp_path / "model").exists()  # nothing left that looks like a usable model


def _other_release_files(release_files: dict[str, Path], folder: Path) -> dict[str, Path]:
    """The same release with other bytes in every file: what a second writer of the version
    (another model, another run) would upload."""
    folder.mkdir()
    other = {}
    for name, path in release_files.items():
        copy = folder / name.replace("/", "__")
        copy.write_bytes(path.read_bytes() + b" ")
        other[name] = copy
    return other


class _HeldUploads:
    """The stack's S3 client, except that `upload_file` waits until `go` is set (and says when it
    first started waiting): it puts one writer's uploads after another writer's whole release,
    the interleaving the issue measured in 7 of 8 trials."""

    def __init__(self, s3, timeout: float = 60):
        self._s3, self._timeout = s3, timeout
        self.waiting, self.go = threading.Event(), threading.Event()

    def upload_file(self, *args, **kwargs):
        self.waiting.set()
        assert self.go.wait(self._timeout), "the other writer never finished"
        return self._s3.upload_file(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._s3, name)


def _published_bytes(s3, bucket: str, uri: str) -> dict[str, bytes]:
    prefix = uri[len(f"s3://{bucket}/"):]
    return {e["path"]: _object(s3, bucket, prefix + e["key"])
            for e in read_manifest(s3, uri)["files"]}


@pytest.mark.stack
def test_a_late_losing_writer_cannot_change_a_published_release(stack, bucket, release_files,
                                                               tmp_path):
    s3, name = stack.s3_client(), _name()
    other = _other_release_files(release_files, tmp_path / "other")
    late = _HeldUploads(stack.s3_client())
    errors = []

    def loser():
        try:
            write_release(late, bucket, name, "1", other, {"writer": "late"})
        except ReleaseError as e:
            errors.append(str(e))

    thread = threading.Thread(target=loser)
    thread.start()
    assert late.waiting.wait(60)            # the late writer found no manifest and is uploading
    uri = write_release(s3, bucket, name, "1", release_files, {"writer": "first"})
    late.go.set()                           # its uploads now land after the published manifest
    thread.join(60)
    assert len(errors) == 1 and "completed by another writer" in errors[0]
    manifest = verify_release(s3, uri)      # every checksum of the published release still holds
    assert manifest["metadata"] == {"writer": "first"}
    assert _published_bytes(s3, bucket, uri) == {k: p.read_bytes() for k, p in release_files.items()}
    # the loser cleaned up after itself: only the winner's objects remain under the version
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{name}/1/")["Contents"]}
    assert keys == {f"{name}/1/manifest.json"} | {f"{name}/1/{e['key']}" for e in manifest["files"]}


@pytest.mark.stack
def test_two_writers_of_one_version_at_once_always_leave_a_verifying_release(
        stack, bucket, release_files, tmp_path):
    """The issue's failing input, repeated: two writers released the same version at once and the
    published release failed its own checksums in 7 of 8 trials."""
    other = _other_release_files(release_files, tmp_path / "other")
    contents = {"a": {k: p.read_bytes() for k, p in release_files.items()},
                "b": {k: p.read_bytes() for k, p in other.items()}}
    for trial in range(8):
        name, start = _name(), threading.Barrier(2)
        outcome: dict[str, str] = {}

        def writer(label, files):
            client = stack.s3_client()
            start.wait()
            try:
                write_release(client, bucket, name, "1", files, {"writer": label})
                outcome[label] = "published"
            except ReleaseError as e:
                outcome[label] = str(e)

        threads = [threading.Thread(target=writer, args=args)
                   for args in (("a", release_files), ("b", other))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        winners = [label for label, result in outcome.items() if result == "published"]
        assert len(winners) == 1, (trial, outcome)
        loser = ({"a", "b"} - set(winners)).pop()
        assert "immutable" in outcome[loser], (trial, outcome)
        uri = f"s3://{bucket}/{name}/1/"
        assert verify_release(s3 := stack.s3_client(), uri)["metadata"] == {"writer": winners[0]}
        assert _published_bytes(s3, bucket, uri) == contents[winners[0]], trial
        read_release(s3, uri, tmp_path / f"read-{trial}")   # a reader accepts it too


@pytest.mark.stack
def test_a_manifest_write_retried_after_its_lost_response_keeps_the_release(stack, bucket,
                                                                            release_files, tmp_path):
    """The store creates the manifest, its answer is lost, botocore sends the conditional PUT
    again and the store refuses it (412) because of that very manifest: the writer must see
    its own release there, not another writer's, and delete nothing."""
    s3, name = stack.s3_client(), _name()
    lost = LostResponses(s3, "PutObject", which=lambda url: url.endswith("/manifest.json"))
    uri = write_release(s3, bucket, name, "1", release_files, {"writer": "retried"})
    assert lost.dropped == [f"{stack.settings.s3_url}/{bucket}/{name}/1/manifest.json"]
    assert uri == f"s3://{bucket}/{name}/1/"
    reader = stack.s3_client()
    manifest = verify_release(reader, uri)           # every object the manifest names is there
    assert manifest["metadata"] == {"writer": "retried"}
    assert _published_bytes(reader, bucket, uri) == {k: p.read_bytes() for k, p in release_files.items()}
    read_release(reader, uri, tmp_path / "read")


def test_the_environments_client_retries_transient_errors_with_path_style_addressing(monkeypatch):
    from tasks.adapters.release import s3_client_from_env

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    config = s3_client_from_env().meta.config
    # botocore stores retries.max_attempts as total_max_attempts = retries + 1
    assert config.retries["mode"] == "standard" and config.retries["total_max_attempts"] > 1
    assert config.s3 == {"addressing_style": "path"}


@pytest.mark.stack
def test_cli_samples_a_release_exactly_like_the_local_model(stack, bucket, release_files,
                                                            tiny_model, tmp_path):
    s3, name = stack.s3_client(), _name()
    uri = write_release(s3, bucket, name, "1", release_files, {})
    runner = CliRunner()
    pictures = {}
    for label, source, seed in (("local", ["-d", tiny_model], 5), ("release", ["--release", uri], 5),
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
    fails_cleanly(runner.invoke(app, ["sample", "--release", uri, "-d", str(tiny_model)]), 2,
                   "exactly one of")
    assert not (tmp_path / "no.png").exists()
