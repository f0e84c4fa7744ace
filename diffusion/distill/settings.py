"""The `distill` section: the settings every distillation run shares, and one subsection per
method (progressive.py, consistency.py and dmd.py read them)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Optional

from pydantic import Field, model_validator

from ..settings import Device, Fraction, Positive, Settings


class DistillRunConfig(Settings):
    """Settings every distillation run shares; the methods' configs add their own."""

    lr_warmup_steps: Annotated[int, Field(ge=0)] = 0
    grad_clip: Annotated[float, Field(ge=0)] = 1.0
    sigma_min: Annotated[float, Field(gt=0)] = 0.002
    sigma_max: Annotated[float, Field(gt=0)] = 80.0
    rho: Annotated[float, Field(gt=0)] = 7.0
    seed: Annotated[int, Field(ge=0)] = 0
    device: Device = "auto"
    checkpoint_every: Positive = 500
    log_every: Positive = 100
    progress: bool = True

    # they do not change the student (resume is exact): not part of its provenance
    CADENCE: ClassVar[tuple[str, ...]] = ("checkpoint_every", "log_every", "progress", "device")

    def result_settings(self) -> dict:
        return {k: v for k, v in self.model_dump().items() if k not in self.CADENCE}

    @model_validator(mode="after")
    def _sigma_range(self):
        if self.sigma_min >= self.sigma_max:
            raise ValueError("sigma_min must be below sigma_max")
        return self


class ProgressiveConfig(DistillRunConfig):
    start_steps: Positive = 64        # the teacher's DDIM steps in round 1 (a power of 2)
    end_steps: Positive = 1           # the last student's steps (a power of 2, < start_steps)
    steps_per_round: Positive = 2000  # optimiser steps per round
    batch_size: Positive = 128
    lr: Annotated[float, Field(gt=0)] = 2e-4
    ema_decay: Fraction = 0.999       # with warm-up min(decay, (1+k)/(10+k)), restarted per round

    @model_validator(mode="after")
    def _check(self):
        for name in ("start_steps", "end_steps"):
            v = getattr(self, name)
            if v & (v - 1):
                raise ValueError(f"{name} must be a power of 2, got {v}")
        if self.end_steps >= self.start_steps:
            raise ValueError(f"end_steps ({self.end_steps}) must be below start_steps "
                             f"({self.start_steps})")
        return self


class ConsistencyConfig(DistillRunConfig):
    steps: Positive = 4000
    levels: Annotated[int, Field(ge=2)] = 18     # N: Karras noise levels from sigma_min to sigma_max
    batch_size: Positive = 128
    # The CD paper's 1e-4 is for ~800k steps.  At a budget of a few thousand steps it leaves a
    # teacher-initialised student near the teacher's posterior mean at high sigma (consistency
    # reaches it from sigma_min up, level by level): on churn, 2000 steps at 1e-4 gave rows
    # with 0.67 of the data's spread (detection AUC 1.000), at 1e-3 0.92 (AUC 0.602, the
    # teacher's 0.536); benchmarks/results/one_step_students.md.
    lr: Annotated[float, Field(gt=0)] = 1e-3
    target_decay: Fraction = 0.95              # mu: the EMA target network f_theta^-
    ema_decay: Fraction = 0.999                # slow EMA (with warm-up) that is exported and sampled
    huber_c: Optional[Annotated[float, Field(gt=0)]] = None  # default 0.00054 sqrt(dim)
    sigma_data: Optional[Annotated[float, Field(gt=0)]] = None  # default: the teacher's (EDM)
    # Which pairs (sigma_{n+1}, sigma_n) the loss sees (consistency.py, level_pairs):
    # 'uniform': the CD paper's adjacent levels of the N-level Karras grid, the grid slid by a
    #   uniform offset along the ramp (pairs 1/(N-1) apart anywhere in [sigma_min, sigma_max]):
    #   a student trained on the fixed levels alone is off between them, where the multistep
    #   sampler's intermediate sigmas fall (consistency.py's docstring has the numbers);
    # 'lognormal': iCT's level distribution, the same pairs with the lower level's
    #   ln sigma ~ N(level_p_mean, level_p_std^2) (truncated to the ramp), and with iCT's
    #   curriculum when start_levels is set: the grid's intervals double from start_levels - 1
    #   to levels - 1 in equal stages (also for 'uniform');
    # 'continuous': ECT's continuous-time pairs, sigma ~ that lognormal, the partner
    #   sigma (1 - n(sigma) / 2^stage) with n(sigma) = 1 + 8 sigmoid(-sigma), the gap halving over
    #   ect_stages equal stages, and iCT/ECT's weight 1/(sigma - sigma').
    level_sampling: Literal["uniform", "lognormal", "continuous"] = "uniform"
    level_p_mean: float = -1.1
    level_p_std: Annotated[float, Field(gt=0)] = 2.0
    start_levels: Optional[Annotated[int, Field(ge=2)]] = None
    ect_stages: Positive = 8

    @model_validator(mode="after")
    def _curriculum(self):
        if self.start_levels is not None and self.start_levels > self.levels:
            raise ValueError(f"start_levels ({self.start_levels}) must not exceed levels "
                             f"({self.levels})")
        return self


class DMDConfig(DistillRunConfig):
    """Distribution matching distillation (dmd.py).  `sigma_max`/`sigma_min`/`rho` of the shared
    settings are the teacher's ODE grid for the optional regression pairs only."""
    steps: Positive = 2000                    # generator updates
    batch_size: Positive = 128
    lr: Annotated[float, Field(gt=0)] = 1e-3  # generator and fake score network alike
    adam_beta1: Annotated[float, Field(ge=0, lt=1)] = 0.0  # no momentum: G chases a moving fake
    fake_updates: Positive = 5                # DMD2's two time-scale rule: fake steps per G step
    generator_sigma: Annotated[float, Field(gt=0)] = 2.5   # G(z) = D_G(sigma_g z, sigma_g)
    dm_sigma_min: Annotated[float, Field(gt=0)] = 0.02     # the matching's noise levels:
    dm_sigma_max: Annotated[float, Field(gt=0)] = 20.0     # log-uniform in this range
    fake_p_mean: float = -1.2                 # the fake network's denoising levels (EDM's
    fake_p_std: Annotated[float, Field(gt=0)] = 1.2        # lognormal)
    # DMD's paired regression term (DMD's own weight): on churn at 1000 steps it took the rows'
    # spread from 0.66 to 0.77 of the data's and detection AUC from 0.88 to 0.75
    regression_weight: Annotated[float, Field(ge=0)] = 0.25
    regression_pairs: Positive = 1024         # teacher ODE samples (noise, sample) for it
    regression_steps: Positive = 32           # the teacher's dpmpp_2m steps for one pair
    ema_decay: Fraction = 0.999               # slow EMA (with warm-up) that is exported
    sigma_data: Optional[Annotated[float, Field(gt=0)]] = None  # default: the teacher's (EDM)

    @model_validator(mode="after")
    def _dm_range(self):
        if self.dm_sigma_min >= self.dm_sigma_max:
            raise ValueError("dm_sigma_min must be below dm_sigma_max")
        return self


class DistillConfig(Settings):
    """`dmops distill`: one section per method (the library's own validated configs)."""
    progressive: ProgressiveConfig = Field(default_factory=ProgressiveConfig)
    consistency: ConsistencyConfig = Field(default_factory=ConsistencyConfig)
    dmd: DMDConfig = Field(default_factory=DMDConfig)
