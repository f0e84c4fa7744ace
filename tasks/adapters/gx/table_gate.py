"""The data gate on a processed table (meta.json kind "table"): read the folder, build the
table suite, run it the Great Expectations 1.x way, and hand back a ValidationReport whose
`statistics` are the next version's drift reference.

validate_data.validate_dataset calls this for a table; Great Expectations is imported only
when a validation runs (the import takes seconds).
"""

from __future__ import annotations

from pathlib import Path

from tasks.adapters.gx.checkpoint import run_checkpoint
from tasks.adapters.gx.report import ValidationReport, docs_folder, gate_report, jsonable
from tasks.adapters.gx.settings import ValidationSettings
from tasks.adapters.gx.table import StructureError
from tasks.adapters.gx.table_data import ID, read_table_folder, reference_statistics


def validate_table(processed_dir: str | Path, settings: ValidationSettings,
                   reference: dict | None = None,
                   docs_dir: Path | None = None, dataset: str | None = None,
                   accept_change: bool = False) -> ValidationReport:
    """Validate the processed table folder `processed_dir` (table.parquet, schema.json,
    meta.json) against its schema, settings.min_rows / max_duplicate_fraction / table, and,
    given the last validated version's `statistics` as `reference`, its drift.

    `dataset` names the table in the report and Data Docs: the params.yaml entry the user chose
    (default: the name meta.json records, its loader's or file's).  `accept_change`: the
    comparisons with `reference` that fail (columns, kinds, categories, nulls, ranges, drift)
    are a meant change of the data, listed in the report's `changes`, not failures.

    A folder that cannot be read gives a failed report listing the problems; a `reference`
    that is not a table's statistics raises ValueError (a caller's mistake, not the data's).
    """
    try:
        data = read_table_folder(processed_dir)
    except StructureError as exc:
        return ValidationReport.unreadable(processed_dir, exc.problems, dataset)

    from tasks.adapters.gx.table_report import table_failure_lines
    from tasks.adapters.gx.table_suite import build_table_expectations

    expectations = build_table_expectations(data, settings, reference)
    docs_dir = docs_folder(docs_dir)
    # the table's own row id names the offending rows (a user's table may have an `id` column)
    name = dataset or data.name   # the params.yaml entry when the step gives it
    result = jsonable(run_checkpoint(name, data.frame, expectations, docs_dir,
                                     index_column=ID, asset="table", gate="table"))
    return gate_report(result, lambda r: table_failure_lines(r, expectations, data.id_column),
                       accept_change, statistics=jsonable(reference_statistics(data)),
                       docs_dir=docs_dir, dataset=name,
                       thresholds="pipeline.validate_data.table (row count and duplicates: "
                                  "pipeline.validate_data)")
