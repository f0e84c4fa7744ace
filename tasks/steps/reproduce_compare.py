"""The verdict of `dmops reproduce`: the registered and the reproduced served model, side by side.

The served model is the registered version's row of the evaluation: the same `served_as`,
sampler and NFE.  A version is reproduced when the weights' sha256 are equal (bit-identical
weights: CPU training with the same seeds, data and code gives them) and every metric of that
row is equal within float tolerance, except the wall-clock ones (`seconds`, `samples_per_s`, formerly `images_per_s`),
which measure the machine, not the model; they are printed but not compared.

Tolerance: the metrics are computed in float64 from float32 features of the same samples; a
different thread count may reorder float32 sums, which moves a value by a few float32 ulps
relative (eps = 1.19e-7), so values within RELATIVE_TOLERANCE = 1e-6 (about 8 eps) are equal.
Values known only from the `metrics` tag are rounded to 5 decimals there, so they also get an
absolute tolerance of half that last place (TAG_ROUNDING = 5e-6).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from diffusion.evaluation_settings import LEGACY_RATE, RATE, sampling_rate
from tasks.steps.headline import derived_metrics

RELATIVE_TOLERANCE = 1e-6
TAG_ROUNDING = 5e-6
WALL_CLOCK = ("seconds", RATE, LEGACY_RATE)
# identity columns of a row: equal by construction of the lookup, not metrics
ROW_KEYS = ("model", "sampler", "steps", "nfe", "n_samples")
# lineage of the served weights: shown beside the verdict, they say why weights differ
LINEAGE = {"weights_code_sha256": "code_sha256", "weights_settings_sha256": "settings_sha256",
           "training_data_sha256": "data_sha256", "teacher_sha256": "teacher_sha256"}


@dataclass
class Line:
    """One compared quantity: registered and reproduced values; `equal` None = not compared."""
    name: str
    registered: object
    reproduced: object
    equal: bool | None
    note: str = ""


@dataclass
class Verdict:
    model: str
    version: str
    served_as: str
    sampler: str
    nfe: int
    weights: Line
    metrics: list[Line]
    lineage: list[Line]
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def reproduced(self) -> bool:
        return not self.differences

    def as_json(self) -> dict:
        return {**asdict(self), "reproduced": self.reproduced}


def served_row(table: list[dict], served_as: str, sampler: str, nfe: int) -> dict | None:
    for row in table:
        if row["model"] == served_as and row["sampler"] == sampler and int(row["nfe"]) == nfe:
            return row
    return None


def _close(a: float, b: float, abs_tol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE, abs_tol=abs_tol)


def compare(model: str, version: str, tags: dict[str, str], run_metrics: dict[str, float],
            tag_metrics: dict[str, float], result: dict) -> Verdict:
    """The verdict for version `version` of `model` (its `tags`, the metrics its registering run
    logged, the rounded `metrics` tag) against a reproduction `result` (tasks/steps/reproduce_steps)."""
    served_as, sampler, nfe = tags["served_as"], tags["sampler"], int(tags["nfe"])
    differences: list[str] = []
    notes: list[str] = []
    row = served_row(result["table"], served_as, sampler, nfe)
    if row is not None:   # what registration logs beside the row, derived the same way
        row = {**row, **derived_metrics(result["table"], row)}
    weights = Line("weights sha256", tags["weights_sha256"], result["weights"].get(served_as),
                   tags["weights_sha256"] == result["weights"].get(served_as))
    if row is None:
        differences.append(f"the reproduced evaluation has no row {served_as} / {sampler} / "
                           f"{nfe} NFE")
    if not weights.equal:
        differences.append(f"weights sha256 of {served_as}: {weights.registered} (registered) vs "
                           f"{weights.reproduced} (reproduced)")

    metrics: list[Line] = []
    registered = {**tag_metrics, **run_metrics}
    for key in sorted(registered):
        if key in ROW_KEYS:
            continue
        mine = None if row is None else row.get(key)
        value = registered[key]
        if key in WALL_CLOCK:
            if key in (RATE, LEGACY_RATE) and row is not None:   # a version registered under
                mine = sampling_rate(row)                         # either name of the rate
            metrics.append(Line(key, value, mine, None, "wall-clock speed: not compared"))
            continue
        if mine is None:
            metrics.append(Line(key, value, None, False))
            differences.append(f"{key}: {value} (registered), not in the reproduced row")
            continue
        equal = _close(float(value), float(mine), 0.0 if key in run_metrics else TAG_ROUNDING)
        metrics.append(Line(key, value, float(mine), equal))
        if not equal:
            differences.append(f"{key}: {value!r} (registered) vs {float(mine)!r} (reproduced)")

    provenance = result["provenance"].get(served_as) or {}
    lineage = []
    for tag, field_name in LINEAGE.items():
        if tag in tags:
            ok = tags[tag] == provenance.get(field_name)
            lineage.append(Line(tag, tags[tag], provenance.get(field_name), ok))
    chosen = result["candidate"]
    if (chosen["name"], chosen["sampler"], chosen["nfe"]) != (served_as, sampler, nfe):
        notes.append(f"the reproduction would serve {chosen['name']} ({chosen['sampler']}, "
                     f"{chosen['nfe']} NFE) instead")
    return Verdict(model, version, served_as, sampler, nfe, weights, metrics, lineage,
                   differences, notes)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.10g}"
    text = str(value)
    return text[:16] + "..." if len(text) == 64 else text


def render(verdict: Verdict) -> list[str]:
    """The side-by-side table and the verdict, as lines."""
    rows = [verdict.weights, *verdict.metrics, *verdict.lineage]
    width = max(len(r.name) for r in rows) + 2
    mark = {True: "equal", False: "DIFFERENT", None: ""}
    lines = [f"{verdict.model}/{verdict.version}: {verdict.served_as} "
             f"({verdict.sampler}, {verdict.nfe} NFE)",
             f"{'':{width}s}{'registered':>22s}{'reproduced':>22s}"]
    for r in rows:
        lines.append(f"{r.name:{width}s}{_cell(r.registered):>22s}{_cell(r.reproduced):>22s}  "
                     f"{mark[r.equal]}{(' (' + r.note + ')') if r.note else ''}")
    lines += [f"note: {n}" for n in verdict.notes]
    if verdict.reproduced:
        lines.append(f"REPRODUCED: identical weights, metrics equal within relative "
                     f"{RELATIVE_TOLERANCE:g}")
    else:
        lines.append("NOT REPRODUCED:")
        lines += [f"  {d}" for d in verdict.differences]
    return lines
