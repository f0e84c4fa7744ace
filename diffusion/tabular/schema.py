"""A table's schema: which columns it has, of which type and dtype, which is the target and
which the id; inferred from a DataFrame, completed from one when declared in part, and checked
against one.

The JSON shape (`schema.json` of a processed table, `data.schema` in params.yaml):

    {"columns": [
       {"name": "carat", "type": "numerical", "dtype": "float64", "nullable": false},
       {"name": "price", "type": "integer", "dtype": "int64", "nullable": false},
       {"name": "cut", "type": "categorical", "dtype": "category", "nullable": false,
        "categories": ["Fair", "Good", "Very Good", "Premium", "Ideal"], "ordered": true}],
     "target": "price",     # or null; one of `columns`
     "id": null}            # or an id column's name: kept in the table, never modelled, not in `columns`

`type` is what the model makes of a column: `numerical` (real values), `integer` (whole
numbers, decoded exactly) or `categorical` (one of `categories`, in that order).  `dtype` is
the column's pandas dtype as `str(series.dtype)`, so decoding restores it exactly ("float64",
"int32", "Int64", "bool", "category", "object", ...).  `nullable` says whether the column may
hold nulls.  A numerical or integer column may also declare bounds, "min" and/or "max" (never
inferred: the train range is the encoder's business), which `check_table` enforces.

Inference (`infer_schema`), one rule per dtype:
- bool, category, object and string dtypes are categorical.  A category dtype keeps its own
  categories, order and `ordered` flag; other categories are sorted.  An object column must
  hold one kind of scalar (str, bool, int or float): a column mixing kinds is a DataError.
  So is a column inferred categorical whose every value differs (2000 labels in 2000 rows; at
  least 20 rows): no label recurs, so a model cannot learn it and decoding would copy rows.
  Declare it the id column or drop it (a declared `type: categorical` is taken as meant).
- integer dtypes (int8..uint64, Int64, ...) are integer, whatever their number of distinct
  values: a threshold would make a column's type depend on the sample's size (a 3-valued
  count in 100 rows, 40-valued in 50,000), and the quantile transform decodes a few-valued
  integer exactly anyway.  Declare a code (a zip code, a class number) categorical.
  One exception, which no sample size changes: a target of an integer dtype that holds exactly
  two values (0/1, 1/2) is a class label, so categorical (its dtype kept, categories sorted):
  the utility score is then a classifier's AUC and F1, not a regression's R^2 of a 0/1
  column.  Declare the target `integer` to have it regressed.
- float dtypes are numerical, even when every value is whole (a float column of counts read
  from a CSV with a blank is one): declare `integer` to have it decoded as whole numbers.
- anything else (datetimes, timedeltas, complex, intervals) is a DataError naming the column.

A declared schema (`complete_schema`) may give only some properties -- e.g. each column's name
and type, or just the target -- and the rest come from the data as `infer_schema` would give
them; `filled` lists what was taken from the data, so a loader can say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from ..data_errors import DataError

TYPES = ("numerical", "integer", "categorical")
_COLUMN_KEYS = ("name", "type", "dtype", "nullable", "categories", "ordered", "min", "max")
_SCHEMA_KEYS = ("columns", "target", "id")
# a column of this many categories is more likely an id or free text: said, not guessed
_MANY_CATEGORIES = 100
# a column inferred categorical whose every value differs (in at least this many rows) is
# refused: no category recurs, so a model can only learn each row's own label and decoding
# copies rows (an id column, or free text)
_DISTINCT_ROWS_MIN = 20


@dataclass(frozen=True)
class Column:
    """One modelled column.  `categories` and `ordered` are set for categorical columns only."""
    name: str
    type: str
    dtype: str
    nullable: bool = False
    categories: tuple | None = None
    ordered: bool | None = None
    # declared bounds of a numerical or integer column ("min"/"max"; never inferred)
    minimum: float | None = None
    maximum: float | None = None

    def to_dict(self) -> dict:
        out = {"name": self.name, "type": self.type, "dtype": self.dtype,
               "nullable": self.nullable}
        if self.type == "categorical":
            out["categories"] = list(self.categories)
            out["ordered"] = bool(self.ordered)
        for key, bound in (("min", self.minimum), ("max", self.maximum)):
            if bound is not None:
                out[key] = bound
        return out


@dataclass(frozen=True)
class TableSchema:
    columns: tuple[Column, ...]
    target: str | None = None
    id: str | None = None
    # which properties came from the data rather than a declaration ("carat.dtype", ...)
    filled: tuple[str, ...] = field(default=(), compare=False)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise DataError(f"schema has no column {name!r}; columns: {self.names}")

    def to_dict(self) -> dict:
        return {"columns": [c.to_dict() for c in self.columns], "target": self.target,
                "id": self.id}

    @classmethod
    def from_dict(cls, data: dict) -> TableSchema:
        """A complete schema from its JSON dict (every property given); DataError naming the
        column and property otherwise.  For a declaration that gives only some, see
        `complete_schema`."""
        _check_keys(data)
        if "columns" not in data:
            raise DataError("schema has no 'columns'; accepted: a list of column objects")
        columns = []
        for entry in _column_entries(data):
            missing = [k for k in ("name", "type", "dtype", "nullable") if k not in entry]
            if entry.get("type") == "categorical":
                missing += [k for k in ("categories", "ordered") if k not in entry]
            if missing:
                raise DataError(f"schema column {entry.get('name')!r} lacks {missing}; a complete "
                                "schema gives name, type, dtype, nullable and, when categorical, "
                                "categories and ordered")
            columns.append(_column(entry))
        return _validated(cls(tuple(columns), data.get("target"), data.get("id")))


def _check_keys(data) -> None:
    if not isinstance(data, dict):
        raise DataError(f"schema is a {type(data).__name__}; accepted: a mapping with "
                        f"{', '.join(_SCHEMA_KEYS)}")
    unknown = sorted(set(data) - set(_SCHEMA_KEYS))
    if unknown:
        raise DataError(f"schema has unknown key(s) {unknown}; accepted: {', '.join(_SCHEMA_KEYS)}")


def _column_entries(data: dict) -> list[dict]:
    entries = data["columns"]
    if not isinstance(entries, (list, tuple)):
        raise DataError(f"schema 'columns' is a {type(entries).__name__}; accepted: a list")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise DataError(f"schema column {entry!r}: accepted: an object with a string 'name'")
        unknown = sorted(set(entry) - set(_COLUMN_KEYS))
        if unknown:
            raise DataError(f"schema column {entry['name']!r} has unknown key(s) {unknown}; "
                            f"accepted: {', '.join(_COLUMN_KEYS)}")
    names = [e["name"] for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"schema lists column(s) {twice} more than once")
    return list(entries)


def declaration_problems(entries) -> list[str]:
    """Every fault of a declared schema's `columns` (data.columns) that needs no data: not a
    list, an entry without a string name, a name listed twice, an unknown key, a type not one
    of TYPES, a dtype pandas does not know or that cannot hold the type, nullable or ordered
    not a boolean, categories not a non-empty list of distinct scalars, bounds that are not
    finite numbers or cross, categorical keys on a number column and bounds on a categorical
    one.  One text per fault, naming the column; [] for a declaration that may be completed
    from a table.  What only the data can show is `complete_schema`'s and `check_table`'s."""
    if not isinstance(entries, (list, tuple)):
        return [f"columns is a {type(entries).__name__}; accepted: a list of column objects"]
    problems, names = [], []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            problems.append(f"column {entry!r}: accepted: an object with a string 'name'")
            continue
        names.append(entry["name"])
        problems += [f"column {entry['name']!r}: {p}" for p in _entry_problems(entry)]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        problems.append(f"column(s) {twice} listed more than once")
    return problems


def _entry_problems(entry: dict) -> list[str]:
    out = []
    unknown = sorted(set(entry) - set(_COLUMN_KEYS))
    if unknown:
        out.append(f"unknown key(s) {unknown}; accepted: {', '.join(_COLUMN_KEYS)}")
    type_ = entry.get("type")
    if "type" in entry and type_ not in TYPES:
        out.append(f"type {type_!r}; accepted: {', '.join(TYPES)}")
        type_ = None
    if "dtype" in entry:
        dtype = entry["dtype"]
        try:
            if not isinstance(dtype, str):
                raise DataError(f"dtype {dtype!r}; accepted: a pandas dtype name")
            if type_ in TYPES:
                _check_dtype(Column(entry["name"], type_, dtype, entry.get("nullable") is True))
            else:
                pandas_dtype(dtype)
        except DataError as exc:
            out.append(str(exc).replace(f"column {entry['name']!r}: ", ""))
    for key in ("nullable", "ordered"):
        if key in entry and not isinstance(entry[key], bool):
            out.append(f"{key} {entry[key]!r}; accepted: true or false")
    if "categories" in entry:
        categories = entry["categories"]
        if not isinstance(categories, (list, tuple)) or not categories:
            out.append(f"categories {categories!r}; accepted: a non-empty list of values")
        else:
            try:
                values = [_scalar(entry["name"], v) for v in categories]
                if len(set(values)) != len(values):
                    out.append(f"categories repeat a value: {list(categories)}")
            except DataError as exc:
                out.append(str(exc).replace(f"column {entry['name']!r}: ", ""))
    for key in ("min", "max"):
        bound = entry.get(key)
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))
                                  or not math.isfinite(bound)):
            out.append(f"{key} {bound!r}; accepted: a finite number")
    low, high = entry.get("min"), entry.get("max")
    if all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in (low, high)) \
            and low > high:
        out.append(f"min {low} is above max {high}")
    if type_ == "categorical":
        bounds = [k for k in ("min", "max") if entry.get(k) is not None]
        if bounds:
            out.append(f"categorical but gives {bounds}; those are for numerical and integer "
                       "columns only")
    elif type_ in TYPES:
        extra = [k for k in ("categories", "ordered") if entry.get(k) is not None]
        if extra:
            out.append(f"{type_} but gives {extra}; those are for categorical columns only")
    return out


def _column(entry: dict) -> Column:
    """The column of a complete entry (name, type, dtype, nullable; categories and ordered
    when categorical); DataError naming the column and its first fault (`_entry_problems`,
    what `declaration_problems` says of a declaration)."""
    name = entry["name"]
    problems = _entry_problems(entry)
    if problems:
        raise DataError(f"column {name!r}: {problems[0]}")
    categories = ordered = None
    if entry["type"] == "categorical":
        categories = tuple(_scalar(name, v) for v in entry["categories"])
        ordered = entry["ordered"]
    return Column(name, entry["type"], entry["dtype"], entry["nullable"], categories, ordered,
                  entry.get("min"), entry.get("max"))


def _validated(schema: TableSchema) -> TableSchema:
    for c in schema.columns:
        _check_dtype(c)
    if schema.target is not None and schema.target not in schema.names:
        raise DataError(f"schema target {schema.target!r} is not one of its columns {schema.names}")
    if schema.id is not None:
        if not isinstance(schema.id, str):
            raise DataError(f"schema id {schema.id!r}; accepted: a column name or null")
        if schema.id in schema.names:
            raise DataError(f"schema id column {schema.id!r} is also listed in columns; the id is "
                            "never modelled: remove it from columns")
    if not schema.columns:
        raise DataError("schema has no columns to model")
    return schema


def pandas_dtype(dtype: str):
    """The dtype a schema's `dtype` string names ("category" and pandas 3's "str" included:
    on pandas 2 a "str" column is held as object).  DataError for an unknown name."""
    if dtype == "category":
        return "category"
    if dtype == "str":
        return np.dtype(object) if int(pd.__version__.split(".")[0]) < 3 else "str"
    try:
        return ptypes.pandas_dtype(dtype)
    except TypeError as exc:
        raise DataError(f"dtype {dtype!r} is not a pandas dtype ({exc})") from None


def _check_dtype(c: Column) -> None:
    dt = pandas_dtype(c.dtype)
    if c.type == "categorical":
        return  # any dtype can hold a finite set of values
    # numerical on an integer dtype is allowed: decoding then rounds, as the dtype must
    if getattr(dt, "kind", "O") not in "fiu":
        raise DataError(f"column {c.name!r}: dtype {c.dtype} cannot hold a {c.type} column; "
                        "accepted: an integer or float dtype (or declare it categorical)")
    if c.nullable and dt.kind in "iu" and not ptypes.is_extension_array_dtype(dt):
        raise DataError(f"column {c.name!r}: dtype {c.dtype} cannot hold nulls; accepted for a "
                        "nullable column: Int64 (or another nullable integer dtype) or float64")


def _scalar(name: str, value):
    """A category as a plain JSON scalar (numpy scalars unwrapped); DataError otherwise."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"column {name!r}: category {value!r}; nulls are not categories (the "
                        "column is nullable instead) and infinities cannot be one")
    if not isinstance(value, (str, bool, int, float)):
        raise DataError(f"column {name!r}: category {value!r} of type {type(value).__name__}; "
                        "accepted: str, bool, int or float values")
    return value


