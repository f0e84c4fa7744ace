"""How a table model's rows scores are put in words, wherever they are shown: the progress line
of the evaluation (tasks/steps/table_quality.py), the model card (tasks/adapters/model_card.py)
and the flow summary (flows/summary.py) say the same thing the same way.

Kept apart from those modules so that neither the card's code (which does not change what the
evaluation computes) enters the evaluation's code hash, nor the steps' code the card's.
"""

from __future__ import annotations

import numbers

# the rows scores a reader looks at first, in the order a data scientist reads them, with their
# short names (a progress line, the summary; the card spells each out)
SHOWN = (("column_shapes", "column shapes"), ("column_pair_trends", "pair trends"),
         ("utility_ratio", "utility"), ("detection_auc", "detection AUC"), ("dcr_ratio", "DCR ratio"))


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
    """'column shapes 0.973 (floor 0.960), pair trends ...': the served rows' scores beside the
    floor's, from a registered version's metrics (table_<metric>, table_floor_<metric>), in
    one line for the end of `dmops run`; None when no rows were scored (not a table)."""
    served, floor = served_and_floor(metrics)
    if not served:
        return None
    parts = [f"{label} {float(served[key]):.3f}"
             + (f" (floor {float(floor[key]):.3f})" if key in floor else "")
             for key, label in SHOWN if key in served]
    note = utility_note(served)
    return ", ".join(parts + ([note] if note else []))


def served_setting(sampler: str, nfe: int) -> str:
    """'consistency, 1 NFE': the setting whose rows were scored, as every reader sees it."""
    return f"{sampler}, {int(nfe)} NFE"
