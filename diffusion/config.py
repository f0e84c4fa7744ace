"""One typed, validated configuration, read from params.yaml.

params.yaml holds the base settings plus named `profiles` (e.g. `quick` for 2 CPU cores,
`full` for a GPU) that override parts of them.  The effective config is

    base  <-  profiles[profile]  <-  command-line overrides ("train.steps=200")

merged key by key and then validated as a whole.  Any unknown key, wrong type or
impossible value raises ConfigError naming the key and what is allowed.

Datasets are named: the file's `datasets` maps a name to a dataset's settings, `dataset` picks
the one a run uses (a profile or --set may pick another), and the effective `data` section is
that entry (with `data.*` overrides on top, for work outside the pipeline).  Each entry is a
DVC stage of its own (dvc.yaml's `prepare@<name>`), so the pipeline can version every dataset
the file names while a profile switches between them; profiles and --set never change an
entry itself.  Only the entry in use is validated (its errors named `datasets.<name>`, once):
a malformed entry blocks the runs that use it, not every other dataset's.  Every entry's name
is checked, since dvc.yaml's stage names are made of them all.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import yaml
from pydantic import Field, StringConstraints, ValidationError

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


# a dataset's name is a folder (data/processed/<name>) and part of a DVC stage's name
# (prepare@<name>): letters, digits, '_', '-' and '.', starting with a letter or digit
DATASET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
DatasetName = Annotated[str, StringConstraints(pattern=DATASET_NAME, max_length=64)]


class Config(Settings):
    """The whole file: one section per part of the core, each defined beside the code that
    reads it; `pipeline` is the orchestration's own section (see `load_config(schema=...)`)."""

    profile: str | None = None
    out_dir: str = "runs/default"
    # the name of the dataset in use (a key of `datasets`), None for a config built in code
    dataset: DatasetName | None = None
    # the entry of the dataset in use as the file writes it (load_config keeps that one alone:
    # another entry's faults are not this run's); left out of dumps (`dmops config`, a run's
    # recorded config, its cache keys): a run is defined by the data it uses, `data`
    datasets: dict[DatasetName, DataConfig] = Field(default_factory=dict, exclude=True)
    data: DataConfig = DataConfig()   # the dataset in use: datasets[dataset] (+ data.* overrides)
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


def _describe(schema: type[Settings], err: dict, data_key: str = "data") -> str:
    loc = [p for p in err["loc"] if p not in _UNION_TAGS]
    key = ".".join(str(p) for p in ([data_key, *loc[1:]] if loc[:1] == ["data"] else loc))
    key = key or "(top level)"
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        # an entry of `datasets` has the keys of the data section
        where = ("data", *err["loc"][2:]) if err["loc"][:1] == ("datasets",) else err["loc"]
        allowed = _allowed_keys(schema, where)
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"{key}: unknown key{hint}"
    shown = "" if err["type"] == "value_error" else f" (got {err.get('input')!r})"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{key}: {msg}{shown}"


AnyConfig = TypeVar("AnyConfig", bound=Config)


def validate(raw: dict, schema: type[AnyConfig] = Config, data_key: str = "data") -> AnyConfig:
    """`raw` (the merged mapping) as `schema`; ConfigError names every offending key, each
    fault once.  `data_key`: what the `data` section's faults are named by (load_config:
    `datasets.<name>`, the entry `data` is, when no override changed it)."""
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        described = [_describe(schema, err, data_key) for err in e.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(
            _each_once(described, raw.get("dataset")))) from None


def _each_once(lines: list[str], entry) -> list[str]:
    """`lines` without repeats: the entry in use is validated as `datasets.<entry>` and again
    as `data` (the entry, perhaps with overrides), and a fault of the entry is said by both."""
    prefix = f"datasets.{entry}"
    of_entry = {line[len(prefix):] for line in lines if line.startswith((prefix + ".", prefix + ":"))}
    return list(dict.fromkeys(line for line in lines
                              if not (line.startswith(("data.", "data:"))
                                      and line[len("data"):] in of_entry)))


