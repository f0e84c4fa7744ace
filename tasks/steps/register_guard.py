"""The register step's guard on a table model's served rows: rows that copy the training data
are never registered, so they can never be promoted, released or served.

Selection and promotion compare models by the FID of their encoded vectors, which says nothing
of privacy: a model that returns its training rows scores a fine FID (a trial's run whose rows
were 77 % exact copies of training rows was registered and promoted on its FID alone).  So
before anything is registered, the served rows' privacy scores (tasks/steps/table_quality.py,
diffusion/tabular/metrics_privacy.py) are held against `pipeline.rows_guard`:

- exact copies: the share of served rows equal to a training row may exceed that of held-out
  real rows (rows the model never saw: their share is what a table's own duplicates give) by at
  most `max_exact_copies_excess` (default 0.05, five percentage points);
- DCR ratio: the median distance of the served rows to their closest training row, over the
  same for held-out real rows, must be at least `min_dcr_ratio` (default 0.8).  A generator
  that draws new rows from the data's distribution scores about 1 (the benchmarks' models 0.97
  to 1.9, the floors 0.95 to 1.02); a model that returns training rows scores near 0.  A table
  whose held-out rows are themselves at distance 0 (every row repeats) has no ratio: only the
  copies' rule applies.

A refusal is what a demanding user expects of a nightly run: the run FAILS (exit code 2, like
the data gate) with one line naming the served setting, each rule broken with its numbers and
setting, and the way out; nothing is registered, so the champion and its release are untouched.
`max_exact_copies_excess: 1` and `min_dcr_ratio: 0` switch the guard off.
"""

from __future__ import annotations

import math
import numbers
from typing import Annotated

from pydantic import Field

from diffusion.data_errors import DataError
from diffusion.settings import Settings


class RowsGuardSettings(Settings):
    """`pipeline.rows_guard`: the most a table model's served rows may copy the training rows."""

    # served rows' exact-copy share minus held-out real rows' (a fraction of rows, 0 to 1)
    max_exact_copies_excess: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    # served rows' median distance to the closest training row / held-out real rows' (>= 0)
    min_dcr_ratio: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.8


class RowsRefused(DataError):
    """A table model's served rows copy the training rows beyond `pipeline.rows_guard`: it is
    not registered.  A DataError: the pipeline stops with exit code 2 and this one line, and no
    retry is attempted (a retry would score the same rows)."""


def _number(value) -> float | None:
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def rows_refusal(served: dict, floor: dict, guard: RowsGuardSettings) -> list[str]:
    """The rules of `guard` that the served rows break, each as a phrase with its numbers and
    setting; [] when they keep them all (or their scores do not say: a rule whose score is
    missing is not applied).

    served: the served rows' scores (exact_copies, exact_copies_holdout: held-out real rows'
    share, dcr_ratio, ...); floor: the floor's scores (its exact_copies is held-out real rows'
    share too: used when `served` lacks exact_copies_holdout)."""
    broken = []
    copies = _number(served.get("exact_copies"))
    held_out = _number(served.get("exact_copies_holdout", floor.get("exact_copies")))
    if copies is not None and held_out is not None \
            and copies - held_out > guard.max_exact_copies_excess:
        broken.append(f"{copies:.1%} of its rows are exact copies of training rows against "
                      f"{held_out:.1%} of held-out real rows, more than "
                      f"pipeline.rows_guard.max_exact_copies_excess "
                      f"{guard.max_exact_copies_excess:g} above them")
    ratio = _number(served.get("dcr_ratio"))
    if ratio is not None and ratio < guard.min_dcr_ratio:
        broken.append(f"its DCR ratio (median distance to the closest training row, its rows over "
                      f"held-out real rows) is {ratio:.3f}, below pipeline.rows_guard.min_dcr_ratio "
                      f"{guard.min_dcr_ratio:g}")
    return broken


def check_served_rows(rows: dict, setting: str, guard: RowsGuardSettings) -> None:
    """Refuse the served rows `rows` (table_quality's shape narrowed to the served setting:
    {"floor": scores, "models": {name: scores}, ...}) of `setting` ('consistency (consistency,
    1 NFE)') when they break `guard` (`rows_refusal`).  Raises RowsRefused with one line."""
    served, = rows["models"].values()
    broken = rows_refusal(served, rows.get("floor", {}), guard)
    if broken:
        raise RowsRefused(
            f"the served rows of {setting} copy the training rows: {'; and '.join(broken)}: "
            "not registered, the champion is unchanged (a model that returns its training rows "
            "leaks them: train it less, check that no column identifies a row, or set "
            "pipeline.rows_guard)")