# --- inference ----------------------------------------------------------------------------

def _infer_column(name: str, series: pd.Series, target: bool = False,
                  declared_type: bool = False) -> Column:
    """The column `series` is by the module docstring's rules; `declared_type`: the caller
    declared its type (a categorical column of distinct values is then the user's choice)."""
    column = _inferred_column(name, series, target)
    if column.type == "categorical" and not declared_type:
        _refuse_distinct(name, series)
    return column


def _refuse_distinct(name: str, series: pd.Series) -> None:
    """DataError for a column inferred categorical that no model can learn: numbers read as
    text for a few other marks (over _MANY_CATEGORIES labels, at least 90 % but not all of
    them numbers), or a different value in every row (at least _DISTINCT_ROWS_MIN: an id or
    free text)."""
    values = series.dropna()
    distinct = values.nunique()
    if distinct > _MANY_CATEGORIES or (len(values) >= _DISTINCT_ROWS_MIN and distinct == len(values)):
        numbers = pd.to_numeric(values.astype(str), errors="coerce")
        if 0.9 <= numbers.notna().mean() < 1:   # numbers, but for a few marks of a missing value
            odd = values[numbers.isna()]
            raise DataError(f"column {name!r} reads as text although {int(numbers.notna().sum())} "
                            f"of its {len(values)} values are numbers; the others, e.g. "
                            f"{', '.join(map(repr, pd.unique(odd)[:3].tolist()))}, are not: "
                            "leave a missing value empty (it reads as null) or fix those values")
    if len(values) >= _DISTINCT_ROWS_MIN and distinct == len(values):
        raise DataError(f"column {name!r} holds a different value in every row ({len(values)} "
                        f"distinct of {len(values)}, e.g. {_plain(values.iloc[0])!r}): as a "
                        "category no value recurs, so a model cannot learn it and decoding "
                        "would copy rows; declare it the id column (data.id_column) or drop it "
                        "from the table")


