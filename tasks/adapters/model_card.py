"""The model card: a release's README.md and a registered version's description.

One markdown page says what the model is, how it samples (sampler, steps and network
evaluations, noise grid, preconditioning, and the network's noise conditioning: the convention a
user of another library must know), how good it is (the evaluation's numbers with their names
spelled out), where it came from (data hash, commits, code and settings hashes, links to the
MLflow run, the registered version and the Prefect flow run), and how to load it, with dmops and
with diffusers alone (tasks/adapters/diffusers_interop.py; tests/test_diffusers_interop.py runs
the card's own diffusers code).  A table model's card speaks of rows throughout: its "Rows"
section holds the scores of the rows of the setting it is served at (tasks/steps/table_quality.py),
and its code returns a DataFrame of the table's columns (the pyfunc, `dmops sample --out x.csv`).

`model_card` needs no release: with `uri=None` it is the card of a registered version that may
never be released (its description in the registry), and says where a release would be.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING

from diffusion.evaluation_settings import LEGACY_RATE, RATE
from tasks.adapters import ui_links
from tasks.adapters.diffusers_interop import (CONSISTENCY, DPM_SOLVER, EULER, SAMPLER_NAMES,
                                              SCHEDULER_CONFIG, DiffusersScheduler,
                                              diffusers_scheduler, diffusers_snippet)
from tasks.number_text import interval_text, plus_minus
from tasks.table_rows import f1_ratio, pairs_note, served_setting, utility_measure, utility_note

if TYPE_CHECKING:  # model.py imports torch; the card's readers need not
    from diffusion.model import ModelSpec

DIFFUSERS_HEADING = "## Use with diffusers"
# metadata keys that name the data's content hash, in the order they are looked for
_DATA_HASH_KEYS = ("data_hash", "dataset_md5", "dataset_hash")
# metadata keys the card turns into links (MLflow run, Prefect flow run)
_LINK_KEYS = ("mlflow_parent_run_id", "mlflow_experiment_id", "prefect_flow_run_id")
# registry tags (tasks/steps/register.py) that repeat what the card states from the model.json
_STATED_BY_SPEC = ("sampler", "nfe", "served_as", "sample_shape", "data_kind", "weights_git_commit",
                   "weights_code_sha256", "weights_settings_sha256", "training_data_sha256")
# samples drawn by the card's examples: the numbers `dmops sample --n 16 --seed 0` draws
_EXAMPLE_N, _EXAMPLE_SEED = 16, 0


def _cell(value) -> str:
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        text = f"{float(value):.4g}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _row(label: str, value) -> str:
    return f"| {label} | {_cell(value)} |"


# --- what the model is and how it samples --------------------------------------------------

def _noise_conditioning(precond: dict, choice: DiffusersScheduler | None) -> str:
    from diffusion.objectives import TIMESTEP_SCALE   # torch: only with a spec at hand

    scale = f"{TIMESTEP_SCALE:g}"
    kind = precond.get("kind")
    if kind in ("edm", "consistency"):
        own = f"timestep input c_noise = {scale} · ln(sigma) / 4"
        if choice is not None:   # what the shipped scheduler passes: one statement, no other
            return f"{own}; {_scheduler_convention(choice)}"
        if kind == "edm":
            return f"{own} (diffusers' EDM schedulers pass ln(sigma) / 4: multiply by {scale})"
        return own
    if kind == "vp":
        return (f"timestep input c_noise = {scale} · t, t in [0, 1] the "
                f"{precond.get('schedule', 'vp_cosine')} schedule's time of sigma")
    return "unknown"


def _scheduler_convention(choice: DiffusersScheduler) -> str:
    if choice.timestep_scale != 1:
        return (f"the shipped `{choice.class_name}` passes ln(sigma) / 4: multiply its "
                f"timesteps by {choice.timestep_scale:g}")
    return (f"the shipped `{choice.class_name}` passes 1000 · 0.25 · ln(sigma), the same: "
            "no conversion is needed")


def _preconditioning(precond: dict) -> str:
    kind = precond.get("kind", "unknown")
    if kind == "vp":
        return f"VP, {precond.get('schedule', 'vp_cosine')} schedule, predicts {precond.get('prediction', 'eps')}"
    details = ", ".join(f"{k} {v}" for k, v in sorted(precond.items()) if k != "kind")
    name = {"edm": "EDM (Karras et al. 2022)",
            "consistency": "consistency model (Song et al. 2023)"}.get(kind, kind)
    return f"{name}, {details}" if details else name


def _what(spec: ModelSpec, dataset: str | None = None) -> str:
    """What the model is; `dataset`: the params.yaml entry it was made from (the run's `dataset`
    tag), which names a table better than its model.json's loader name ('table')."""
    net = spec.net
    channels = net.get("channels") or net.get("hidden")
    network = f"{net.get('kind', 'unknown')} {list(channels) if isinstance(channels, (list, tuple)) else channels or ''}".strip()
    shape = "×".join(map(str, spec.shape))
    data = dataset or spec.data.dataset or "unknown data"
    dist = spec.distillation or {}
    if spec.method == "progressive":
        what = (f"A progressive-distillation student (round {dist.get('round', '?')}: "
                f"{dist.get('teacher_steps', '?')} → {dist.get('student_steps', '?')} DDIM steps)")
    elif spec.method == "consistency":
        what = "A consistency-distillation student"
    elif spec.method == "dmd":
        what = ("A distribution-matching student (DMD/DMD2): a one-step generator at sigma "
                f"{spec.sampling.sigma_max:g}")
    else:
        trained = f", trained for {_plural(spec.trained_steps, 'step')}" if spec.trained_steps else ""
        what = f"A diffusion model{trained}"
    if spec.data.kind == "table" and spec.data.table:
        schema = spec.data.table.get("schema", {})
        target = f" (target `{schema['target']}`)" if schema.get("target") else ""
        return (f"{what}: network {network}, made for the table `{data}`. It makes rows of "
                f"{_plural(len(schema.get('columns', [])), 'column')}{target}, drawn as vectors "
                f"of {shape} numbers and decoded to the columns' values and dtypes by the "
                "encoder its model.json carries.")
    return f"{what}: network {network}, made for {data}, samples of shape {shape}."


