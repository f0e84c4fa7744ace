"""Pipeline step: turn the configured dataset into data/processed/<name>/ (arrays + manifest).

`prepare_dataset` is the work itself (what `dmops prepare`, the DVC stage's command, calls);
tasks/data_fingerprint.py writes what the stage depends on (the raw source, the code, the
settings: see dvc.yaml), so the stage reruns whenever any of them changes.
`dvc_prepare` is what the pipeline calls: it runs the stage through DVC in the project's git
repo, pushes the result to the DVC remote in S3 and returns the dataset's content hash (the
md5 DVC records for the output folder in dvc.lock), which every later step records as lineage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import yaml

from diffusion.config import DataConfig
from diffusion.data import DataError, Dataset, load_dataset, load_processed, save_processed
from diffusion.image_files import describe

from .data_fingerprint import source_files


def prepare_dataset(data: DataConfig, root="data/processed", require_finite: bool = True,
                    fingerprint=None, log=partial(print, flush=True)) -> Path:
    """Load the dataset, check its structure, then write it atomically; returns the folder.

    With `require_finite=False` NaN/inf values are stored as they are (and counted in the
    manifest) so the data-quality gate reports them; only .npz files can carry them.

    The source's identity (data_fingerprint.source_files' sha256, taken after loading) goes
    into meta.json's ingestion record as `source_sha256`.  With `fingerprint` (the file the
    DVC fingerprint stage wrote) a source that no longer matches it -- changed between the two
    stages or while loading -- is a DataError, so a version never pairs one source's record
    with another's data.  Prints what was read, skipped (by reason) and altered."""
    options = data.loader_options()
    if data.name == "npz":
        options["require_finite"] = require_finite
    ds = load_dataset(data.name, **options)
    source = source_files(data)
    if source is not None:
        ds.ingestion = {**(ds.ingestion or {}), "source_sha256": source["sha256"]}
    if fingerprint is not None:
        _require_fingerprint(Path(fingerprint), data, source)
    out = save_processed(ds, Path(root) / data.name, require_finite=require_finite)
    counts = {s: int((ds.split == s).sum()) for s in ("train", "val", "test")}
    log(f"{data.name}: {len(ds.ids)} samples of shape {tuple(ds.sample_shape)} "
        f"(train {counts['train']}, val {counts['val']}, test {counts['test']}) -> {out}")
    if ds.ingestion is not None and ds.ingestion.get("source") != "builtin":
        for line in describe(ds.ingestion):
            log(f"{data.name}: {line}")
    return out


def _require_fingerprint(path: Path, data: DataConfig, source: dict | None) -> None:
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the source fingerprint ({exc}); run "
                        "`dvc repro prepare` (its fingerprint stage writes it)") from None
    if recorded.get("data") != data.model_dump(mode="json"):
        raise DataError(f"{path}: records other dataset settings than params.yaml's data "
                        "section; run `dvc repro prepare` again")
    if (recorded.get("source") or {}).get("sha256") != (source or {}).get("sha256"):
        raise DataError(f"data.path {data.path}: changed since {path} was written (files added, "
                        "removed or modified while preparing); run `dvc repro prepare` again")


def load_data(data: DataConfig, data_dir=None) -> Dataset:
    """The dataset a step works on: the processed folder the pipeline versioned and validated
    when `data_dir` is given, else the configured source loaded directly (the plain CLI)."""
    if data_dir is not None:
        return load_processed(data_dir)
    return load_dataset(data.name, **data.loader_options())


class DVCError(RuntimeError):
    """A DVC command failed; the message carries its output."""


@dataclass(frozen=True)
class DatasetVersion:
    name: str
    path: str        # the processed folder, absolute
    md5: str         # DVC's content hash of the folder (".dir" md5 in dvc.lock)
    remote: str      # where `dvc push` put it


def run_dvc(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    # the stage's command is `dmops ...`: the venv's bin must be on PATH even when the
    # caller did not activate it
    full_env = {**os.environ, **(env or {})}
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    cmd = [str(Path(sys.executable).parent / "dvc"), *args]
    proc = subprocess.run(cmd, cwd=repo, env=full_env, capture_output=True, text=True)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        # a stage's `dmops` command says what went wrong in one `error: ...` line: lead with it
        said = [line[len("error: "):] for line in output.splitlines() if line.startswith("error: ")]
        raise DVCError(f"`dvc {' '.join(args)}` failed in {repo} (exit {proc.returncode})"
                       f"{': ' + said[-1] if said else ''}:\n{output[-3000:]}")
    return proc.stdout


def configure_remote(repo: Path, remote: str, endpoint_url: str) -> None:
    """Point `remote` (defined in .dvc/config, committed) at this machine's S3 endpoint.
    The endpoint goes to .dvc/config.local, which git ignores; credentials are never written:
    DVC reads them from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment."""
    listed = run_dvc(repo, "remote", "list")
    if not any(line.split()[:1] == [remote] for line in listed.splitlines()):
        raise DVCError(f"{repo}: DVC remote {remote!r} is not defined (remotes: "
                       f"{listed.strip() or 'none'}); add it with `dvc remote add -d {remote} "
                       "s3://<bucket>/<prefix>` and commit .dvc/config")
    run_dvc(repo, "remote", "modify", "--local", remote, "endpointurl", endpoint_url)
    # bounded like every other request to the store: a hung store costs a push seconds, not
    # botocore's default 60 s per connection attempt
    run_dvc(repo, "remote", "modify", "--local", remote, "connect_timeout", "5")
    run_dvc(repo, "remote", "modify", "--local", remote, "read_timeout", "60")


def stage_md5(repo: Path, out: str) -> str:
    """The md5 that dvc.lock records for output `out` of the prepare stage."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for entry in lock["stages"]["prepare"].get("outs", []):
        if entry["path"] == out:
            return entry["md5"]
    raise DVCError(f"{repo / 'dvc.lock'}: the prepare stage has no output {out!r}")


def dvc_prepare(repo, data_name: str, remote: str, endpoint_url: str,
                env: dict[str, str] | None = None, log=print) -> DatasetVersion:
    """`dvc repro prepare` then `dvc push` in `repo`; returns the dataset's version."""
    repo = Path(repo).resolve()
    if not (repo / ".dvc").is_dir():
        raise DVCError(f"{repo} is not a DVC repository (no .dvc folder); run `git init && dvc init`")
    configure_remote(repo, remote, endpoint_url)
    log(f"dvc repro prepare ({data_name}) in {repo}")
    log(run_dvc(repo, "repro", "prepare", env=env).strip())
    out = f"data/processed/{data_name}"
    md5 = stage_md5(repo, out)
    # --with-deps: the source fingerprint goes to the remote too, the record of what the
    # version was made from
    run_dvc(repo, "push", "-r", remote, "--with-deps", "prepare", env=env)
    log(f"dataset {data_name}: md5 {md5}, pushed to DVC remote {remote!r}")
    return DatasetVersion(data_name, str(repo / out), md5, remote)
