"""Pipeline step: the data-validation gate (Great Expectations) on a processed dataset.

    report = validate_dataset("data/processed/digits", ValidationSettings(),
                              reference=last_validated_statistics, docs_dir=Path("gx_docs"))
    require_valid(report)                 # raises DataValidationError with a readable summary
    store(report.statistics)              # the reference for the next version

The suite runs on the manifest (one row per sample) joined with what data.npz holds:
row count, ids, manifest-matches-data (sha256, shape), dtype float32, NaN/inf, value range,
shape, class balance, duplicates, and -- given the last validated version's statistics --
drift of the per-sample mean and std, the shape and the label shares.  The thresholds are
ValidationSettings; tasks/adapters/gx/ holds the parts (see its __init__).

No MLflow or Prefect here: the caller logs report.result (JSON-able) and report.docs_dir.
"""

from __future__ import annotations

import json
from pathlib import Path

from tasks.adapters.gx.report import (DataValidationError, ValidationReport, docs_folder, failure_lines,
                                      gate_report, jsonable)
from tasks.adapters.gx.settings import ValidationSettings
from tasks.adapters.gx.table import StructureError, read_processed_table, reference_statistics

__all__ = ["DataValidationError", "ValidationReport", "ValidationSettings", "require_valid",
           "validate_dataset"]


def validate_dataset(processed_dir: str | Path, settings: ValidationSettings | dict | None = None,
                     reference: dict | None = None,
                     docs_dir: Path | None = None, dataset: str | None = None,
                     accept_change: bool = False) -> ValidationReport:
    """Validate the processed dataset folder `processed_dir` (data.npz, manifest.csv, meta.json;
    for meta.json's kind "table": table.parquet, schema.json, tasks/adapters/gx/table_gate.py).

    `reference` is the `statistics` of the last successful report of this dataset (None on
    the first run: no drift checks).  With `docs_dir`, Data Docs are built there.  `dataset`:
    how the report names the dataset, the params.yaml entry the user chose (default: the name
    the folder's manifest or meta.json records, which is its loader's or file's).  A folder
    that cannot be read (missing file or column) gives a failed report listing the problems;
    a malformed `reference` raises ValueError (a caller's mistake, not the data's).  What a
    failure leaves to do besides (report.after_failure) is the caller's to say: the pipeline puts
    back dvc.lock's record of a version `dvc repro` wrote and the gate refused, and says so
    (flows/pipeline.py, tasks/adapters/dvc.py `put_back_version`).
    `accept_change` (a user's `dmops run --accept-data-change`): the comparisons with
    `reference` that fail (drift; a table's columns, kinds, categories and nulls) are a meant
    change of the data: the report lists them as `changes` and passes if nothing else failed,
    so its statistics can become the next reference.
    """
    if settings is None or isinstance(settings, dict):
        settings = ValidationSettings.model_validate(settings or {})
    if _kind(processed_dir) == "table":  # a table's own suite (tasks/adapters/gx/table_*.py)
        from tasks.adapters.gx.table_gate import validate_table

        return validate_table(processed_dir, settings, reference, docs_dir, dataset=dataset,
                              accept_change=accept_change)
    try:
        table = read_processed_table(processed_dir)
    except StructureError as exc:
        return ValidationReport.unreadable(processed_dir, exc.problems, dataset)

    # Great Expectations takes seconds to import: only when a validation runs
    from tasks.adapters.gx.checkpoint import run_checkpoint
    from tasks.adapters.gx.suite import build_expectations

    expectations = build_expectations(table, settings, reference)
    docs_dir = docs_folder(docs_dir)
    result = jsonable(run_checkpoint(dataset or table.name, table.frame, expectations, docs_dir))
    order = [e.meta["check"] for e in expectations]
    return gate_report(result, lambda r: failure_lines(r, order), accept_change,
                       statistics=jsonable(reference_statistics(table)), docs_dir=docs_dir,
                       dataset=dataset or table.name)


def _kind(processed_dir: str | Path) -> str | None:
    """meta.json's "kind", or None when it cannot be read (the image path reports that)."""
    try:
        meta = json.loads((Path(processed_dir) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("kind") if isinstance(meta, dict) else None


def require_valid(report: ValidationReport) -> None:
    """Raise DataValidationError (its message: report.summary()) unless the report passed."""
    if not report.success:
        raise DataValidationError(report)