def _sampling_rows(spec: ModelSpec, metrics: dict) -> list[str]:
    from diffusion.samplers import nfe_for

    s = spec.sampling
    nfe = int(metrics["nfe"]) if isinstance(metrics.get("nfe"), numbers.Real) else nfe_for(s.sampler, s.steps)
    sampler = f"`{s.sampler}`: {SAMPLER_NAMES.get(s.sampler, s.sampler)}"
    if s.sampler == "ddim":
        sampler += f", eta {s.eta:g}"
    rows = ["| | |", "|---|---|",
            f"| sampler | {sampler} |",
            f"| steps | {_plural(s.steps, 'step')} = {_plural(nfe, 'network evaluation')} (NFE) |",
            f"| noise levels | `{s.grid}` grid from sigma {s.sigma_max:g} down to {s.sigma_min:g}, "
            f"rho {s.rho:g}, then 0 |",
            f"| preconditioning | {_preconditioning(spec.precond)} |",
            f"| noise conditioning | {_noise_conditioning(spec.precond, diffusers_scheduler(spec))} |"]
    if spec.served_as:
        rows.append(f"| served as | `{spec.served_as}` (its row of the evaluation) |")
    return rows


# --- how good it is -------------------------------------------------------------------------

# (metric key, what the card calls it), in reading order; KID is shown as mean ± std.  {one}
# and {many}: what the model makes ("image"/"images", "row"/"rows", "sample"/"samples")
_EVALUATION = (
    ("fid", "FID against the test split (the evaluation's feature space)"),
    ("fid_floor", "real-data floor: FID of held-out real {many}, same n"),
    ("fid_ratio", "FID / floor"),
    ("fid_vs_floor", "FID / floor"),
    ("teacher_best_fid", "teacher's best FID (its best sampler and steps)"),
    ("fid_vs_teacher_best", "FID / teacher's best FID"),
    ("kid_mean", "KID (mean ± std over subsets)"),
    ("precision", "precision"), ("recall", "recall"), ("density", "density"),
    ("coverage", "coverage"),
    ("memorisation_ratio", "memorisation: nearest-training-{one} distance, generated / test {many}"),
    (RATE, "{many} per second (sampling, evaluation machine)"),
    ("n_samples", "{many} scored"),
)
# a table's FID is over its rows' encoded vectors (the identity feature space)
_TABLE_FID = "FID against the test split's rows as encoded vectors (what selection and promotion compare)"


