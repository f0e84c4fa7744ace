"""The `model` section: the denoiser network (diffusion/nets.py) and its preconditioning
(diffusion/objectives.py), as diffusion/model.py builds them.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from .settings import Settings


class UNetConfig(Settings):
    kind: Literal["unet"] = "unet"
    channels: list[Annotated[int, Field(gt=0)]] = [32, 64]
    layers_per_block: Annotated[int, Field(gt=0)] = 1
    attention: bool = False
    norm_num_groups: Annotated[int, Field(gt=0)] = 8
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0

    @model_validator(mode="after")
    def _groups_divide(self):
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"model.net.norm_num_groups={self.norm_num_groups} must divide every "
                             f"entry of model.net.channels; it does not divide {bad}")
        return self


class MLPConfig(Settings):
    kind: Literal["mlp"] = "mlp"
    hidden: Annotated[int, Field(gt=0)] = 256
    depth: Annotated[int, Field(gt=0)] = 4
    embed_dim: Annotated[int, Field(gt=0)] = 64


class EDMConfig(Settings):
    kind: Literal["edm"] = "edm"
    sigma_data: Annotated[float, Field(gt=0)] = 0.5


class VPConfig(Settings):
    kind: Literal["vp"] = "vp"
    schedule: Literal["vp_linear", "vp_cosine"] = "vp_cosine"
    prediction: Literal["eps", "v", "x0"] = "v"


class ModelConfig(Settings):
    net: Annotated[Union[UNetConfig, MLPConfig], Field(discriminator="kind")] = UNetConfig()
    precond: Annotated[Union[EDMConfig, VPConfig], Field(discriminator="kind")] = EDMConfig()
