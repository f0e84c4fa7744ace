"""The data gate on a processed table (meta.json kind "table"): read the folder, build the
table suite, run it the Great Expectations 1.x way, and hand back a ValidationReport whose
`statistics` are the next version's drift reference.

validate_data.validate_dataset calls this for a table; Great Expectations is imported only
when a validation runs (the import takes seconds).
"""

from __future__ import annotations

import re
from pathlib import Path

from tasks.adapters.gx.report import ValidationReport, jsonable
from tasks.adapters.gx.settings import ValidationSettings
from tasks.adapters.gx.table import StructureError
from tasks.adapters.gx.table_data import ID, read_table_folder, reference_statistics

# SUMMARY keeps the result small (counts and the first unexpected values, not every row);
# `_id` puts the offending rows' ids next to each unexpected value
RESULT_FORMAT = {"result_format": "SUMMARY", "unexpected_index_column_names": [ID],
                 "partial_unexpected_count": 10}


def validate_table(processed_dir: str | Path, settings: ValidationSettings,
                   reference: dict | None = None,
                   docs_dir: Path | None = None) -> ValidationReport:
    """Validate the processed table folder `processed_dir` (table.parquet, schema.json,
    meta.json) against its schema, settings.min_rows / max_duplicate_fraction / table, and,
    given the last validated version's `statistics` as `reference`, its drift.

    A folder that cannot be read gives a failed report listing the problems; a `reference`
    that is not a table's statistics raises ValueError (a caller's mistake, not the data's).
    """
    try:
        data = read_table_folder(processed_dir)
    except StructureError as exc:
        return ValidationReport(success=False, failures=exc.problems,
                                result={"success": False, "structure_problems": exc.problems},
                                statistics={}, docs_dir=None, dataset=Path(processed_dir).name)

    from tasks.adapters.gx.table_report import table_failure_lines
    from tasks.adapters.gx.table_suite import build_table_expectations

    expectations = build_table_expectations(data, settings, reference)
    if docs_dir is not None:
        docs_dir = Path(docs_dir)
        docs_dir.mkdir(parents=True, exist_ok=True)
    result = jsonable(_run(data.name, data.frame, expectations, docs_dir))
    failures = table_failure_lines(result, expectations)
    return ValidationReport(success=bool(result["success"]) and not failures, failures=failures,
                            result=result, statistics=jsonable(reference_statistics(data)),
                            docs_dir=docs_dir, dataset=data.name)


def _run(name: str, frame, expectations: list, docs_dir: Path | None) -> dict:
    """checkpoint.run_checkpoint with the table's own row id (`_id`) as the index column."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    from tasks.adapters.gx.checkpoint import DOCS_SITE, _context

    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "table"
    context = _context(docs_dir)
    batch = (context.data_sources.add_pandas(f"{slug}_source")
             .add_dataframe_asset(f"{slug}_table")
             .add_batch_definition_whole_dataframe("all_rows"))
    suite = context.suites.add(gx.ExpectationSuite(name=f"{slug}_table_gate",
                                                   expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{slug}_table_validation", data=batch, suite=suite))
    actions = [] if docs_dir is None else [UpdateDataDocsAction(name="data_docs",
                                                                site_names=[DOCS_SITE])]
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=f"{slug}_gate", validation_definitions=[definition], actions=actions,
        result_format=RESULT_FORMAT))
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    (validation,) = result.run_results.values()
    return validation.to_json_dict()