# a table model's rows scored beside the floor (tasks/steps/table_quality.py): the numbers
# register puts in as table_<metric> and table_floor_<metric>
_ROWS = (
    ("column_shapes", "column shapes (SDMetrics: 1 - KS or TV distance, mean over columns)"),
    ("column_pair_trends", "column-pair trends (SDMetrics, related pairs{pairs})"),
    ("utility_ratio", "utility ({measure}ratio): synthetic-trained / real-trained model on held-out rows"),
    ("utility_f1_ratio", "utility (F1 ratio): F1 of the synthetic-trained / real-trained model"),
    ("utility_auc", "utility: AUC of the synthetic-trained model"),
    ("utility_auc_real", "utility: AUC of the real-trained model (as many real rows)"),
    ("utility_f1", "utility: F1 of the synthetic-trained model (binary: the rarer class)"),
    ("utility_f1_real", "utility: F1 of the real-trained model"),
    ("utility_r2", "utility: R^2 of the synthetic-trained model"),
    ("utility_r2_real", "utility: R^2 of the real-trained model (as many real rows)"),
    ("detection_auc", "detection AUC, real vs synthetic rows (0.5: indistinguishable)"),
    ("dcr_ratio", "privacy: median distance to the closest training row, synthetic / held-out"),
    ("exact_copies", "privacy: share of rows equal to a training row"),
)
_ROW_PREFIX, _FLOOR_PREFIX = "table_", "table_floor_"


def _rows_lines(metrics: dict, setting: str | None) -> list[str]:
    """The table model's rows section: each score of the rows of its served `setting`
    ('consistency, 1 NFE') beside the floor's (held-out real rows); what was left out says why."""
    at = f" ({setting})" if setting else ""
    if not any(k.startswith(_ROW_PREFIX) and not k.startswith(_FLOOR_PREFIX) for k in metrics):
        return [f"The rows of the setting it is served at{at} were not scored."]
    lines = [f"The rows of the setting it is served at{at}, decoded to the table's columns, "
             "scored beside held-out real rows scored the same way:", "",
             "| metric | this model | floor (held-out real rows) |", "|---|---|---|"]
    served = {k[len(_ROW_PREFIX):]: v for k, v in metrics.items()
              if k.startswith(_ROW_PREFIX) and not k.startswith(_FLOOR_PREFIX)}
    floor = {k[len(_FLOOR_PREFIX):]: v for k, v in metrics.items() if k.startswith(_FLOOR_PREFIX)}
    for scores in (served, floor):   # a version registered before the F1 ratio was recorded
        if "utility_f1_ratio" not in scores and f1_ratio(scores) is not None:
            scores["utility_f1_ratio"] = f1_ratio(scores)
    measure = utility_measure(served)
    pairs = pairs_note(served)
    for key, label in _ROWS:
        if key in served:
            label = label.format(measure=f"{measure} " if measure else "",
                                 pairs=f": {pairs}" if pairs else "")
            lines.append(f"| {label} | {_cell(served[key])} | {_cell(floor.get(key, '-'))} |")
    note = utility_note(served)
    if note is not None:
        lines += ["", f"{note[0].upper()}{note[1:]}."]
    return lines


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# KID's subsets: min(KID_SUBSET_MAX, test rows, generated rows) of each set (diffusion/metrics.py
# `_subset_size`'s default; tests/test_table_card.py checks the two agree)
KID_SUBSET_MAX = 1000


