"""The data-validation gate's parts; the gate step itself is tasks/steps/validate_data.py.

settings.py      ValidationSettings, the gate's thresholds
table.py         a processed folder -> the table the suite runs on, and its reference statistics
expectations.py  the one expectation Great Expectations lacks (class-count ratio)
suite.py         settings + reference statistics -> the list of expectations
checkpoint.py    ephemeral GX context, pandas data source, suite, validation definition, checkpoint, Data Docs
report.py        ValidationReport, DataValidationError, readable failure lines

The gate on a table (meta.json kind "table": table.parquet + schema.json) has its own parts:
table_settings.py      TableValidationSettings (ValidationSettings.table)
table_data.py          a processed table folder -> the frame the suite runs on, its statistics
table_expectations.py  expectations Great Expectations lacks for tables
table_suite.py         schema + settings + reference statistics -> the list of expectations
table_report.py        readable failure lines naming the column and what was seen
table_gate.py          the gate: read, build, run (checkpoint.py), report

Great Expectations is imported only by expectations.py, suite.py, checkpoint.py and the
table_expectations, table_suite and table_gate modules, which validate_data imports when a
validation runs (the import takes seconds).
"""

from __future__ import annotations

import os

# Set before Great Expectations is first imported (it reads the variable then): no usage
# analytics leave the machine.  Every GX import of the gate goes through this package.
os.environ["GX_ANALYTICS_ENABLED"] = "false"
