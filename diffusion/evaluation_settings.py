"""The `evaluate` section: the quality-versus-NFE sweep of diffusion/evaluation.py."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .settings import Device, Settings


class EvaluateConfig(Settings):
    samplers: list[Literal["ddpm", "ddim", "dpmpp_2m", "ipndm", "heun"]] = ["ddim", "dpmpp_2m", "heun", "ddpm"]
    nfes: list[Annotated[int, Field(gt=0)]] = [1, 2, 4, 8, 16, 32, 64]
    n_samples: Annotated[int, Field(ge=10)] = 1000   # generated per setting; the floor uses the same n
    kid_subsets: Annotated[int, Field(gt=0)] = 50
    # FID / KID intervals (diffusion/bootstrap.py): B resamples per setting, about 7.5 ms each
    # with 64-D features and n = 1000 on one CPU thread; 0 leaves the intervals out
    bootstrap_replicates: Annotated[int, Field(ge=0)] = 200
    confidence_level: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95
    seed: Annotated[int, Field(ge=0)] = 0
    feature_cache: str = "data/features"            # extractors, keyed by the training data's hash
    device: Device = "auto"