def _kid_subsets_whole(metrics: dict) -> int | None:
    """n when every KID subset was the whole of both sets (as many generated as test samples,
    n <= KID_SUBSET_MAX: each subset draws all n of each), so its std over subsets is 0 by
    construction, not a measured spread; else None (sizes unknown, or subsets smaller than a set)."""
    fake, test = metrics.get("n_fake", metrics.get("n_samples")), metrics.get("n_test")
    if not (_is_number(fake) and _is_number(test)) or int(fake) != int(test):
        return None
    return int(fake) if int(fake) <= KID_SUBSET_MAX else None


def _evaluation_lines(metrics: dict, noun: str = "images") -> list[str]:
    if not metrics:
        return ["No evaluation numbers were recorded."]
    one = noun[:-1] if noun.endswith("s") else noun
    metrics = dict(metrics)
    if LEGACY_RATE in metrics:   # a version recorded before the rate was named RATE
        metrics.setdefault(RATE, metrics.pop(LEGACY_RATE))
    best = metrics.get("teacher_best_fid")
    if "fid_vs_teacher_best" not in metrics and _is_number(best) and best > 0 and _is_number(metrics.get("fid")):
        metrics["fid_vs_teacher_best"] = metrics["fid"] / best
    if "fid_ratio" in metrics:
        metrics.pop("fid_vs_floor", None)   # the same ratio under the parent run's name
    lines, shown = ["| metric | value |", "|---|---|"], set()
    for key, label in _EVALUATION:
        if key not in metrics:
            continue
        value = metrics[key]
        if key == "kid_mean" and _is_number(value) and _is_number(metrics.get("kid_std")):
            whole = _kid_subsets_whole(metrics)
            if whole is not None:   # a spread of 0 by construction: say why instead
                value = f"{_cell(value)} (each subset held all {whole} {noun} of both sets: no spread over subsets)"
                label = "KID (mean over subsets)"
            else:
                value = plus_minus(value, metrics["kid_std"])
            shown.add("kid_std")
        base = {"fid": "fid", "kid_mean": "kid"}.get(key)
        if (base and _is_number(metrics[key]) and _is_number(metrics.get(f"{base}_lo"))
                and _is_number(metrics.get(f"{base}_hi"))):
            # evaluate.confidence_level's interval (diffusion/bootstrap.py), of the estimate at n,
            # its ends at the estimate's precision (tasks/number_text.py)
            bounds = interval_text(metrics[f"{base}_lo"], metrics[f"{base}_hi"], metrics[key])
            value = f"{value if isinstance(value, str) else _cell(value)}, bootstrap interval {bounds}"
            shown |= {f"{base}_lo", f"{base}_hi"}
        label = _TABLE_FID if key == "fid" and noun == "rows" else label.format(one=one, many=noun)
        lines.append(_row(label, value))
        shown.add(key)
    # the sampling table states these, the rows section a table's; everything else the
    # evaluation measured follows as is
    shown |= {"nfe", "steps", "sampler", "model"} | {k for k in metrics if k.startswith(_ROW_PREFIX)}
    rest = {k: v for k, v in metrics.items() if k not in shown}
    if rest:
        lines += ["", "All other numbers of its evaluation row:", "", "| | |", "|---|---|"]
        lines += [_row(f"`{k}`", v) for k, v in sorted(rest.items())]
    return lines


# --- where it came from -----------------------------------------------------------------------

_TAG_LABELS = {"weights_sha256": "weights sha256", "teacher_sha256": "teacher weights sha256"}


def _lineage_lines(spec: ModelSpec | None, metadata: dict) -> list[str]:
    data_hash = next((metadata.pop(k) for k in _DATA_HASH_KEYS if k in metadata), "unknown")
    lines = ["| | |", "|---|---|", _row("data hash (DVC md5)", data_hash),
             _row("git commit of the run", metadata.pop("git_commit", "unknown"))]
    if spec is not None and spec.provenance is not None:
        p = spec.provenance
        lines += [_row("weights made by commit", p.git_commit or "unknown"),
                  _row("code sha256", p.code_sha256), _row("settings sha256", p.settings_sha256),
                  _row("training data sha256", p.data_sha256)]
    lines += [_row(_TAG_LABELS.get(k, k), v) for k, v in sorted(metadata.items())]
    return lines


