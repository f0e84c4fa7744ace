"""The lineage of a pipeline step: which project code it runs and which commit that came from.

A step's code hash (`step_code_sha256`) is diffusion.provenance.code_sha256 over the step's
module and every project module it imports, transitively: `train` covers tasks/steps/train_teacher.py,
the trainer, the networks, objectives.py and the data loaders; a change to any of them changes
the hash, so the teacher is retrained, while a change to, say, the release code does not.  The
hash goes into each model's provenance (model.json), the Prefect cache key and the pipeline's
work folder, and onto every registered version as a tag.
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

from diffusion.provenance import Lineage, code_files, code_sha256

# the module that does each step's work (what `dmops <command>` and the Prefect task call)
STEP_MODULES = {
    "prepare": "tasks.steps.prepare_dataset",
    "validate": "tasks.steps.validate_data",
    "train": "tasks.steps.train_teacher",
    "distill": "tasks.steps.distill",
    "evaluate": "tasks.steps.evaluate",
}


@lru_cache(maxsize=None)
def step_code_sha256(step: str) -> str:
    """sha256 of the project code step `step` runs (see the module docstring); computed once
    per process."""
    if step not in STEP_MODULES:
        raise ValueError(f"unknown step {step!r}; steps: {', '.join(STEP_MODULES)}")
    return code_sha256([STEP_MODULES[step]])


def git_commit(repo=".") -> str:
    """HEAD of the git repository at `repo`, marked '-dirty' when tracked files other than
    dvc.lock differ from it or when project code that the steps import lies in the repository
    untracked (the commit would not hold the code that ran); 'unknown' outside a repository."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "unknown"
    # dvc.lock is rewritten by the run's own `dvc repro`: it records the data version, which
    # the dataset_md5 tag names and `dmops reproduce` fetches by md5; it does not make the code
    # or settings differ from the commit
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                ":(exclude,top)dvc.lock").stdout.strip()
    if not dirty:
        root = Path(git("rev-parse", "--show-toplevel").stdout.strip()).resolve()
        inside = [str(path) for path in project_code_files() if path.resolve().is_relative_to(root)]
        if inside:
            dirty = git("ls-files", "--others", "--exclude-standard", "--", *inside).stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


@lru_cache(maxsize=None)
def project_code_files() -> tuple[Path, ...]:
    """The source files of every step's code (what the code hashes cover); found once per
    process, like the hashes."""
    return tuple(sorted({path for module in STEP_MODULES.values()
                         for path in code_files([module]).values()}))


def step_lineage(step: str, dataset_md5: str | None = None, repo=".") -> Lineage:
    """What the library records about a step's run besides its settings and data."""
    return Lineage(code_sha256=step_code_sha256(step), dataset_md5=dataset_md5,
                   git_commit=git_commit(Path(repo)))


def model_weights_sha256(folder) -> str:
    """diffusion.provenance.weights_sha256 of the model in `folder` (any folder
    diffusion.model.load_for_sampling accepts)."""
    from diffusion.model import load_for_sampling
    from diffusion.provenance import weights_sha256

    return weights_sha256(load_for_sampling(folder)[0].net)
