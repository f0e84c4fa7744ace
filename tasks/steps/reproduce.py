"""Pipeline step: reproduce a registered model version from its lineage alone (`dmops reproduce`).

    version's tags + lineage/config.json (MLflow)
    -> `git worktree add --detach` of the recorded commit (a clean one: '-dirty' or 'unknown'
       names no commit that holds the code and params)
    -> the dataset version from the DVC remote, by the md5 the version is tagged with
    -> training, distillation and evaluation with the recorded settings, run by the commit's
       own code (tasks/steps/reproduce_steps.py in a subprocess inside the worktree), with a fresh
       feature cache
    -> the registered and the reproduced served model side by side (tasks/steps/reproduce_compare.py)

The dataset is fetched by its md5 rather than through the worktree's dvc.lock: the first run of
a repository writes dvc.lock after its commit, so the recorded commit may hold none, while the
tag always names the version that was trained on.  A fresh DVC cache in the worktree proves the
remote holds it; its md5 is computed again after the pull.

Errors are ReproduceError: exit code 2 when the lineage or the repository cannot support a
reproduction (the message says what is missing and why it blocks), 1 when a server fails or
the reproduction run itself fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import yaml

from tasks.steps import reproduce_steps
from tasks.adapters.dvc import DVCError, configure_remote, dir_md5, run_dvc
from tasks.steps.reproduce_compare import Verdict, compare
from tasks.adapters.missing_env import missing_message
from tasks.say import say

REQUIRED_TAGS = ("git_commit", "dataset", "dataset_md5", "served_as", "sampler", "nfe",
                 "weights_sha256", "weights_code_sha256")
CONFIG_ARTIFACT = "lineage/config.json"
USER, SERVER = 2, 1   # exit codes


class ReproduceError(RuntimeError):
    """A reproduction that cannot start or finish; `exit_code` 2 for what the user can fix
    (lineage, repository, dataset version), 1 for a server or a failed run."""

    def __init__(self, message: str, exit_code: int = USER):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class RegisteredVersion:
    """What the registry holds about one version: its tags, the configuration its pipeline
    ran with, and the served row's metrics (full precision from the registering run, rounded
    from the `metrics` tag)."""
    model: str
    version: str
    tags: dict[str, str]
    config: dict
    run_metrics: dict[str, float]
    tag_metrics: dict[str, float]

    @property
    def commit(self) -> str:
        return self.tags["git_commit"]


# --- the lineage --------------------------------------------------------------------------

def read_lineage(ref: str) -> RegisteredVersion:
    """The version `ref` (NAME@ALIAS or NAME/VERSION) with everything a reproduction needs;
    ReproduceError naming what is missing otherwise."""
    from tasks.adapters.registry import RegistryError, RegistryServerError, version_record

    try:
        name, version, tags, run_id = version_record(ref)
    except RegistryServerError as e:
        raise ReproduceError(str(e), SERVER) from None
    except RegistryError as e:
        # a well-formed reference the registry does not know: the CLI's rule gives it exit 1
        # (the CLI looks the version up before, so only one deleted meanwhile gets here)
        raise ReproduceError(str(e), SERVER) from None
    where = f"{name}/{version}"
    missing = [t for t in REQUIRED_TAGS if not tags.get(t)]
    if missing:
        raise ReproduceError(f"{where} has no lineage tag {', '.join(missing)}: it was not "
                             "registered by `dmops run` (or by an older dmops), so nothing names "
                             "what made it and it cannot be reproduced")
    commit = tags["git_commit"]
    if commit == "unknown":
        raise ReproduceError(f"{where} was registered from outside a git repository (git_commit "
                             "'unknown'): no commit holds the code and params that made it, so it "
                             "cannot be reproduced")
    if commit.endswith("-dirty"):
        raise ReproduceError(f"{where} was registered from a working tree with uncommitted changes "
                             f"(git_commit {commit}): the code and params that made it are in no "
                             "commit, so it cannot be reproduced; commit them and run the "
                             "pipeline again")
    from tasks.adapters.registry import run_json_artifact, run_metrics

    try:
        config = run_json_artifact(run_id, CONFIG_ARTIFACT)
        metrics = run_metrics(run_id)
    except RegistryServerError as e:
        raise ReproduceError(f"the MLflow server could not serve the lineage of {where}: {e}",
                             SERVER) from None
    except (OSError, ValueError) as e:
        raise ReproduceError(f"{where}: its run {run_id} holds no readable {CONFIG_ARTIFACT} "
                             f"({e}), so it cannot be reproduced") from None
    if config is None:
        raise ReproduceError(f"{where}: its run {run_id} holds no {CONFIG_ARTIFACT}, the "
                             "configuration it was made with, so it cannot be reproduced")
    try:
        tag_metrics = {k: float(v) for k, v in json.loads(tags.get("metrics") or "{}").items()}
    except (ValueError, TypeError, AttributeError):
        tag_metrics = {}
    return RegisteredVersion(name, version, tags, config, metrics, tag_metrics)


# --- the code -----------------------------------------------------------------------------

def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)


@contextmanager
def commit_worktree(repo: Path, commit: str, dest: Path, keep: bool = False,
                    log: Callable[[str], None] = say) -> Iterator[Path]:
    """`git worktree add --detach dest commit` in `repo`, removed again on the way out unless
    `keep`.  ReproduceError when `repo` is no git repository or lacks the commit."""
    repo = Path(repo).resolve()
    if _git(repo, "rev-parse", "--git-dir").returncode != 0:
        raise ReproduceError(f"{repo} is not a git repository: pass --repo the repository the "
                             "pipeline ran in")
    if _git(repo, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        raise ReproduceError(f"commit {commit} is not in the git repository at {repo}: pass --repo "
                             "the repository the pipeline ran in, or fetch the commit into it")
    added = _git(repo, "worktree", "add", "--detach", str(dest), commit)
    if added.returncode != 0:
        raise ReproduceError(f"`git worktree add` of {commit} failed in {repo}: "
                             f"{added.stderr.strip()}", SERVER)
    log(f"worktree of commit {commit[:12]} at {dest}")
    try:
        yield Path(dest)
    finally:
        if keep:
            log(f"kept the worktree {dest} (remove it with `git worktree remove --force {dest}`)")
        else:
            _git(repo, "worktree", "remove", "--force", str(dest))


def has_own_code(worktree: Path) -> bool:
    """Whether the commit holds the packages the steps run (a project checkout), rather than
    only data and configuration that the installed dmops runs."""
    return all((worktree / pkg / "__init__.py").is_file() for pkg in ("diffusion", "tasks"))


def _installed_roots() -> list[str]:
    import diffusion
    import tasks

    return list(dict.fromkeys(str(Path(m.__file__).resolve().parents[1]) for m in (diffusion, tasks)))


def check_installed_code(version: RegisteredVersion, log: Callable[[str], None] = say) -> None:
    """For a commit without its own code: the installed code must be the code that made the
    served weights (`weights_code_sha256`), else the run would prove nothing."""
    from tasks.steps.lineage import step_code_sha256

    step = "train" if version.tags["served_as"] == "teacher" else "distill"
    installed = step_code_sha256(step)
    recorded = version.tags["weights_code_sha256"]
    log(f"commit {version.commit[:12]} holds no diffusion/ and tasks/ packages: using the installed "
        f"dmops code ({step} code sha256 {installed[:12]})")
    if installed != recorded:
        raise ReproduceError(
            f"commit {version.commit[:12]} holds no diffusion/ and tasks/ packages, and the installed "
            f"dmops code is not the code that made {version.model}/{version.version} ({step} code "
            f"sha256 {installed[:12]} installed, {recorded[:12]} recorded): install the dmops "
            "version it was made with, then reproduce")


# --- the data -----------------------------------------------------------------------------

def fetch_dataset(worktree: Path, name: str, md5: str, remote: str, endpoint_url: str,
                  log: Callable[[str], None] = say) -> Path:
    """The dataset version `md5` of `name`, pulled from DVC remote `remote` into the worktree
    (a .dvc file naming the md5, then `dvc pull` into an empty cache); returns its folder."""
    # DVC's per-repository state goes inside the worktree, so it leaves with it
    try:
        run_dvc(worktree, "config", "--local", "core.site_cache_dir", str(worktree / ".dvc" / "site"))
        configure_remote(worktree, remote, endpoint_url)
    except DVCError as e:
        raise ReproduceError(" ".join(str(e).split())) from None
    folder = worktree / ".dmops-reproduce"
    folder.mkdir(exist_ok=True)
    target = folder / f"{name}.dvc"
    target.write_text(yaml.safe_dump({"outs": [{"md5": md5, "hash": "md5", "path": name}]}))
    log(f"dataset {name}: pulling md5 {md5} from DVC remote {remote!r} ({endpoint_url})")
    try:
        run_dvc(worktree, "pull", "-r", remote, str(target.relative_to(worktree)))
    except DVCError as e:
        text = " ".join(str(e).split())
        if "Missing cache files" in text or "not exist" in text or "missing" in text.lower():
            raise ReproduceError(f"dataset {name} version md5 {md5} is not in DVC remote "
                                 f"{remote!r}: it was never pushed there or has been removed, so the "
                                 "data the version was trained on cannot be fetched")
        raise ReproduceError(f"`dvc pull` of dataset {name} (md5 {md5}) from remote {remote!r} "
                             f"failed: {text[-800:]}", SERVER)
    data = folder / name
    actual = dir_md5(data)
    if actual != md5:
        raise ReproduceError(f"dataset {name}: the folder pulled from DVC remote {remote!r} has md5 "
                             f"{actual}, not the recorded {md5}: the remote's copy is damaged",
                             SERVER)
    log(f"dataset {name}: {data} (md5 {actual}, as recorded)")
    return data


# --- the run ------------------------------------------------------------------------------

# where a commit keeps the replay script, newest layout first
REPLAY_SCRIPTS = ("tasks/steps/reproduce_steps.py", "tasks/reproduce_steps.py")


def replay_script(worktree: Path) -> Path:
    """The replay script of the commit checked out in `worktree`; ReproduceError when it has
    none (a commit older than `dmops reproduce`)."""
    for relative in REPLAY_SCRIPTS:
        if (Path(worktree) / relative).is_file():
            return Path(worktree) / relative
    raise ReproduceError(f"the commit in {worktree} holds no replay script ({' or '.join(REPLAY_SCRIPTS)}): "
                         "it predates `dmops reproduce`; reproduce it with the dmops version it "
                         "was made with")


def run_steps(worktree: Path, version: RegisteredVersion, data_dir: Path, work: Path,
              own_code: bool, stdout=None) -> dict:
    """tasks/steps/reproduce_steps.py with the commit's code, cwd the worktree; returns its result.
    The child's progress goes to `stdout` (default: this process's)."""
    request = {"config": version.config, "data_dir": str(data_dir),
               "dataset_md5": version.tags["dataset_md5"], "work_dir": str(work / "run"),
               "feature_cache": str(work / "features")}
    (work / "request.json").write_text(json.dumps(request, indent=2))
    env = dict(os.environ)
    # the worktree's packages (own code) or exactly the ones this process runs (installed)
    paths = [str(worktree)] if own_code else _installed_roots()
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    # a copy outside the worktree: its folder, first on the child's sys.path, holds no package.
    # With the commit's own code, the commit's own replay script: it imports that code's
    # layout (a commit from before tasks/steps/ existed has tasks/reproduce_steps.py)
    script = work / "reproduce_steps.py"
    shutil.copyfile(replay_script(worktree) if own_code else reproduce_steps.__file__, script)
    proc = subprocess.run([sys.executable, str(script), str(work / "request.json"),
                           str(work / "result.json")], cwd=worktree, env=env,
                          stdout=stdout or sys.stdout, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise ReproduceError(f"the reproduction run failed (exit {proc.returncode}): {tail[0]}",
                             SERVER)
    result = json.loads((work / "result.json").read_text())
    expected = [Path(worktree).resolve()] if own_code else [Path(p) for p in _installed_roots()]
    for package, file in result["modules"].items():
        if not any(Path(file).resolve().is_relative_to(root) for root in expected):
            raise ReproduceError(f"the reproduction imported {package} from {file}, not from "
                                 f"{' or '.join(map(str, expected))}", SERVER)
    return result


def reproduce(ref: str, repo=".", keep: bool = False, log: Callable[[str], None] = say,
              stdout=None) -> tuple[Verdict, Path | None]:
    """Reproduce the version `ref` in the git repository `repo` (see the module doc); returns
    the verdict and, with `keep`, the folder holding the worktree and the run."""
    version = read_lineage(ref)
    tags = version.tags
    remote = (version.config.get("pipeline") or {}).get("dvc_remote", "dmops")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3")
    if not endpoint:
        raise ReproduceError(missing_message(
            ["AWS_ENDPOINT_URL_S3"], why="the DVC remote's S3 endpoint is needed to fetch the dataset"))
    log(f"reproducing {version.model}/{version.version}: {tags['served_as']} ({tags['sampler']}, "
        f"{tags['nfe']} NFE), commit {version.commit[:12]}, dataset {tags['dataset']} "
        f"md5 {tags['dataset_md5']}, profile {tags.get('profile', '-')}")
    root = Path(tempfile.mkdtemp(prefix="dmops-reproduce-"))
    try:
        with commit_worktree(Path(repo), version.commit, root / "worktree", keep, log) as tree:
            own_code = has_own_code(tree)
            if not own_code:
                check_installed_code(version, log)
            data = fetch_dataset(tree, tags["dataset"], tags["dataset_md5"], remote, endpoint, log)
            log("training, distillation and evaluation with the recorded settings and "
                f"{'the commit' if own_code else 'the installed'}'s code (fresh feature cache)")
            result = run_steps(tree, version, data, root, own_code, stdout)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    verdict = compare(version.model, version.version, tags, version.run_metrics,
                      version.tag_metrics, result)
    return verdict, (root if keep else None)
