"""The optimisation loop shared by teacher training, both distillation methods and the
feature extractor.

Each caller supplies `loss_at(step)` (everything random in it drawn from a generator seeded
by the step, so resumed runs repeat uninterrupted ones exactly; a caller that never resumes
may draw from one generator in step order) and, when it keeps checkpoints, `save(step)`; the
loop does the rest the same way everywhere: lr warm-up (and an optional decay), backward,
gradient clipping, the optimiser and EMA updates, progress with loss and throughput,
per-step numbers to `on_log`, and the rule that no checkpoint is written before its losses
and weights are known to be finite.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from diffusion.progress import Progress


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, unusable checkpoint); the message says why."""


@dataclass
class LoopResult:
    step: int
    loss: float
    seconds: float
    samples_per_second: float


def optimise(net: nn.Module, opt: torch.optim.Optimizer, ema, *, step: int, total: int,
             loss_at: Callable[[int], torch.Tensor], lr: float, lr_warmup_steps: int,
             grad_clip: float, log_every: int, checkpoint_every: int, samples_per_step: int,
             save: Callable[[int, float], None] | None = None,
             after_step: Callable[[int], None] | None = None,
             lr_decay: Callable[[int], float] | None = None,
             on_log: Callable[[int, dict], None] | None = None, log_extra: dict | None = None,
             progress: bool = True, desc: str = "train", what: str = "training",
             loss: float = math.nan, noun: str = "samples") -> LoopResult:
    """Run optimiser steps `step` .. `total` - 1.  The learning rate of step s is
    `lr * min(1, (s + 1) / lr_warmup_steps) * lr_decay(s)` (no decay without `lr_decay`);
    `grad_clip` <= 0 clips nothing.  `after_step(step)` runs after each optimiser step (e.g. a
    target-network update), before the EMA update; `ema` is None for a network without one.
    Every `log_every` steps and at the end, `on_log(step, metrics)` gets {"loss", "grad_norm",
    "lr", "samples_per_second", "seconds", **log_extra}.  `save(step, loss)` writes a
    checkpoint every `checkpoint_every` steps and at the end; `loss` is the mean loss recorded
    with the checkpoint resumed from, returned as is when there is nothing left to do.  The
    progress line names the rate by `noun` (ModelSpec.data.noun: "images", "rows", ...).
    Raises TrainingError, naming `what` and the step, when the mean loss or a weight is not
    finite at a log or checkpoint step."""
    # a live bar on a terminal, a few plain lines in a log (diffusion/progress.py)
    bar = Progress(total, initial=step, enabled=progress, desc=desc, unit="step")
    t0, start, loss_value, window = time.perf_counter(), step, loss, []
    clip = grad_clip if grad_clip > 0 else math.inf
    while step < total:
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / max(1, lr_warmup_steps)) * (
                1.0 if lr_decay is None else lr_decay(step))
        step_loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        step_loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        if after_step is not None:
            after_step(step)
        if ema is not None:
            ema.update(net, step)
        step += 1
        window.append(step_loss.detach())
        checkpoint_due = step % checkpoint_every == 0 or step == total
        log_due = step % log_every == 0 or step == total
        if log_due or checkpoint_due:
            # one host sync per log or checkpoint, not per step
            loss_value = float(torch.stack(window).mean())
            window = []
            _check_finite(loss_value, net, step, what, kept=save is not None)
        if log_due:
            rate = (step - start) * samples_per_step / (time.perf_counter() - t0)
            bar.set_postfix(**{"loss": f"{loss_value:.4f}", f"{noun}_s": f"{rate:.0f}"})
            if on_log:
                on_log(step, {"loss": loss_value, "grad_norm": float(grad_norm),
                              "lr": opt.param_groups[0]["lr"], "samples_per_second": rate,
                              "seconds": time.perf_counter() - t0, **(log_extra or {})})
        bar.update(1)
        if checkpoint_due and save is not None:
            save(step, loss_value)
    bar.close()
    seconds = time.perf_counter() - t0
    rate = (step - start) * samples_per_step / seconds if seconds > 0 else 0.0
    return LoopResult(step, loss_value, seconds, rate)


def _check_finite(loss_value: float, net: nn.Module, step: int, what: str, kept: bool):
    """`kept`: this call writes checkpoints, so the message can point to the last one."""
    finite = math.isfinite(loss_value) and all(bool(torch.isfinite(p).all()) for p in net.parameters())
    if not finite:
        raise TrainingError(f"{what} diverged by step {step} (loss {loss_value}, non-finite weights "
                            "possible); lower the learning rate or check the data."
                            + (" The last checkpoint written is finite and kept." if kept else ""))