def load_config(path="params.yaml", profile: str | None = None,
                overrides: list[str] | tuple[str, ...] = (), *,
                schema: type[AnyConfig] = Config, pin_data: bool = False) -> AnyConfig:
    """Read params.yaml, apply a profile (default: the file's `profile` key) and overrides
    ("key.path=value"), select the dataset (`data` = datasets[dataset], then any `data.*`
    override), and validate the result as `schema`: `Config` for the core, a subclass that
    types the `pipeline` section for the pipeline (tasks/pipeline_settings.py).

    `pin_data`: refuse `data.*` overrides from the profile or --set, for the commands whose
    dataset DVC versions (the pipeline, `dmops prepare`, `dmops fingerprint`): DVC's stage
    `prepare@<name>` reads datasets[<name>] from the file, so a run that changed it would train
    on data DVC never versioned.  A profile or --set may always pick another dataset
    (`dataset: <name>`); neither may change an entry of `datasets`.

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
    if "data" in raw:
        raise ConfigError(f"{path}: a dataset's settings are an entry of `datasets` (e.g. "
                          f"`datasets: {{digits: {{name: digits}}}}`, with `dataset: digits` "
                          f"picking it), not a top-level `data` section: move them there")
    profile = profile or raw.get("profile")
    layers: list[tuple[str, dict]] = []
    if profile is not None:
        if profile not in profiles:
            raise ConfigError(f"unknown profile {profile!r}; profiles in {path}: "
                              f"{', '.join(sorted(profiles)) or '(none)'}")
        layers.append((f"profile {profile!r}", profiles[profile] or {}))
    layers += [(f"--set {text}", parse_override(text)) for text in overrides]
    data_overrides = []
    for source, layer in layers:
        if "datasets" in layer:
            raise ConfigError(f"{source} changes `datasets`, which only {path} itself writes (DVC "
                              f"versions each entry as written); pick a dataset with "
                              f"`dataset: <name>`, or change its entry in {path}")
        if "data" in layer:
            data_overrides.append(source)
        raw = deep_merge(raw, layer)
    if profile is not None:
        raw["profile"] = profile
    if pin_data and data_overrides:
        name = raw.get("dataset")
        raise ConfigError(f"{', '.join(data_overrides)} changes `data`, but this command uses "
                          f"the dataset as {path} writes it (DVC's stage `prepare@{name}` reads "
                          f"`datasets.{name}` there and versions what it made): change that entry "
                          f"in {path} itself, or add another dataset there and pick it with "
                          f"`dataset: <name>`")
    selected = _select_dataset(raw, path)
    # the entry's faults named as the file writes it, unless an override changed the section
    name = selected.get("dataset")
    data_key = f"datasets.{name}" if name is not None and not data_overrides else "data"
    return validate(selected, schema, data_key)


def _select_dataset(raw: dict, path: Path) -> dict:
    """`raw` with its `data` section = datasets[dataset], `data.*` overrides on top, and
    `datasets` reduced to that entry: the others are not validated here (a malformed one
    blocks only what uses it), their names are (dvc.yaml's stages are named by all of them)."""
    datasets, name = raw.get("datasets"), raw.get("dataset")
    if not datasets:
        if name is not None:
            raise ConfigError(f"dataset: {name!r}, but {path} names no datasets (add a "
                              f"`datasets` section with an entry {name!r})")
        return raw
    if not isinstance(datasets, dict):
        return raw   # validation reports `datasets`
    _check_names(datasets, path)
    if name is None:
        raise ConfigError(f"dataset: not set; pick one of the datasets of {path} with `dataset: "
                          f"<name>` ({', '.join(map(str, datasets))})")
    if name not in datasets:
        raise ConfigError(f"dataset: {name!r} is not one of the datasets of {path} "
                          f"({', '.join(map(str, datasets))}); add it under `datasets` or pick "
                          f"one of those")
    entry = datasets[name]
    if not isinstance(entry, dict):
        raise ConfigError(f"datasets.{name}: {entry!r} is not a dataset's settings; write them as "
                          f"a mapping, e.g. `{name}: {{name: table, path: rows.csv}}`")
    return {**raw, "datasets": {name: entry}, "data": deep_merge(entry, raw.get("data") or {})}


def _check_names(datasets: dict, path: Path) -> None:
    """ConfigError naming each entry whose name is no DatasetName: DVC makes a stage
    `prepare@<name>` of every entry, and one such name (an '@', a '/') makes dvc.yaml unreadable
    for every dataset, so it blocks them all."""
    import re

    bad = [key for key in datasets
           if not (isinstance(key, str) and len(key) <= 64 and re.match(DATASET_NAME, key))]
    if bad:
        raise ConfigError("; ".join(f"datasets.{key}: {key!r} is not a dataset name" for key in bad)
                          + f" (in {path}; a name is letters, digits, '_', '-', '.', starting with "
                          f"a letter or digit, at most 64): DVC names every entry's stages "
                          f"prepare@<name>, so such a name breaks dvc.yaml for every dataset; "
                          f"rename the entry")


__all__ = ["Config", "ConfigError", "DataConfig", "DistillConfig", "ProgressiveConfig",
           "ConsistencyConfig", "EvaluateConfig", "ModelConfig", "SampleConfig", "TrainConfig",
           "ObjectiveConfig", "load_config", "validate", "parse_override"]
