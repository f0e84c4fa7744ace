"""Settings + a processed table + reference statistics -> the table gate's expectations.

In the report's order: structure (columns as schema.json lists them, in order; ids; splits;
row count; duplicate rows), then per column: type, nulls, known categories, finite values,
range, then against the last validated version: its columns, each column's kind and its known
categories, no nulls where it had none unless the column is declared nullable (what an inferred
schema cannot hold fixed), and drift (mean and std of each number,
category shares).  Every expectation carries a short check name in meta["check"] and meta["column"],
and a description with its thresholds.  A column's value checks are left out when the column
is missing or holds another type than the schema's: its one failure (columns / type) says so,
instead of a cascade of errors from checks that cannot apply.
"""

from __future__ import annotations

import math
import sys

import great_expectations.expectations as gxe

from tasks.adapters.gx.report import VERSUS_REFERENCE
from tasks.adapters.gx.settings import ValidationSettings
from tasks.adapters.gx.table_data import (
    ID,
    ROW_HASH,
    SPLIT,
    SchemaColumn,
    TableData,
    accepted_kinds,
    seen_type,
)
from tasks.adapters.gx.table_expectations import (
    ExpectColumnCategoryTvdToBeAtMost,
    ExpectColumnTypeToBeOneOf,
)

SPLITS = ["train", "val", "test"]
FLOAT_MAX = sys.float_info.max  # the widest finite bounds: +-inf fall outside them
DECLARED_BOUNDS = "schema.json's declared bounds"   # a range of its own, not the last version's


def build_table_expectations(data: TableData, settings: ValidationSettings,
                             reference: dict | None) -> list:
    """The expectations for this table, in the order the report lists them.  A malformed
    `reference` (not a table's statistics) raises ValueError."""
    ref_columns = _reference_columns(reference) if reference is not None else {}
    checks = _structure(data, settings)
    for column in data.columns:
        if column.name not in data.frame.columns:
            continue  # the columns check names it
        checks.append(_type(column))
        if seen_type(data.frame[column.name])[0] not in accepted_kinds(column):
            continue  # the type check names what the column holds
        checks += _column_values(column, settings, ref_columns.get(column.name), data)
    if reference is not None:
        checks += _against_reference(data, ref_columns)
        checks += _drift(data, settings, ref_columns, int(reference.get("rows") or 0))
    return checks


def _against_reference(data: TableData, ref_columns: dict) -> list:
    """The last validated version's columns, their kinds and categories: an inferred schema
    follows whatever the file holds (a column turned to text is re-inferred as categorical, a
    dropped one is simply absent), so without these a changed version passes its own schema."""
    ids = [data.id_column] if data.id_column else []
    now = {c.name: c for c in data.columns}
    checks = [_check(gxe.ExpectTableColumnsToMatchSet, "columns_vs_reference",
                     "the columns of the last validated version: "
                     + ", ".join(ref_columns), column_set=[*ids, *ref_columns, ID, SPLIT, ROW_HASH],
                     exact_match=True, versus_reference=True)]
    for name, ref in ref_columns.items():
        if name not in data.frame.columns or not isinstance(ref, dict) or "type" not in ref:
            continue  # the columns check names it
        # a categorical column of integer codes (a 0/1 target) accepts integers: the reference's
        # dtype says so (a reference written before it recorded dtypes: this version's, when
        # this version's schema gives the column the same type)
        same = now.get(name)
        dtype = ref.get("dtype") or (same.dtype if same is not None and same.type == ref["type"]
                                     else None)
        then = SchemaColumn(name=name, type=ref["type"], dtype=dtype)
        checks.append(_check(ExpectColumnTypeToBeOneOf, "type_vs_reference",
                             f"{_article(then.type)} {then.type} column as in the last validated "
                             "version", name, versus_reference=True,
                             kinds=list(accepted_kinds(then)), schema_type=then.type))
        if then.type == "categorical" and seen_type(data.frame[name])[0] in accepted_kinds(then):
            known = [value for value, _ in _reference_value(ref, name, "shares") if value is not None]
            checks.append(_check(gxe.ExpectColumnValuesToBeInSet, "categories_vs_reference",
                                 f"values among the {len(known)} categories of the last "
                                 "validated version", name, versus_reference=True,
                                 value_set=known))
    return checks


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _check(cls, check: str, description: str, column: str | None = None,
           versus_reference: bool = False, **kwargs):
    # the gate's own row-hash column is a table-level fact: no column in the meta or the line
    named = column is not None and column != ROW_HASH
    meta = {"check": check, "column": column} if named else {"check": check}
    if versus_reference:   # a comparison with the last validated version: a meant change fails it
        meta[VERSUS_REFERENCE] = True
    if column is not None:
        kwargs["column"] = column
    return cls(description=description, meta=meta, **kwargs)


