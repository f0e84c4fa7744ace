"""A table as the float32 vectors (N, D) a diffusion model trains on, and back.

`TableEncoder` is fit on the train split only.  Each schema column owns a contiguous run of
dimensions, in schema order (`column_slices`):

- numerical and integer columns: one dimension, the value through scikit-learn's
  QuantileTransformer to a standard normal (n_quantiles = min(1000, rows), all train rows,
  no subsampling); a nullable one has a second dimension, a missing-indicator (+1 null,
  -1 present), and its value dimension holds 0 (the normal's median) where the value is null.
  Values beyond the train range are clipped to it by the transform (its outer quantiles).
- categorical columns, `categorical="onehot"`: one dimension per category, +1 for the row's
  category and -1 for the others; `categorical="analog_bits"`: ceil(log2 K) dimensions (at least
  one), the category index's binary digits, most significant first, as +-1.  A nullable
  column has one more category, null, last.  Both decode by argmax: over the K dimensions, or
  over the K valid bit patterns' dot products with the bits (so a pattern no category has
  decodes to the nearest one that does).

Decoding (`inverse_transform`) gives a DataFrame with the schema's columns in order and
dtypes: category labels as declared, integer columns rounded and clipped to the train range
(exact), numerical columns through the inverse transform -- within one gap between adjacent
stored quantiles of the value encoded (`resolution()`) -- then rounded to the decimals every
train value had (up to 6; none when the data has more), so 0.23 comes back as 0.23.

The fitted state is plain JSON (`to_json` / `from_json`): the schema, the quantiles and
references of the transform (from which an identical QuantileTransformer is rebuilt, giving
bit-identical transforms), the train ranges and decimals.  Nothing is pickled.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from pandas.api import types as ptypes
from scipy.stats import norm
from sklearn.preprocessing import QuantileTransformer
from sklearn.preprocessing._data import BOUNDS_THRESHOLD

from ..data_errors import DataError
from .schema import TableSchema, pandas_dtype

CATEGORICAL = ("onehot", "analog_bits")
FORMAT = "dmops-table-encoder"
VERSION = 1
MAX_QUANTILES = 1000
_MAX_DECIMALS = 6


def _transformer(n_quantiles: int) -> QuantileTransformer:
    return QuantileTransformer(n_quantiles=n_quantiles, output_distribution="normal",
                               subsample=None, copy=True)


def _bits(k: int) -> int:
    return max(1, math.ceil(math.log2(k)))


def _codebook(k: int) -> np.ndarray:
    """(k, bits) float: row i is index i's binary digits, most significant first, as +-1."""
    n = _bits(k)
    digits = (np.arange(k)[:, None] >> np.arange(n - 1, -1, -1)[None, :]) & 1
    return digits.astype(np.float64) * 2 - 1


def _decimals(values: np.ndarray) -> int | None:
    """The fewest decimals (0..6) that every value already has, or None."""
    for d in range(_MAX_DECIMALS + 1):
        if np.array_equal(np.round(values, d), values):
            return d
    return None


