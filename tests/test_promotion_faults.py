"""Promotion under faults, against the stack's real servers: MLflow stopped by its process id
right after the release's manifest is written (the registry never hears of the release), a
release corrupted while its promotion is unfinished, and four promotions of models of known
quality started at once."""

from __future__ import annotations

import threading

import pytest
import torch
from typer.testing import CliRunner

from diffusion.model import load_model, save_model
from flows.cli import app
from outages import Outage
from promotion_setup import model_name, promote_version, promotion_setup, register  # noqa: F401
from tasks.steps.evaluate import score_model
from tasks.adapters.promotion_history import read_history
from tasks.adapters.promotion_lock import lease_key
from tasks.adapters.pending_promotion import PromotionInterrupted, read_pending
from tasks.adapters.registry import champion_version, version_tags
from tasks.adapters.release import ReleaseError, pending_key, read_manifest, verify_release
from cli_assertions import fails_cleanly

pytestmark = pytest.mark.stack


@pytest.fixture
def short_retries(monkeypatch):
    """A server that stays down is given up on after seconds, not a minute."""
    monkeypatch.setenv("DMOPS_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("DMOPS_RETRY_BASE_S", "0.5")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def _kill_after_manifest(s3, down: Outage, name: str, version: str) -> list[int]:
    """Stop `down`'s server the moment the store has answered the write of the release's
    manifest (botocore's needs-retry event sees every answer; this one only watches)."""
    killed: list[int] = []

    def watch(response=None, request_dict=None, **_):
        if (response is not None and not killed and 200 <= response[0].status_code < 300
                and request_dict["url"].endswith(f"/{name}/{version}/manifest.json")):
            killed.append(down.kill())
        return None

    s3.meta.events.register("needs-retry.s3.PutObject", watch)
    return killed


def _interrupted(promotion_setup, stack, tmp_path) -> tuple[str, str, str, str]:
    """v1 champion; v2's promotion interrupted by MLflow stopping right after v2's release
    manifest was written.  Returns (name, v1, v2, the error's message), MLflow running again."""
    s3, bucket, name = stack.s3_client(), stack.settings.releases_bucket, model_name()
    v1, v2 = (register(promotion_setup["model_dir"], name) for _ in range(2))
    promote_version(promotion_setup, name, v1, promotion_setup["metrics"], tmp_path / v1, bucket)
    down = Outage(stack, "mlflow")
    killed = _kill_after_manifest(s3, down, name, v2)
    try:
        better = {**promotion_setup["metrics"], "fid": promotion_setup["metrics"]["fid"] * 0.5}
        with pytest.raises(PromotionInterrupted) as info:
            promote_version(promotion_setup, name, v2, better, tmp_path / v2, bucket, s3=s3)
        assert killed, "MLflow was never stopped: the manifest write was not seen"

        # what a user sees while MLflow is down: one line naming the server and what is left
        message = str(info.value)
        assert "\n" not in message
        assert f"MLflow server at {stack.settings.mlflow_url}" in message
        assert f"promotion of {name} v{v2}" in message and "left pending" in message
        # the release is written, but it is not final: readers refuse it
        uri = f"s3://{bucket}/{name}/{v2}/"
        assert read_manifest(s3, uri) is not None
        with pytest.raises(ReleaseError, match="is not final: the promotion of"):
            verify_release(s3, uri)
        result = CliRunner().invoke(app, ["sample", "--release", uri, "-o",
                                          str(tmp_path / "pending.png")])
        fails_cleanly(result, 1, "is not final", f"{name} v{v2}")
        assert read_pending(s3, bucket, name).version == v2
        shown = CliRunner().invoke(app, ["history", name, "--bucket", bucket])
        assert shown.exit_code == 0 and f"pending: the promotion of {name} v{v2}" in shown.stderr
    finally:
        down.restore()
    # the registry never heard of it: champion unchanged, no promotion tags on v2
    assert champion_version(name) == v1
    assert "promotion" not in version_tags(name, v2)
    assert s3.list_objects_v2(Bucket=bucket, Prefix=lease_key(name))["KeyCount"] == 0
    return name, v1, v2, message


def test_mlflow_stopping_during_the_release_leaves_a_pending_promotion_its_retry_completes(
        promotion_setup, stack, tmp_path, short_retries):
    s3, bucket = stack.s3_client(), stack.settings.releases_bucket
    name, v1, v2, _ = _interrupted(promotion_setup, stack, tmp_path)

    # the same promotion run again (a retried task, a rerun of the flow run): finished, not
    # decided a second time
    logs: list[str] = []
    better = {**promotion_setup["metrics"], "fid": promotion_setup["metrics"]["fid"] * 0.5}
    result = promote_version(promotion_setup, name, v2, better, tmp_path / "again", bucket,
                             log=logs.append)
    assert any(f"found the unfinished promotion of {name} v{v2}" in line for line in logs), logs
    assert any(f"was completed: v{v2} is champion" in line for line in logs), logs
    assert result.decision.promoted and result.previous_champion == v1
    assert champion_version(name) == v2
    assert version_tags(name, v2)["promotion"] == "promoted"
    assert verify_release(s3, f"s3://{bucket}/{name}/{v2}/")["version"] == v2
    history = read_history(s3, bucket, name)
    assert [(e["version"], e["decision"]) for e in history] == [(v1, "promoted"), (v2, "promoted")]
    assert history[-1]["previous_champion"] == v1 and history[-1]["completed_by"] == f"flow-run-{v2}"
    assert read_pending(s3, bucket, name) is None
    assert s3.list_objects_v2(Bucket=bucket, Prefix=pending_key(name))["KeyCount"] == 0


def test_an_unfinished_promotion_whose_release_was_corrupted_is_rolled_back_by_the_next(
        promotion_setup, stack, tmp_path, short_retries):
    s3, bucket = stack.s3_client(), stack.settings.releases_bucket
    name, v1, v2, _ = _interrupted(promotion_setup, stack, tmp_path)
    # one bit of the pending release's weights flips in the store
    manifest = read_manifest(s3, f"s3://{bucket}/{name}/{v2}/")
    entry = max(manifest["files"], key=lambda e: e["size"])
    key = f"{name}/{v2}/{entry['key']}"
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[-7] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))

    # another run's challenger, worse than v1: the unfinished promotion is undone first, then
    # the challenger is decided against v1
    v3 = register(promotion_setup["model_dir"], name)
    logs: list[str] = []
    worse = {**promotion_setup["metrics"], "fid": promotion_setup["metrics"]["fid"] * 1.5}
    result = promote_version(promotion_setup, name, v3, worse, tmp_path / v3, bucket,
                             log=logs.append)
    assert any(f"promotion of {name} v{v2}" in line and "was rolled back (its release fails "
               "verification" in line and f"champion stays v{v1}" in line for line in logs), logs
    assert not result.decision.promoted and result.previous_champion == v1
    assert champion_version(name) == v1
    assert version_tags(name, v2)["promotion"] == "rolled_back"
    assert "rolled back: its release fails verification" in version_tags(name, v2)["promotion_reason"]
    assert s3.list_objects_v2(Bucket=bucket, Prefix=f"{name}/{v2}/").get("KeyCount", 0) == 0
    history = read_history(s3, bucket, name)
    assert [(e["version"], e["decision"], e["champion"]) for e in history] == \
        [(v1, "promoted", v1), (v2, "rolled_back", v1), (v3, "rejected", v1)]
    assert read_pending(s3, bucket, name) is None


