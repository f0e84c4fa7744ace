"""A processed table folder (meta.json kind "table") -> what the table suite runs on, the type
a column is seen to hold, and the table's reference statistics for the next version's drift.

The folder (diffusion/tabular writes it) holds table.parquet (the columns in their original
dtypes, plus `_id` and `_split`), schema.json ({"columns": [{"name", "type", "dtype",
"categories"?, "ordered"?, "nullable"?, "min"?, "max"?}, ...], "target", "id"}) and meta.json.
Nothing here trusts the writer: a file or schema that cannot be read is a StructureError
listing every problem, and the values themselves are the suite's to judge.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.adapters.gx.table import StructureError

COLUMN_TYPES = ("numerical", "integer", "categorical")
ID, SPLIT = "_id", "_split"
# the gate's own column: a 64-bit hash of each row's values (`_id`, `_split` left out), so
# "rows that repeat an earlier row" is the share of repeated hashes, as the image gate counts
# repeated sha256.  Two distinct rows share a hash with probability 2**-64 per pair.
ROW_HASH = "__gate_row_hash"


@dataclass(frozen=True)
class SchemaColumn:
    name: str
    type: str                          # numerical | integer | categorical
    dtype: str | None = None           # the original pandas dtype string
    categories: list | None = None     # the known categories (categorical columns)
    nullable: bool = False
    low: float | None = None           # declared bounds ("min"/"max" in the schema entry)
    high: float | None = None


@dataclass
class TableData:
    name: str
    frame: pd.DataFrame             # table.parquet as read, plus ROW_HASH
    columns: list[SchemaColumn]     # schema.json's columns, in order
    id_column: str | None           # schema.json's id column (in the table, never modelled)
    # the schema's properties taken from the data ("income.nullable", ...: meta.json's
    # ingestion "inferred"); None when meta.json does not say (a folder written by hand)
    inferred: frozenset[str] | None = None

    def origin(self, column: str, prop: str) -> str:
        """How the schema came by `column`'s property `prop`, for messages: "inferred from the
        data", "declared" or, when meta.json does not say, "in schema.json"."""
        if self.inferred is None:
            return "in schema.json"
        return "inferred from the data" if f"{column}.{prop}" in self.inferred else "declared"

    @property
    def expected_columns(self) -> list[str]:
        """The columns the table must hold: the schema's, its id column, `_id` and `_split`."""
        ids = [] if self.id_column is None else [self.id_column]
        return [*ids, *(c.name for c in self.columns), ID, SPLIT]

    @property
    def expected_order(self) -> list[str]:
        """The frame's columns with the schema's columns, wherever they stand, put in the
        schema's order (the id column, `_id` and `_split` may stand anywhere)."""
        names = [c.name for c in self.columns]
        in_order = iter(names)
        return [next(in_order) if c in names else c for c in self.frame.columns]


def read_table_folder(folder: str | Path) -> TableData:
    """Read table.parquet, schema.json and meta.json of `folder`; raise StructureError listing
    every file that is missing or unreadable and every problem of the schema."""
    folder = Path(folder)
    problems: list[str] = []
    name, inferred = _read_meta(folder / "meta.json", problems)
    columns, id_column = _read_schema(folder / "schema.json", problems)
    frame = _read_parquet(folder / "table.parquet", problems)
    if problems:
        raise StructureError(problems)
    # a row's values, without its ids: two rows alike but for the id column are a repeated row
    # (the loader refuses repeated ids, so with the id column counted no row could repeat)
    values = frame[[c for c in frame.columns if c not in (ID, SPLIT, id_column)]]
    frame[ROW_HASH] = pd.util.hash_pandas_object(values, index=False).to_numpy()
    return TableData(name=name, frame=frame, columns=columns, id_column=id_column,
                     inferred=inferred)