def _inferred_column(name: str, series: pd.Series, target: bool = False) -> Column:
    dtype = series.dtype
    nullable = bool(series.isna().any())
    if len(series) and series.isna().all():  # nothing to learn a type, a range or a model from
        raise DataError(f"column {name!r} ({dtype}) holds only nulls: nothing to model; drop it "
                        "from the table (or fill it)")
    if isinstance(dtype, pd.CategoricalDtype):
        categories = tuple(_scalar(name, v) for v in dtype.categories)
        if not categories:
            raise DataError(f"column {name!r}: a category dtype with no categories")
        return Column(name, "categorical", "category", nullable, categories, bool(dtype.ordered))
    if ptypes.is_bool_dtype(dtype) or ptypes.is_object_dtype(dtype) or ptypes.is_string_dtype(dtype):
        values = series.dropna()
        if values.empty:
            raise DataError(f"column {name!r} ({dtype}) holds only nulls: its categories cannot "
                            "be inferred; drop it or declare its categories")
        kinds = sorted({_kind(v) for v in values.unique()})
        if len(kinds) > 1:
            raise DataError(f"column {name!r} ({dtype}) mixes values of types {kinds}; accepted: "
                            "one type per column (clean it, or declare dtype and categories)")
        categories = tuple(sorted(_scalar(name, v) for v in values.unique()))
        return Column(name, "categorical", str(dtype), nullable, categories, False)
    if ptypes.is_integer_dtype(dtype):
        values = series.dropna().unique()
        if target and len(values) == 2:  # a binary class label (module docstring)
            return Column(name, "categorical", str(dtype), nullable,
                          tuple(sorted(_scalar(name, v) for v in values)), False)
        return Column(name, "integer", str(dtype), nullable)
    if ptypes.is_float_dtype(dtype):
        return Column(name, "numerical", str(dtype), nullable)
    raise DataError(f"column {name!r} has dtype {dtype}, which a table model cannot take; "
                    "accepted: numbers, bool, category or strings (convert it, e.g. a date to "
                    "numbers, or drop it)")


