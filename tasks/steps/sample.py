"""Pipeline step: draw samples from a saved model and write them as a PNG, or a table model's
rows as CSV or Parquet (`sample_to_file`)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from diffusion.images import save_samples
from diffusion.model import load_for_sampling
from diffusion.samplers import SAMPLERS, generate


ROW_SUFFIXES = (".csv", ".parquet")


def sample_to_file(model_path, out, *, n: int = 64, seed: int = 0, sampler: str | None = None,
                   steps: int | None = None, device: str = "cpu") -> Path:
    """`sample_to_png` for a .png `out`; for .csv or .parquet, a table model's rows: n rows with
    the schema's columns and dtypes (category labels, whole integers) and the id column, if
    any, holding fresh ids no real row has (diffusion/tabular/row_ids.py), written atomically.
    ValueError for rows asked of a model that does not make tables, or another suffix."""
    out = Path(out)
    if out.suffix.lower() not in ROW_SUFFIXES:
        return sample_to_png(model_path, out, n=n, seed=seed, sampler=sampler, steps=steps, device=device)
    denoiser, spec = load_for_sampling(model_path, device)
    if spec.data.kind != "table":
        raise ValueError(f"{out}: rows are written for a table model; this one makes "
                         f"{spec.data.kind or 'other'} samples of shape {spec.shape}: write a .png")
    from diffusion.atomic import atomic_file
    from diffusion.tabular.row_ids import id_note
    from diffusion.tabular.vectors import generated_rows

    options = _options(spec, sampler, steps)
    t0 = time.perf_counter()
    x = generate(denoiser, spec.shape, n, seed=seed, device=device, **options).x
    rows = generated_rows(spec.data.table, x)   # the id column: fresh ids, never a real row's
    seconds = time.perf_counter() - t0
    with atomic_file(out, "sampled rows") as tmp:
        if out.suffix.lower() == ".csv":
            rows.to_csv(tmp, index=False)
        else:
            rows.to_parquet(tmp, index=False)
    note = id_note(spec.data.table.get("id"))
    print(f"{n} rows ({options.get('sampler', 'heun')}, {len(rows.columns)} columns"
          f"{'; ' + note if note else ''}) in {seconds:.2f} s -> {out}", flush=True)
    return out


def _options(spec, sampler: str | None, steps: int | None) -> dict:
    """generate's keyword arguments: the model's own sampling settings, with `sampler` /
    `steps` when given (ValueError for an unknown sampler or steps below 1)."""
    options = spec.sampling.model_dump()
    if sampler is not None:
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; allowed: {sorted(SAMPLERS)}")
        options["sampler"] = sampler
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        options["steps"] = steps
    return options


def sample_to_png(model_path, out_png, *, n: int = 64, seed: int = 0, sampler: str | None = None,
                  steps: int | None = None, device: str = "cpu",
                  reference: torch.Tensor | None = None) -> Path:
    """Sample with the model's own sampling settings (from its model.json), overridden by
    `sampler` / `steps` when given."""
    denoiser, spec = load_for_sampling(model_path, device)
    options = _options(spec, sampler, steps)
    shape = spec.shape
    t0 = time.perf_counter()
    out = generate(denoiser, shape, n, seed=seed, device=device, **options)
    seconds = time.perf_counter() - t0
    title = f"{options.get('sampler', 'heun')}, {out.nfe} NFE"
    path = save_samples(out.x, out_png, title=title, reference=reference, table=spec.data.table)
    print(f"{n} samples ({title}) in {seconds:.2f} s -> {path}", flush=True)
    return path
