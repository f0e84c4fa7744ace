"""The pipeline's settings: the `pipeline` section of params.yaml, validated here.

The ML core (diffusion/) carries the section as an opaque mapping; this module gives it a type,
defaults and readable errors, like diffusion/config.py does for the rest of the file.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationError

from diffusion.config import Config, ConfigError, DataConfig, _Strict

from .validate_data import ValidationSettings


class PromoteSettings(_Strict):
    metric: str = "fid"                 # a column of the evaluation table
    lower_is_better: bool = True
    # the challenger wins when metric <= champion's metric x (1 + tolerance) (lower is better):
    # a retrain on the same data should not lose to the champion by sampling noise alone
    tolerance: Annotated[float, Field(ge=0)] = 0.02


class PipelineSettings(_Strict):
    model_name: str = "digits-diffusion"    # the registered model's name in MLflow
    experiment: str = "dmops"               # MLflow experiment of the flow's runs
    methods: list[Literal["progressive", "consistency"]] = ["progressive", "consistency"]
    # Which model is registered: the student with the fewest network evaluations whose FID is
    # within `max_fid_ratio` x the teacher's best FID, else the teacher at its best setting.
    max_fid_ratio: Annotated[float, Field(ge=1)] = 2.5
    promote: PromoteSettings = PromoteSettings()
    validate_data: ValidationSettings = Field(default_factory=ValidationSettings)
    dvc_remote: str = "dmops"               # defined in .dvc/config; its endpoint comes from the stack


def pipeline_settings(cfg: Config) -> PipelineSettings:
    try:
        return PipelineSettings.model_validate(cfg.pipeline)
    except ValidationError as e:
        lines = [f"pipeline.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                 for err in e.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def check_data_is_versioned(data: DataConfig, base: DataConfig) -> None:
    """The DVC stage prepares params.yaml's own `data` section (`base`): a profile or --set
    that changed it would train on data DVC never versioned."""
    if data != base:
        raise ConfigError("the pipeline's dataset comes from the DVC stage `prepare`, which reads the "
                          "`data` section of params.yaml itself: change the dataset there, not in a "
                          "profile or with --set data.*")
