"""Pipeline step: register the model to serve as the `challenger` of the registered model, and
the check, before any training, that this run's data can make a model comparable with it.

The served model is chosen by tasks/steps/select_candidate.py; the registry itself is
tasks/adapters/registry.py.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from diffusion.config import ConfigError
from diffusion.evaluation_settings import RATE
from diffusion.model import read_spec

from tasks.adapters.metric_logger import numeric
from tasks.adapters.model_card import model_card
from tasks.adapters.pyfunc_package import serving_sha256
from tasks.adapters.registry import (FILES_TAG, champion_version, files_sha256, files_tag,
                                     register_model, registered_sample, set_descriptions,
                                     version_tags)
from tasks.steps.headline import derived_metrics
from tasks.steps.select_candidate import Candidate, choose_candidate, write_candidate
from tasks.say import say


def lineage_tags(model_dir: Path, weights_sha256: str) -> dict[str, str]:
    """Tags that say what made the served weights -- read from their own model.json, so a
    version whose weights a later run reused still names the commit and code that made them."""
    spec = read_spec(model_dir)
    p = spec.provenance
    if p is None:
        raise RuntimeError(f"{model_dir}/model.json records no provenance; it cannot be registered")
    tags = {"weights_sha256": weights_sha256, "weights_git_commit": p.git_commit or "unknown",
            "weights_code_sha256": p.code_sha256, "weights_settings_sha256": p.settings_sha256,
            "training_data_sha256": p.data_sha256,
            "sample_shape": spec.sample_signature(), "data_kind": spec.data.kind or "unknown"}
    if p.teacher_sha256:
        tags["teacher_sha256"] = p.teacher_sha256
    return tags


def model_description(model_name: str, dataset: str | None, model_dir: Path) -> str:
    """The registered model's description in the registry (markdown): what it is and how its
    aliases and versions are to be read."""
    spec = read_spec(model_dir)
    shape = "x".join(map(str, spec.shape))
    if spec.data.kind == "table" and spec.data.table:
        what = (f"rows of {len(spec.data.table['schema']['columns'])} columns, drawn as vectors "
                f"of {shape} numbers")
    else:
        what = f"{spec.data.kind or 'unknown'} samples of shape {shape}"
    return (f"Diffusion model of the `{dataset or spec.data.dataset or '?'}` dataset "
            f"({what}), trained, distilled, "
            "evaluated and promoted by the dmops pipeline.\n\n"
            "- alias `champion`: the version being served; its release (weights, model card, "
            "checksums) is in the S3 releases bucket\n"
            f"- alias `challenger`: the latest registered version; it becomes `champion` when it "
            f"scores at least as well on the champion's evaluation (`dmops history {model_name}` "
            "lists every decision)\n\n"
            "Each version's description is its model card; its tags record its lineage (dataset "
            "md5, git commit, weights sha256, settings and code hashes).")


@dataclass
class Registered:
    version: str
    model_dir: Path        # the served copy: the candidate's folder at its chosen setting
    candidate: Candidate
    metrics: dict[str, float]   # the numeric entries of its evaluation row, teacher_best_fid
                                # and fid_vs_teacher_best
    # True: nothing was registered, `version` is the champion, made from the same inputs
    same_as_champion: bool = False


# What makes a registered version what it is: the served copy's files (weights, and model.json
# with its sampler and steps), what made the weights (code, settings, training data, teacher),
# the dataset version, the served setting and the code and packages it serves with.  A
# challenger equal to the champion on all of them is the champion again: it is not registered.
SAME_INPUTS = (FILES_TAG, "weights_sha256", "weights_code_sha256", "weights_settings_sha256",
               "training_data_sha256", "teacher_sha256", "dataset_md5", "served_as", "sampler",
               "nfe", "serving_sha256")


def champion_made_alike(model_name: str, tags: dict[str, str], model_dir: Path) -> str | None:
    """The champion's version when it was made from the same inputs as the served copy
    `model_dir` with `tags` (every SAME_INPUTS entry equal; the served copy's files by their
    sha256), else None (no champion, or one that differs or does not record them all)."""
    version = champion_version(model_name)
    if version is None:
        return None
    ours = {**tags, FILES_TAG: files_tag(files_sha256(model_dir))}
    theirs = version_tags(model_name, version)
    if not all(ours.get(k) for k in (FILES_TAG, "weights_sha256", "serving_sha256")):
        return None
    return version if all(ours.get(k) == theirs.get(k) for k in SAME_INPUTS) else None


def register_candidate(table: list[dict], folders: dict[str, str], weights: dict[str, str],
                       work_dir, model_name: str, max_fid_ratio: float, tags: dict[str, str],
                       run_id: str, log=say, table_quality: dict | None = None) -> Registered:
    """Choose the model to serve from the evaluation `table` (select_candidate.choose_candidate),
    write its served copy under `work_dir`, and register it as `model_name`'s `challenger`,
    logged in MLflow run `run_id`.  Its tags: `tags`, what made its weights (`lineage_tags`), the
    served setting and its headline metrics; for a table model (`table_quality`: the
    evaluation's rows scores, tasks/steps/table_quality.py) also its rows' scores and the floor's
    as table_<metric> / table_floor_<metric>.  Nothing is registered when the champion was made from the same inputs
    (SAME_INPUTS): the result then names the champion's version, with `same_as_champion` True.
    Raises RegistryError (tasks.adapters.registry)."""
    candidate = choose_candidate(pd.DataFrame(table), {k: Path(v) for k, v in folders.items()},
                                 max_fid_ratio)
    model_dir = write_candidate(candidate, Path(work_dir) / "candidate" / "model")
    log(f"candidate: {candidate.describe()}")
    numbers = numeric(candidate.row)
    numbers.update(derived_metrics(table, numbers))
    if table_quality is not None:   # rows scores are named like the evaluation's models
        name = candidate.sampler if candidate.name == "teacher" else candidate.name
        scored = table_quality.get("settings", {}).get(name)
        # only the setting it is served at: a student scored at another step count says nothing
        if scored == {"sampler": candidate.sampler, "steps": candidate.steps}:
            numbers.update({f"table_{k}": v for k, v in table_quality["models"][name].items()})
            numbers.update({f"table_floor_{k}": v for k, v in table_quality["floor"].items()})
    all_tags = {**tags, **lineage_tags(model_dir, weights[candidate.name]),
                "served_as": candidate.name, "sampler": candidate.sampler,
                "nfe": str(int(candidate.row["nfe"])),
                "metrics": json.dumps({k: round(numbers[k], 5) for k in
                                       ("fid", "fid_floor", "kid_mean", RATE)
                                       if k in numbers}),
                "serving_sha256": serving_sha256()}
    same = champion_made_alike(model_name, all_tags, model_dir)
    if same is not None:   # a rerun with nothing changed: the champion again, not a new version
        log(f"nothing registered: {model_name} version {same}, the champion, was made from the "
            f"same inputs (weights sha256 {all_tags['weights_sha256'][:12]}, data, code, settings "
            "and served setting)")
        return Registered(same, model_dir, candidate, numbers, same_as_champion=True)
    version = register_model(model_dir, model_name, all_tags, run_id=run_id)
    # the version's description is its model card (before any release: the card says so)
    set_descriptions(model_name, version, model_description(model_name, tags.get("dataset"), model_dir),
                     model_card(model_name, version, numbers, all_tags, spec=read_spec(model_dir)))
    log(f"registered {model_name} version {version} (alias challenger)")
    return Registered(version, model_dir, candidate, numbers)


def dataset_sample(dataset: dict, categorical: str = "onehot") -> tuple[str, str]:
    """(sample shape as '1x8x8', kind 'image' | 'vector' | 'table') of a processed dataset
    folder, read from its manifest and meta.json without loading the arrays; for a table, the
    vectors' width and layout (ModelSpec.sample_signature) that schema.json and the
    `categorical` encoding (data.categorical) give."""
    folder = Path(dataset["path"])
    kind = json.loads((folder / "meta.json").read_text()).get("kind", "unknown")
    if kind == "table":
        from diffusion.tabular.encoding import TableEncoder
        from diffusion.tabular.schema import TableSchema

        schema = TableSchema.from_dict(json.loads((folder / "schema.json").read_text()))
        return TableEncoder(schema, categorical).sample_signature(), kind
    with open(folder / "manifest.csv", newline="") as f:
        first = next(csv.DictReader(f), None)
    return (first or {}).get("shape", "unknown"), kind


def registered_table_state(model_name: str, version: str) -> dict:
    """The table encoder state (schema, categorical encoding, ...) in the model.json of
    version `version` of `model_name` (tasks/adapters/registry.py download_model)."""
    import tempfile

    from tasks.adapters.registry import download_model

    with tempfile.TemporaryDirectory(prefix="dmops-layout-") as tmp:
        return read_spec(download_model(f"{model_name}/{version}", Path(tmp) / "model")).data.table or {}


def table_layout_changes(model_name: str, version: str, dataset: dict, categorical: str) -> list[str]:
    """What makes the processed table `dataset` (its schema.json, `categorical` encoding) give
    another vector layout than version `version` of `model_name`, one text per difference with
    its remedy (diffusion/tabular/schema.py layout_changes); [] when the registered model
    cannot be read: the refusal then names the layouts by their hashes."""
    from diffusion.tabular.schema import TableSchema, layout_changes

    try:
        state = registered_table_state(model_name, version)
        old = TableSchema.from_dict(state["schema"])
        new = TableSchema.from_dict(json.loads((Path(dataset["path"]) / "schema.json").read_text()))
    except Exception:   # a courtesy to the refusal, which stands either way
        return []
    return layout_changes(old, new, state.get("categorical"), categorical,
                          f"datasets.{dataset['name']}")


def check_comparable(model_name: str, dataset: dict, categorical: str = "onehot") -> None:
    """Refuse, before any training, a run whose data cannot give a model comparable with the
    versions already registered under `model_name` (another sample shape or modality; for a
    table, another vector layout: columns, categories or `categorical` encoding): its
    challenger could never be scored against the champion.  ConfigError names the setting;
    for a table, each column that changed and what keeps the registered layout."""
    registered = registered_sample(model_name)
    if registered is None:
        return
    shape, kind = dataset_sample(dataset, categorical)
    if (shape, kind) != registered[:2]:
        changes = (table_layout_changes(model_name, registered[2], dataset, categorical)
                   if kind == registered[1] == "table" else [])
        if changes:   # what differs, column by column, and what keeps the registered layout
            raise ConfigError(
                f"dataset {dataset['name']!r} no longer has the layout of the models registered "
                f"under pipeline.model_name {model_name!r} (version {registered[2]}): "
                + "; ".join(changes) + "; or, if the change is meant, set pipeline.model_name to "
                "a name of its own: a model of other columns cannot be compared with its champion")
        raise ConfigError(
            f"pipeline.model_name {model_name!r} holds models of {registered[1]} samples of shape "
            f"{registered[0]} (version {registered[2]}), but dataset {dataset['name']!r} has "
            f"{kind} samples of shape {shape}: a model of this data cannot be compared with its "
            f"champion; set pipeline.model_name to a name of its own")
