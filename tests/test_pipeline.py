"""The training pipeline end to end, against real servers (SeaweedFS S3, MLflow, Prefect) on
loopback, in a temporary git + DVC repository, with the tiny profile.

The flow runs the way users run it, through `dmops run` in a subprocess. Each scenario builds
on the registry state the previous ones left, in file order:

1. a deliberately weak model (1 training step) becomes the first champion (no champion yet);
2. a rerun with unchanged inputs reuses every cached step; `--refresh` recomputes them; a
   committed change to the ML code (the EDM loss weighting) recomputes every model step, and
   the version names the code that made its weights;
3. a properly trained model beats it: champion moves, an S3 release appears;
4. the weak settings again: a worse challenger, champion stays, the reason is recorded;
5. bad datasets stop at the gate: no version is created and the champion is untouched; data
   of another sample shape is refused before training, naming pipeline.model_name;
6. a deployment from infra/prefect.yaml runs through a worker and completes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline_run import MODEL, WEAK, run
from user_repo import git, params_for
# 150 steps with a short warm-up: far better than 1 step, still seconds on one core
GOOD = ["--set", "train.steps=150", "--set", "train.lr_warmup_steps=10"]

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def write_params(repo: Path, data: dict | None = None, gate: dict | None = None) -> None:
    params = params_for(MODEL, "pipeline-test")
    if data is not None:   # a dataset of the user's, beside digits, picked for the run
        params["datasets"]["mine"] = data
        params["dataset"] = "mine"
    params["pipeline"]["validate_data"].update(gate or {})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo(pipeline_repo):
    """The user's checkout of tests/pipeline_run.py, shared with tests/test_mlflow_ui.py."""
    return pipeline_repo


def client():
    import mlflow

    return mlflow.MlflowClient()


def champion():
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(MODEL, "champion")
    except MlflowException:
        return None


def versions() -> list:
    from mlflow.exceptions import MlflowException

    try:
        return client().search_model_versions(f"name='{MODEL}'")
    except MlflowException:
        return []


def outcome(proc) -> dict:
    """The lines `dmops run` prints at the end, by label."""
    lines = {}
    for line in proc.stdout.splitlines():
        label, sep, value = line.partition(":")
        if sep and label.strip() in ("registered", "promotion", "release", "cached"):
            lines[label.strip()] = value.strip()
    return lines


@pytest.fixture(scope="module")
def first(first_pipeline_run):
    """The session's first `dmops run` (tests/pipeline_run.py), run once for every module."""
    return first_pipeline_run


def test_first_run_registers_a_champion_with_lineage_tags(first, repo):
    result = outcome(first)
    assert "PROMOTED" in result["promotion"], first.stdout
    assert result["release"].startswith("s3://")
    current = champion()
    assert current is not None and current.version == "1"
    tags = current.tags
    dataset_md5 = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["prepare@digits"]["outs"][0]["md5"]
    assert tags["dataset_md5"] == dataset_md5
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    assert tags["git_commit"].startswith(head.stdout.strip())
    assert tags["validation"].lower().startswith("dataset") or "pass" in tags["validation"].lower()
    assert json.loads(tags["metrics"])["fid"] > 0
    assert tags["prefect_flow_run_id"]
    assert client().get_model_version(MODEL, "1").aliases  # challenger, then champion
    summary = subprocess.run([sys.executable, "-m", "prefect", "artifact", "inspect",
                              "training-pipeline-summary"], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "COLUMNS": "500"})
    assert summary.returncode == 0, summary.stderr
    text = " ".join(summary.stdout.split())  # the CLI wraps long lines
    assert "**Promotion:** promoted" in text and "Quality versus NFE" in text, text[:2000]


