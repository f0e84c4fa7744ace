"""Pipeline step: draw samples from a saved model and write them as a PNG."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from diffusion.images import save_samples
from diffusion.model import load_for_sampling
from diffusion.samplers import SAMPLERS, generate


def sample_to_png(model_path, out_png, *, n: int = 64, seed: int = 0, sampler: str | None = None,
                  steps: int | None = None, device: str = "cpu",
                  reference: torch.Tensor | None = None) -> Path:
    """Sample with the model's own sampling settings (from its model.json), overridden by
    `sampler` / `steps` when given."""
    denoiser, spec = load_for_sampling(model_path, device)
    options = spec.sampling.model_dump()
    if sampler is not None:
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; allowed: {sorted(SAMPLERS)}")
        options["sampler"] = sampler
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        options["steps"] = steps
    shape = spec.shape
    t0 = time.perf_counter()
    out = generate(denoiser, shape, n, seed=seed, device=device, **options)
    seconds = time.perf_counter() - t0
    title = f"{options.get('sampler', 'heun')}, {out.nfe} NFE"
    if spec.data.kind == "table":   # decoded rows' marginals against the reference rows'
        from diffusion.tabular.plots import save_table_samples

        path = save_table_samples(spec.data.table, out.x, out_png, reference=reference)
    else:
        path = save_samples(out.x, out_png, title=title, reference=reference)
    print(f"{n} samples ({title}) in {seconds:.2f} s -> {path}", flush=True)
    return path
