"""Pictures of samples: a PNG grid for images, a scatter plot for 2-D vectors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_file


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8; values outside are clipped."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def image_grid(x: torch.Tensor, nrow: int | None = None, upscale: int = 4, pad: int = 1) -> Image.Image:
    """Tile N images into one picture, each scaled up `upscale` times (nearest: 8x8 digits
    stay readable), separated by `pad` pixels."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"image_grid needs (N, 1|3, H, W) images, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("samples contain NaN or inf; refusing to draw them as if they were images")
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    tiles = to_uint8(x)
    canvas = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, q = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        canvas[top:top + h, left:left + w] = tile
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas, "L" if c == 1 else "RGB")
    return img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)


def scatter_plot(x: torch.Tensor, path, title: str = "", reference: torch.Tensor | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if reference is not None:
        r = reference.detach().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, alpha=0.3, c="tab:gray", label="data")
    p = x.detach().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.6, c="tab:blue", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="upper right", markerscale=4)
    fig.tight_layout()
    try:
        _save_atomic(lambda tmp: fig.savefig(tmp, format="png"), path, "sample plot")
    finally:
        plt.close(fig)


def save_samples(x: torch.Tensor, path, title: str = "", reference: torch.Tensor | None = None,
                 table: dict | None = None) -> Path:
    """PNG of samples: an image grid for (N, C, H, W), a scatter plot for (N, 2), and for a
    table model (`table`: its encoder state, ModelSpec.data.table) the decoded rows' marginals
    against the `reference` rows' (diffusion/tabular/plots.py), written atomically (the parent
    folder is created).  ValueError for other shapes or non-finite samples;
    diffusion.atomic.WriteError when the disk refuses the file."""
    path = Path(path)
    if table is not None:
        from .tabular.plots import save_table_samples

        save_table_samples(table, x, path, reference=reference)
    elif x.ndim == 4:
        grid = image_grid(x)
        _save_atomic(lambda tmp: grid.save(tmp, format="PNG"), path, "sample grid")
    elif x.ndim == 2 and x.shape[1] == 2:
        scatter_plot(x, path, title, reference)
    else:
        raise ValueError(f"cannot draw samples of shape {tuple(x.shape)}: expected images "
                         "(N, C, H, W) or 2-D points (N, 2)")
    return path


def _save_atomic(write, path: Path, what: str = "picture"):
    """`write(tmp)` then one rename onto `path`: a reader never sees half a PNG.  Raises
    diffusion.atomic.WriteError (path and cause) when the disk refuses it; `path` keeps its
    previous picture then."""
    with atomic_file(path, what) as tmp:
        write(tmp)


def save_filmstrip(strip: torch.Tensor, path) -> Path:
    """(n, frames, C, H, W) -> one row per sample, one column per frame, left (noise) to right."""
    if strip.ndim != 5:
        raise ValueError(f"a filmstrip is (n, frames, C, H, W), got shape {tuple(strip.shape)}")
    n, frames = strip.shape[:2]
    path = Path(path)
    grid = image_grid(strip.reshape(n * frames, *strip.shape[2:]), nrow=frames)
    _save_atomic(lambda tmp: grid.save(tmp, format="PNG"), path, "filmstrip")
    return path


def plot_quality_vs_nfe(table, path, metric: str = "fid", floor: float | None = None) -> Path:
    """`metric` against NFE (log x), one line per model/sampler, the real-data floor dashed;
    FID with its bootstrap interval as error bars where the table has fid_lo / fid_hi."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for (model, sampler), rows in table.groupby(["model", "sampler"], sort=False):
        rows = rows.sort_values("nfe")
        # a student named after its sampler (consistency) is not labelled twice
        label = sampler if model in ("teacher", sampler) else f"{model} ({sampler})"
        style = "-o" if model == "teacher" else "--s"
        bounds = (f"{metric}_lo", f"{metric}_hi")
        if set(bounds) <= set(rows.columns) and rows[list(bounds)].notna().all().all():
            # the interval is recentred on the estimate, so both arms are >= 0 up to rounding
            yerr = np.clip([rows[metric] - rows[bounds[0]], rows[bounds[1]] - rows[metric]], 0, None)
            ax.errorbar(rows["nfe"], rows[metric], yerr=yerr, fmt=style, label=label,
                        markersize=4, capsize=2)
        else:
            ax.plot(rows["nfe"], rows[metric], style, label=label, markersize=4)
    if floor is not None:
        ax.axhline(floor, color="black", linestyle=":", label=f"real-data floor ({floor:.3g})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations per sample (NFE)")
    ax.set_ylabel(metric.upper() + " (learned feature space)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        _save_atomic(lambda tmp: fig.savefig(tmp, format="png"), path, "quality-vs-NFE plot")
    finally:
        plt.close(fig)
    return path