def _link(label: str, target: str | None, url: str | None) -> str | None:
    if not target:
        return None
    return f"- {label}: [{target}]({url})" if url else f"- {label}: `{target}`"


def _links(model: str, version: str, ids: dict) -> list[str]:
    run, experiment = ids.get("mlflow_parent_run_id"), ids.get("mlflow_experiment_id")
    flow_run = ids.get("prefect_flow_run_id")
    lines = [_link("MLflow run of the flow", run,
                   ui_links.run_url(experiment, run) if run and experiment else None),
             _link("registered version", f"{model} v{version}", ui_links.model_url(model, version)),
             _link("Prefect flow run", flow_run, ui_links.flow_run_url(flow_run) if flow_run else None)]
    return [line for line in lines if line]


# --- how to load ------------------------------------------------------------------------------

def _pyfunc_lines(model: str, version: str) -> list[str]:
    """A table model's rows from the registry, as the served pyfunc answers them."""
    return ["```python", "import mlflow", "import pandas as pd", "",
            f"model = mlflow.pyfunc.load_model(\"models:/{model}/{version}\")",
            f"rows = model.predict(pd.DataFrame({{\"n\": [{_EXAMPLE_N}], \"seed\": [{_EXAMPLE_SEED}]}}))"
            "  # a DataFrame: the table's columns in their dtypes", "```"]


def _table_load_lines(model: str, version: str, uri: str | None, folder: str) -> list[str]:
    """How to get a table model's rows: a DataFrame of the table's columns, or a CSV."""
    sample = f"--n {_EXAMPLE_N} --seed {_EXAMPLE_SEED} --out rows.csv"
    if uri is None:
        return [f"Registered as `models:/{model}/{version}`; its rows as a DataFrame of the "
                "table's columns in their dtypes:", "", *_pyfunc_lines(model, version), "",
                f"or as a CSV file: `dmops sample --model {model}/{version} {sample}`. When this "
                "version is promoted, its release (`s3://<releases bucket>/" f"{model}/{version}/`) "
                "holds the model folder and this card."]
    return ["Every file is listed with its sha256 in `manifest.json`, written last; "
            "`read_release` verifies them all before anything is loaded.", "",
            "```bash", f"dmops sample --release {uri} {sample}", "```", "",
            "The same rows in Python, from the release (the model samples vectors; the encoder "
            "its model.json carries decodes them to the table's columns, and the id column comes "
            "first with fresh ids, as the served model answers):", "",
            "```python",
            "from diffusion.model import load_for_sampling",
            "from diffusion.samplers import generate",
            "from diffusion.tabular.vectors import generated_rows",
            "from tasks.adapters.release import read_release, s3_client_from_env", "",
            f"folder = read_release(s3_client_from_env(), {uri!r}, {folder!r})",
            "denoiser, spec = load_for_sampling(folder)",
            f"x = generate(denoiser, spec.shape, {_EXAMPLE_N}, seed={_EXAMPLE_SEED}, "
            "**spec.sampling.model_dump()).x",
            "rows = generated_rows(spec.data.table, x)  # a DataFrame: the table's columns in their dtypes",
            "```", "", f"or from the registry, as served (`models:/{model}/{version}`):", "",
            *_pyfunc_lines(model, version)]


def _load_lines(model: str, version: str, uri: str | None, folder: str) -> list[str]:
    if uri is None:
        return [f"Registered as `models:/{model}/{version}`: `dmops sample --model {model}/{version} "
                f"--n {_EXAMPLE_N} --seed {_EXAMPLE_SEED}`. When this version is promoted, its "
                "release (`s3://<releases bucket>/" f"{model}/{version}/`) holds the model folder "
                "and this card."]
    return ["Every file is listed with its sha256 in `manifest.json`, written last; "
            "`read_release` verifies them all before anything is loaded.", "",
            "```bash", f"dmops sample --release {uri} --n {_EXAMPLE_N} --seed {_EXAMPLE_SEED} "
            "--out samples.png", "```", "", "```python",
            "from diffusion.model import load_for_sampling",
            "from diffusion.samplers import generate",
            "from tasks.adapters.release import read_release, s3_client_from_env", "",
            f"folder = read_release(s3_client_from_env(), {uri!r}, {folder!r})",
            "denoiser, spec = load_for_sampling(folder)",
            f"x = generate(denoiser, spec.shape, {_EXAMPLE_N}, seed={_EXAMPLE_SEED}, "
            "**spec.sampling.model_dump()).x", "```"]


