"""The `sample` section: which sampler of diffusion/samplers.py draws samples, on which grid."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .settings import Settings


class SampleConfig(Settings):
    # consistency: only for consistency-distilled students (their model.json says so)
    sampler: Literal["ddpm", "ddim", "dpmpp_2m", "ipndm", "heun", "consistency"] = "heun"
    steps: Annotated[int, Field(gt=0)] = 18
    eta: Annotated[float, Field(ge=0, le=1)] = 0.0   # DDIM only
    grid: Literal["karras", "karras_nested", "logsnr"] = "karras"
    sigma_min: Annotated[float, Field(gt=0)] = 0.002
    sigma_max: Annotated[float, Field(gt=0)] = 80.0
    rho: Annotated[float, Field(gt=0)] = 7.0
    n: Annotated[int, Field(gt=0)] = 64
    seed: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _range(self):
        if self.sigma_min >= self.sigma_max:
            raise ValueError("sample.sigma_min must be below sample.sigma_max")
        return self