def _kind(value) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    return "int" if isinstance(value, int) and not isinstance(value, bool) else type(value).__name__


def infer_schema(df: pd.DataFrame, target: str | None = None,
                 id_column: str | None = None) -> TableSchema:
    """The schema of `df` by the module docstring's rules: every column but `id_column`, in
    `df`'s order.  DataError when target or id is not a column, for an unusable dtype, or for
    an object column mixing kinds of values."""
    _check_names(df, target, id_column)
    columns = tuple(_infer_column(str(name), df[name], target=str(name) == target)
                    for name in df.columns if name != id_column)
    filled = tuple(f"{c.name}.{p}" for c in columns for p in _properties(c))
    return replace(_validated(TableSchema(columns, target, id_column)), filled=filled)


def _properties(c: Column) -> list[str]:
    return ["type", "dtype", "nullable"] + (["categories", "ordered"]
                                              if c.type == "categorical" else [])


def _check_names(df: pd.DataFrame, target, id_column) -> None:
    names = [str(n) for n in df.columns]
    if len(set(names)) != len(names):
        raise DataError(f"the table repeats column name(s) {sorted({n for n in names if names.count(n) > 1})}")
    for role, name in (("target", target), ("id column", id_column)):
        if name is not None and name not in names:
            raise DataError(f"{role} {name!r} is not a column of the table; columns: {names}")
    if target is not None and target == id_column:
        raise DataError(f"column {target!r} cannot be both the target and the id column")


