"""`dmops reproduce`: a version registered by the pipeline is rebuilt from its lineage alone, in a
worktree of its commit, on its dataset version pulled from the DVC remote, against the real
servers (SeaweedFS S3, MLflow, Prefect) on loopback; the tiny profile with one training step.

The user's repository is built the way tests/test_pipeline.py builds its own (params.yaml,
dvc.yaml, the deployments file and the code, in git + DVC), under a model name of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from user_repo import git, make_user_repo, params_for

MODEL = "reproduce-test"
WEAK = ["--set", "train.steps=1"]

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def dmops(*args, cwd, timeout=900):
    return subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, stack):
    """A user's checkout with the code in it (the commit's own diffusion/ and tasks/ are what a
    reproduction runs), in git + DVC with the remote in the stack's data bucket."""
    params = params_for(MODEL, MODEL)
    # the repository's own feature cache, not the session's shared one: the reproduction trains
    # its extractor anew, and the recorded metrics must come from one this module's run trained
    # the same way (not from one another module's process left in the shared cache)
    params["evaluate"]["feature_cache"] = "data/features"
    return make_user_repo(tmp_path_factory.mktemp("repro-repo"), stack.settings.data_bucket,
                          params, {"NOTES.md": "a tracked file that is not code\n"})


@pytest.fixture(scope="module")
def registered(repo):
    proc = dmops("run", "--repo", repo, *WEAK, cwd=repo)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    import mlflow

    return mlflow.MlflowClient().get_model_version_by_alias(MODEL, "champion")


def logged_model(version) -> str:
    """The id of the logged model a version was registered from (its source models:/<id>), which
    the MLflow server wants named when the same model is registered again."""
    return version.model_id or version.source.removeprefix("models:/")


def worktrees(repo) -> list[str]:
    return [line for line in git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


@pytest.mark.timeout(1800)  # the stack, the pipeline run and the reproduction, on shared cores
def test_champion_reproduces_with_identical_weights_and_equal_metrics(registered, repo):
    proc = dmops("reproduce", f"{MODEL}@champion", "--repo", repo, "--json", cwd=repo)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert result["reproduced"] and result["differences"] == [], result
    assert result["version"] == registered.version
    assert result["served_as"] == registered.tags["served_as"]
    weights = result["weights"]
    assert weights["registered"] == weights["reproduced"] == registered.tags["weights_sha256"]
    compared = {m["name"]: m for m in result["metrics"] if m["equal"] is not None}
    assert {"fid", "fid_floor", "kid_mean"} <= set(compared), result["metrics"]
    recorded = json.loads(registered.tags["metrics"])
    for name in ("fid", "fid_floor", "kid_mean"):
        assert compared[name]["equal"], compared[name]
        assert compared[name]["reproduced"] == pytest.approx(recorded[name], abs=5e-6)
    assert all(line["equal"] for line in result["lineage"]), result["lineage"]
    # progress went to stderr, the worktree is gone again
    commit = registered.tags["git_commit"]
    assert f"worktree of commit {commit[:12]}" in proc.stderr
    assert f"md5 {registered.tags['dataset_md5']}" in proc.stderr
    assert "reproduce: evaluate" in proc.stderr
    assert worktrees(repo) == [f"worktree {repo.resolve()}"]


def test_a_missing_version_is_a_clear_error(registered, repo):
    proc = dmops("reproduce", f"{MODEL}/999", "--repo", repo, cwd=repo)
    # a well-formed reference the registry cannot answer: 1, as `dmops sample --model` says it
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"model '{MODEL}' has no version 999" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_version_from_a_dirty_tree_is_refused(registered, repo):
    """A version whose commit tag says the tree had uncommitted changes (how git_commit marks
    it is tested in test_reuse_guards.py): the same model registered again with such a tag."""
    import mlflow

    dirty = registered.tags["git_commit"] + "-dirty"
    copy = mlflow.MlflowClient().create_model_version(
        MODEL, registered.source, run_id=registered.run_id,
        tags={**registered.tags, "git_commit": dirty}, model_id=logged_model(registered))
    proc = dmops("reproduce", f"{MODEL}/{copy.version}", "--repo", repo, cwd=repo)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "uncommitted changes" in proc.stderr and dirty in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert worktrees(repo) == [f"worktree {repo.resolve()}"]


def test_a_dataset_version_missing_from_the_remote_is_a_clear_error(registered, repo):
    """A version whose lineage names a dataset md5 the DVC remote does not hold (never pushed,
    or garbage-collected): the same registered model, registered again with such a tag."""
    import mlflow

    client = mlflow.MlflowClient()
    absent = "0" * 32 + ".dir"
    copy = client.create_model_version(MODEL, registered.source, run_id=registered.run_id,
                                       tags={**registered.tags, "dataset_md5": absent},
                                       model_id=logged_model(registered))
    proc = dmops("reproduce", f"{MODEL}/{copy.version}", "--repo", repo, cwd=repo)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"md5 {absent} is not in DVC remote 'dmops'" in proc.stderr, proc.stderr
    assert worktrees(repo) == [f"worktree {repo.resolve()}"]


def test_a_version_without_its_recorded_config_is_a_clear_error(registered, repo):
    """The configuration is read from the version's run (lineage/config.json): a version whose
    run holds none -- here the same model registered under the flow's parent run -- is refused."""
    import mlflow

    client = mlflow.MlflowClient()
    copy = client.create_model_version(MODEL, registered.source,
                                       run_id=registered.tags["mlflow_parent_run_id"],
                                       tags=registered.tags, model_id=logged_model(registered))
    proc = dmops("reproduce", f"{MODEL}/{copy.version}", "--repo", repo, cwd=repo)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "holds no lineage/config.json" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_the_commit_s_own_replay_script_is_used_whatever_its_layout(tmp_path):
    from tasks.steps.reproduce import ReproduceError, replay_script

    with pytest.raises(ReproduceError, match="predates `dmops reproduce`"):
        replay_script(tmp_path)
    old = tmp_path / "tasks" / "reproduce_steps.py"   # a commit from before tasks/steps/
    old.parent.mkdir()
    old.write_text("# old layout\n")
    assert replay_script(tmp_path) == old
    new = tmp_path / "tasks" / "steps" / "reproduce_steps.py"
    new.parent.mkdir()
    new.write_text("# new layout\n")
    assert replay_script(tmp_path) == new