def test_run_tree_has_a_nested_run_per_step_with_metrics_and_pngs(first):
    import mlflow

    c = client()
    parent_id = c.get_model_version(MODEL, "1").tags["mlflow_parent_run_id"]
    parent = c.get_run(parent_id)
    children = mlflow.search_runs(experiment_ids=[parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                                  output_format="list")
    steps = {r.data.tags["step"]: r for r in children}
    assert set(steps) >= {"prepare_dataset", "validate_data", "train_teacher", "distill_progressive",
                          "distill_consistency", "evaluate", "register_model", "promote"}
    assert any(k.startswith("train/loss") for k in steps["train_teacher"].data.metrics)
    assert len(c.get_metric_history(steps["train_teacher"].info.run_id, "train/loss")) >= 1
    assert any(k.startswith("fid/teacher") for k in steps["evaluate"].data.metrics)

    def files(run_id, path=""):
        out = []
        for f in c.list_artifacts(run_id, path):
            out += files(run_id, f.path) if f.is_dir else [f.path]
        return out

    assert any(p.endswith(".png") for p in files(steps["evaluate"].info.run_id))
    assert any(p.endswith(".png") for p in files(steps["train_teacher"].info.run_id))
    assert "validation/result.json" in files(steps["validate_data"].info.run_id)
    assert any(p.endswith("index.html") for p in files(steps["validate_data"].info.run_id))


def flow_run_logs(flow_run_id: str) -> list:
    """Every Prefect log record of the flow run, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    with get_client(sync_client=True) as prefect:
        records = []
        while len(records) % 200 == 0:   # pages of 200
            page = prefect.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=200, offset=len(records), sort=LogSort.TIMESTAMP_ASC)
            records += page
            if not page:
                break
    return records


def test_the_flow_runs_prefect_logs_hold_the_evaluation_rows_and_no_library_print(first):
    """What a person reads of a run, in Prefect and on the console: one record per evaluation
    row and a progress line per step; nothing a library printed (prdc's "Num real", MLflow's
    "View run"), no hint that does not apply (DVC's push hint), no carriage-return bar."""
    import mlflow

    version = client().get_model_version(MODEL, "1")
    records = flow_run_logs(version.tags["prefect_flow_run_id"])
    messages = [r.message for r in records]
    evaluate = mlflow.search_runs(
        experiment_ids=[client().get_run(version.tags["mlflow_parent_run_id"]).info.experiment_id],
        filter_string=(f"tags.mlflow.parentRunId = '{version.tags['mlflow_parent_run_id']}' "
                       "and tags.step = 'evaluate'"), output_format="list")[0]
    table_rows = [k for k in evaluate.data.metrics if k.startswith("fid/")]
    rows = [r.message for r in records
            if r.name == "diffusion.evaluation" and re.match(r"\[\d+/\d+\] .* FID ", r.message)]
    assert len(rows) >= len(table_rows) >= 1, messages   # promote may score a champion too
    assert [m for m in messages if re.match(r"pipeline \[\d/8\]", m)][-1].startswith(
        "pipeline [8/8] promote done in "), messages
    printed = first.stdout + first.stderr
    for noise in ("Num real", "View run", "View experiment", "Use `dvc push`", "autostage"):
        assert not any(noise in m for m in messages), (noise, messages)
        assert noise not in printed, (noise, printed[-3000:])
    assert "\r" not in printed and max(map(len, printed.splitlines())) < 1000


def test_parent_and_promote_runs_carry_the_headline_numbers_commit_and_dataset(first, repo):
    """What the runs list shows first: the served model's numbers and what defines the run on
    the parent run, the decision on the promote run, the commit on every run, the dataset as
    the parent's input."""
    import mlflow

    from tasks.steps.headline import HEADLINE_METRICS, HEADLINE_PARAMS

    c = client()
    version = c.get_model_version(MODEL, "1")
    parent = c.get_run(version.tags["mlflow_parent_run_id"])
    params, metrics = parent.data.params, parent.data.metrics
    assert set(HEADLINE_PARAMS) <= set(params), params
    assert set(HEADLINE_METRICS) <= set(metrics), metrics
    assert params["dataset_md5"] == version.tags["dataset_md5"]
    assert params["git_commit"] == version.tags["git_commit"] and params["profile"] == "tiny"
    served = json.loads(version.tags["metrics"])
    assert metrics["fid"] == pytest.approx(served["fid"], abs=1e-5)   # the tag is rounded to 5
    children = mlflow.search_runs(experiment_ids=[parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  output_format="list")
    steps = {r.data.tags["step"]: r for r in children}
    evaluated = steps["evaluate"].data.metrics
    teacher_best = min(v for k, v in evaluated.items() if k.startswith("fid/teacher."))
    assert metrics["fid_vs_teacher_best"] == pytest.approx(metrics["fid"] / teacher_best, rel=1e-9)
    assert metrics["fid_vs_floor"] == pytest.approx(metrics["fid"] / evaluated["fid_floor"], rel=1e-9)
    assert metrics["promoted"] == 1.0 and metrics["nfe"] == float(version.tags["nfe"])

    head = git(repo, "rev-parse", "HEAD").strip()
    for r in [parent, *children]:
        assert r.data.tags.get("mlflow.source.git.commit") == head, r.data.tags.get("step")

    promote = steps["promote"].data
    assert promote.metrics["promoted"] == 1.0 and promote.metrics["challenger_fid"] > 0
    assert float(promote.params["promote.tolerance"]) >= 0 and promote.params["challenger_version"] == "1"

    inputs = parent.inputs.dataset_inputs
    data_name = yaml.safe_load((repo / "params.yaml").read_text())["dataset"]
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == \
        [(data_name, version.tags["dataset_md5"])], inputs
    # the registry's descriptions: the model's purpose, the version's model card with links
    assert "champion" in c.get_registered_model(MODEL).description
    card = version.description
    assert card.startswith(f"# {MODEL}, version 1") and "## Evaluation" in card, card
    assert f"/runs/{parent.info.run_id}" in card and version.tags["prefect_flow_run_id"] in card
    assert outcome(first)["release"] in card   # promoted: the card of its release
    # the object DVC pushed: <remote url>/files/md5/<2>/<rest>
    md5 = version.tags["dataset_md5"]
    assert f"/files/md5/{md5[:2]}/{md5[2:]}" in inputs[0].dataset.source


def test_release_checksums_match_and_sample_reproduces_images(first, repo, stack, tmp_path):
    release = outcome(first)["release"]
    bucket, _, prefix = release.removeprefix("s3://").partition("/")
    s3 = stack.s3_client()
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=prefix.rstrip("/") + "/manifest.json")["Body"].read())
    files = manifest["files"]
    assert files, manifest
    for entry in files:  # each file's object is the one the manifest names
        body = s3.get_object(Bucket=bucket, Key=prefix.rstrip("/") + "/" + entry["key"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"], entry["path"]

    a, b = tmp_path / "release.png", tmp_path / "registry.png"
    run("sample", "--release", release, "--out", a, "--n", 9, "--seed", 5, cwd=repo)
    run("sample", "--model", f"{MODEL}@champion", "--out", b, "--n", 9, "--seed", 5, cwd=repo)
    assert a.read_bytes() == b.read_bytes()


def test_unchanged_rerun_hits_the_cache_and_refresh_does_not(first, repo):
    before = {v.version for v in versions()}
    again = outcome(run("run", "--repo", repo, *WEAK, cwd=repo))
    # the gate reruns once: its drift reference is now the first run's statistics
    assert {"train_teacher", "distill_progressive", "distill_consistency",
            "evaluate"} <= set(again["cached"].split(", ")), again
    # the same model as the champion: no new version, one line that says so
    same = f"nothing: {MODEL} version {champion().version}, the champion, was made from the same inputs"
    assert again["registered"].startswith(same), again
    assert again["promotion"] == "none: nothing was registered; the champion stays", again
    refreshed = run("run", "--repo", repo, *WEAK, "--refresh", cwd=repo)
    fresh = outcome(refreshed)
    assert fresh["cached"].startswith("no step"), fresh
    # "recompute" means it: the teacher and the students train again from step 0, not resume
    # the finished checkpoint or reuse the finished student of the same inputs
    said = refreshed.stdout + refreshed.stderr
    assert "resuming from" not in said and "reusing the finished" not in said, said[-3000:]
    # recomputed on the CPU from the same seeds, data and code: bit-identical, still the champion
    assert fresh["registered"].startswith(same), fresh
    assert {v.version for v in versions()} == before


MODEL_STEPS = {"train_teacher", "distill_progressive", "distill_consistency", "evaluate"}


def test_the_buckets_the_settings_name_hold_the_release_history_and_gate_reference(first, repo, stack):
    """pipeline.releases_bucket and pipeline.data_bucket: a team's own buckets (names are global
    on AWS) get the release, the promotion history and the data gate's reference; the default
    buckets get nothing of this model.  The model steps come from the cache (the buckets are
    not part of what made the model)."""
    import uuid

    s3, suffix = stack.s3_client(), uuid.uuid4().hex[:8]
    releases, data, model = f"team-releases-{suffix}", f"team-data-{suffix}", f"{MODEL}-buckets"
    for bucket in (releases, data):
        s3.create_bucket(Bucket=bucket)
    out = outcome(run("run", "--repo", repo, *WEAK, "--set", f"pipeline.model_name={model}",
                      "--set", f"pipeline.releases_bucket={releases}",
                      "--set", f"pipeline.data_bucket={data}", cwd=repo))
    assert out["release"].startswith(f"s3://{releases}/{model}/"), out
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=releases).get("Contents", [])]
    assert any(k.startswith(f"{model}/_history/") for k in keys), keys
    assert s3.list_objects_v2(Bucket=data)["KeyCount"] > 0        # the gate's reference
    assert s3.list_objects_v2(Bucket=stack.settings.releases_bucket,
                              Prefix=f"{model}/")["KeyCount"] == 0
    bad = run("run", "--repo", repo, "--set", "pipeline.releases_bucket=Team_Releases", cwd=repo,
              check=False)
    assert bad.returncode == 2 and "pipeline.releases_bucket" in bad.stderr, bad.stderr


def test_a_committed_change_to_the_ml_code_recomputes_every_model_step(first, repo):
    """Issue item 1: doubling the EDM weight in diffusion/objectives.py and committing used to
    bring teacher, students and evaluation back from the cache under the new commit's tag."""
    objectives = repo / "diffusion" / "objectives.py"
    original = objectives.read_text()
    edm = "return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2"
    assert edm in original
    changed = original.replace(edm, "return 2.0 * (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2")
    before = {v.version for v in versions()}
    objectives.write_text(changed)
    git(repo, "commit", "-qam", "double the EDM weighting")
    try:
        proc = run("run", "--repo", repo, *WEAK, cwd=repo)
    finally:
        objectives.write_text(original)
        git(repo, "commit", "-qam", "restore the EDM weighting")
    cached = outcome(proc)["cached"]
    assert not MODEL_STEPS & set(cached.split(", ")), cached
    new = max((v for v in versions() if v.version not in before), key=lambda v: int(v.version))
    old = client().get_model_version(MODEL, "1")
    assert new.tags["weights_code_sha256"] != old.tags["weights_code_sha256"]
    assert new.tags["weights_git_commit"] == new.tags["git_commit"] != old.tags["git_commit"]
    # and the restored code finds the first run's results again
    again = outcome(run("run", "--repo", repo, *WEAK, cwd=repo))
    assert MODEL_STEPS <= set(again["cached"].split(", ")), again
    # the first run's model again: the champion when it still is (nothing registered), else
    # the new version
    latest = (champion() if again["registered"].startswith("nothing:")
              else max(versions(), key=lambda v: int(v.version)))
    assert latest.tags["weights_code_sha256"] == old.tags["weights_code_sha256"]
    assert latest.tags["weights_git_commit"] == old.tags["weights_git_commit"]  # made by run 1


def test_better_model_moves_champion_and_worse_does_not(first, repo):
    before = champion().version
    better = outcome(run("run", "--repo", repo, *GOOD, cwd=repo))
    assert "PROMOTED" in better["promotion"], better
    promoted = champion()
    assert promoted.version != before
    assert better["release"].rstrip("/").endswith(f"/{promoted.version}")

    worse = outcome(run("run", "--repo", repo, *WEAK, cwd=repo))
    assert "not promoted" in worse["promotion"], worse
    assert champion().version == promoted.version
    loser = max(versions(), key=lambda v: int(v.version))
    assert loser.version != promoted.version
    assert loser.tags.get("promotion_reason"), loser.tags


def _bad_npz(path: Path, kind: str) -> None:
    from diffusion.data import load_digits

    ds = load_digits()
    x, y = ds.x.numpy().copy(), ds.y.numpy()
    if kind == "nan":
        x[::7, 0, 2, 3] = np.nan
    elif kind == "shape":
        x = np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)  # 16 x 16 instead of 8 x 8
    elif kind == "duplicates":
        half = len(x) // 2
        x[half:2 * half], y[half:2 * half] = x[:half], y[:half]
    np.savez(path, x=x, y=y)