def complete_schema(declared, df: pd.DataFrame, target: str | None = None,
                    id_column: str | None = None) -> TableSchema:
    """The schema `declared` (a dict in the JSON shape, any properties left out, or a
    TableSchema) completed from `df`: a column's missing properties and, when `columns` is
    absent, every column come from `infer_schema`.  `target` / `id_column` apply when the
    declaration does not name them; naming a different one is a DataError.  A declared type
    other than the inferred one is kept (an integer column declared categorical, a float
    column declared integer): `check_table` then says whether the data fits it.  The result's
    `filled` names each property taken from the data."""
    if declared is None:
        return infer_schema(df, target, id_column)
    data = declared.to_dict() if isinstance(declared, TableSchema) else dict(declared)
    _check_keys(data)
    for key, given in (("target", target), ("id", id_column)):
        if given is not None and data.get(key) not in (None, given):
            raise DataError(f"the schema's {key} is {data[key]!r} but {given!r} was asked for; "
                            "give one of them")
        if data.get(key) is None:
            data[key] = given
    target, id_column = data["target"], data["id"]
    _check_names(df, target, id_column)
    if "columns" not in data:
        return replace(infer_schema(df, target, id_column), target=target, id=id_column)
    # every fault of the declaration and of its fit to the table's columns, in one message
    problems = declaration_problems(data["columns"])
    entries = _column_entries(data) if not problems else [
        e for e in data["columns"] if isinstance(e, dict) and isinstance(e.get("name"), str)]
    names = [str(n) for n in df.columns]
    missing = [e["name"] for e in entries if e["name"] not in names]
    if missing:
        problems.append(f"declared column(s) {missing} missing from the table; its columns: {names}")
    listed = {e["name"] for e in entries}
    unlisted = [n for n in names if n not in listed and n != id_column]
    if unlisted:
        problems.append(f"the table has column(s) {unlisted} that the declared schema does not "
                        "list; declare them (a name is enough) or drop them from the table")
    if problems:
        raise DataError("; ".join(problems))
    columns, filled = [], []
    for entry in entries:
        name = entry["name"]
        inferred = (_infer_column(name, df[name], target=name == target,
                                  declared_type="type" in entry)
                    if _needs_data(entry) else None)
        out = dict(entry)
        if "type" not in out:
            out["type"] = inferred.type
            filled.append(f"{name}.type")
        if out["type"] == "categorical" and inferred is not None and inferred.type != "categorical":
            # a number column declared categorical: its distinct values, sorted
            values = df[name].dropna().unique()
            inferred = Column(name, "categorical", inferred.dtype, inferred.nullable,
                              tuple(sorted(_scalar(name, v) for v in values)), False)
        for key in ("dtype", "nullable") + (("categories", "ordered")
                                            if out["type"] == "categorical" else ()):
            if key not in out:
                out[key] = inferred.to_dict()[key]
                filled.append(f"{name}.{key}")
        columns.append(_column(out))
    return replace(_validated(TableSchema(tuple(columns), target, id_column)), filled=tuple(filled))


