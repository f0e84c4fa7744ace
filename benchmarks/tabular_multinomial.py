"""The benchmark-side TabDDPM teacher of benchmarks/tabular_quality.py: multinomial diffusion
for the categorical columns, Gaussian diffusion for the numbers, one MLP predicting both
(diffusion/tabular/multinomial.py), on a one-hot encoding's vectors.

It is a comparison, not a pipeline model: it has no EDM preconditioning, so the pipeline's
samplers and consistency distillation do not apply to it (no student row); it samples by
ancestral steps over its own T = 1000 discrete times.
"""

from __future__ import annotations

import time

import torch

from diffusion.nets import MLP
from diffusion.tabular.encoding import TableEncoder
from diffusion.tabular.multinomial import Layout, MultinomialDiffusion, T_DEFAULT, train
from diffusion.tabular.vectors import decode


def train_multinomial(ds_onehot, args, on_log=None):
    """Train on `ds_onehot`'s train vectors (a one-hot table_vectors dataset) with the
    teacher's budget of `args` (steps, batch_size, hidden, depth, lr, seed); returns
    (process, EMA net, seconds)."""
    encoder = TableEncoder.from_dict(ds_onehot.table)
    process = MultinomialDiffusion(Layout.from_encoder(encoder), T=T_DEFAULT)
    x = ds_onehot.subset("train").x
    torch.manual_seed(args.seed)
    net = MLP(dim=x.shape[1], hidden=args.hidden, depth=args.depth)
    t0 = time.perf_counter()
    ema = train(process, net, x, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                warmup=min(100, max(1, args.steps // 10)), seed=args.seed, on_log=on_log)
    return process, ema, time.perf_counter() - t0


def multinomial_rows(ds_onehot, process, net, n: int, *, seed: int, steps: int | None = None):
    """n decoded rows by `steps` ancestral steps (default all T); (rows, NFE, seconds)."""
    steps = steps or process.T
    t0 = time.perf_counter()
    x = process.sample(net, n, steps=steps, generator=torch.Generator().manual_seed(seed))
    rows = decode(ds_onehot.table, x)
    return rows, steps, time.perf_counter() - t0
