"""Pipeline step: train the diffusion teacher described by the config on its dataset."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from diffusion.config import Config
from diffusion.model import build_denoiser
from diffusion.nets import count_parameters
from diffusion.train import TrainResult, train

from tasks.steps.lineage import step_lineage
from tasks.steps.prepare_dataset import load_data
from tasks.steps.sample import sample_to_png
from tasks.say import say


@dataclass
class TeacherRun:
    out_dir: Path
    model_dir: Path | None
    samples_png: Path | None
    result: TrainResult
    parameters: int
    launch_dir: Path | None = None   # the torchrun attempt's folder (every rank's log), if any


def data_name(cfg: Config) -> str:
    """The data's name as the user gave it: the params.yaml entry the run chose (`dataset`),
    not the loader's ('table' for every CSV: model.json's data.kind and table record that),
    unless --set pointed `data` at another source than that entry (then the loader's name).
    A config without its `datasets` (the pipeline's steps get the config as JSON, which leaves
    them out, with `data` pinned to the entry: tasks/pipeline_settings.py) is named by `dataset`."""
    if not cfg.dataset:
        return cfg.data.name
    entry = cfg.datasets.get(cfg.dataset)
    if entry is None or (entry.name, entry.path) == (cfg.data.name, cfg.data.path):
        return cfg.dataset
    return cfg.data.name


def train_teacher(cfg: Config, resume: bool = True, on_log=None, data_dir=None,
                  dataset_md5: str | None = None) -> TeacherRun:
    """Load the data, build the network, train it, and draw a sample grid from the EMA model.
    The model's provenance records this step's code hash, the git commit and `dataset_md5`.

    With train.nnodes x train.nproc_per_node > 1 the training runs in that many torchrun
    ranks (tasks/steps/train_ranks.py): `on_log` gets rank 0's points in this process as it
    would here, and the answer is rank 0's.  Inside a torchrun rank (launched by hand, e.g.
    `torchrun -m flows.cli train`) it trains in-process, as one rank of that run."""
    if cfg.train.world_size > 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        from tasks.steps.train_ranks import train_with_torchrun

        return train_with_torchrun(cfg, resume=resume, on_log=on_log, data_dir=data_dir,
                                   dataset_md5=dataset_md5, log=say)
    return train_in_process(cfg, resume, on_log, data_dir, dataset_md5)


def train_in_process(cfg: Config, resume: bool = True, on_log=None, data_dir=None,
                     dataset_md5: str | None = None) -> TeacherRun:
    """`train_teacher` in this process.  Under torchrun every rank calls this; only rank 0
    writes the model and the grid (the other ranks' TeacherRun has no model_dir)."""
    out_dir = Path(cfg.out_dir)
    ds = load_data(cfg.data, data_dir)
    train_split = ds.subset("train")
    name = data_name(cfg)
    spec = cfg.model_spec(ds.sample_shape, dataset=name, kind=ds.kind,
                          train_samples=len(train_split.ids), table=ds.table)
    torch.manual_seed(cfg.train.seed)  # the same seed gives the same initial weights
    denoiser = build_denoiser(spec)
    parameters = count_parameters(denoiser.net)
    if os.environ.get("RANK", "0") == "0":  # once, not once per torchrun rank
        print(f"dataset {name}: {len(train_split.ids)} training samples of shape "
              f"{tuple(ds.sample_shape)}; network {spec.net['kind']} with {parameters:,} "
              "parameters", flush=True)
    result = train(denoiser, train_split.x, cfg.train, out_dir, spec=spec, resume=resume,
                   on_log=on_log, lineage=step_lineage("train", dataset_md5))
    png = None
    if result.model_dir is not None:
        reference = train_split.x if ds.kind in ("vector", "table") else None
        png = sample_to_png(result.model_dir, out_dir / "samples.png", n=cfg.sample.n,
                            seed=cfg.sample.seed, reference=reference)
    return TeacherRun(out_dir, result.model_dir, png, result, parameters)