def _structure(data: TableData, s: ValidationSettings) -> list:
    expected = data.expected_columns
    checks = [_check(gxe.ExpectTableColumnsToMatchSet, "columns",
                     "the columns schema.json lists (with the id column), no other",
                     column_set=[*expected, ROW_HASH], exact_match=True)]
    if set(data.frame.columns) == {*expected, ROW_HASH}:
        checks.append(_check(gxe.ExpectTableColumnsToMatchOrderedList, "columns_order",
                             "the schema's columns in schema.json's order: "
                             + ", ".join(c.name for c in data.columns),
                             column_list=data.expected_order))
    checks += [
        _check(gxe.ExpectColumnValuesToBeUnique, "ids_unique",
               f"every row's id{_id_source(data)} is unique", ID),
        _check(gxe.ExpectColumnValuesToNotBeNull, "ids_present",
               f"every row has an id{_id_source(data)}", ID),
        _check(gxe.ExpectColumnValuesToBeInSet, "split_values",
               f"each row's split is one of {', '.join(SPLITS)}", SPLIT, value_set=SPLITS),
        _check(gxe.ExpectTableRowCountToBeBetween, "rows_min", f"at least {s.min_rows} rows",
               min_value=s.min_rows),
        # unique share = distinct / rows = 1 - (rows repeating an earlier row) / rows
        _check(gxe.ExpectColumnProportionOfUniqueValuesToBeBetween, "duplicates",
               f"at most {s.max_duplicate_fraction:.1%} of rows repeat an earlier row "
               "(every column" + (f" but the id column {data.id_column}" if data.id_column else "")
               + ")",
               ROW_HASH,
               min_value=1 - s.max_duplicate_fraction),
    ]
    return checks


def _id_source(data: TableData) -> str:
    return f" ({data.id_column})" if data.id_column else ""


def _type(column: SchemaColumn) -> object:
    kinds = list(accepted_kinds(column))
    dtype = f", dtype {column.dtype}" if column.dtype else ""
    return _check(ExpectColumnTypeToBeOneOf, "type",
                  f"{_article(column.type)} {column.type} column as schema.json says{dtype}",
                  column.name,
                  kinds=kinds, schema_type=column.type)


def _column_values(column: SchemaColumn, s: ValidationSettings, ref: dict | None,
                   data: TableData) -> list:
    limit = s.table.max_null_fraction if column.nullable else 0.0
    origin = data.origin(column.name, "nullable")
    checks = [_check(gxe.ExpectColumnValuesToNotBeNull, "nulls",
                     f"at most {limit:.1%} nulls ("
                     + (f"nullable, {origin}: max_null_fraction)" if column.nullable else
                        f"not nullable, {origin})"), column.name, mostly=1.0 - limit)]
    if column.nullable and origin != "declared" and ref is not None and ref.get("null_share") == 0:
        # an inferred schema follows the file: nulls in a column that had none make it
        # nullable (another model layout), which max_null_fraction alone would let pass
        checks.append(_check(gxe.ExpectColumnValuesToNotBeNull, "nulls_vs_reference",
                             "no nulls, as in the last validated version (if nulls are now "
                             "expected here, declare the column `nullable: true` in the entry's "
                             "columns)", column.name, versus_reference=True))
    if column.type == "categorical":
        if column.categories is not None:
            checks.append(_check(gxe.ExpectColumnValuesToBeInSet, "categories",
                                 f"values among the {len(column.categories)} categories of "
                                 "schema.json", column.name, value_set=column.categories))
        return checks
    checks.append(_check(gxe.ExpectColumnValuesToBeBetween, "finite", "no +-inf values",
                         column.name, min_value=-FLOAT_MAX, max_value=FLOAT_MAX))
    low, high, source = _range(column, s, ref)
    if source is not None:
        bounds = (f"[{low:.6g}, {high:.6g}]" if low is not None and high is not None else
                  f">= {low:.6g}" if low is not None else f"<= {high:.6g}")
        checks.append(_check(gxe.ExpectColumnValuesToBeBetween, "range",
                             f"values {'within ' if '[' in bounds else ''}{bounds} ({source})",
                             column.name, versus_reference=source != DECLARED_BOUNDS,
                             min_value=low, max_value=high))
    return checks


