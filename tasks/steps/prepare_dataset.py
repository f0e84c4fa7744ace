"""Pipeline step: turn the configured dataset into data/processed/<name>/ (arrays + manifest).

`prepare_dataset` is the work itself (what `dmops prepare`, the DVC stage's command, calls);
tasks/steps/data_fingerprint.py writes what the stage depends on (the raw source, the code, the
settings: see dvc.yaml), so the stage reruns whenever any of them changes.
The pipeline runs the stage through DVC (tasks/adapters/dvc.py, `dvc_prepare`), which pushes the
result to the DVC remote in S3 and returns the dataset's content hash (the md5 DVC records for
the output folder in dvc.lock), which every later step records as lineage.  `load_data` is how
the model steps read the processed folder back.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from diffusion.config import DataConfig
from diffusion.data import DataError, Dataset, load_dataset, load_processed, save_processed
from diffusion.image_files import describe

from tasks.steps.data_fingerprint import source_files


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
