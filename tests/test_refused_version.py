"""A version the data gate refuses does not stay the dataset's current one (trial #11): `dmops run`
ran `dvc repro prepare@<name>` before the gate, so dvc.lock, data/processed/<name> and
data/source/<name>.json recorded the refused version, and a user who committed everything recorded
a bad dataset.  The run now puts back dvc.lock's entries of the dataset's two stages as they were
just before its `dvc repro` (uncommitted edits included; a first version's entries removed) and
the folders from the DVC cache, leaves every other stage's entry (another dataset's, a concurrent
run's) as it is, and says so in one line after the gate's report.

Real DVC in a user's git repository; the last test runs `dmops run` against the session's stack
(SeaweedFS S3 for `dvc push`, MLflow, Prefect).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tasks.adapters.dvc import dir_md5, put_back_version, stage_md5
from tasks.adapters.dvc_lock import lock_entries

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


def _run(repo: Path, *cmd: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(list(cmd), cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def dvc(repo: Path, *args: str) -> str:
    return _run(repo, str(BIN / "dvc"), *args)


def table(seed: int = 0, n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.integers(18, 80, n),
                         "income": np.round(rng.gamma(4.0, 1e4, n), 2),
                         "segment": rng.choice(["bronze", "silver", "gold"], n),
                         "churned": rng.integers(0, 2, n)})


def bad(frame: pd.DataFrame) -> pd.DataFrame:
    """A third of `income` null: the table gate refuses it (null share per column)."""
    return frame.assign(income=frame["income"].where(frame.index % 3 > 0))


def entry(name: str) -> dict:
    return {"name": "table", "path": f"raw/{name}.csv", "target": "churned"}


def processed_matches_lock(repo: Path, name: str) -> bool:
    """data/processed/<name> holds the files whose md5 dvc.lock records."""
    out = f"data/processed/{name}"
    return dir_md5(repo / out) == stage_md5(repo, f"prepare@{name}", out)


def source_matches_lock(repo: Path, name: str) -> bool:
    import hashlib

    recorded = stage_md5(repo, f"fingerprint@{name}", f"data/source/{name}.json")
    return hashlib.md5((repo / "data" / "source" / f"{name}.json").read_bytes()).hexdigest() == recorded


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A user's repository (the project's dvc.yaml, params.yaml with datasets `mine`, `other` and
    `fresh`, tables under raw/) whose `mine` and `other` are prepared and committed."""
    repo = tmp_path_factory.mktemp("template") / "repo"
    (repo / "raw").mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", repo)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"].update({name: entry(name) for name in ("mine", "other", "fresh")})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    table(0).to_csv(repo / "raw" / "mine.csv", index=False)
    table(1).to_csv(repo / "raw" / "other.csv", index=False)
    bad(table(2)).to_csv(repo / "raw" / "fresh.csv", index=False)
    for args in (("init", "-q"), ("config", "user.email", "test@example.com"),
                 ("config", "user.name", "test")):
        _run(repo, "git", *args)
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    dvc(repo, "repro", "prepare@mine", "prepare@other")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "mine and other, first versions")
    return repo


