"""A user's pipeline repository for end-to-end tests: params.yaml, dvc.yaml, the deployments
file and the code (flows/, tasks/, diffusion/: `python -m flows.cli` run inside imports them
from here, as in a real checkout), in git + DVC with the remote in the test stack's bucket."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def git(repo, *args) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout


def dvc(repo, *args) -> None:
    subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=repo, check=True,
                   capture_output=True)


# the evaluation's feature extractors, shared by every user repository of the session (set by
# conftest.py's session fixture): an extractor is keyed by its training rows, seed, steps and code
# (diffusion/features.py), so repositories of the same dataset reuse one instead of each training
# its own (7-40 s per repository on the shared machine); None: each repository's data/features
SHARED_FEATURE_CACHE: Path | None = None


def params_for(model: str, experiment: str) -> dict:
    """The project's params.yaml with the tiny profile, a model and experiment of the test's own,
    and the session's SHARED_FEATURE_CACHE when there is one."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "tiny"
    if SHARED_FEATURE_CACHE is not None:
        params["evaluate"]["feature_cache"] = str(SHARED_FEATURE_CACHE)
    params["pipeline"]["model_name"] = model
    params["pipeline"]["experiment"] = experiment
    return params


def make_user_repo(repo: Path, data_bucket: str, params: dict, extra_files: dict[str, str] | None = None) -> Path:
    """Fill `repo` (an empty folder) and commit it."""
    shutil.copy(ROOT / "dvc.yaml", repo)
    (repo / "infra").mkdir()
    shutil.copy(ROOT / "infra" / "prefect.yaml", repo / "infra")
    for package in ("flows", "tasks", "diffusion"):
        shutil.copytree(ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / ".gitignore").write_text("runs/\ndata/features/\n")
    for name, text in (extra_files or {}).items():
        (repo / name).write_text(text)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "config", "user.name", "test")
    dvc(repo, "init", "-q")
    # `dvc config core.analytics false` and `dvc remote add -d dmops <url>`, written by DVC's own
    # config code in this process (each `dvc` command is a Python start-up of 1-2 s)
    from dvc.config import Config

    with Config(dvc_dir=repo / ".dvc").edit("repo") as conf:
        conf["core"].update({"analytics": "false", "remote": "dmops"})
        conf["remote"]["dmops"] = {"url": f"s3://{data_bucket}/datasets"}
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a user's pipeline repo")
    return repo
