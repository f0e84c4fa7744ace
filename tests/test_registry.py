"""The MLflow registry against the stack's real server: a registered version carries its lineage
tags and the `challenger` alias, its pyfunc samples exactly what the local model samples, promotion
decides by one metric with a tolerance, writes the release before it moves `champion`, records
why either way, and `dmops sample --model NAME@champion` draws the local model's picture."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from diffusion.model import load_for_sampling, read_spec
from diffusion.samplers import generate
from flows.cli import app
from tasks.steps.promote import Decision, PromotionError, apply, decide
from tasks.adapters.pyfunc_model import SampleRequestError
from tasks.adapters.registry import (FILES_TAG, RegistryError, champion_version, check_tags,
                                     download_model, register_model, version_tags)
from tasks.adapters.model_card import model_card
from tasks.adapters.release import folder_files, prepare_release_files
from cli_assertions import fails_cleanly



def _lineage(fid: float) -> dict[str, str]:
    return {"data_hash": "d41d8cd98f00b204e9800998ecf8427e", "git_commit": "0123abc",
            "validation": "passed", "metric.fid": f"{fid:.6g}", "prefect_flow_run_id": "run-1"}


@pytest.fixture
def name(experiment) -> str:
    """A registered model of its own per test: the stack is shared by the whole session."""
    return f"digits-{uuid.uuid4().hex[:8]}"


def _register(model_dir: Path, name: str, fid: float) -> str:
    with mlflow.start_run():
        return register_model(model_dir, name, _lineage(fid))


def _release_files(model_dir: Path, version: str, fid: float, workdir: Path) -> dict[str, Path]:
    card = model_card("digits", version, {"fid": fid}, {"git_commit": "0123abc"},
                      spec=read_spec(model_dir))
    return prepare_release_files(model_dir, card, {"fid": fid}, workdir)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- decide(): pure -----------------------------------------------------------------------

def test_no_champion_promotes():
    d = decide({"fid": 0.5}, None, "fid", 0.02)
    assert d.promoted and "no champion" in d.reason


@pytest.mark.parametrize("new, promoted", [(0.41, True), (0.4589, True), (0.4591, False), (0.6, False)])
def test_lower_is_better_with_relative_tolerance(new, promoted):
    # bound = 0.45 x (1 + 0.02) = 0.459
    d = decide({"fid": new}, {"fid": "0.45"}, "fid", 0.02)
    assert d.promoted is promoted
    assert d.champion_value == 0.45 and d.challenger_value == new
    assert f"challenger fid {new:.4g} {'<=' if promoted else '>'} champion 0.45 x (1 + 0.02)" \
        in d.reason


@pytest.mark.parametrize("new, promoted", [(0.90, True), (0.8821, True), (0.8819, False)])
def test_higher_is_better(new, promoted):
    # bound = 0.9 x (1 - 0.02) = 0.882
    d = decide({"precision": new}, {"precision": 0.9}, "precision", 0.02, lower_is_better=False)
    assert d.promoted is promoted and "higher is better" in d.reason


def test_negative_metric_tolerance_is_lenient():
    # bound = -2 + 0.1 x |-2| = -1.8: a loss of -1.85 is within tolerance of -2
    assert decide({"nll": -1.85}, {"nll": -2.0}, "nll", 0.1).promoted
    assert not decide({"nll": -1.75}, {"nll": -2.0}, "nll", 0.1).promoted


def test_missing_or_broken_metrics_are_clear_errors():
    with pytest.raises(PromotionError, match=r"challenger has no metric 'fid' \(it has: \['kid'\]\)"):
        decide({"kid": 0.1}, None, "fid", 0.02)
    with pytest.raises(PromotionError, match="champion has no metric 'fid'"):
        decide({"fid": 0.1}, {"kid": 0.2}, "fid", 0.02)
    with pytest.raises(PromotionError, match="not a number"):
        decide({"fid": "n/a"}, None, "fid", 0.02)
    with pytest.raises(PromotionError, match="non-finite"):
        decide({"fid": float("nan")}, None, "fid", 0.02)
    with pytest.raises(PromotionError, match="tolerance"):
        decide({"fid": 0.1}, None, "fid", -0.1)


# --- tags ---------------------------------------------------------------------------------

def test_tags_must_be_strings_without_secrets(monkeypatch):
    assert check_tags(_lineage(0.4)) == _lineage(0.4)
    monkeypatch.setenv("DMOPS_TEST_SECRET_ACCESS_KEY", "s3cr3t-value-123")
    cases = {
        "a float value": ({"metric.fid": 0.4}, "must be strings"),
        "a credential name": ({"db_password": "x"}, "named like a credential"),
        "an AWS key id": ({"note": "key AKIAABCDEFGHIJKLMNOP"}, "AWS access key id"),
        "a URL with a password": ({"uri": "postgresql://u:pw@host/db"}, "password inside a URL"),
        "a secret from the environment": ({"note": "x s3cr3t-value-123"}, "secret environment"),
    }
    for what, (tags, message) in cases.items():
        with pytest.raises(RegistryError, match=message) as error:
            check_tags(tags)
        assert "s3cr3t" not in str(error.value) and "AKIA" not in str(error.value), what


# --- the registry ---------------------------------------------------------------------------

@pytest.mark.stack
def test_register_sets_challenger_and_lineage_tags(tiny_model, name):
    with mlflow.start_run() as run:
        version = register_model(tiny_model, name, _lineage(0.4))
    client = MlflowClient()
    mv = client.get_model_version_by_alias(name, "challenger")
    assert mv.version == version == "1"
    assert mv.run_id == run.info.run_id
    lineage = {k: v for k, v in mv.tags.items() if k != FILES_TAG}
    assert lineage == _lineage(0.4) == {k: v for k, v in version_tags(name, version).items()
                                        if k != FILES_TAG}
    assert FILES_TAG in mv.tags   # the files' sha256, recorded outside the artifact store
    assert champion_version(name) is None
    with pytest.raises(RegistryError, match="no active MLflow run"):
        register_model(tiny_model, name, _lineage(0.4))
    with pytest.raises(RegistryError, match="must be strings"):
        register_model(tiny_model, name, {"metric.fid": 0.4}, run_id=run.info.run_id)
    assert client.get_model_version_by_alias(name, "challenger").version == "1"  # nothing registered

    second = register_model(tiny_model, name, _lineage(0.3), run_id=run.info.run_id)  # no active run
    assert second == "2" == client.get_model_version_by_alias(name, "challenger").version
    assert client.get_model_version(name, second).run_id == run.info.run_id


@pytest.mark.stack
def test_a_retried_registration_of_one_flow_run_reuses_its_version(tiny_model, name):
    """The pipeline's register task has Prefect retries: a try that registered a version and
    then failed (say, moving the alias) runs again, in a new step run, with the same tags. It
    must not register the same weights a second time."""
    weights = _sha256(tiny_model / "unet" / "diffusion_pytorch_model.safetensors")
    tags = {**_lineage(0.4), "mlflow_parent_run_id": "parent-1", "weights_sha256": weights}
    client = MlflowClient()
    with mlflow.start_run():
        version = register_model(tiny_model, name, tags)
    client.delete_registered_model_alias(name, "challenger")  # that try failed before the alias
    with mlflow.start_run() as retry:
        again = register_model(tiny_model, name, tags)
    assert again == version == "1"
    assert [v.version for v in client.search_model_versions(f"name='{name}'")] == ["1"]
    assert client.get_model_version_by_alias(name, "challenger").version == "1"
    # another flow run's registration of the same weights is a version of its own, and so are
    # other weights in this run
    run_id = retry.info.run_id
    assert register_model(tiny_model, name, {**tags, "mlflow_parent_run_id": "parent-2"},
                          run_id=run_id) == "2"
    assert register_model(tiny_model, name, {**tags, "weights_sha256": "0" * 64}, run_id=run_id) == "3"
    assert client.get_model_version_by_alias(name, "challenger").version == "3"


@pytest.mark.stack
def test_pyfunc_samples_exactly_what_the_local_model_samples(tiny_model, name):
    with mlflow.start_run():
        register_model(tiny_model, name, _lineage(0.4))
    served = mlflow.pyfunc.load_model(f"models:/{name}@challenger")
    denoiser, spec = load_for_sampling(tiny_model)
    shape = spec.shape

    x = served.predict(pd.DataFrame({"n": [5], "seed": [3]}))
    assert x.dtype == np.float32 and x.shape == (5, *shape)
    expected = generate(denoiser, shape, 5, seed=3, **spec.sampling.model_dump()).x
    assert torch.equal(torch.from_numpy(x), expected)
    assert np.array_equal(served.predict({"n": 5, "seed": 3}), x)  # dict input, same answer
    assert not np.array_equal(served.predict({"n": 5, "seed": 4}), x)

    y = served.predict(pd.DataFrame({"n": [2], "seed": [1], "sampler": ["dpmpp_2m"], "steps": [3]}))
    options = {**spec.sampling.model_dump(), "sampler": "dpmpp_2m", "steps": 3}
    assert torch.equal(torch.from_numpy(y), generate(denoiser, shape, 2, seed=1, **options).x)
    with pytest.raises(SampleRequestError, match="unknown sampler 'euler'"):
        served.predict(pd.DataFrame({"n": [2], "seed": [1], "sampler": ["euler"]}))


@pytest.mark.stack
def test_download_returns_the_model_folder_byte_for_byte(tiny_model, name, tmp_path):
    version = _register(tiny_model, name, 0.4)
    for ref in (f"{name}@challenger", f"{name}/{version}", f"models:/{name}/{version}"):
        folder = download_model(ref, tmp_path / ref.replace("/", "_").replace(":", ""))
        theirs, ours = folder_files(folder), folder_files(tiny_model)
        assert set(theirs) == set(ours) and "unet/config.json" in theirs
        assert all(_sha256(theirs[k]) == _sha256(ours[k]) for k in ours)
    with pytest.raises(RegistryError, match=r"has no alias 'champion'.*aliases: \['challenger'\]"):
        download_model(f"{name}@champion", tmp_path / "none")
    with pytest.raises(RegistryError, match="no version 7"):
        download_model(f"{name}/7", tmp_path / "none")
    with pytest.raises(RegistryError, match="there is no model"):
        download_model("no-such-model@champion", tmp_path / "none")
    with pytest.raises(RegistryError, match="NAME@ALIAS"):
        download_model(name, tmp_path / "none")
    assert not (tmp_path / "none").exists()


@pytest.mark.stack
def test_promotion_moves_champion_only_on_a_win_and_always_with_a_release(stack, tiny_model, name,
                                                                          tmp_path):
    s3, bucket = stack.s3_client(), stack.settings.releases_bucket
    client = MlflowClient()

    def compete(fid: float) -> tuple[str, Decision]:
        version = _register(tiny_model, name, fid)
        champ = champion_version(name)
        champion = None if champ is None else {"fid": version_tags(name, champ)["metric.fid"]}
        decision = decide({"fid": fid}, champion, "fid", 0.02)
        files = _release_files(tiny_model, version, fid, tmp_path / version)
        return version, apply(decision, name, version, files, s3, bucket)

    v1, first = compete(0.45)  # no champion yet: promoted, released, champion
    assert first.promoted and first.release_uri == f"s3://{bucket}/{name}/{v1}/"
    assert champion_version(name) == v1
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{name}/{v1}/manifest.json")["Body"].read())
    for entry in manifest["files"]:   # each file under the writer's own objects/ prefix
        data = s3.get_object(Bucket=bucket, Key=f"{name}/{v1}/{entry['key']}")["Body"].read()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
    assert manifest["metadata"]["tags"]["git_commit"] == "0123abc"
    assert version_tags(name, v1)["promotion"] == "promoted"

    v2, worse = compete(0.50)  # 0.50 > 0.45 x 1.02: champion stays, the reason is recorded
    assert not worse.promoted and worse.release_uri is None
    assert champion_version(name) == v1
    tags = version_tags(name, v2)
    assert tags["promotion"] == "rejected"
    assert tags["promotion_reason"] == worse.reason and "0.5 > champion 0.45 x (1 + 0.02)" in worse.reason
    assert s3.list_objects_v2(Bucket=bucket, Prefix=f"{name}/{v2}/").get("KeyCount", 0) == 0

    v3, better = compete(0.41)
    assert better.promoted and champion_version(name) == v3
    assert version_tags(name, v3)["promotion_reason"] == better.reason
    assert client.get_model_version_by_alias(name, "challenger").version == v3

    # the release comes first: when it cannot be written, champion does not move
    v4 = _register(tiny_model, name, 0.30)
    win = decide({"fid": 0.30}, {"fid": 0.41}, "fid", 0.02)
    with pytest.raises(Exception, match="NoSuchBucket|does not exist"):
        apply(win, name, v4, _release_files(tiny_model, v4, 0.30, tmp_path / v4), s3,
              f"no-such-bucket-{uuid.uuid4().hex[:8]}")
    assert champion_version(name) == v3
    assert "promotion" not in version_tags(name, v4)


@pytest.mark.stack
def test_cli_samples_the_champion_exactly_like_the_local_model(stack, tiny_model, name, tmp_path):
    version = _register(tiny_model, name, 0.4)
    win = decide({"fid": 0.4}, None, "fid", 0.02)
    apply(win, name, version, _release_files(tiny_model, version, 0.4, tmp_path / "r"),
          stack.s3_client(), stack.settings.releases_bucket)
    runner = CliRunner()
    pictures = {}
    for label, source in (("local", ["-d", str(tiny_model)]), ("champion", ["--model", f"{name}@champion"]),
                          ("version", ["--model", f"{name}/{version}"])):
        result = runner.invoke(app, ["sample", *source, "--n", "9", "--seed", "7",
                                     "--out", str(tmp_path / f"{label}.png")])
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        pictures[label] = np.asarray(Image.open(tmp_path / f"{label}.png"))
    assert len(np.unique(pictures["local"])) > 16  # a real picture, not a saturated one
    assert np.array_equal(pictures["local"], pictures["champion"])
    assert np.array_equal(pictures["local"], pictures["version"])

    fails_cleanly(runner.invoke(app, ["sample", "--model", f"{name}@gold", "--out",
                                       str(tmp_path / "no.png")]), 1, "has no alias 'gold'")
    assert not (tmp_path / "no.png").exists()
