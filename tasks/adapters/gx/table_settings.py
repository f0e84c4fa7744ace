"""The data gate's thresholds that only a table (a processed folder of kind "table") has.

They sit in their own section, ValidationSettings.table (params.yaml:
pipeline.validate_data.table), because the image gate has no use for them and the two kinds'
drift statistics differ: an image's drift is a per-sample statistic's spread across samples, a
table's is each column's own spread.  What both kinds mean the same way stays at the top of
ValidationSettings and a table run reads it there: min_rows (rows of the table) and
max_duplicate_fraction (rows that repeat an earlier row, `_id` and `_split` ignored).  The
image-only fields there (value_low/high, expected_shape, max_class_ratio, max_label_kl,
max_skipped_files) are not read for a table.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

from diffusion.settings import Settings


class TableValidationSettings(Settings):
    """What a table must satisfy beyond its schema (columns, types, categories: schema.json).

    max_null_fraction: the share of nulls a column that schema.json marks `"nullable": true`
    may hold; a column not marked nullable may hold none.

    range_tolerance: a numerical or integer column without declared bounds (`"min"`/`"max"` in
    its schema entry) must lie within the last validated version's [min, max] widened on each
    side by this fraction of that width (0.1: a 10 % wider range, room for the new extremes a
    larger draw of the same distribution brings).  No reference and no bounds: no range check.

    drift_tolerance: against the last validated version, each numerical/integer column's mean
    may move by at most drift_tolerance x the reference std, and its std by at most
    drift_tolerance x the reference std (a standardised difference, Cohen's d for the mean).
    Sampling noise alone moves the mean by sqrt(1/n + 1/n_ref) spreads (1 standard error) and
    the std by about sqrt((kurtosis - 1)(1/n + 1/n_ref) / 4): at n = n_ref = 1000 four standard
    errors are 0.18 and, for a kurtosis up to 9, 0.25, so 0.5 ("a medium effect") fires only on
    real change at a thousand rows or more; smaller tables should raise it.

    max_category_tvd: each categorical column's shares (null counted as a category of its own,
    as the model sees it) may differ from the reference's by a total variation distance
    (half the sum of absolute share differences: the share of rows that would have to change
    category) of at most this much above what sampling alone gives on average,
    1/2 sum_k sqrt(2 p_k (1 - p_k) (1/n + 1/n_ref) / pi) (0.056 for 51 equal categories at
    n = n_ref = 5000, under 0.03 for up to 10 categories at 1000 rows).  TVD rather than KL:
    it is bounded by 1, reads as a share of rows, stays finite when a category is missing on
    either side, and is the measure SDMetrics' column-shape score uses.
    """

    model_config = ConfigDict(allow_inf_nan=False)  # extra="forbid" comes from Settings

    max_null_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    range_tolerance: Annotated[float, Field(ge=0.0)] = 0.1
    drift_tolerance: Annotated[float, Field(gt=0.0)] = 0.5
    max_category_tvd: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