class TableEncoder:
    """Encode a table for the model and decode the model's vectors (module docstring).

    `TableEncoder(schema, categorical).fit(train_df)`; then `transform(df)` -> (N, D)
    float32, `inverse_transform(x)` -> DataFrame, `column_slices`, `dim`, `to_json()`."""

    def __init__(self, schema: TableSchema, categorical: str = "onehot"):
        if categorical not in CATEGORICAL:
            raise DataError(f"categorical={categorical!r}; accepted: {', '.join(CATEGORICAL)}")
        self.schema = schema
        self.categorical = categorical
        self.numeric = [c.name for c in schema.columns if c.type != "categorical"]
        self.column_slices: dict[str, slice] = {}
        start = 0
        for c in schema.columns:
            if c.type == "categorical":
                k = len(c.categories) + c.nullable
                width = k if categorical == "onehot" else _bits(k)
            else:
                width = 1 + c.nullable
            self.column_slices[c.name] = slice(start, start + width)
            start += width
        self.dim = start
        self._quantiles: QuantileTransformer | None = None
        self.ranges: dict[str, tuple[float, float]] = {}
        self.decimals: dict[str, int | None] = {}
        self.n_train = 0

    def layout_signature(self) -> str:
        """12 hex digits naming the vector layout: each column's name, type, categories,
        nullability and dimensions, and the categorical encoding.  Two models whose vectors
        mean the same thing have the same signature (known before fitting: the layout depends
        on the schema alone), so a champion and a challenger are compared in one space."""
        import hashlib

        layout = [[c.name, c.type, list(c.categories or ()), bool(c.nullable),
                   self.column_slices[c.name].start, self.column_slices[c.name].stop]
                  for c in self.schema.columns]
        text = json.dumps([self.categorical, layout], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def sample_signature(self) -> str:
        """'<dim> layout <layout_signature>': what a table model's samples are, as text
        (diffusion.model.ModelSpec.sample_signature)."""
        return f"{self.dim} layout {self.layout_signature()}"

    # --- fitting ------------------------------------------------------------------------

    def fit(self, df: pd.DataFrame) -> TableEncoder:
        """Fit on the train rows `df` (the schema's columns; others are ignored); returns self.
        DataError when a column is missing, a value does not fit its column (see `transform`),
        a numeric column has no non-null value, or there are fewer than 2 rows."""
        self._check_frame(df, "fit")
        if len(df) < 2:
            raise DataError(f"the encoder needs at least 2 train rows, got {len(df)}")
        self.n_train = len(df)
        if self.numeric:
            x = self._numbers(df)
            for j, name in enumerate(self.numeric):
                col = x[:, j][~np.isnan(x[:, j])]
                if col.size == 0:
                    raise DataError(f"column {name!r}: no non-null value in the train rows; "
                                    "a transform cannot be fit on nothing")
                self.ranges[name] = (float(col.min()), float(col.max()))
                self.decimals[name] = (_decimals(col) if self.schema.column(name).type ==
                                       "numerical" else 0)
            self._quantiles = _transformer(min(MAX_QUANTILES, len(df))).fit(x)
        self._codes(df)  # a value outside the categories fails at fit, not later
        return self

    def _require_fit(self):
        if self.numeric and self._quantiles is None:
            raise DataError("the encoder is not fit: call fit(train_df) or from_json first")

    def _check_frame(self, df: pd.DataFrame, what: str):
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"{what}: got a {type(df).__name__}; accepted: a pandas DataFrame")
        missing = [n for n in self.schema.names if n not in df.columns]
        if missing:
            raise DataError(f"{what}: the table lacks column(s) {missing}; the schema's columns: "
                            f"{self.schema.names}")

    def _numbers(self, df: pd.DataFrame) -> np.ndarray:
        """(N, numeric columns) float64 with NaN for nulls; DataError for a non-number."""
        out = np.empty((len(df), len(self.numeric)), dtype=np.float64)
        for j, name in enumerate(self.numeric):
            series = df[name]
            if not ptypes.is_numeric_dtype(series.dtype) or ptypes.is_bool_dtype(series.dtype):
                raise DataError(f"column {name!r}: dtype {series.dtype}; the schema says "
                                f"{self.schema.column(name).type}: accepted: numbers")
            out[:, j] = series.to_numpy(dtype=np.float64, na_value=np.nan)
            nulls = np.isnan(out[:, j])
            if nulls.any() and not self.schema.column(name).nullable:
                raise DataError(f"column {name!r}: {int(nulls.sum())} null(s), first at row "
                                f"{_label(df.index[nulls][0])}, but the schema says not nullable")
            if np.isinf(out[:, j]).any():
                raise DataError(f"column {name!r}: infinite value at row "
                                f"{_label(df.index[np.isinf(out[:, j])][0])}; accepted: finite numbers")
        return out

    def _codes(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """Each categorical column's category indices (null = K, the last, when nullable);
        DataError naming the column and the values for a value outside the categories."""
        out = {}
        for c in self.schema.columns:
            if c.type != "categorical":
                continue
            series = df[c.name]
            values = series.astype(object) if isinstance(series.dtype, pd.CategoricalDtype) else series
            codes = pd.Categorical(values, categories=list(c.categories)).codes.astype(np.int64)
            nulls = series.isna().to_numpy()
            unseen = (codes < 0) & ~nulls
            if unseen.any():
                seen = pd.unique(series[unseen])[:5].tolist()
                raise DataError(f"column {c.name!r}: value(s) {seen} ({int(unseen.sum())} row(s), "
                                f"first at row {_label(df.index[unseen][0])}) are not among the "
                                f"categories the encoder knows {list(c.categories)[:20]}")
            if nulls.any():
                if not c.nullable:
                    raise DataError(f"column {c.name!r}: {int(nulls.sum())} null(s), first at row "
                                    f"{_label(df.index[nulls][0])}, but the schema says not nullable")
                codes[nulls] = len(c.categories)
            out[c.name] = codes
        return out

    # --- transforms ---------------------------------------------------------------------

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """(N, D) float32 for the N rows of `df` (its schema columns).  DataError naming the
        column for a missing column, a category the encoder was not fit with (and the value),
        a null where the schema allows none, a non-number in a numeric column."""
        self._require_fit()
        self._check_frame(df, "transform")
        out = np.empty((len(df), self.dim), dtype=np.float32)
        if self.numeric:
            x = self._numbers(df)
            z = self._quantiles.transform(x)
            for j, name in enumerate(self.numeric):
                s = self.column_slices[name]
                nulls = np.isnan(z[:, j])
                out[:, s.start] = np.where(nulls, 0.0, z[:, j])
                if s.stop - s.start == 2:
                    out[:, s.start + 1] = np.where(nulls, 1.0, -1.0)
        for name, codes in self._codes(df).items():
            s = self.column_slices[name]
            c = self.schema.column(name)
            k = len(c.categories) + c.nullable
            if self.categorical == "onehot":
                block = np.full((len(df), k), -1.0, dtype=np.float32)
                block[np.arange(len(df)), codes] = 1.0
            else:
                block = _codebook(k)[codes]
            out[:, s] = block
        return out

    def inverse_transform(self, x) -> pd.DataFrame:
        """The table the (N, D) vectors `x` (numpy or anything np.asarray takes, e.g. a CPU
        tensor) stand for: the schema's columns in order with their dtypes (module docstring).
        DataError for a wrong shape or a non-finite value (which row and dimension)."""
        self._require_fit()
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DataError(f"vectors of shape {x.shape}; accepted: (N, {self.dim}) for this encoder")
        bad = ~np.isfinite(x)
        if bad.any():
            row, dim = np.argwhere(bad)[0]
            owner = next(n for n, s in self.column_slices.items() if s.start <= dim < s.stop)
            raise DataError(f"vectors hold {int(bad.sum())} non-finite value(s), first at row "
                            f"{row}, dimension {dim} (column {owner!r}); accepted: finite values")
        n = len(x)
        columns = {}
        if self.numeric:
            idx = [self.column_slices[name].start for name in self.numeric]
            values = self._quantiles.inverse_transform(_snap_to_bounds(x[:, idx]))
            for j, name in enumerate(self.numeric):
                c = self.schema.column(name)
                v = values[:, j]
                low, high = self.ranges[name]
                if c.type == "integer" or pandas_dtype(c.dtype).kind in "iu":
                    v = np.clip(np.round(v), math.ceil(low), math.floor(high))
                elif self.decimals[name] is not None:
                    v = np.round(v, self.decimals[name])
                s = self.column_slices[name]
                nulls = x[:, s.start + 1] > 0 if s.stop - s.start == 2 else np.zeros(n, bool)
                columns[name] = _numbers_as(np.where(nulls, np.nan, v), c.dtype)
        for c in self.schema.columns:
            if c.type != "categorical":
                continue
            block = x[:, self.column_slices[c.name]]
            k = len(c.categories) + c.nullable
            scores = block if self.categorical == "onehot" else block @ _codebook(k).T
            codes = scores.argmax(axis=1)
            codes[codes == len(c.categories)] = -1  # the null category
            columns[c.name] = _categories_as(codes, c)
        return pd.DataFrame({name: columns[name] for name in self.schema.names})

    def resolution(self) -> dict[str, float]:
        """Per numeric column, the largest gap between adjacent stored quantiles: decoding a
        train value's encoding lands within this of it (before rounding to the data's
        decimals, which at most doubles it)."""
        self._require_fit()
        return {name: float(np.diff(self._quantiles.quantiles_[:, j]).max(initial=0.0))
                for j, name in enumerate(self.numeric)}

    # --- state --------------------------------------------------------------------------

    def to_dict(self) -> dict:
        self._require_fit()
        state = {"format": FORMAT, "version": VERSION, "categorical": self.categorical,
                 "schema": self.schema.to_dict(), "n_train": self.n_train,
                 "ranges": {k: list(v) for k, v in self.ranges.items()},
                 "decimals": self.decimals, "quantile": None}
        if self._quantiles is not None:
            q = self._quantiles
            state["quantile"] = {
                "n_quantiles": int(q.n_quantiles_),
                "references": q.references_.tolist(),
                "columns": {name: q.quantiles_[:, j].tolist() for j, name in enumerate(self.numeric)}}
        return state

    def to_json(self) -> str:
        """The fitted state as JSON text (floats written exactly, by repr)."""
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    @classmethod
    def from_dict(cls, state: dict) -> TableEncoder:
        """The encoder `to_dict` described; DataError naming what is missing or inconsistent."""
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise DataError(f"not a table encoder state (format {state.get('format') if isinstance(state, dict) else None!r}; "
                            f"accepted: {FORMAT!r})")
        if state.get("version") != VERSION:
            raise DataError(f"table encoder state version {state.get('version')!r}; accepted: {VERSION}")
        try:
            enc = cls(TableSchema.from_dict(state["schema"]), state["categorical"])
            enc.n_train = int(state["n_train"])
            enc.ranges = {k: (float(v[0]), float(v[1])) for k, v in state["ranges"].items()}
            enc.decimals = {k: (None if v is None else int(v)) for k, v in state["decimals"].items()}
            quantile = state["quantile"]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(f"table encoder state is incomplete ({exc!r})") from None
        if enc.numeric:
            missing = [n for n in enc.numeric if n not in (quantile or {}).get("columns", {})
                       or n not in enc.ranges or n not in enc.decimals]
            if missing:
                raise DataError(f"table encoder state lacks the fitted transform of column(s) {missing}")
            references = np.asarray(quantile["references"], dtype=np.float64)
            quantiles = np.column_stack([np.asarray(quantile["columns"][n], dtype=np.float64)
                                         for n in enc.numeric])
            if quantiles.shape[0] != references.shape[0] or references.shape[0] != quantile["n_quantiles"]:
                raise DataError(f"table encoder state: {quantiles.shape[0]} quantiles for "
                                f"{references.shape[0]} references (n_quantiles "
                                f"{quantile['n_quantiles']}); they must agree")
            # the fitted attributes QuantileTransformer.transform reads, as fit sets them
            q = _transformer(int(quantile["n_quantiles"]))
            q.n_quantiles_ = int(quantile["n_quantiles"])
            q.references_ = references
            q.quantiles_ = quantiles
            q.n_features_in_ = len(enc.numeric)
            enc._quantiles = q
        return enc

    @classmethod
    def from_json(cls, text: str) -> TableEncoder:
        try:
            state = json.loads(text)
        except ValueError as exc:
            raise DataError(f"table encoder state is not JSON ({exc})") from None
        return cls.from_dict(state)


# QuantileTransformer maps a train column's extremes to +-ppf(1 - BOUNDS_THRESHOLD) and
# decodes them exactly only from that float64 value: float32 may round it inwards, which would
# decode the largest value as a hair below it.  What lies within one float32 step of the bound
# is snapped onto it (the transform clips beyond it anyway).
_BOUND = float(norm.ppf(1 - (BOUNDS_THRESHOLD - np.spacing(1))))
_SNAP = float(np.nextafter(np.float32(_BOUND), np.float32(0)))


def _label(row) -> str:
    """A row's index label as a person writes it (3, 'cust-7'), not np.int64(3)."""
    return repr(row.item() if isinstance(row, np.generic) else row)


def _snap_to_bounds(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64).copy()
    z[z >= _SNAP] = _BOUND
    z[z <= -_SNAP] = -_BOUND
    return z


def _numbers_as(values: np.ndarray, dtype: str) -> pd.Series:
    """float64 values (NaN = null) as a Series of `dtype` (whole already when integral)."""
    dt = pandas_dtype(dtype)
    if np.isnan(values).any():
        if getattr(dt, "kind", "f") in "iu" and not ptypes.is_extension_array_dtype(dt):
            raise DataError(f"decoded nulls cannot be held by dtype {dtype}")
        return pd.Series(values).astype(dt)
    return pd.Series(values.astype(dt) if isinstance(dt, np.dtype) else values).astype(dt)


def _categories_as(codes: np.ndarray, c) -> pd.Series:
    """Category indices (-1 = null) as a Series of the column's labels and dtype."""
    if c.dtype == "category":
        return pd.Series(pd.Categorical.from_codes(codes, categories=list(c.categories),
                                                   ordered=bool(c.ordered)))
    labels = np.empty(len(c.categories) + 1, dtype=object)
    labels[:-1] = list(c.categories)
    labels[-1] = np.nan
    series = pd.Series(labels[codes], dtype=object)
    dt = pandas_dtype(c.dtype)
    return series if dt == np.dtype(object) else series.astype(dt)
