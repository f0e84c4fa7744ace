"""The `train` section: how diffusion/train.py trains the teacher (optimiser, EMA, loss
weighting, checkpoints, device)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Optional

from pydantic import Field, model_validator

from .settings import Device, Fraction, Positive, Settings


class ObjectiveConfig(Settings):
    weighting: Literal["eps_mse", "v_mse", "x0_mse", "min_snr", "truncated_snr", "edm"] = "edm"
    gamma: Annotated[float, Field(gt=0)] = 5.0      # for min_snr
    # 'lognormal': EDM's ln sigma ~ N(p_mean, p_std^2); 'vp': t ~ U(0, 1); 'auto': by preconditioning
    sigma_sampling: Literal["auto", "lognormal", "vp"] = "auto"
    p_mean: float = -1.2
    p_std: Annotated[float, Field(gt=0)] = 1.2


class TrainConfig(Settings):
    steps: Positive = 1000
    batch_size: Positive = 128       # global: split evenly over data-parallel ranks
    lr: Annotated[float, Field(gt=0)] = 2e-3
    lr_warmup_steps: Annotated[int, Field(ge=0)] = 100
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)
    grad_clip: Annotated[float, Field(ge=0)] = 1.0   # 0 disables clipping
    ema_decay: Fraction = 0.999
    ema_warmup: bool = True          # decay_k = min(decay, (1 + k)/(10 + k))
    checkpoint_every: Positive = 500
    keep_checkpoints: Positive = 2
    log_every: Positive = 50
    seed: Annotated[int, Field(ge=0)] = 0
    device: Device = "auto"
    amp: Literal["auto", "bf16", "off"] = "auto"   # auto: bf16 autocast on CUDA only
    progress: bool = True
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    # data parallelism: nnodes x nproc_per_node > 1 makes the train step launch torchrun
    # (tasks/steps/train_ranks.py) instead of training in its own process
    nproc_per_node: Positive = 1     # processes on each machine (one per GPU on GPUs)
    nnodes: Positive = 1             # machines; > 1 needs rdzv_endpoint and a shared out_dir
    # host:port of torchrun's c10d rendezvous, the same on every machine (one machine: a free
    # loopback port is picked when it is not set)
    rdzv_endpoint: Optional[Annotated[str, Field(pattern=r"^[^\s:]+:\d+$")]] = None

    # how often to log and save, and where to run: they do not change the weights (resume is
    # exact), so they are not part of a run's provenance; `steps` is checked on its own
    CADENCE: ClassVar[tuple[str, ...]] = ("steps", "checkpoint_every", "keep_checkpoints", "log_every", "progress", "device")
    # how the processes are launched: what changes the weights is their number, which
    # diffusion/train.py records as `world_size` from the process group it runs in (a run
    # launched by hand with torchrun included); 2 nodes x 1 process = 1 node x 2 processes
    LAUNCH: ClassVar[tuple[str, ...]] = ("nproc_per_node", "nnodes", "rdzv_endpoint")

    @property
    def world_size(self) -> int:
        """The number of data-parallel processes these settings launch."""
        return self.nproc_per_node * self.nnodes

    @model_validator(mode="after")
    def _check_parallel(self):
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError(f"train.nnodes is {self.nnodes}: set train.rdzv_endpoint to the "
                             "host:port of the rendezvous, the same on every machine")
        if self.batch_size % self.world_size:
            raise ValueError(f"train.batch_size {self.batch_size} must be divisible by the "
                             f"{self.world_size} data-parallel processes (train.nnodes x "
                             "train.nproc_per_node)")
        return self

    def result_settings(self) -> dict:
        """The settings that determine the trained weights (for provenance), without the
        cadence and launch settings; diffusion/train.py adds the world size when it is > 1."""
        return {k: v for k, v in self.model_dump().items()
                if k not in self.CADENCE + self.LAUNCH}
