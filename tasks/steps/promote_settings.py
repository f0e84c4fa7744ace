"""The `pipeline.promote` section: the rule tasks/steps/promote.py applies to champion and
challenger."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from diffusion.settings import Settings


class PromoteSettings(Settings):
    metric: str = "fid"                 # a column of the evaluation table
    lower_is_better: bool = True
    # the challenger wins when metric <= champion's metric x (1 + tolerance) (lower is better):
    # a retrain on the same data should not lose to the champion by sampling noise alone
    tolerance: Annotated[float, Field(ge=0)] = 0.02