# diffusers' schedulers hand the UNet one of two timestep conventions; dmops' network wants
# TIMESTEP_SCALE * ln(sigma) / 4 (diffusion/objectives.py).  Each row: the classes, what their
# `t` is and where diffusers computes it, and what the card's code passes the UNet.
_TIMESTEP_ROWS = (
    ((EULER, DPM_SOLVER), "ln(sigma) / 4",
     "their `precondition_noise`: EDM's c_noise as the EDM paper writes it, without DDPM's 0..1000 "
     "timestep scale", "`t * 1000`"),
    ((CONSISTENCY,), "1000 · 0.25 · ln(sigma)",
     "its `sigma_to_t`: the consistency-models code's c_noise, on DDPM's 0..1000 timestep scale",
     "`t` as it is: no conversion is needed"),
)


def _timestep_lines(choice: DiffusersScheduler) -> list[str]:
    """The timestep conventions: the network's, each diffusers scheduler's (the shipped one in
    bold) and what the card's code does about it."""
    from diffusion.objectives import TIMESTEP_SCALE

    scale = f"{TIMESTEP_SCALE:g}"
    lines = [f"**Timestep convention.** The network is conditioned on {scale} · ln(sigma) / 4 "
             f"(EDM's ln(sigma) / 4 on DDPM's 0..{scale} timestep scale, which diffusers' "
             "sinusoidal timestep embedding is built for). diffusers' schedulers pass the UNet "
             "a timestep `t` in one of two conventions:", "",
             "| diffusers scheduler | its `t` | why | the UNet must get |", "|---|---|---|---|"]
    for classes, t, why, unet in _TIMESTEP_ROWS:
        names = ", ".join(f"**`{c}`** (shipped here)" if c == choice.class_name else f"`{c}`"
                          for c in classes)
        lines.append(f"| {names} | {t} | {why} | {unet} |")
    if choice.timestep_scale != 1:
        lines += ["", f"So with `{choice.class_name}` the code below multiplies its timesteps by "
                      f"{choice.timestep_scale:g} before the UNet; without that the samples are "
                      "wrong, with no error."]
    else:
        lines += ["", f"So with `{choice.class_name}` the code below passes its timesteps to the "
                      "UNet unchanged."]
    return lines


def _diffusers_lines(spec: ModelSpec, choice: DiffusersScheduler | None, folder: str,
                     released: bool) -> list[str]:
    if spec.data.kind == "table":
        return ["No diffusers scheduler is shipped: a table model's network is an MLP over the "
                "rows' encoded vectors, not diffusers' UNet2DModel, and a diffusers pipeline "
                "would give those vectors, not rows. Its rows come from the code above: "
                "`generated_rows(spec.data.table, x)` (`diffusion.tabular.vectors`) turns vectors "
                "into the table's columns."]
    if choice is None:
        why = ("its network is not diffusers' UNet2DModel" if spec.net.get("kind") != "unet" else
               f"diffusers has no scheduler for `{spec.sampling.sampler}` on the "
               f"`{spec.sampling.grid}` grid with {spec.precond.get('kind')} preconditioning")
        return [f"No diffusers scheduler is shipped: {why}."]
    where = "This release holds" if released else "A release of this version holds"
    lines = [f"{where} the UNet in diffusers' layout (`unet/`) and `{SCHEDULER_CONFIG}` for "
             f"`{choice.class_name}` ({choice.note}), set to this model's sigma range, "
             f"sigma_data, rho and grid at {_plural(choice.steps, 'step')}."]
    lines += ["", *_timestep_lines(choice)]
    same = (f"it draws the samples `dmops sample --seed {_EXAMPLE_SEED} --n {_EXAMPLE_N}` draws, up "
            "to float32 rounding" if choice.exact else "its samples differ from dmops'")
    lines += ["", f"From the folder `read_release` writes ({same}):", "", "```python",
              diffusers_snippet(choice, spec.shape, folder, _EXAMPLE_N, _EXAMPLE_SEED), "```"]
    return lines