def _needs_data(entry: dict) -> bool:
    keys = {"type", "dtype", "nullable"}
    if entry.get("type") in (None, "categorical"):
        keys |= {"categories", "ordered"}
    return not keys <= set(entry)


# --- description and checks --------------------------------------------------------------

def describe(schema: TableSchema, source: str | None = None) -> list[str]:
    """Lines a command line prints for `schema`: one per column (type, dtype, nulls,
    categories), the target and id, and which properties were taken from the data."""
    width = max(len(n) for n in schema.names + [schema.id or ""])
    head = f"schema{' of ' + source if source else ''}: {len(schema.columns)} columns"
    lines = [head + f", target {schema.target or 'none'}, id {schema.id or 'none'}"]
    for c in schema.columns:
        text = f"  {c.name:<{width}}  {c.type:<11}  {c.dtype}"
        if c.nullable:
            text += ", nullable"
        if c.type == "categorical":
            shown = ", ".join(map(str, c.categories[:8])) + (", ..." if len(c.categories) > 8 else "")
            text += f", {len(c.categories)} {'ordered ' if c.ordered else ''}categories: {shown}"
            if len(c.categories) > _MANY_CATEGORIES:
                text += " (many: an id or free text? declare it the id column or drop it)"
        if c.name == schema.target:
            text += "  <- target"
        lines.append(text)
    if schema.id:
        lines.append(f"  {schema.id:<{width}}  id (kept, not modelled)")
    if schema.filled:
        declared_any = len(schema.filled) < sum(len(_properties(c)) for c in schema.columns)
        lines.append("  inferred from the data: " + ("everything" if not declared_any
                                                       else ", ".join(schema.filled)))
    return lines


