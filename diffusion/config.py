"""One typed, validated configuration, read from params.yaml.

params.yaml holds the base settings plus named `profiles` (e.g. `quick` for 2 CPU cores,
`full` for a GPU) that override parts of them.  The effective config is

    base  <-  profiles[profile]  <-  command-line overrides ("train.steps=200")

merged key by key and then validated as a whole.  Any unknown key, wrong type or
impossible value raises ConfigError naming the key and what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from .distill.consistency import ConsistencyConfig
from .image_files import background_rgb
from .distill.progressive import ProgressiveConfig
from .train import Device, ObjectiveConfig, TrainConfig

if TYPE_CHECKING:
    from .model import ModelSpec


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names every offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    name: Literal["digits", "folder", "npz", "moons", "swiss_roll", "gmm8"] = "digits"
    path: str | None = None                       # for 'folder' and 'npz'
    image_size: Annotated[int, Field(ge=2)] = 8   # for 'folder'
    channels: Literal[1, 3] = 1                   # for 'folder'
    # for 'folder': what transparent pixels are composited onto ('white', 'black', a grey
    # level 0..255 or [r, g, b]); white, as viewers show transparent drawings and icons
    background: Union[str, int, list[int]] = "white"
    # for 'folder': how a non-square image becomes square: stretch | crop (centre) | pad
    fit: Literal["stretch", "crop", "pad"] = "stretch"
    n: Annotated[int, Field(gt=0)] = 4096         # for the 2-D sets
    seed: Annotated[int, Field(ge=0)] = 0
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2

    @field_validator("background", mode="before")
    @classmethod
    def _background(cls, value):
        background_rgb(value)  # ImageFileError (a ValueError) names what is accepted
        return list(value) if isinstance(value, tuple) else value

    @model_validator(mode="after")
    def _check(self):
        if self.name in ("folder", "npz") and not self.path:
            raise ValueError(f"data.path is required when data.name is {self.name!r}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("data.val_fraction + data.test_fraction must be below 1 "
                             "(something has to be left to train on)")
        return self

    def loader_options(self) -> dict:
        """The options data.load_dataset takes for this dataset."""
        common = {"seed": self.seed, "val_fraction": self.val_fraction,
                  "test_fraction": self.test_fraction}
        if self.name == "folder":
            return {"path": self.path, "size": self.image_size, "channels": self.channels,
                    "background": self.background, "fit": self.fit, **common}
        if self.name == "npz":
            return {"path": self.path, **common}
        if self.name == "digits":
            return common
        return {"n": self.n, **common}


class UNetConfig(_Strict):
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


class MLPConfig(_Strict):
    kind: Literal["mlp"] = "mlp"
    hidden: Annotated[int, Field(gt=0)] = 256
    depth: Annotated[int, Field(gt=0)] = 4
    embed_dim: Annotated[int, Field(gt=0)] = 64


class EDMConfig(_Strict):
    kind: Literal["edm"] = "edm"
    sigma_data: Annotated[float, Field(gt=0)] = 0.5


class VPConfig(_Strict):
    kind: Literal["vp"] = "vp"
    schedule: Literal["vp_linear", "vp_cosine"] = "vp_cosine"
    prediction: Literal["eps", "v", "x0"] = "v"


class ModelConfig(_Strict):
    net: Annotated[Union[UNetConfig, MLPConfig], Field(discriminator="kind")] = UNetConfig()
    precond: Annotated[Union[EDMConfig, VPConfig], Field(discriminator="kind")] = EDMConfig()


class SampleConfig(_Strict):
    # consistency: only for consistency-distilled students (their model.json says so)
    sampler: Literal["ddpm", "ddim", "dpmpp_2m", "heun", "consistency"] = "heun"
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


class EvaluateConfig(_Strict):
    samplers: list[Literal["ddpm", "ddim", "dpmpp_2m", "heun"]] = ["ddim", "dpmpp_2m", "heun", "ddpm"]
    nfes: list[Annotated[int, Field(gt=0)]] = [1, 2, 4, 8, 16, 32, 64]
    n_samples: Annotated[int, Field(ge=10)] = 1000   # generated per setting; the floor uses the same n
    kid_subsets: Annotated[int, Field(gt=0)] = 50
    seed: Annotated[int, Field(ge=0)] = 0
    feature_cache: str = "data/features"            # extractors, keyed by the training data's hash
    device: Device = "auto"


class DistillConfig(_Strict):
    """`dmops distill`: one section per method (the library's own validated configs)."""
    progressive: ProgressiveConfig = Field(default_factory=ProgressiveConfig)
    consistency: ConsistencyConfig = Field(default_factory=ConsistencyConfig)


class Config(_Strict):
    profile: str | None = None
    out_dir: str = "runs/default"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = Field(default_factory=TrainConfig)
    sample: SampleConfig = SampleConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    distill: DistillConfig = Field(default_factory=DistillConfig)
    # The orchestration's own section (registry, promotion, data gate, stack): validated by
    # tasks/settings.py, since the ML core neither reads nor knows it.
    pipeline: dict[str, Any] = Field(default_factory=dict)

    def model_spec(self, sample_shape: tuple[int, ...], **data_facts) -> "ModelSpec":
        """The ModelSpec that model.build_denoiser takes and model.json stores; the network's
        input size comes from the data's sample shape."""
        from .model import ModelSpec  # model.py imports torch: `dmops config` need not


        net = self.model.net.model_dump()
        if net["kind"] == "unet":
            if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
                raise ConfigError(f"model.net.kind 'unet' needs square images (C, H, H); the data "
                                  f"has samples of shape {tuple(sample_shape)}: use kind 'mlp'")
            net.update(in_channels=sample_shape[0], sample_size=sample_shape[1])
        else:
            if len(sample_shape) != 1:
                raise ConfigError(f"model.net.kind 'mlp' needs vectors (D,); the data has samples "
                                  f"of shape {tuple(sample_shape)}: use kind 'unet'")
            net.update(dim=sample_shape[0])
        return ModelSpec(net=net, precond=self.model.precond.model_dump(),
                         sampling=self.sample.model_dump(exclude={"n", "seed"}),
                         data={"shape": tuple(sample_shape), **data_facts})


# --- loading -----------------------------------------------------------------

def deep_merge(base: dict, override: dict) -> dict:
    """Merge key by key; a section whose `kind` changes (e.g. model.net unet -> mlp) is
    replaced whole, since the old kind's settings mean nothing to the new one."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if (isinstance(value, dict) and isinstance(out.get(key), dict)
                and value.get("kind", out[key].get("kind")) == out[key].get("kind")):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> dict:
    """'train.steps=200' -> {'train': {'steps': 200}}; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value, e.g. train.steps=200")
    path, raw = text.split("=", 1)
    keys = path.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value: Any = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from None
    for key in reversed(keys):
        value = {key: value}
    return value


_UNION_TAGS = {"unet": UNetConfig, "mlp": MLPConfig, "edm": EDMConfig, "vp": VPConfig}


def _fields(model) -> dict:
    return getattr(model, "model_fields", None) or getattr(model, "__pydantic_fields__", {})


def _allowed_keys(loc: tuple) -> list[str]:
    """Field names allowed where the unknown key `loc[-1]` was found."""
    model: Any = Config
    for part in loc[:-1]:
        if part in _UNION_TAGS:  # pydantic names the chosen member of a tagged union in loc
            model = _UNION_TAGS[part]
        elif part in _fields(model):
            model = _fields(model)[part].annotation
        else:
            return []
    return list(_fields(model))


def _describe(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"] if p not in _UNION_TAGS) or "(top level)"
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        allowed = _allowed_keys(err["loc"])
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"{key}: unknown key{hint}"
    shown = "" if err["type"] == "value_error" else f" (got {err.get('input')!r})"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{key}: {msg}{shown}"


def validate(raw: dict) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        lines = [_describe(err) for err in e.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def load_config(path="params.yaml", profile: str | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read params.yaml, apply a profile (default: the file's `profile` key) and overrides."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    profiles = raw.pop("profiles", {}) or {}
    profile = profile or raw.get("profile")
    if profile is not None:
        if profile not in profiles:
            raise ConfigError(f"unknown profile {profile!r}; profiles in {path}: "
                              f"{', '.join(sorted(profiles)) or '(none)'}")
        raw = deep_merge(raw, profiles[profile] or {})
        raw["profile"] = profile
    for text in overrides:
        raw = deep_merge(raw, parse_override(text))
    return validate(raw)


__all__ = ["Config", "ConfigError", "DataConfig", "DistillConfig", "ProgressiveConfig",
           "ConsistencyConfig", "EvaluateConfig", "ModelConfig", "SampleConfig", "TrainConfig",
           "ObjectiveConfig", "load_config", "validate", "parse_override"]
