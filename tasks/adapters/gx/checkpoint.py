"""Run expectations on a DataFrame the Great Expectations 1.x way.

An ephemeral (in-memory) context, a pandas data source whose batch is the whole DataFrame,
an ExpectationSuite, a ValidationDefinition that binds the two, and a Checkpoint that runs
it and, when a folder is given, builds Data Docs there (index.html at its top).
"""

from __future__ import annotations

import re
from pathlib import Path

import great_expectations as gx
import pandas as pd
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

DOCS_SITE = "local_site"


def result_format(index_column: str) -> dict:
    """SUMMARY keeps the result small (counts and the first unexpected values, not every row);
    `index_column` puts the offending rows' ids next to each unexpected value."""
    return {"result_format": "SUMMARY", "unexpected_index_column_names": [index_column],
            "partial_unexpected_count": 10}


def run_checkpoint(name: str, frame: pd.DataFrame, expectations: list,
                   docs_dir: Path | None = None, *, index_column: str = "id",
                   asset: str = "manifest", gate: str = "data") -> dict:
    """Validate `frame` against `expectations`; the suite's validation result as a dict
    (GX's to_json_dict: success, results, statistics, meta).  `index_column`: the column
    naming each row in the failures (the manifest's `id`, a table's `_id`); `asset` and
    `gate`: what the frame is and which gate runs (the names of the GX objects, so of the
    Data Docs pages: `<name>_<gate>_gate`)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "dataset"
    context = _context(docs_dir)
    batch = (context.data_sources.add_pandas(f"{slug}_source")
             .add_dataframe_asset(f"{slug}_{asset}")
             .add_batch_definition_whole_dataframe("all_rows"))
    suite = context.suites.add(gx.ExpectationSuite(name=f"{slug}_{gate}_gate",
                                                   expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{slug}_{asset}_validation", data=batch, suite=suite))
    actions = [] if docs_dir is None else [UpdateDataDocsAction(name="data_docs",
                                                                site_names=[DOCS_SITE])]
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=f"{slug}_gate", validation_definitions=[definition], actions=actions,
        result_format=result_format(index_column)))
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    (validation,) = result.run_results.values()
    return validation.to_json_dict()


def _context(docs_dir: Path | None):
    sites = {}
    if docs_dir is not None:
        sites[DOCS_SITE] = {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(Path(docs_dir).resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(),
                               data_docs_sites=sites, analytics_enabled=False,
                               progress_bars=ProgressBarsConfig(globally=False))
    return gx.get_context(mode="ephemeral", project_config=config)
