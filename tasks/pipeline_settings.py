"""The `pipeline` section of params.yaml: what the flow itself reads (the registered model's
name, the MLflow experiment, the students to distil, the candidate rule, the DVC remote), with
the sections of the steps that read their own (the data gate's, the promotion rule's).

`PipelineConfig` is the whole file as the pipeline and `dmops` load it: diffusion's `Config`,
whose `pipeline` section the core keeps opaque, with that section typed here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from diffusion.config import Config, ConfigError, load_config
from diffusion.settings import Settings

from .adapters.gx.settings import ValidationSettings
from .steps.promote_settings import PromoteSettings
from .steps.register_guard import RowsGuardSettings


# an S3 bucket name (AWS's rules, which S3-compatible stores follow): 3-63 lowercase letters,
# digits, dots and hyphens, starting and ending with a letter or digit
BUCKET_NAME = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"


class PipelineSettings(Settings):
    model_name: str = "digits-diffusion"    # the registered model's name in MLflow
    experiment: str = "dmops"               # MLflow experiment of the flow's runs
    methods: list[Literal["progressive", "consistency", "dmd"]] = ["progressive", "consistency"]
    # Which model is registered: the student with the fewest network evaluations whose FID is
    # within `max_fid_ratio` x the teacher's best FID, else the teacher at its best setting.
    max_fid_ratio: Annotated[float, Field(ge=1)] = 2.5
    promote: PromoteSettings = Field(default_factory=PromoteSettings)
    # a table model whose served rows copy training rows is not registered and the run fails
    # (tasks/steps/register_guard.py): exact copies above held-out real rows' share by more than
    # max_exact_copies_excess, or a DCR ratio below min_dcr_ratio
    rows_guard: RowsGuardSettings = Field(default_factory=RowsGuardSettings)
    validate_data: ValidationSettings = Field(default_factory=ValidationSettings)
    dvc_remote: str = "dmops"               # defined in .dvc/config; its endpoint comes from the stack
    # S3 buckets the flow writes to (they must exist; `dmops up` makes these defaults): the
    # releases, promotion history and promotion lease; and the data gate's reference statistics
    # (the DVC remote's own bucket is its url in .dvc/config).  A team on AWS names its own:
    # bucket names are global there.
    releases_bucket: Annotated[str, Field(pattern=BUCKET_NAME)] = "dmops-releases"
    data_bucket: Annotated[str, Field(pattern=BUCKET_NAME)] = "dmops-dvc"


class PipelineConfig(Config):
    """params.yaml with its `pipeline` section typed."""

    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)


def load_pipeline_config(path, profile: str | None = None,
                         overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """The pipeline's configuration, validated in one read of the file.  Its dataset is the
    entry of `datasets` that `dataset` names, as the file writes it: DVC's stage
    `prepare@<name>` reads it there, so a profile or --set that changed `data` would train on
    data DVC never versioned (a profile may pick another dataset).  Raises ConfigError naming
    every offending key (diffusion.config.load_config)."""
    cfg = load_config(path, profile, overrides, schema=PipelineConfig, pin_data=True)
    if cfg.dataset is None:
        raise ConfigError(f"{path} names no datasets: the pipeline versions its dataset with DVC's "
                          f"stage prepare@<name>, one per entry of `datasets`; add one (e.g. "
                          f"`datasets: {{digits: {{name: digits}}}}`) and pick it with "
                          f"`dataset: <name>`")
    return cfg