def layout_changes(old: TableSchema, new: TableSchema, old_encoding: str | None = None,
                   new_encoding: str | None = None, entry: str = "the dataset's entry") -> list[str]:
    """How the model layout of `new` (a version's schema, its `data.categorical` encoding)
    departs from `old` (a registered model's), one text per difference that says what changed
    and what keeps the registered layout: a column gone, new or moved, a type changed, a column
    that became nullable or stopped being so, categories gained, lost or reordered, another
    categorical encoding.  `entry` names the params.yaml entry ("datasets.customers") in the
    remedies.  [] when the layouts agree on all of these."""
    cols = f"{entry}.columns"
    out = []
    if old_encoding is not None and new_encoding is not None and old_encoding != new_encoding:
        out.append(f"data.categorical is {new_encoding}, the registered model's {old_encoding} "
                   f"(set {entry}.categorical: {old_encoding})")
    gone = [n for n in old.names if n not in new.names]
    added = [n for n in new.names if n not in old.names]
    if gone:
        out.append(f"column(s) {', '.join(gone)} gone (restore them in the file)")
    if added:
        out.append(f"column(s) {', '.join(added)} new (drop them from the file, or declare one "
                   f"the id column)")
    kept_old = [n for n in old.names if n in new.names]
    kept_new = [n for n in new.names if n in old.names]
    if kept_old != kept_new:
        out.append(f"the columns' order is {', '.join(kept_new)}, the registered model's "
                   f"{', '.join(kept_old)} (put them back in that order, or list them in that "
                   f"order under {cols})")
    for name in kept_old:
        was, now = old.column(name), new.column(name)
        if was.type != now.type:
            out.append(f"{name}: {was.type} became {now.type} (dtype {now.dtype}; clean its "
                       f"values, or declare {{name: {name}, type: {was.type}}} under {cols})")
            continue
        if now.nullable and not was.nullable:
            out.append(f"{name} became nullable: this version has nulls in it, the registered "
                       "model's data had none (fill or drop those rows)")
        elif was.nullable and not now.nullable:
            out.append(f"{name} is no longer nullable: this version has no nulls in it (declare "
                       f"{{name: {name}, nullable: true}} under {cols} to keep the layout)")
        if was.type != "categorical":
            continue
        gained = [c for c in now.categories if c not in was.categories]
        lost = [c for c in was.categories if c not in now.categories]
        if gained:
            out.append(f"{name} gained categor{'y' if len(gained) == 1 else 'ies'} "
                       f"{', '.join(map(repr, gained[:5]))} (map those rows to known categories "
                       "or drop them)")
        if lost:
            out.append(f"{name} lost categor{'y' if len(lost) == 1 else 'ies'} "
                       f"{', '.join(map(repr, lost[:5]))}: no row holds "
                       f"{'it' if len(lost) == 1 else 'them'} (declare {{name: {name}, categories: "
                       f"{list(was.categories)}}} under {cols} to keep the layout)")
        if not gained and not lost and was.categories != now.categories:
            out.append(f"{name}'s categories are in another order (declare {{name: {name}, "
                       f"categories: {list(was.categories)}}} under {cols})")
    return out


def repeated_values(values: pd.Series, limit: int = 3) -> str:
    """"" when no non-null value of `values` repeats; else which do and at which rows (index
    labels), each value with every row that holds it -- "2 values repeat: 'C00000' at rows 0
    and 2000, 'C00001' at rows 1 and 2001" -- the first `limit` of them, in order of their
    first repeat.  `values` compared as they are (see load_table for ids equal as text)."""
    repeat = values.duplicated(keep="first") & values.notna()
    if not repeat.any():
        return ""
    shown = pd.unique(values[repeat])
    parts = []
    for value in shown[:limit]:
        rows = values.index[(values == value).to_numpy()].tolist()
        where = ", ".join(map(str, rows[:-1][:4])) + (", ..." if len(rows) > 5 else "")
        parts.append(f"{_plain(value)!r} at rows {where} and {rows[-1]}")
    more = f", ... ({len(shown)} in all)" if len(shown) > limit else ""
    return (f"{len(shown)} value{'s repeat' if len(shown) > 1 else ' repeats'}: "
            + ", ".join(parts) + more)


def _first_rows(mask: pd.Series, limit: int = 3) -> str:
    rows = mask[mask.to_numpy()].index[:limit].tolist()
    return ", ".join(map(str, rows))


def check_table(df: pd.DataFrame, schema: TableSchema, where: str = "table") -> pd.DataFrame:
    """Raise one DataError listing every way `df` departs from `schema` -- a missing or
    unexpected column, a dtype other than the schema's, a null in a non-nullable column, a
    non-whole value in an integer column, an infinite number, a value outside a categorical
    column's categories, a null or repeated id -- each naming the column, what was seen and
    the first rows (by index) where; return `df` unchanged when it fits.  `where` (a file
    name, "train split") starts the message."""
    problems = []
    names = [str(n) for n in df.columns]
    expected = schema.names + ([schema.id] if schema.id else [])
    missing = [n for n in expected if n not in names]
    if missing:
        problems.append(f"missing column(s) {missing}")
    unexpected = [n for n in names if n not in expected]
    if unexpected:
        problems.append(f"unexpected column(s) {unexpected}")
    for c in schema.columns:
        if c.name in names:
            problems += [f"column {c.name!r}: {p}" for p in _column_problems(df[c.name], c)]
    if schema.id and schema.id in names:
        ids = df[schema.id]
        if ids.isna().any():
            problems.append(f"id column {schema.id!r}: {int(ids.isna().sum())} null id(s), "
                            f"first at row(s) {_first_rows(ids.isna())}")
        repeats = repeated_values(ids)
        if repeats:
            problems.append(f"id column {schema.id!r}: {repeats}; ids must be unique")
    if problems:
        raise DataError(f"{where}: " + "; ".join(problems))
    return df


