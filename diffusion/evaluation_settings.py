"""The `evaluate` section: the quality-versus-NFE sweep of diffusion/evaluation.py."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .settings import Device, Settings

# the sampling rate's name in an evaluation row and in MLflow: samples per second, whatever a
# sample is (an image, a table row, a 2-D point; what people read says ModelSpec.data.noun/s).
# Rows and runs recorded before it was named so call it LEGACY_RATE.
RATE = "samples_per_s"
LEGACY_RATE = "images_per_s"


def sampling_rate(row: dict) -> float | None:
    """A row's (or metrics dict's) sampling rate in samples per second, under its name or the
    legacy one; None when it has neither."""
    value = row.get(RATE, row.get(LEGACY_RATE))
    return None if value is None else float(value)


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
