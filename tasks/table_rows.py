"""How a table model's rows scores are put in words, wherever they are shown: the progress line
of the evaluation (tasks/steps/table_quality.py), the model card (tasks/adapters/model_card.py)
and the flow summary (flows/summary.py) say the same thing the same way.

Kept apart from those modules so that neither the card's code (which does not change what the
evaluation computes) enters the evaluation's code hash, nor the steps' code the card's.
"""

from __future__ import annotations

import numbers

# the rows scores a reader looks at first, in the order a data scientist reads them, with their
# short names (a progress line, the summary; the card spells each out).  `utility_ratio` is the
# AUC ratio for a classification target and the R^2 ratio for a regression target (`label`
# says which); `utility_f1_ratio` (classification) sits beside it: the AUC ratio ranks rows, the
# F1 ratio says how well the rarer class is found, and the two can disagree (0.93 against 0.54)
SHOWN = (("column_shapes", "column shapes"), ("column_pair_trends", "pair trends"),
         ("utility_ratio", "utility"), ("utility_f1_ratio", "F1 ratio"),
         ("detection_auc", "detection AUC"), ("dcr_ratio", "DCR ratio"))
# what the parent run of a flow carries of a table model's served rows (and of the floor), as
# table_<metric> / table_floor_<metric>: the names of the registered version's metrics and its card
HEADLINE = tuple(key for key, _ in SHOWN) + ("exact_copies",)


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def f1_ratio(metrics: dict) -> float | None:
    """F1 of the synthetic-trained model over the real-trained one's (`utility_f1` /
    `utility_f1_real`), or None without both or with a real-trained F1 of 0."""
    if _number(metrics.get("utility_f1_ratio")):
        return float(metrics["utility_f1_ratio"])
    f1, real = metrics.get("utility_f1"), metrics.get("utility_f1_real")
    if not (_number(f1) and _number(real)) or real <= 0:
        return None
    return float(f1) / float(real)


def _with_f1_ratio(metrics: dict) -> dict:
    """A copy of `metrics` holding `utility_f1_ratio` whenever `f1_ratio` can give it."""
    out = dict(metrics)
    ratio = f1_ratio(out)
    if ratio is not None:
        out["utility_f1_ratio"] = ratio
    return out


