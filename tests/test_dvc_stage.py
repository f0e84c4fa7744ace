"""The DVC stage `prepare@<name>` follows the data: in a temporary git + DVC repository set up
as a user's (dvc.yaml and params.yaml only; the project is the installed package), adding,
changing or removing one file of the source reruns the stage and gives a new dataset md5, and a
repro with nothing changed reruns nothing and keeps the md5.  Each entry of `datasets` is a
stage of its own: changing one reruns only its stage.  No S3 is needed for `dvc repro`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tasks.adapters.dvc import stage_md5

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(repo: Path, *cmd: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(list(cmd), cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def repro(repo: Path, name: str = "mine") -> tuple[str, str]:
    """`dvc repro prepare@<name>`; (its output, the md5 dvc.lock records for the processed
    folder)."""
    out = _run(repo, str(BIN / "dvc"), "repro", f"prepare@{name}")
    return out, stage_md5(repo, f"prepare@{name}", f"data/processed/{name}")


def prepare_ran(output: str, name: str = "mine") -> bool:
    if f"Running stage 'prepare@{name}'" in output:
        return True
    assert f"Stage 'prepare@{name}' didn't change" in output, output
    return False


def write_params(repo: Path, datasets: dict) -> None:
    """The project's params.yaml with `datasets` extended by `datasets` (name -> entry)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"].update(datasets)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_repo(tmp_path: Path, data: dict) -> Path:
    """A user's repository whose params.yaml adds dataset `mine` (settings `data`)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo)
    write_params(repo, {"mine": data})
    _run(repo, "git", "init", "-q")
    _run(repo, "git", "config", "user.email", "test@example.com")
    _run(repo, "git", "config", "user.name", "test")
    _run(repo, str(BIN / "dvc"), "init", "-q")
    _run(repo, str(BIN / "dvc"), "config", "core.analytics", "false")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "a user's repo")
    return repo


def _png(path: Path, seed: int, size: int = 6) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size)).astype(np.uint8)
    Image.fromarray(pixels, "L").save(path)


@pytest.fixture
def folder_repo(tmp_path):
    images = tmp_path / "images"  # outside the repository, as a user's data often is
    for k in range(4):
        _png(images / "a" / f"a{k}.png", seed=k)
        _png(images / "b" / f"b{k}.png", seed=10 + k)
    repo = make_repo(tmp_path, {"name": "folder", "path": str(images), "image_size": 6,
                                "val_fraction": 0.0, "test_fraction": 0.25})
    return repo, images


def test_folder_stage_reruns_on_every_change_and_only_then(folder_repo):
    repo, images = folder_repo
    out, first = repro(repo)
    assert prepare_ran(out)

    out, md5 = repro(repo)  # nothing changed
    assert not prepare_ran(out) and md5 == first

    _png(images / "a" / "a4.png", seed=99)  # one image added
    out, added = repro(repo)
    assert prepare_ran(out) and added != first

    pixels = np.asarray(Image.open(images / "b" / "b0.png")).copy()
    pixels[0, 0] ^= 1  # one pixel, one bit
    Image.fromarray(pixels, "L").save(images / "b" / "b0.png")
    out, changed = repro(repo)
    assert prepare_ran(out) and changed not in (first, added)

    (images / "a" / "a1.png").unlink()  # one image removed
    out, removed = repro(repo)
    assert prepare_ran(out) and removed not in (first, added, changed)

    # nothing changed again; then a forced rerun: the processed folder is byte-deterministic,
    # so identical inputs give the identical version (a time stamp in data.npz, say, would make
    # every rerun a "new" dataset)
    out, again = repro(repo)
    assert not prepare_ran(out) and again == removed
    _run(repo, str(BIN / "dvc"), "repro", "-f", "prepare@mine")
    assert stage_md5(repo, "prepare@mine", "data/processed/mine") == removed


def test_npz_stage_follows_the_file(tmp_path):
    rng = np.random.default_rng(0)
    source = tmp_path / "points.npz"
    np.savez(source, x=rng.normal(size=(40, 2)).astype(np.float32))
    repo = make_repo(tmp_path, {"name": "npz", "path": str(source)})
    out, first = repro(repo)
    assert prepare_ran(out)

    x = np.load(source)["x"]
    x[3, 1] += 0.5
    np.savez(source, x=x)
    out, changed = repro(repo)
    assert prepare_ran(out) and changed != first
    out, md5 = repro(repo)
    assert not prepare_ran(out) and md5 == changed


def test_each_dataset_is_a_stage_of_its_own(tmp_path):
    """Two datasets in one file: each is versioned apart; changing one entry reruns its stage
    alone, and the other keeps its version."""
    rng = np.random.default_rng(0)
    source = tmp_path / "points.npz"
    np.savez(source, x=rng.normal(size=(40, 2)).astype(np.float32))
    repo = make_repo(tmp_path, {"name": "npz", "path": str(source)})
    write_params(repo, {"mine": {"name": "npz", "path": str(source)},
                        "ring": {"name": "gmm8", "n": 64}})
    _, mine = repro(repo)
    out, ring = repro(repo, "ring")
    assert prepare_ran(out, "ring") and (repo / "data/processed/ring/data.npz").is_file()

    write_params(repo, {"mine": {"name": "npz", "path": str(source)},
                        "ring": {"name": "gmm8", "n": 64, "seed": 1}})   # another split
    out, ring_seed1 = repro(repo, "ring")
    assert prepare_ran(out, "ring") and ring_seed1 != ring
    out, mine_again = repro(repo)
    assert not prepare_ran(out) and mine_again == mine


def test_a_bad_entry_blocks_only_its_own_stage(tmp_path):
    """`dvc repro prepare@mine` runs mine's two stages alone, whatever another entry holds (an
    .xlsx path, not a mapping, an unknown key); repro of the bad entry fails in its own stage
    with the command's one line, naming the entry, as StageRefused (a DataError: no retry)."""
    from diffusion.data_errors import DataError
    from tasks.adapters.dvc import StageRefused, run_dvc

    rng = np.random.default_rng(0)
    source = tmp_path / "points.npz"
    np.savez(source, x=rng.normal(size=(40, 2)).astype(np.float32))
    repo = make_repo(tmp_path, {"name": "npz", "path": str(source)})
    write_params(repo, {"mine": {"name": "npz", "path": str(source)},
                        "sheet": {"name": "table", "path": "rows.xlsx"}, "loose": 3,
                        "typo": {"name": "moons", "nn": 3}})
    out, _ = repro(repo)
    assert prepare_ran(out)
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == ["fingerprint@mine", "prepare@mine"], out

    with pytest.raises(StageRefused) as refused:
        run_dvc(repo, "repro", "prepare@sheet")
    said = str(refused.value)
    assert isinstance(refused.value, DataError) and "\n" not in said, said
    assert said.startswith("invalid configuration: datasets.sheet: data.path 'rows.xlsx'"), said
    assert "Running stage 'fingerprint@sheet'" in refused.value.output
