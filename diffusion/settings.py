"""The base every settings section derives from, and the constrained types they share.

A leaf module (pydantic only): every section -- data, model, training, sampling, evaluation,
distillation, and the pipeline's own -- sits beside the code that reads it and derives from
`Settings`; diffusion/config.py assembles them into the one validated configuration.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Settings(BaseModel):
    """A strict settings section: an unknown key, a wrong type or an impossible value fails
    validation at once, naming the field (config.py turns that into ConfigError)."""

    model_config = ConfigDict(extra="forbid")


Positive = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
# "auto" | "cpu" | "cuda" | "cuda:N"; diffusion.train.resolve_device turns it into a torch.device
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")]