def with_derived(metrics: dict, n_columns: int) -> dict:
    """One rows score dict (diffusion/tabular/metrics.py) with what it does not hold itself:
    `column_pairs`, the number of column pairs of `n_columns` described columns (the pair-trend
    score is the mean over `column_pair_trends_pairs` of them, the related ones), and
    `utility_f1_ratio` (`f1_ratio`) for a classification target."""
    return _with_f1_ratio({**metrics, "column_pairs": float(n_columns * (n_columns - 1) // 2)})


def utility_measure(metrics: dict) -> str | None:
    """'AUC' (classification) or 'R^2' (regression): what `utility_ratio` is a ratio of, by
    the scores beside it; None when they do not say."""
    if any(k in metrics for k in ("utility_auc", "utility_auc_real")):
        return "AUC"
    if any(k in metrics for k in ("utility_r2", "utility_r2_real")):
        return "R^2"
    return None


def label(key: str, metrics: dict) -> str:
    """The short name of rows score `key` (one of SHOWN) for `metrics`: 'utility (AUC ratio)'
    or 'utility (R^2 ratio)' for utility_ratio, SHOWN's name otherwise."""
    measure = utility_measure(metrics) if key == "utility_ratio" else None
    return f"utility ({measure} ratio)" if measure else dict(SHOWN)[key]


def pairs_note(metrics: dict) -> str | None:
    """'8 of 190 pairs': how many column pairs the pair-trend score is the mean of (the related
    ones, SDMetrics' rule) out of all (`column_pairs`, when recorded); a score of no pair says
    it is the column shapes' score; None when the count was not recorded."""
    counted = metrics.get("column_pair_trends_pairs")
    if not _number(counted):
        return None
    counted = int(counted)
    total = metrics.get("column_pairs")
    of = f" of {int(total)}" if _number(total) else ""
    if counted == 0:
        if _number(total) and int(total) == 0:
            return "no column pairs: the column shapes' score"
        return f"0{of} pairs scored: the column shapes' score"
    return f"{counted}{of} pair{'' if counted == 1 and not of else 's'}"


def shown(metrics: dict) -> list[tuple[str, str, float, str | None]]:
    """The rows scores of one score dict (<metric>: value) a reader is shown, in SHOWN's order:
    (key, label, value, note) with the pair count as the pair trends' note (`pairs_note`);
    the F1 ratio derived when only its two F1 scores were recorded."""
    metrics = _with_f1_ratio(metrics)
    return [(key, label(key, metrics), float(metrics[key]),
             pairs_note(metrics) if key == "column_pair_trends" else None)
            for key, _ in SHOWN if _number(metrics.get(key))]


def scores_text(metrics: dict) -> list[str]:
    """'column shapes 0.973', 'pair trends 0.979 (8 of 190 pairs)', 'utility (AUC ratio)
    0.933', 'F1 ratio 0.539', ...: the progress line's items."""
    return [f"{name} {value:.3f}" + (f" ({note})" if note else "")
            for _, name, value, note in shown(metrics)]


def headline(served: dict, floor: dict) -> dict[str, float]:
    """The parent run's metrics of a table model's served rows: table_<metric> for each of
    HEADLINE in `served` (one rows score dict) and table_floor_<metric> in `floor`; names as
    the registered version's metrics and its card."""
    out = {}
    for prefix, scores in (("table_", served), ("table_floor_", floor)):
        scores = _with_f1_ratio(scores)
        out.update({f"{prefix}{k}": float(scores[k]) for k in HEADLINE if _number(scores.get(k))})
    return out


def utility_note(metrics: dict) -> str | None:
    """Why `utility_ratio` is missing from `metrics` (one rows score dict: utility_*, ...), in
    one phrase, or None when it is there or there is no utility to speak of (no target).

    diffusion/tabular/metrics_utility.py omits the ratio for a regression target whose
    real-trained R^2 (`utility_r2_real`) is <= 0: the synthetic-trained model has nothing to
    be compared with, because the real one predicts the target no better than its mean."""
    if "utility_ratio" in metrics:
        return None
    r2 = metrics.get("utility_r2_real")
    if not isinstance(r2, numbers.Real) or isinstance(r2, bool):
        return None
    return (f"utility n/a: the real-trained model's R^2 is {float(r2):.2f}, so the target is "
            "not predictable from the other columns")


def served_and_floor(metrics: dict) -> tuple[dict, dict]:
    """A registered version's metrics split into its served rows' scores (table_<metric>) and
    the floor's (table_floor_<metric>), each keyed by <metric>."""
    served = {k[len("table_"):]: v for k, v in metrics.items()
              if k.startswith("table_") and not k.startswith("table_floor_")}
    floor = {k[len("table_floor_"):]: v for k, v in metrics.items() if k.startswith("table_floor_")}
    return served, floor


def rows_line(metrics: dict) -> str | None:
    """'column shapes 0.973 (floor 0.960), pair trends 0.972 (8 of 190 pairs; floor 0.973),
    utility (AUC ratio) 0.933 (floor 0.946), F1 ratio 0.539 (floor 0.602), ...': the served
    rows' scores beside the floor's, from a registered version's metrics (table_<metric>,
    table_floor_<metric>), in one line for the end of `dmops run`; None when no rows were
    scored (not a table)."""
    served, floor = served_and_floor(metrics)
    if not served:
        return None
    floors = {key: value for key, _, value, _ in shown(floor)}
    parts = []
    for key, name, value, note in shown(served):
        notes = [note] if note else []
        if key in floors:
            notes.append(f"floor {floors[key]:.3f}")
        parts.append(f"{name} {value:.3f}" + (f" ({'; '.join(notes)})" if notes else ""))
    note = utility_note(served)
    return ", ".join(parts + ([note] if note else []))


def served_setting(sampler: str, nfe: int) -> str:
    """'consistency, 1 NFE': the setting whose rows were scored, as every reader sees it."""
    return f"{sampler}, {int(nfe)} NFE"