def seen_type(series: pd.Series) -> tuple[str, str]:
    """(kind, description) of what `series` holds, nulls ignored: kind is "integer" (an integer
    dtype, or floats that are all whole numbers), "numerical" (other floats), "categorical"
    (category, string, bool, or an object column of only strings/bools) or "other"; the
    description names the dtype and, where it matters, why (e.g. "float64 with non-whole
    values, e.g. 1.5", "object holding str, e.g. '52 yrs'": a text value when there is one)."""
    dtype = str(series.dtype)
    if isinstance(series.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(series) \
            or pd.api.types.is_string_dtype(series.dtype) and dtype != "object":
        return "categorical", dtype + _example(series.dropna())
    if pd.api.types.is_integer_dtype(series):
        return "integer", dtype
    if pd.api.types.is_float_dtype(series):
        values = series.dropna().to_numpy(dtype=float)
        fractional = values[~(np.isfinite(values) & (values == np.round(values)))]
        if fractional.size == 0:
            return "integer", f"{dtype} with whole values only"
        return "numerical", f"{dtype} with non-whole values, e.g. {fractional[0]:.6g}"
    if dtype == "object":
        values = series.dropna()
        kinds = sorted({type(v).__name__ for v in values.tolist()})
        text = [v for v in values.tolist() if isinstance(v, str)]   # what turned a column to text
        example = _example(pd.Series(text[:1] or values.tolist()[:1], dtype=object))
        if set(kinds) <= {"str", "bool"}:
            return "categorical", f"object holding {', '.join(kinds) or 'nothing but nulls'}{example}"
        return "other", f"object holding {', '.join(kinds)}{example}"
    return "other", dtype


def _example(values: pd.Series) -> str:
    """", e.g. '52 yrs'" for the first of `values` (non-null), "" when there is none."""
    return f", e.g. {_plain(values.iloc[0])!r}" if len(values) else ""


def accepted_kinds(column: SchemaColumn) -> tuple[str, ...]:
    """The seen kinds a schema column accepts.  numerical: any number; integer: whole numbers
    (a float column of whole numbers passes: pandas stores an integer column that holds a null
    as float64, and decoding restores the schema's dtype anyway); categorical: labels, and
    integer codes when the schema's own dtype is an integer one."""
    if column.type == "numerical":
        return ("numerical", "integer")
    if column.type == "integer":
        return ("integer",)
    coded = column.dtype is not None and column.dtype.lower().lstrip("u").startswith("int")
    return ("categorical", "integer") if coded else ("categorical",)


def category_shares(series: pd.Series) -> list[list]:
    """[[value, share], ...] over the rows of `series`, null (None) a category of its own, in
    descending share; values as JSON holds them (str, bool, int, float, None)."""
    counts = series.astype(object).where(series.notna(), None).value_counts(dropna=False)
    total = max(int(counts.sum()), 1)
    return [[_plain(value), float(count) / total] for value, count in counts.items()]


def reference_statistics(data: TableData) -> dict:
    """This table's summary, to pass as `reference` when validating its next version:
    {"kind": "table", "rows": n, "columns": {name: {"type", "dtype", "null_share", and for numbers
    "min", "max", "mean", "std" (sample std, ddof = 1, as GX's column stdev) or for categories
    "shares" ([[value, share], ...])}}}.  Columns of the schema that the table lacks, or that
    hold another kind than the schema's, are left out (nothing trustworthy to compare with)."""
    columns = {}
    for column in data.columns:
        if column.name not in data.frame.columns:
            continue
        series = data.frame[column.name]
        kind, _ = seen_type(series)
        if kind not in accepted_kinds(column):
            continue
        # the dtype says whether a categorical column's values are integer codes (a 0/1 target)
        stats: dict = {"type": column.type, "dtype": column.dtype,
                       "null_share": float(series.isna().mean()) if len(series) else 0.0}
        if column.type == "categorical":
            stats["shares"] = category_shares(series)
        else:
            values = series.dropna().astype(float)
            with np.errstate(invalid="ignore", over="ignore"):
                stats.update(min=float(values.min()), max=float(values.max()),
                             mean=float(values.mean()), std=float(values.std(ddof=1)))
        columns[column.name] = stats
    return {"kind": "table", "rows": int(len(data.frame)), "columns": columns}


def _plain(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _read_meta(path: Path, problems: list[str]) -> tuple[str, frozenset[str] | None]:
    """(name, the schema properties its ingestion record says were inferred, or None)."""
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta.get("name"), str) or meta.get("kind") != "table":
            raise TypeError("'name' must be a string and 'kind' \"table\"")
        inferred = (meta.get("ingestion") or {}).get("inferred")
        return meta["name"], (frozenset(map(str, inferred)) if isinstance(inferred, list)
                              else None)
    except FileNotFoundError:
        problems.append(f"{path}: missing; a processed table needs meta.json "
                        "({\"name\", \"kind\": \"table\", ...})")
    except (ValueError, TypeError, AttributeError) as exc:
        problems.append(f"{path}: unreadable ({exc}); accepted: a JSON object with a string "
                        "'name' and 'kind': \"table\"")
    return path.parent.name, None


def _read_schema(path: Path, problems: list[str]) -> tuple[list[SchemaColumn], str | None]:
    accepted = ('accepted: {"columns": [{"name": ..., "type": "numerical" | "integer" | '
                '"categorical", ...}, ...], "target": ..., "id": ...}')
    try:
        schema = json.loads(path.read_text())
    except FileNotFoundError:
        problems.append(f"{path}: missing; a processed table needs schema.json; {accepted}")
        return [], None
    except ValueError as exc:
        problems.append(f"{path}: not JSON ({exc}); {accepted}")
        return [], None
    entries = schema.get("columns") if isinstance(schema, dict) else None
    if not isinstance(entries, list) or not entries:
        problems.append(f"{path}: no list of columns; {accepted}")
        return [], None
    columns = []
    for i, entry in enumerate(entries):
        column = _schema_column(entry)
        if isinstance(column, str):
            problems.append(f"{path}: column {i} {column}; {accepted}")
        else:
            columns.append(column)
    names = [c.name for c in columns]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(f"{path}: column(s) {repeated} listed more than once")
    id_column = schema.get("id")
    if id_column is not None and (not isinstance(id_column, str) or id_column in names):
        problems.append(f"{path}: 'id' is {id_column!r}; accepted: null or the name of a column "
                        "that is not one of 'columns' (it is never modelled)")
    return columns, id_column


def _schema_column(entry) -> SchemaColumn | str:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        return f"has no string 'name' ({entry!r})"
    name, kind = entry["name"], entry.get("type")
    if kind not in COLUMN_TYPES:
        return f"{name!r} has type {kind!r}, not one of {', '.join(COLUMN_TYPES)}"
    categories = entry.get("categories")
    if categories is not None and not isinstance(categories, list):
        return f"{name!r} has 'categories' {categories!r}, not a list"
    low, high = entry.get("min"), entry.get("max")
    for bound in (low, high):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))):
            return f"{name!r} has a bound {bound!r} that is not a number"
    return SchemaColumn(name=name, type=kind, dtype=entry.get("dtype"), categories=categories,
                        nullable=bool(entry.get("nullable", False)), low=low, high=high)


def _read_parquet(path: Path, problems: list[str]) -> pd.DataFrame:
    if not path.is_file():
        problems.append(f"{path}: missing; a processed table needs table.parquet")
        return pd.DataFrame()
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: not a readable Parquet table ({exc})")
        return pd.DataFrame()
    missing = [c for c in (ID, SPLIT) if c not in frame.columns]
    if missing:
        problems.append(f"{path}: missing column(s) {missing}; the processed table carries each "
                        "row's id (_id) and split (_split)")
    if ROW_HASH in frame.columns:
        problems.append(f"{path}: holds a column named {ROW_HASH!r}, the gate's own; rename it")
    return frame
