"""Pictures of a synthetic table beside the real one: each column's marginal, and how the
association between every pair of columns changed.

Association of two columns, one number per pair whatever their types:
- two numbers (numerical or integer): Spearman's rank correlation rho in [-1, 1] (rank-based,
  so integer ties, skewed columns and monotone non-linear relations are read alike; it is
  Pearson's r of the columns' quantile ranks);
- two categories: Cramer's V in [0, 1] (scipy.stats.contingency.association: sqrt(chi^2 /
  (n (min(r, c) - 1))) of their contingency table, no bias correction);
- a number and a category: the correlation ratio eta in [0, 1] of the number's ranks given
  the category (sqrt of the share of the ranks' variance between the categories' means).
A null is a category of its own; a number's nulls leave only that number's pairs.  A pair
with a constant column has association 0.  Signed (rho) and unsigned (V, eta) values share
one matrix: the heatmap shows synthetic minus real for each pair, on a scale fixed to
[-1, 1] (a rho that flips sign differs by up to 2 and saturates the colour).

PNG files are written atomically (diffusion/atomic.py): a reader never sees half of one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_file
from .metrics_inputs import canonical, column_types

_NULL = "(null)"


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, path: Path, what: str) -> Path:
    try:
        with atomic_file(path, what) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


def _categorical_shares(real: pd.Series, synthetic: pd.Series, max_categories: int):
    """(labels, real shares, synthetic shares): the real table's most frequent categories
    first, the rest as one "other" bar, nulls as "(null)"."""
    r = real.fillna(_NULL).value_counts(normalize=True)
    s = synthetic.fillna(_NULL).value_counts(normalize=True)
    order = list(r.index) + [c for c in s.index if c not in r.index]
    shown = order[:max_categories]
    rs = [float(r.get(c, 0.0)) for c in shown]
    ss = [float(s.get(c, 0.0)) for c in shown]
    if len(order) > max_categories:
        shown.append(f"other ({len(order) - max_categories})")
        rs.append(1.0 - sum(rs))
        ss.append(1.0 - sum(ss))
    return shown, rs, ss


def _bin_edges(real: np.ndarray, synthetic: np.ndarray, kind: str, bins: int) -> np.ndarray:
    """Shared bins: one per integer when an integer column spans at most `bins` values,
    else `bins` equal bins over the 0.5-99.5 % range of both tables (a few wild values do
    not squash the rest; they land in the end bins)."""
    both = np.concatenate([real, synthetic])
    if len(both) == 0:
        return np.linspace(0.0, 1.0, bins + 1)
    lo, hi = np.quantile(both, [0.005, 0.995])
    if kind == "integer" and hi - lo + 1 <= bins:
        return np.arange(math.floor(lo), math.floor(hi) + 2) - 0.5
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def plot_marginals(real, synthetic, columns, path, *, scores=None, max_categories: int = 12,
                   bins: int = 30, ncols: int = 4) -> Path:
    """Each described column's real and synthetic marginal in one grid, written as PNG.

    real, synthetic: DataFrames holding the described columns (other columns ignored); real
    may be None (the synthetic marginals alone, e.g. a student's samples with no data at hand);
    columns: a column description (diffusion/tabular/metrics_inputs.py).  Numbers: density
    histograms on shared bins (real filled, synthetic outlined), nulls left out and their
    shares in the title when any.  Categories: side-by-side bars of each category's share,
    the real table's `max_categories` most frequent, the rest as one "other".  scores:
    optional {column: column-shape score} shown in each title (e.g. from
    `TableEvaluation.per_column`).  Returns `path`.  Raises TableEvaluationError for bad
    input, diffusion.atomic.WriteError when the file cannot be written."""
    types = column_types(columns)
    synthetic = canonical(synthetic, types, "synthetic")
    alone = real is None   # the synthetic rows' marginals only (no real rows at hand)
    real = synthetic.iloc[:0] if alone else canonical(real, types, "real")
    plt = _figure()
    n = len(types)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.6 * nrows), dpi=90, squeeze=False)
    for ax, (column, kind) in zip(axes.flat, types.items()):
        title = column
        if scores is not None and column in scores:
            title += f"  (shape {scores[column]:.3f})"
        if kind == "categorical":
            labels, rs, ss = _categorical_shares(real[column], synthetic[column], max_categories)
            x = np.arange(len(labels))
            if not alone:
                ax.bar(x - 0.2, rs, width=0.4, label="real", color="tab:blue", alpha=0.7)
            ax.bar(x + (0 if alone else 0.2), ss, width=0.4, label="synthetic", color="tab:orange", alpha=0.7)
            ax.set_xticks(x, [str(lbl)[:14] for lbl in labels], rotation=60, ha="right", fontsize=6)
            ax.set_ylabel("share", fontsize=7)
        else:
            r, s = real[column].to_numpy(), synthetic[column].to_numpy()
            # no real rows when the samples are shown alone: no share to state, and no
            # "mean of empty slice" warning in the step's log
            r_null, s_null = (float(np.isnan(v).mean()) if len(v) else 0.0 for v in (r, s))
            r, s = r[~np.isnan(r)], s[~np.isnan(s)]
            edges = _bin_edges(r, s, kind, bins)
            clip = (edges[0], edges[-1])
            if len(r):
                ax.hist(np.clip(r, *clip), bins=edges, density=True, color="tab:blue", alpha=0.5, label="real")
            if len(s):
                ax.hist(np.clip(s, *clip), bins=edges, density=True, histtype="step", color="tab:orange",
                        linewidth=1.4, label="synthetic")
            if r_null or s_null:
                title += f"\nnull: real {r_null:.1%}, synthetic {s_null:.1%}"
            ax.set_ylabel("density", fontsize=7)
            ax.tick_params(labelsize=6)
        ax.set_title(title, fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("synthetic marginals" if alone else "real versus synthetic marginals", fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, Path(path), "marginals plot")


def _cramers_v(a: pd.Series, b: pd.Series) -> float:
    from scipy.stats.contingency import association

    table = pd.crosstab(a.fillna(_NULL), b.fillna(_NULL)).to_numpy()
    if min(table.shape) < 2:
        return 0.0
    return float(association(table, method="cramer"))


def _correlation_ratio(x: pd.Series, groups: pd.Series) -> float:
    keep = x.notna()
    ranks = x[keep].rank()
    if len(ranks) < 2:
        return 0.0
    total = float(((ranks - ranks.mean()) ** 2).sum())
    if total == 0.0:
        return 0.0
    by = ranks.groupby(groups[keep].fillna(_NULL).to_numpy())
    between = float((by.size() * (by.mean() - ranks.mean()) ** 2).sum())
    return math.sqrt(between / total)


def association_matrix(frame, columns) -> pd.DataFrame:
    """The (d, d) association matrix of the described columns (module docstring: Spearman's
    rho, Cramer's V or the correlation ratio per pair), 1 on the diagonal, as a DataFrame
    indexed both ways by column name.  Raises TableEvaluationError for bad input."""
    types = column_types(columns)
    frame = canonical(frame, types, "table")
    names = list(types)
    numbers = [c for c in names if types[c] != "categorical"]
    out = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    if numbers:
        rho = frame[numbers].corr(method="spearman").fillna(0.0)
        out.loc[numbers, numbers] = rho.to_numpy()
        np.fill_diagonal(out.values, 1.0)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if types[a] != "categorical" and types[b] != "categorical":
                continue
            if types[a] == "categorical" and types[b] == "categorical":
                value = _cramers_v(frame[a], frame[b])
            elif types[a] == "categorical":
                value = _correlation_ratio(frame[b], frame[a])
            else:
                value = _correlation_ratio(frame[a], frame[b])
            out.loc[a, b] = out.loc[b, a] = value
    return out


def association_difference(real, synthetic, columns) -> pd.DataFrame:
    """association_matrix(synthetic) - association_matrix(real): (d, d), 0 where the
    synthetic table keeps a pair's association."""
    return association_matrix(synthetic, columns) - association_matrix(real, columns)


def plot_association_difference(real, synthetic, columns, path) -> Path:
    """Heatmap of `association_difference` (synthetic minus real, colour scale [-1, 1],
    values written in the cells up to 16 columns), titled with the mean absolute difference
    over the pairs; written as PNG.  Returns `path`.  Raises TableEvaluationError for bad
    input, diffusion.atomic.WriteError when the file cannot be written."""
    diff = association_difference(real, synthetic, columns)
    d = len(diff)
    pairs = np.triu_indices(d, 1)
    mean_abs = float(np.abs(diff.to_numpy()[pairs]).mean()) if d > 1 else 0.0
    plt = _figure()
    size = min(4.0 + 0.45 * d, 16.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=90)
    image = ax.imshow(diff.to_numpy(), cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    ax.set_xticks(range(d), [str(c)[:18] for c in diff.columns], rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(d), [str(c)[:18] for c in diff.index], fontsize=7)
    if d <= 16:
        for i in range(d):
            for j in range(d):
                if i != j:
                    ax.text(j, i, f"{diff.iat[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label="association, synthetic - real")
    ax.set_title("change of association (Spearman rho; Cramer's V; correlation ratio)\n"
                 f"mean |difference| over {len(pairs[0])} pairs: {mean_abs:.3f}", fontsize=9)
    fig.tight_layout()
    return _save(fig, plt, Path(path), "association-difference plot")


def save_table_samples(state: dict, x, path, *, reference=None) -> Path:
    """The picture of a table model's samples: `x` (N, D) vectors in the encoder's layout
    (`state`: TableEncoder.to_dict) decoded to rows, each column's marginal drawn against the
    `reference` rows' (vectors of the same layout, e.g. the train split; None: the samples'
    marginals alone), as `plot_marginals` does.  Returns `path`."""
    from .vectors import decode

    synthetic = decode(state, x)
    real = None if reference is None else decode(state, reference)
    columns = {c["name"]: c["type"] for c in state["schema"]["columns"]}
    return plot_marginals(real, synthetic, columns, path)
