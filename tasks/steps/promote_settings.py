"""The `pipeline.promote` section: the rule tasks/steps/promote.py applies to champion and
challenger."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from diffusion.settings import Settings


class PromoteSettings(Settings):
    metric: str = "fid"                 # a column of the evaluation table
    lower_is_better: bool = True
    # fid and kid_mean: the paired bootstrap rule (tasks/steps/promote.py `decide`): promote,
    # keep or tie by the `level` interval of metric(challenger) - metric(champion) from
    # `replicates` resamples (about 15 ms each for FID with 64-D features, n = 1000, one thread)
    level: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95
    replicates: Annotated[int, Field(ge=100)] = 1000
    seed: Annotated[int, Field(ge=0)] = 0
    # any other metric (a column no resampling is defined for here: precision, a table's
    # utility): the challenger wins when metric <= champion's metric x (1 + tolerance) (lower
    # is better); unused for fid and kid_mean
    tolerance: Annotated[float, Field(ge=0)] = 0.02
