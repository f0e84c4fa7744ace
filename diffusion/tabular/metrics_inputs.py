"""The inputs of the table metrics: a column description, checked tables in one canonical
form, and the integer codes the gradient-boosted models read.

A column description says what each evaluated column is; any of these forms is accepted:

    {"carat": "numerical", "price": "integer", "cut": "categorical"}      # name -> type
    [{"name": "carat", "type": "numerical"}, ...]                         # schema.json's list
    {"columns": [{"name": ..., "type": ...}, ...], "target": "price"}     # schema.json itself
    an object with `.columns` (items with `.name`, `.type`) and `.target` # a TableSchema

Types are exactly `numerical`, `integer` and `categorical`.  Columns of a DataFrame that the
description leaves out (`_id`, `_split`, an id column) are ignored.  The task follows the
target's type: `classification` for a categorical target, `regression` otherwise.

Canonical form (what every metric sees, so a category dtype in one table and object strings
in the other compare equal): numerical and integer columns as float64 with NaN for nulls;
categorical columns as Python objects, `str(value)` for each value and NaN for nulls.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager

import numpy as np
import pandas as pd

TYPES = ("numerical", "integer", "categorical")
# HistGradientBoosting reads a categorical feature as integer codes in [0, max_bins - 1]
# (max_bins <= 255): the most frequent categories keep their own code, the rest share one.
_MAX_CODES = 255


class TableEvaluationError(ValueError):
    """Bad input to a table metric: names the table, the column and what was expected."""


def column_types(columns) -> dict[str, str]:
    """{name: type} from any accepted column description (module docstring), in its order.

    Raises TableEvaluationError for an empty description, a type outside `TYPES`, or an
    entry without a name and type."""
    if hasattr(columns, "columns") and not isinstance(columns, (Mapping, pd.DataFrame)):
        items = [(getattr(c, "name", None), getattr(c, "type", None)) for c in columns.columns]
    elif isinstance(columns, Mapping) and isinstance(columns.get("columns"), (list, tuple)):
        return column_types(columns["columns"])
    elif isinstance(columns, Mapping):
        items = list(columns.items())
    elif isinstance(columns, (list, tuple)):
        items = []
        for c in columns:
            if not isinstance(c, Mapping):
                raise TableEvaluationError(
                    f"columns: each entry must be a dict with 'name' and 'type', got {c!r}")
            items.append((c.get("name"), c.get("type")))
    else:
        raise TableEvaluationError(
            f"columns: expected {{name: type}}, a list of {{'name', 'type'}} dicts or a schema, "
            f"got {type(columns).__name__}")
    types = {}
    for name, kind in items:
        if not isinstance(name, str) or not name:
            raise TableEvaluationError(f"columns: a column needs a name (a non-empty string), got {name!r}")
        if kind not in TYPES:
            raise TableEvaluationError(
                f"columns: column {name!r} has type {kind!r}; expected one of {', '.join(TYPES)}")
        types[name] = kind
    if not types:
        raise TableEvaluationError("columns: the description lists no column")
    return types


def described_target(columns, target: str | None) -> str | None:
    """`target` when given, else the description's own target (a schema's), else None."""
    if target is not None:
        return target
    if isinstance(columns, Mapping) and isinstance(columns.get("columns"), (list, tuple)):
        return columns.get("target")
    if hasattr(columns, "columns") and not isinstance(columns, Mapping):
        return getattr(columns, "target", None)
    return None


def task_of(types: dict[str, str], target: str | None) -> str | None:
    """'classification' for a categorical target, 'regression' for a numerical or integer
    one, None without a target.  Raises TableEvaluationError when `target` is not described."""
    if target is None:
        return None
    if target not in types:
        raise TableEvaluationError(
            f"target {target!r} is not one of the described columns ({', '.join(types)})")
    return "classification" if types[target] == "categorical" else "regression"


def canonical(frame, types: dict[str, str], name: str) -> pd.DataFrame:
    """The described columns of `frame` in canonical form (module docstring), index 0..n-1.

    Raises TableEvaluationError naming `name` (e.g. "synthetic") when `frame` is not a
    DataFrame, has no rows, lacks a described column, or holds a numerical/integer column
    that is not numbers or has infinite values."""
    if not isinstance(frame, pd.DataFrame):
        raise TableEvaluationError(f"{name}: expected a pandas DataFrame, got {type(frame).__name__}")
    if len(frame) == 0:
        raise TableEvaluationError(f"{name}: the table has no rows")
    missing = [c for c in types if c not in frame.columns]
    if missing:
        raise TableEvaluationError(
            f"{name}: missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"(it has {', '.join(map(str, frame.columns))})")
    out = {}
    for column, kind in types.items():
        s = frame[column]
        if kind == "categorical":
            values = s.astype(object)
            out[column] = values.map(str).where(values.notna(), np.nan).astype(object)
            continue
        if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
            raise TableEvaluationError(
                f"{name}: column {column!r} is {kind} but holds {s.dtype} values (e.g. {s.dropna().iloc[:1].tolist()})")
        values = pd.to_numeric(s).astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
        inf = int(np.isinf(values).sum())
        if inf:
            raise TableEvaluationError(f"{name}: column {column!r} holds {inf} infinite values")
        out[column] = values
    return pd.DataFrame(out)


def category_codes(reference: pd.DataFrame, types: dict[str, str]) -> dict[str, dict[str, int]]:
    """For each categorical column, a code per category of `reference` (canonical form), most
    frequent first.  Beyond 254 categories the rarer ones are not listed: `encode` gives them,
    and any value `reference` lacks, the shared code 254."""
    codes = {}
    for column, kind in types.items():
        if kind == "categorical":
            counts = reference[column].value_counts(dropna=True, sort=False)
            # frequency first, then the category's text: the same codes whatever the row order
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            codes[column] = {cat: i for i, (cat, _) in enumerate(ranked[:_MAX_CODES - 1])}
    return codes


def encode(frame: pd.DataFrame, types: dict[str, str], codes: dict[str, dict[str, int]],
           exclude: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(X, is_categorical): float64 (n, d) with one column per described column not in
    `exclude`, in description order; numbers as they are, categories as their code from
    `codes` (unknown or rare: 254), nulls as NaN, which HistGradientBoosting routes as missing
    values; is_categorical a bool mask (d,) for its `categorical_features`."""
    kept = [c for c in types if c not in exclude]
    X = np.empty((len(frame), len(kept)), dtype=np.float64)
    mask = np.zeros(len(kept), dtype=bool)
    for j, column in enumerate(kept):
        if types[column] == "categorical":
            s = frame[column]
            X[:, j] = s.map(codes[column]).astype(float).fillna(_MAX_CODES - 1).where(s.notna(), np.nan)
            mask[j] = True
        else:
            X[:, j] = frame[column].to_numpy(dtype=np.float64)
    return X, mask


def row_keys(frame: pd.DataFrame) -> pd.Series:
    """One 64-bit hash per row of a canonical frame (index ignored): equal rows, equal keys."""
    nulls = {c: "\0null" for c in frame.columns if frame[c].dtype == object}
    return pd.util.hash_pandas_object(frame.fillna(nulls), index=False)


@contextmanager
def limited_threads(threads: int):
    """OpenMP / BLAS threads of the block limited to `threads` (threadpoolctl, scikit-learn's
    own dependency).  HistGradientBoosting's results do not depend on the thread count; its
    time does: on a shared, loaded 2-core machine 2 threads took 63 s where 1 took 3.8 s."""
    from threadpoolctl import threadpool_limits

    if not (isinstance(threads, int) and threads >= 1):
        raise TableEvaluationError(f"threads must be an integer >= 1, got {threads!r}")
    with threadpool_limits(limits=threads):
        yield