@pytest.fixture
def repo(template, tmp_path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(template, copy, symlinks=True)
    return copy


def refuse(repo: Path, name: str, frame: pd.DataFrame | None = None) -> tuple[dict, str]:
    """What a run does up to the gate's refusal: the entries taken, then `dvc repro` of a bad
    version of `name`; returns (the entries, the refused md5)."""
    if frame is not None:
        frame.to_csv(repo / "raw" / f"{name}.csv", index=False)
    before = lock_entries(repo, name)
    dvc(repo, "repro", f"prepare@{name}")
    return before, stage_md5(repo, f"prepare@{name}", f"data/processed/{name}")


def test_a_refused_version_is_put_back_to_the_uncommitted_lock_before_the_run(repo):
    # the user's uncommitted edit of dvc.lock: a second version of `other`, not committed yet
    table(3).to_csv(repo / "raw" / "other.csv", index=False)
    dvc(repo, "repro", "prepare@other")
    lock = (repo / "dvc.lock").read_bytes()
    good = stage_md5(repo, "prepare@mine", "data/processed/mine")
    source = (repo / "data" / "source" / "mine.json").read_bytes()

    before, refused = refuse(repo, "mine", bad(table(0)))
    assert refused != good and (repo / "dvc.lock").read_bytes() != lock
    said = put_back_version(repo, "mine", json.loads(json.dumps(before)), refused, "dmops")

    assert said == (f"dvc.lock's stages fingerprint@mine and prepare@mine and data/processed/mine are "
                    f"back at the version before this run (md5 {good}); the refused version (md5 "
                    f"{refused}) stays in the DVC cache")
    assert (repo / "dvc.lock").read_bytes() == lock   # the other dataset's uncommitted entry too
    assert processed_matches_lock(repo, "mine") and source_matches_lock(repo, "mine")
    assert (repo / "data" / "source" / "mine.json").read_bytes() == source
    # DVC reads the result: only the always-run fingerprint stage is "changed"
    status = dvc(repo, "status", "prepare@mine")
    assert "prepare@mine" not in status and "modified" not in status, status
    assert _run(repo, "git", "status", "--porcelain", "dvc.lock") == " M dvc.lock\n"   # other's edit
    # and runs on from it: the same bad data is the refused version again
    dvc(repo, "repro", "prepare@mine")
    assert stage_md5(repo, "prepare@mine", "data/processed/mine") == refused


def test_a_concurrent_runs_entry_written_after_the_repro_stays(repo):
    before, refused = refuse(repo, "mine", bad(table(0)))
    # another run (another dataset) records its version before this run's gate refuses
    table(4).to_csv(repo / "raw" / "other.csv", index=False)
    dvc(repo, "repro", "prepare@other")
    theirs = lock_entries(repo, "other")

    put_back_version(repo, "mine", before, refused, "dmops")
    assert lock_entries(repo, "mine") == before
    assert lock_entries(repo, "other") == theirs
    assert processed_matches_lock(repo, "mine") and processed_matches_lock(repo, "other")
    committed = yaml.safe_load(_run(repo, "git", "show", "HEAD:dvc.lock"))["stages"]
    assert committed["prepare@mine"] == yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["prepare@mine"]


def test_a_refused_first_version_leaves_no_entry(repo):
    lock = (repo / "dvc.lock").read_bytes()
    before, refused = refuse(repo, "fresh")
    assert before == {"stages": {"fingerprint@fresh": None, "prepare@fresh": None}}
    assert "prepare@fresh" in (repo / "dvc.lock").read_text()

    said = put_back_version(repo, "fresh", before, refused, "dmops")
    assert said == ("dvc.lock no longer records the refused version (its stages fingerprint@fresh and "
                    "prepare@fresh had no entry before this run); data/processed/fresh still holds it "
                    "(git ignores it) until a version passes the gate")
    assert (repo / "dvc.lock").read_bytes() == lock
    status = dvc(repo, "status", "prepare@fresh")
    assert "prepare@fresh" in status   # never run: DVC would run it
    # the first dataset of a repository: dvc.lock had none, and has none again
    (repo / "dvc.lock").unlink()
    before, refused = refuse(repo, "fresh")
    put_back_version(repo, "fresh", before, refused, "dmops")
    assert not (repo / "dvc.lock").exists()


def test_a_version_the_cache_lacks_is_named_with_the_pull_that_brings_it(repo):
    before, refused = refuse(repo, "mine", bad(table(0)))
    good = before["stages"]["prepare@mine"]["outs"][0]["md5"]
    (repo / ".dvc" / "cache" / "files" / "md5" / good[:2] / good[2:]).unlink()

    said = put_back_version(repo, "mine", before, refused, "dmops")
    assert said == (f"dvc.lock's stages fingerprint@mine and prepare@mine are back at the version "
                    f"before this run (md5 {good}), but data/processed/mine still holds the refused "
                    "one: the DVC cache lacks the version before; `dvc pull -r dmops --with-deps "
                    "prepare@mine` brings it")
    assert lock_entries(repo, "mine") == before


def test_nothing_is_put_back_over_what_the_run_did_not_write(repo):
    advice = ("it records the refused version, so do not commit it; `git checkout dvc.lock && dvc "
              "checkout --with-deps prepare@mine` brings back the last committed version")
    before, refused = refuse(repo, "mine", bad(table(0)))
    lock = (repo / "dvc.lock").read_bytes()
    # dvc.lock held the refused version before the run (a Prefect retry of the step, a user's
    # earlier run): nothing to put back
    again = lock_entries(repo, "mine")
    assert put_back_version(repo, "mine", again, refused, "dmops") == (
        f"dvc.lock's stage prepare@mine recorded this refused version before this run already: {advice}")
    # no entries taken (a step result of older code)
    assert put_back_version(repo, "mine", None, refused, "dmops") == (
        f"dvc.lock's stage prepare@mine was not read before this run's `dvc repro`: {advice}")
    assert (repo / "dvc.lock").read_bytes() == lock
    # another run of the same dataset recorded another version since: theirs stays
    table(5).to_csv(repo / "raw" / "mine.csv", index=False)
    dvc(repo, "repro", "prepare@mine")
    theirs = stage_md5(repo, "prepare@mine", "data/processed/mine")
    said = put_back_version(repo, "mine", before, refused, "dmops")
    assert said == (f"dvc.lock's stage prepare@mine records another version (md5 {theirs}) than the "
                    "refused one since this run's `dvc repro` (another run): left as it is")
    assert stage_md5(repo, "prepare@mine", "data/processed/mine") == theirs
    # a lock file DVC could not read either
    (repo / "dvc.lock").write_text("stages: [")
    said = put_back_version(repo, "mine", before, refused, "dmops")
    assert said.startswith(f"dvc.lock's stage prepare@mine could not be put back ({repo / 'dvc.lock'} "
                           "cannot be read") and said.endswith(advice), said


@pytest.mark.stack
def test_dmops_run_puts_back_the_version_its_gate_refused(tmp_path, stack):
    """The whole path: `dmops run` prepares (dvc repro + push to the stack's S3), the table gate
    refuses, and the run puts dvc.lock and the folders back, saying so once after the report."""
    from pipeline_run import run
    from user_repo import git, make_user_repo, params_for

    repo = tmp_path / "repo"
    (repo / "raw").mkdir(parents=True)
    params = params_for("refused-version-test", "refused-version-test")
    params["datasets"].update({"lockcheck": entry("lockcheck"), "firstbad": entry("firstbad")})
    params["dataset"] = "lockcheck"
    table(0).to_csv(repo / "raw" / "lockcheck.csv", index=False)
    bad(table(2)).to_csv(repo / "raw" / "firstbad.csv", index=False)
    make_user_repo(repo, stack.settings.data_bucket, params)
    dvc(repo, "repro", "prepare@lockcheck")   # the version a user committed
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "lockcheck: first version")
    lock = (repo / "dvc.lock").read_bytes()
    good = stage_md5(repo, "prepare@lockcheck", "data/processed/lockcheck")

    bad(table(0)).to_csv(repo / "raw" / "lockcheck.csv", index=False)
    proc = run("run", "--repo", repo, cwd=repo, check=False)
    both = proc.stdout + proc.stderr
    assert proc.returncode == 2, both[-4000:]
    line = ("dvc.lock's stages fingerprint@lockcheck and prepare@lockcheck and "
            f"data/processed/lockcheck are back at the version before this run (md5 {good})")
    assert both.count(line) == 1, both[-4000:]
    assert both.index("expectations:") < both.index(line), both[-4000:]   # after the report
    assert "do not commit" not in both, both[-4000:]
    assert (repo / "dvc.lock").read_bytes() == lock
    assert processed_matches_lock(repo, "lockcheck") and source_matches_lock(repo, "lockcheck")
    # nothing for `git commit -a` to take there
    assert git(repo, "status", "--porcelain", "--untracked-files=no", "dvc.lock", "data") == ""
    Path(os.environ.get("H11_OUT", "/dev/null")).write_text(both)

    # a dataset's first version, refused: dvc.lock keeps no entry of it
    proc = run("run", "--repo", repo, "--set", "dataset=firstbad", cwd=repo, check=False)
    both = proc.stdout + proc.stderr
    assert proc.returncode == 2, both[-4000:]
    assert "dvc.lock no longer records the refused version (its stages fingerprint@firstbad" in both, both[-4000:]
    assert (repo / "dvc.lock").read_bytes() == lock
