"""Pipeline step: turn the dataset in use into data/processed/<name>/ (arrays + manifest, or for
a table table.parquet + schema + manifest), <name> its name in params.yaml's `datasets`.

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
from tasks.steps.dataset_entry import entry_label, named_errors


def prepare_dataset(data: DataConfig, root="data/processed", require_finite: bool = True,
                    fingerprint=None, log=partial(print, flush=True), name: str | None = None) -> Path:
    """Load the dataset, check its structure, then write it atomically to root/<name> (`name`:
    the dataset's name in `datasets`, default data.name); returns the folder.

    With `require_finite=False` NaN/inf values are stored as they are (and counted in the
    manifest) so the data-quality gate reports them; only .npz files can carry them.

    The source's identity (data_fingerprint.source_files' sha256, taken after loading) goes
    into meta.json's ingestion record as `source_sha256`.  With `fingerprint` (the file the
    DVC fingerprint stage wrote) a source that no longer matches it -- changed between the two
    stages or while loading -- is a DataError, so a version never pairs one source's record
    with another's data.  Every DataError names the entry (`datasets.<name>: ...`, the
    entry's path in brackets for a table).  Prints what was read, skipped (by reason) and
    altered; a table's schema once."""
    name = name or data.name
    with named_errors(name):
        if data.is_table:
            return _prepare_table(data, name, Path(root) / name, fingerprint, log)
        options = data.loader_options()
        if data.name == "npz":
            options["require_finite"] = require_finite
        ds = load_dataset(data.name, **options)
        _record_source(ds, data, fingerprint)
        out = save_processed(ds, Path(root) / name, require_finite=require_finite)
    counts = {s: int((ds.split == s).sum()) for s in ("train", "val", "test")}
    log(f"{name}: {len(ds.ids)} samples of shape {tuple(ds.sample_shape)} "
        f"(train {counts['train']}, val {counts['val']}, test {counts['test']}) -> {out}")
    if ds.ingestion is not None and ds.ingestion.get("source") != "builtin":
        for line in describe(ds.ingestion):
            log(f"{name}: {line}")
    return out


def _record_source(ds, data: DataConfig, fingerprint) -> None:
    """Put the source's sha256 into `ds`'s ingestion record and, with `fingerprint`, check that
    the source still matches it (see prepare_dataset)."""
    source = source_files(data)
    if source is not None:
        ds.ingestion = {**(ds.ingestion or {}), "source_sha256": source["sha256"]}
    if fingerprint is not None:
        _require_fingerprint(Path(fingerprint), data, source)


def _prepare_table(data: DataConfig, name: str, folder: Path, fingerprint, log) -> Path:
    """A table: read, schema completed and checked, split (diffusion/tabular/tables.py), then
    the processed folder; prints the splits and the schema (declared or inferred) once, to
    `log` (load_table's own announcement is off: a command showed both)."""
    from diffusion.tabular.tables import load_table, save_table

    label = entry_label(name, data)
    ds = load_table(**data.loader_options(), label=label, announce=False)
    _record_source(ds, data, fingerprint)
    out = save_table(ds, folder)
    for line in ds.summary(label):
        log(line)
    log(f"datasets.{name}: -> {out}")
    return out


def _require_fingerprint(path: Path, data: DataConfig, source: dict | None) -> None:
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the source fingerprint ({exc}); run "
                        f"`dvc repro prepare@{path.stem}` (its fingerprint stage writes it)") from None
    if recorded.get("data") != data.model_dump(mode="json"):
        raise DataError(f"{path}: records other dataset settings than params.yaml's "
                        f"datasets.{path.stem}; run `dvc repro prepare@{path.stem}` again")
    if (recorded.get("source") or {}).get("sha256") != (source or {}).get("sha256"):
        raise DataError(f"data.path {data.path}: changed since {path} was written (files added, "
                        f"removed or modified while preparing); run `dvc repro "
                        f"prepare@{path.stem}` again")


def load_data(data: DataConfig, data_dir=None) -> Dataset:
    """The dataset a step works on: the processed folder the pipeline versioned and validated
    when `data_dir` is given, else the configured source loaded directly (the plain CLI).  A
    table comes as its rows encoded as vectors (kind "table", diffusion/tabular/vectors.py)."""
    if data.is_table:   # the rows as vectors, encoded by an encoder fit on the train rows
        from diffusion.tabular.tables import load_table, load_table_processed
        from diffusion.tabular.vectors import table_vectors

        tds = (load_table_processed(data_dir) if data_dir is not None
               else load_table(**data.loader_options()))
        return table_vectors(tds, data.categorical)
    if data_dir is not None:
        return load_processed(data_dir)
    return load_dataset(data.name, **data.loader_options())