def _served(spec: ModelSpec | None, metrics: dict, metadata: dict) -> str | None:
    """'consistency, 1 NFE': the setting the model is served at (its model.json's sampling, else
    the registry's sampler and nfe tags), or None when neither says."""
    nfe = metrics.get("nfe", metadata.get("nfe"))
    if spec is not None:
        from diffusion.samplers import nfe_for

        nfe = nfe if _is_number(nfe) else nfe_for(spec.sampling.sampler, spec.sampling.steps)
        return served_setting(spec.sampling.sampler, nfe)
    sampler = metadata.get("sampler")
    try:
        return served_setting(sampler, int(float(nfe))) if sampler and nfe is not None else None
    except ValueError:
        return None


def model_card(model: str, version: str, metrics: dict, metadata: dict | None = None, *,
               spec: ModelSpec | None = None, uri: str | None = None) -> str:
    """The model card as markdown (a release's README.md, a registered version's description).

    model, version: the registered model's name and version; metrics: the served model's
    evaluation numbers (its row: fid, fid_floor, fid_ratio, kid_mean, kid_std, samples_per_s, nfe,
    n_samples, ...; `teacher_best_fid` or `fid_vs_teacher_best` when known; for a table model
    table_<metric> and table_floor_<metric>: the scores of the rows of its served setting and of
    the floor, tasks/steps/table_quality.py), shown with their names spelled out; metadata: the run's lineage tags (dataset_md5, git_commit, profile, ...;
    mlflow_parent_run_id with mlflow_experiment_id, and prefect_flow_run_id become links into the
    UIs the environment points at, tasks/adapters/ui_links.py); spec: the model's model.json
    (without it the card says only what metrics and metadata tell); uri: the release's
    s3://bucket/model/version/, or None for a version not (yet) released.  Raises nothing for
    missing fields: what is not known is not claimed."""
    metadata = {str(k): v for k, v in (metadata or {}).items()}
    metrics = dict(metrics or {})
    table = (spec.data.kind == "table" if spec is not None else
             metadata.get("data_kind") == "table" or any(k.startswith(_ROW_PREFIX) for k in metrics))
    setting = _served(spec, metrics, metadata)
    ids = {k: metadata.pop(k) for k in _LINK_KEYS if k in metadata}
    metadata.pop("version", None)   # the title says it
    if metrics:
        metadata.pop("metrics", None)   # the registry's JSON of a few of the same numbers
    if spec is not None:
        for key in _STATED_BY_SPEC:
            metadata.pop(key, None)
    folder = f"{model}-{version}"
    lines = [f"# {model}, version {version}", ""]
    if spec is not None:
        lines += [_what(spec, metadata.get("dataset")), "", "## Sampling", "",
                  *_sampling_rows(spec, metrics)]
    else:
        lines.append("How it samples is stored in its `model.json` (`sampling`).")
    noun = spec.data.noun if spec is not None else ("rows" if table else "images")
    lines += ["", "## Evaluation", "", *_evaluation_lines(metrics, noun)]
    if table:
        lines += ["", "## Rows", "", *_rows_lines(metrics, setting)]
    lines += ["", "## Lineage", "", *_lineage_lines(spec, metadata)]
    links = _links(model, version, ids)
    if links:
        lines += ["", "## Links", "", *links]
    load = _table_load_lines if table else _load_lines
    lines += ["", "## How to load", "", *load(model, version, uri, folder)]
    if spec is not None:
        lines += ["", DIFFUSERS_HEADING, "",
                  *_diffusers_lines(spec, diffusers_scheduler(spec), folder, uri is not None)]
    return "\n".join(lines) + "\n"
