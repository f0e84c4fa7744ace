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
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from pydantic import Field, ValidationError

from .data_settings import DataConfig
from .distill.settings import ConsistencyConfig, DistillConfig, ProgressiveConfig
from .evaluation_settings import EvaluateConfig
from .model_settings import EDMConfig, MLPConfig, ModelConfig, UNetConfig, VPConfig
from .sampler_settings import SampleConfig
from .settings import Settings
from .train_settings import ObjectiveConfig, TrainConfig

if TYPE_CHECKING:
    from .model import ModelSpec


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names every offending key."""


class Config(Settings):
    """The whole file: one section per part of the core, each defined beside the code that
    reads it; `pipeline` is the orchestration's own section (see `load_config(schema=...)`)."""

    profile: str | None = None
    out_dir: str = "runs/default"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = Field(default_factory=TrainConfig)
    sample: SampleConfig = SampleConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    distill: DistillConfig = Field(default_factory=DistillConfig)
    # The orchestration's own section (registry, promotion, data gate): the core neither reads
    # nor knows it; the pipeline loads the file with a schema that types it
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


def _allowed_keys(schema: type[Settings], loc: tuple) -> list[str]:
    """Field names allowed where the unknown key `loc[-1]` was found."""
    model: Any = schema
    for part in loc[:-1]:
        if part in _UNION_TAGS:  # pydantic names the chosen member of a tagged union in loc
            model = _UNION_TAGS[part]
        elif part in _fields(model):
            model = _fields(model)[part].annotation
        else:
            return []
    return list(_fields(model))


def _describe(schema: type[Settings], err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"] if p not in _UNION_TAGS) or "(top level)"
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        allowed = _allowed_keys(schema, err["loc"])
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"{key}: unknown key{hint}"
    shown = "" if err["type"] == "value_error" else f" (got {err.get('input')!r})"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{key}: {msg}{shown}"


AnyConfig = TypeVar("AnyConfig", bound=Config)


def validate(raw: dict, schema: type[AnyConfig] = Config) -> AnyConfig:
    """`raw` (the merged mapping) as `schema`; ConfigError names every offending key."""
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        lines = [_describe(schema, err) for err in e.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def load_config(path="params.yaml", profile: str | None = None,
                overrides: list[str] | tuple[str, ...] = (), *,
                schema: type[AnyConfig] = Config, pinned: tuple[str, ...] = ()) -> AnyConfig:
    """Read params.yaml, apply a profile (default: the file's `profile` key) and overrides
    ("key.path=value"), and validate the result as `schema`: `Config` for the core, a subclass
    that types the `pipeline` section for the pipeline (tasks/pipeline_settings.py).

    `pinned` names top-level sections that must stay as the file itself writes them: the
    pipeline pins `data`, which its DVC stage `prepare` reads from the file, so a profile or
    override that changed it would train on data DVC never versioned.

    Raises ConfigError (a ValueError) naming the file, the profile or every offending key.
    """
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
    as_written = copy.deepcopy(raw)
    profile = profile or raw.get("profile")
    if profile is not None:
        if profile not in profiles:
            raise ConfigError(f"unknown profile {profile!r}; profiles in {path}: "
                              f"{', '.join(sorted(profiles)) or '(none)'}")
        raw = deep_merge(raw, profiles[profile] or {})
        raw["profile"] = profile
    for text in overrides:
        raw = deep_merge(raw, parse_override(text))
    cfg = validate(raw, schema)
    for section in pinned:
        _require_as_written(cfg, section, as_written, path)
    return cfg


def _require_as_written(cfg: Config, section: str, as_written: dict, path: Path) -> None:
    field = _fields(type(cfg))[section]
    try:
        written = field.annotation.model_validate(as_written.get(section) or {})
    except ValidationError:
        written = None  # the file's own section is invalid: whatever changed it, it differs
    if getattr(cfg, section) != written:
        raise ConfigError(f"{section}: changed by the profile or --set, but this command uses the "
                          f"`{section}` section of {path} as written (the pipeline's DVC stage "
                          f"`prepare` reads it there and versions what it made): change it in "
                          f"{path} itself")


__all__ = ["Config", "ConfigError", "DataConfig", "DistillConfig", "ProgressiveConfig",
           "ConsistencyConfig", "EvaluateConfig", "ModelConfig", "SampleConfig", "TrainConfig",
           "ObjectiveConfig", "load_config", "validate", "parse_override"]
