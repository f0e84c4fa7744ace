"""The two expectations the table gate needs that Great Expectations does not ship: a column's
type as a table schema names it (numerical / integer / categorical), and a categorical
column's shares against the last validated version's as a total variation distance.

GX registers metric providers and expectations when their classes are defined, so importing
this module is what makes them available.
"""

from __future__ import annotations

from typing import ClassVar, Optional

from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import ColumnAggregateExpectation
from great_expectations.expectations.metrics.column_aggregate_metric_provider import (
    ColumnAggregateMetricProvider,
    column_aggregate_value,
)

from tasks.adapters.gx.table_data import category_shares, seen_type

CHANGES_SHOWN = 3  # categories named in a share-drift failure, largest change first


class ColumnSeenType(ColumnAggregateMetricProvider):
    """[kind, description] of what the column holds (table_data.seen_type), nulls ignored."""

    metric_name = "column.seen_type"

    @column_aggregate_value(engine=PandasExecutionEngine)
    def _pandas(cls, column, **kwargs):
        return list(seen_type(column))


class ColumnCategoryShares(ColumnAggregateMetricProvider):
    """[[value, share], ...] of the column, null a category of its own."""

    metric_name = "column.category_shares"

    @column_aggregate_value(engine=PandasExecutionEngine)
    def _pandas(cls, column, **kwargs):
        return category_shares(column)


class ExpectColumnTypeToBeOneOf(ColumnAggregateExpectation):
    """Expect the kind of values the column holds (integer, numerical, categorical; see
    table_data.seen_type) to be one of `kinds`; the observed value names the dtype seen."""

    kinds: list[str]
    schema_type: Optional[str] = None

    metric_dependencies: ClassVar[tuple[str, ...]] = ("column.seen_type",)
    success_keys: ClassVar[tuple[str, ...]] = ("kinds",)
    args_keys: ClassVar[tuple[str, ...]] = ("column", "kinds")

    def _validate(self, metrics, runtime_configuration=None, execution_engine=None):
        kind, description = metrics["column.seen_type"]
        return {"success": kind in self.kinds,
                "result": {"observed_value": description, "details": {"kind": kind}}}


class ExpectColumnCategoryTvdToBeAtMost(ColumnAggregateExpectation):
    """Expect the total variation distance between the column's category shares and
    `reference_shares` ([[value, share], ...]) to be at most `threshold`.  The details list
    the categories whose share moved most (value, share now, share before)."""

    reference_shares: list
    threshold: float

    metric_dependencies: ClassVar[tuple[str, ...]] = ("column.category_shares",)
    success_keys: ClassVar[tuple[str, ...]] = ("reference_shares", "threshold")
    args_keys: ClassVar[tuple[str, ...]] = ("column", "reference_shares", "threshold")

    def _validate(self, metrics, runtime_configuration=None, execution_engine=None):
        now = {_key(v): (v, s) for v, s in metrics["column.category_shares"]}
        before = {_key(v): (v, s) for v, s in self.reference_shares}
        changes = sorted(
            ((now.get(k, before.get(k))[0], now.get(k, (None, 0.0))[1],
              before.get(k, (None, 0.0))[1]) for k in {*now, *before}),
            key=lambda change: -abs(change[1] - change[2]))
        tvd = 0.5 * sum(abs(new - old) for _, new, old in changes)
        return {"success": tvd <= self.threshold,
                "result": {"observed_value": tvd,
                           "details": {"largest_changes": [list(c) for c in
                                                           changes[:CHANGES_SHOWN]]}}}


def _key(value) -> tuple[str, str]:
    # True and 1 (or "1" and 1) are different categories: keep the type in the key
    return type(value).__name__, repr(value)
