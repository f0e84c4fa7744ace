"""The one expectation the gate needs that Great Expectations does not ship: class balance
as the ratio of the largest to the smallest class count.

GX registers metric providers and expectations when their classes are defined, so importing
this module is what makes `expect_column_value_count_ratio_to_be_between` available.
"""

from __future__ import annotations

from typing import ClassVar, Optional

from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import ColumnAggregateExpectation
from great_expectations.expectations.metrics.column_aggregate_metric_provider import (
    ColumnAggregateMetricProvider,
    column_aggregate_value,
)


class ColumnValueCountRatio(ColumnAggregateMetricProvider):
    """Count of the most frequent value over count of the least frequent one (nulls ignored)."""

    metric_name = "column.value_count_ratio"

    @column_aggregate_value(engine=PandasExecutionEngine)
    def _pandas(cls, column, **kwargs):
        counts = column.value_counts()
        if counts.empty:
            return None  # no values: nothing is balanced or unbalanced, the check fails
        return float(counts.max() / counts.min())


class ExpectColumnValueCountRatioToBeBetween(ColumnAggregateExpectation):
    """Expect max(count of a value) / min(count of a value) to lie in [min_value, max_value].

    On a label column this is class balance: 3.0 means no class has more than three times
    the samples of the rarest one.  A class that is absent altogether has no count here;
    the expected-classes check catches it.
    """

    min_value: Optional[float] = None
    max_value: Optional[float] = None

    metric_dependencies: ClassVar[tuple[str, ...]] = ("column.value_count_ratio",)
    success_keys: ClassVar[tuple[str, ...]] = ("min_value", "max_value")
    args_keys: ClassVar[tuple[str, ...]] = ("column", "min_value", "max_value")

    def _validate(self, metrics, runtime_configuration=None, execution_engine=None):
        return self._validate_metric_value_between(
            metric_name="column.value_count_ratio", metrics=metrics,
            runtime_configuration=runtime_configuration, execution_engine=execution_engine)
