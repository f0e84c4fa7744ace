"""Pipeline step: turn the configured dataset into data/processed/<name>/ (arrays + manifest)."""

from __future__ import annotations

from pathlib import Path

from diffusion.config import DataConfig
from diffusion.data import load_dataset, save_processed


def prepare_dataset(data: DataConfig, root="data/processed") -> Path:
    """Load and validate the dataset, then write it atomically; returns the folder."""
    ds = load_dataset(data.name, **data.loader_options())
    out = save_processed(ds, Path(root) / data.name)
    counts = {s: int((ds.split == s).sum()) for s in ("train", "val", "test")}
    print(f"{data.name}: {len(ds.ids)} samples of shape {tuple(ds.sample_shape)} "
          f"(train {counts['train']}, val {counts['val']}, test {counts['test']}) -> {out}", flush=True)
    return out