# --- four at once -----------------------------------------------------------------------------

def _degraded(model_dir, scale: float, out):
    """The model with Gaussian noise of `scale` x each tensor's standard deviation added to its
    weights: a model of known, worse quality (scale 0: the model itself)."""
    denoiser, spec = load_model(model_dir)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in denoiser.net.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=generator) * p.std() * scale)
    return save_model(denoiser.net, spec, out)


def test_four_promotions_at_once_end_with_the_best_champion_and_every_decision(
        promotion_setup, stack, tmp_path):
    """Each promotion scores the champion as it is at its own decision (under the lease), so
    whatever order they run in, the best model ends as champion."""
    s3, bucket, name = stack.s3_client(), stack.settings.releases_bucket, model_name()
    models = {}
    for scale in (0.0, 0.3, 1.0, 3.0):
        folder = _degraded(promotion_setup["model_dir"], scale, tmp_path / f"model-{scale}")
        metrics = score_model(folder, promotion_setup["cfg"], tmp_path / f"score-{scale}",
                              data_dir=promotion_setup["data_dir"])
        models[register(folder, name)] = (folder, metrics)
    fids = sorted(m["fid"] for _, m in models.values())
    # known quality: the best is better than every other by far more than the 2 % tolerance,
    # so it must end as champion whatever order the four decide in
    assert fids[1] > fids[0] * 1.05, fids
    best = min(models, key=lambda v: models[v][1]["fid"])

    start, results, errors = threading.Barrier(len(models)), {}, []

    def promoter(version):
        folder, metrics = models[version]
        start.wait()
        try:
            results[version] = promote_version(promotion_setup, name, version, metrics,
                                               tmp_path / f"work-{version}", bucket,
                                               model_dir=folder, log=lambda line: None,
                                               lease={"poll_s": 0.2})
        except Exception as e:   # reported below with the others
            errors.append(f"v{version}: {e!r}")

    threads = [threading.Thread(target=promoter, args=(v,)) for v in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    assert not errors and set(results) == set(models), errors

    assert champion_version(name) == best
    history = read_history(s3, bucket, name)
    assert sorted(e["version"] for e in history) == sorted(models)
    # serialized: each decision was made against the champion the one before left
    champion = None
    for entry in history:
        assert entry["previous_champion"] == champion, history
        champion = entry["champion"]
        if entry["decision"] == "promoted":
            assert verify_release(s3, entry["release"])["version"] == entry["version"]
        if entry["previous_champion"] is not None:   # scored now, on the same data
            previous_fid = models[entry["previous_champion"]][1]["fid"]
            assert entry["champion_value"] == pytest.approx(previous_fid, rel=1e-6)
    assert champion == best
    assert read_pending(s3, bucket, name) is None
    assert s3.list_objects_v2(Bucket=bucket, Prefix=lease_key(name))["KeyCount"] == 0
