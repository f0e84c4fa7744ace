"""The Gaussian-copula baseline of benchmarks/tabular_quality.py, fit with the `copulas`
package (copulas.multivariate.GaussianMultivariate) in the table encoder's own space.

    baseline = CopulaBaseline(state).fit(train_x, seed=0)   # state: Dataset.table (onehot encoder)
    x = baseline.sample(1000, seed=0)                         # (1000, D) vectors in that layout
    rows = decode(state, x)                                   # diffusion/tabular/vectors.py

The encoding (so that the baseline and the diffusion models differ only in how they model
the joint distribution, and decode through the same code to the same columns and dtypes):

- numerical and integer columns: the encoder's quantile-transformed dimension (a standard
  normal by construction) and its missing-indicator dimension when the column is nullable,
  each a copula column with a Gaussian marginal.  A Gaussian copula on empirical quantiles is
  the textbook semi-parametric copula; decoding inverts the encoder's quantile transform,
  rounds integers and restores the dtype exactly as for the model's vectors.
- categorical columns: one copula column each, SDV's "uniform encoding" (rdt's UniformEncoder,
  the categorical transformer of SDV's GaussianCopulaSynthesizer): category j owns an
  interval of [0, 1] as wide as its share of the train rows, and a row is a uniform draw in
  its category's interval; the copula column has a uniform marginal, so the category shares
  are reproduced exactly and the dependence goes through the copula's correlations.  Ordered
  categories keep their declared order (a monotone link to the numbers stays monotone), the
  others go by falling frequency as in rdt.  Sampled values are mapped back to the category
  whose interval holds them and written as a one-hot block (+1 / -1), which the encoder's
  argmax decodes (a nullable column's null is its last category, as in the encoder).

The encoder's state must use `categorical="onehot"`: the baseline reads and writes one-hot
blocks (it is independent of the model's categorical setting).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from diffusion.tabular.encoding import TableEncoder


class CopulaBaseline:
    """A Gaussian copula (copulas.multivariate.GaussianMultivariate) over a one-hot table
    encoder's vectors (module docstring).  `state`: TableEncoder.to_dict of a fitted encoder
    with categorical "onehot"; ValueError otherwise."""

    def __init__(self, state: dict):
        self.encoder = TableEncoder.from_dict(state)
        if self.encoder.categorical != "onehot":
            raise ValueError(f"the copula baseline reads one-hot vectors; this encoder uses "
                             f"{self.encoder.categorical!r}: pass table_vectors(..., 'onehot').table")
        self.dim = self.encoder.dim
        self._copula = None
        self._edges: dict[str, np.ndarray] = {}   # column -> k+1 interval edges in [0, 1]
        self._order: dict[str, np.ndarray] = {}   # column -> category index of each interval

    def _blocks(self):
        """(name, slice, is_categorical) for each column, in the encoder's layout."""
        for c in self.encoder.schema.columns:
            yield c, self.encoder.column_slices[c.name], c.type == "categorical"

    def fit(self, x, seed: int = 0) -> CopulaBaseline:
        """Fit on the train rows' vectors `x` (N, D) (numpy or CPU tensor) in the encoder's
        layout; `seed` draws the uniform positions inside each category's interval.  Returns
        self.  ValueError for a width other than the encoder's."""
        from copulas.multivariate import GaussianMultivariate
        from copulas.univariate import GaussianUnivariate, UniformUnivariate

        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"vectors of shape {x.shape}; accepted: (N, {self.dim})")
        rng = np.random.default_rng(seed)
        columns, marginals = {}, {}
        for c, s, categorical in self._blocks():
            if not categorical:
                for d in range(s.start, s.stop):
                    columns[f"d{d}"] = x[:, d]
                    marginals[f"d{d}"] = GaussianUnivariate
                continue
            codes = x[:, s].argmax(axis=1)
            k = s.stop - s.start
            counts = np.bincount(codes, minlength=k).astype(np.float64)
            order = np.arange(k) if c.ordered else np.argsort(-counts, kind="stable")
            edges = np.concatenate([[0.0], np.cumsum(counts[order]) / counts.sum()])
            position = np.empty(k, dtype=np.int64)
            position[order] = np.arange(k)
            slot = position[codes]
            columns[c.name] = edges[slot] + rng.random(len(codes)) * (edges[slot + 1] - edges[slot])
            marginals[c.name] = UniformUnivariate
            self._edges[c.name], self._order[c.name] = edges, order
        frame = pd.DataFrame(columns)
        self._copula = GaussianMultivariate(distribution=marginals, random_state=seed)
        self._copula.fit(frame)
        return self

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """n rows as (n, D) float32 vectors in the encoder's layout, drawn with `seed`.
        RuntimeError before `fit`."""
        if self._copula is None:
            raise RuntimeError("CopulaBaseline.sample before fit")
        # a fitted GaussianMultivariate draws from its own random state, which each draw
        # advances: re-seeded per call, the same seed gives the same rows
        self._copula.set_random_state(seed)
        drawn = self._copula.sample(n)
        out = np.empty((n, self.dim), dtype=np.float32)
        for c, s, categorical in self._blocks():
            if not categorical:
                for d in range(s.start, s.stop):
                    out[:, d] = drawn[f"d{d}"].to_numpy()
                continue
            edges = self._edges[c.name]
            u = np.clip(drawn[c.name].to_numpy(), 0.0, np.nextafter(1.0, 0.0))
            slot = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, len(edges) - 2)
            block = -np.ones((n, s.stop - s.start), dtype=np.float32)
            block[np.arange(n), self._order[c.name][slot]] = 1.0
            out[:, s] = block
        return out