@pytest.mark.parametrize("kind, expected", [("nan", "nan"), ("shape", "shape"),
                                            ("duplicates", "duplicat")])
def test_bad_dataset_fails_the_gate_and_changes_nothing(first, repo, kind, expected):
    before_champion, before_versions = champion().version, len(versions())
    npz = repo / "data" / f"bad_{kind}.npz"
    npz.parent.mkdir(exist_ok=True)
    _bad_npz(npz, kind)
    write_params(repo, {"name": "npz", "path": str(npz)})
    try:
        proc = run("run", "--repo", repo, cwd=repo, check=False)
    finally:
        write_params(repo)
    # the user's data: exit code 2 and the gate's report once, no Prefect traceback of it
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    message = proc.stderr.lower()
    assert "failed" in message and expected in message, proc.stderr[-3000:]
    both = proc.stdout + proc.stderr
    # (GX logs a Data Docs rendering error of its own for the shape case: not ours to hide)
    assert both.count("expectations:") == 1 and "DataValidationError" not in both, both[-4000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the pipeline stopped: dataset ") and "the gate's report is above" in last, last
    assert len(versions()) == before_versions
    assert champion().version == before_champion


def test_data_of_another_shape_is_refused_before_training_naming_the_model(first, repo, stack):
    """Issue item 9: a 16x16 dataset under the 8x8 model's name was registered as its
    challenger and then crashed the promotion with a ModelError."""
    before_champion, before_versions = champion().version, len(versions())
    trained_before = _teacher_runs()
    npz = repo / "data" / "big.npz"
    npz.parent.mkdir(exist_ok=True)
    _bad_npz(npz, "shape")
    # the gate is told to expect 16 x 16: the data is good, only the model name is wrong
    write_params(repo, {"name": "npz", "path": str(npz)}, {"expected_shape": [1, 16, 16]})
    try:
        proc = run("run", "--repo", repo, cwd=repo, check=False)
    finally:
        write_params(repo)
    assert proc.returncode == 2, proc.stdout[-3000:]
    message = " ".join(proc.stderr.split())
    assert "pipeline.model_name" in message and MODEL in message and "1x16x16" in message, message
    assert _teacher_runs() == trained_before  # refused before any training
    assert len(versions()) == before_versions and champion().version == before_champion
    # a refused version is not what the dataset's next version will be compared with
    from tasks.adapters.drift_reference import reference_key
    listed = stack.s3_client().list_objects_v2(Bucket=stack.settings.data_bucket,
                                               Prefix=reference_key("mine"))
    assert listed["KeyCount"] == 0, listed.get("Contents")


def _teacher_runs() -> int:
    import mlflow

    experiment = mlflow.get_experiment_by_name("pipeline-test")
    return len(mlflow.search_runs(experiment_ids=[experiment.experiment_id],
                                  filter_string="tags.step = 'train_teacher'", output_format="list"))


@pytest.mark.parametrize("setting, named", [("train.learning_rate=1", "train.learning_rate"),
                                             ("data.seed=3", "data")])
def test_a_bad_setting_is_one_line_before_the_flow_starts(first, repo, setting, named):
    before = len(versions())
    proc = run("run", "--repo", repo, "--set", setting, cwd=repo, check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and named in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(versions()) == before


def test_deployment_from_prefect_yaml_runs_through_a_worker(first, repo):
    deployed = run("deploy", cwd=repo)
    assert "deployments created" in deployed.stdout
    started = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run",
                              "training-pipeline/on-demand", "--params",
                              # a seed of its own: the same inputs as the first run would now
                              # register nothing (the champion again) and score nothing, when
                              # this test runs alone
                              json.dumps({"profile": "tiny",
                                          "overrides": [*WEAK[1::2], "train.seed=7"]})],
                             cwd=repo, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", started.stdout).group(1)
    run("worker", "--run-once", cwd=repo, timeout=900)
    inspected = subprocess.run([sys.executable, "-m", "prefect", "flow-run", "inspect", flow_run_id],
                               cwd=repo, capture_output=True, text=True, timeout=120)
    assert inspected.returncode == 0, inspected.stderr
    assert "COMPLETED" in inspected.stdout, inspected.stdout[-3000:]
    # a worker's flow run logs the core's messages too (its engine set up Prefect's logging
    # before the flow module could name the `diffusion` logger): here the promote step's
    # scoring of the champion, and the pipeline's progress lines
    records = flow_run_logs(flow_run_id)
    assert any(r.name.startswith("diffusion") for r in records), [(r.name, r.message) for r in records]
    assert any(r.message.startswith("pipeline [8/8] promote done in ") for r in records)
    assert not any("Num real" in r.message for r in records)