def _range(column: SchemaColumn, s: ValidationSettings, ref: dict | None):
    if column.low is not None or column.high is not None:
        return column.low, column.high, DECLARED_BOUNDS
    if ref is None or not _finite(ref.get("min"), ref.get("max")):
        return None, None, None
    low, high = float(ref["min"]), float(ref["max"])
    pad = s.table.range_tolerance * (high - low)
    return (low - pad, high + pad,
            f"the last validated version's [{low:.6g}, {high:.6g}] widened by "
            f"range_tolerance {s.table.range_tolerance:g} of its width on each side")


def _drift(data: TableData, s: ValidationSettings, ref_columns: dict, ref_rows: int) -> list:
    checks = []
    tol = s.table.drift_tolerance
    n = len(data.frame)
    for column in data.columns:
        ref = ref_columns.get(column.name)
        if (ref is None or ref.get("type") != column.type or column.name not in data.frame.columns
                or seen_type(data.frame[column.name])[0] not in accepted_kinds(column)):
            continue  # a new column, a changed type or a missing one: nothing to compare
        if column.type == "categorical":
            shares = _reference_value(ref, column.name, "shares")
            noise = expected_sampling_tvd([share for _, share in shares], n, ref_rows)
            checks.append(_check(
                ExpectColumnCategoryTvdToBeAtMost, "drift_categories",
                f"category shares within total variation distance {s.table.max_category_tvd:g} "
                f"+ {noise:.3g} (sampling at {n} vs {ref_rows} rows) of the last validated "
                "version's", column.name, versus_reference=True, reference_shares=shares,
                threshold=s.table.max_category_tvd + noise))
            continue
        mean, std = (_reference_value(ref, column.name, key) for key in ("mean", "std"))
        if not _finite(mean, std):
            continue  # a reference column with fewer than two values has no spread
        # a constant column (std 0) would demand bit-identical moments: floor the spread
        spread = max(float(std), 1e-9 * max(abs(float(mean)), 1.0))
        checks.append(_check(
            gxe.ExpectColumnMeanToBeBetween, "drift_mean",
            f"mean within {mean:.6g} ± {tol:g} x {std:.4g} (the last validated version's "
            "mean ± drift_tolerance x its std)", column.name, versus_reference=True,
            min_value=mean - tol * spread, max_value=mean + tol * spread))
        checks.append(_check(
            gxe.ExpectColumnStdevToBeBetween, "drift_std",
            f"std within {std:.4g} ± {tol:g} x {std:.4g} (the last validated version's std "
            "± drift_tolerance x itself)", column.name, versus_reference=True,
            min_value=max(std - tol * spread, 0.0), max_value=std + tol * spread))
    return checks


def expected_sampling_tvd(shares: list[float], n: int, n_ref: int) -> float:
    """The total variation distance two draws of n and n_ref rows from one distribution with
    `shares` show on average: 1/2 sum_k E|p_k - q_k|, each difference near normal with variance
    p_k (1 - p_k) (1/n + 1/n_ref), whose mean absolute value is sqrt(2 variance / pi)."""
    if n <= 0 or n_ref <= 0:
        return 0.0
    scale = 1.0 / n + 1.0 / n_ref
    return 0.5 * sum(math.sqrt(2.0 * p * (1.0 - p) * scale / math.pi) for p in shares)


def _reference_columns(reference: dict) -> dict:
    if not isinstance(reference, dict) or reference.get("kind") != "table" \
            or not isinstance(reference.get("columns"), dict):
        raise ValueError("reference statistics are not a table's (no 'kind': 'table' with "
                         "'columns'); pass the `statistics` of the last successful "
                         "ValidationReport of this table, or None for its first validated version")
    return reference["columns"]


def _reference_value(ref: dict, column: str, key: str):
    if key not in ref:
        raise ValueError(f"reference statistics lack columns.{column}.{key}; pass the "
                         "`statistics` of the last successful ValidationReport, or None")
    value = ref[key]
    if key == "shares":
        if not (isinstance(value, list) and all(isinstance(p, list) and len(p) == 2
                                                for p in value)):
            raise ValueError(f"reference statistics' columns.{column}.shares is not a list of "
                             "[value, share] pairs")
        return value
    return float(value)  # "NaN" as the report spells it reads back as nan


def _finite(*values) -> bool:
    try:
        return all(math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False