def _column_problems(series: pd.Series, c: Column) -> list[str]:
    out = []
    if str(series.dtype) != c.dtype and not (c.dtype == "str" and str(series.dtype) in ("object", "string")):
        out.append(f"dtype {series.dtype}, the schema says {c.dtype}")
    nulls = series.isna()
    if nulls.any() and not c.nullable:
        out.append(f"{int(nulls.sum())} null(s) (first at row(s) {_first_rows(nulls)}) but the "
                   "schema says not nullable")
    values = series[~nulls]
    if c.type == "categorical":
        allowed = set(c.categories)
        outside = ~values.map(lambda v: _plain(v) in allowed).astype(bool)
        if outside.any():
            seen = pd.unique(values[outside])[:5].tolist()
            out.append(f"value(s) {seen} ({int(outside.sum())} row(s), first {_first_rows(outside)}) "
                       f"not among the schema's categories {list(c.categories)[:20]}")
        return out
    if not (ptypes.is_numeric_dtype(series.dtype) and not ptypes.is_bool_dtype(series.dtype)):
        out.append(f"holds {series.dtype} values but the schema says {c.type}")
        return out
    numbers = values.to_numpy(dtype=np.float64)
    infinite = ~np.isfinite(numbers)
    if infinite.any():
        out.append(f"{int(infinite.sum())} infinite value(s) (first at row(s) "
                   f"{', '.join(map(str, values.index[infinite][:3].tolist()))})")
    for word, bound, beyond in (("min", c.minimum, numbers < (c.minimum or 0)),
                                ("max", c.maximum, numbers > (c.maximum or 0))):
        if bound is not None and beyond.any():
            out.append(f"{int(beyond.sum())} value(s) beyond the declared {word} {bound}, e.g. "
                       f"{numbers[beyond][:3].tolist()} (first at row(s) "
                       f"{', '.join(map(str, values.index[beyond][:3].tolist()))})")
    if c.type == "integer":
        fractional = np.isfinite(numbers) & (numbers != np.round(numbers))
        if fractional.any():
            out.append(f"{int(fractional.sum())} non-whole value(s), e.g. "
                       f"{numbers[fractional][:3].tolist()} (first at row(s) "
                       f"{', '.join(map(str, values.index[fractional][:3].tolist()))}) but the "
                       "schema says integer")
    return out


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def conform(df: pd.DataFrame, schema: TableSchema, where: str = "table") -> pd.DataFrame:
    """`df` with each column cast to the schema's dtype where the values survive the cast
    (a CSV's strings to a declared category, int64 to a declared int32, whole floats to a
    declared int64), then `check_table`-ed.  A cast that would change a value is not made:
    check_table then names the column.  Returns a new DataFrame; `df` is not modified."""
    out = df.copy()
    for c in schema.columns:
        if c.name not in out.columns or str(out[c.name].dtype) == c.dtype:
            continue
        series = out[c.name]
        try:
            if c.dtype == "category":
                values = series.map(_plain) if series.dtype == object else series
                cast = pd.Series(pd.Categorical(values, categories=list(c.categories),
                                                ordered=bool(c.ordered)), index=series.index)
                if not (cast.isna() == series.isna()).all():
                    continue  # a value outside the categories: check_table names it
            else:
                cast = series.astype(pandas_dtype(c.dtype))
                if ptypes.is_numeric_dtype(cast.dtype) and ptypes.is_numeric_dtype(series.dtype):
                    same = (cast.astype("float64") == series.astype("float64")) | series.isna()
                    if not bool(same.all()) or not (cast.isna() == series.isna()).all():
                        continue
        except (TypeError, ValueError):
            continue
        out[c.name] = cast
    return check_table(out, schema, where)
