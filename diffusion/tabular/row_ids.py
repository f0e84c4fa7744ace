"""Fresh values for a table's id column in generated rows.

The id column (schema `id`, data.id_column) is kept with the data and never modelled, so a
generated row has no id of its own.  What a user receives -- `dmops sample` rows, the served
model's `predict` -- still has the table's columns: the id column comes back first (where
ids usually are; the processed table keeps the modelled columns' order, not the id's place)
in its dtype, holding fresh ids that no real row has:

- integer ids: the largest real id + 1, + 2, ... (so never a real one);
- text ids: "synthetic-0", "synthetic-1", ... with a prefix that no real id starts with
  ("synthetic-", else "xsynthetic-", "xxsynthetic-", ...).

`id_recipe` records what that takes when the model's dataset is built (diffusion/tabular/
vectors.py: the encoder state's "id" entry); `with_fresh_ids` applies it.  An id column of
another dtype (a date, a float) gets no generated values: `with_fresh_ids` leaves it out, and
`id_note` says so.  The ids number the rows of one answer 0..N-1: two separate answers share
them, and each answer's are unique.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PREFIX = "synthetic-"


def id_recipe(table: pd.DataFrame, id_column: str | None) -> dict | None:
    """What `with_fresh_ids` needs for `table`'s (every split's rows, the id column included)
    id column: {"name", "dtype", "position" (0: first), "start" (integer ids) | "prefix" (text
    ids)}, or {"name", "dtype", "position"} alone for another dtype; None without an id column."""
    if id_column is None:
        return None
    values = table[id_column]
    recipe = {"name": id_column, "dtype": str(values.dtype), "position": 0}
    present = values.dropna()
    if values.dtype.kind in "iu" or pd.api.types.is_integer_dtype(values.dtype):
        recipe["start"] = int(present.max()) + 1 if len(present) else 0
    elif pd.api.types.is_string_dtype(values.dtype) or values.dtype == object:
        texts = present.astype(str)
        prefix = PREFIX
        while texts.str.startswith(prefix).any():
            prefix = "x" + prefix
        recipe["prefix"] = prefix
    return recipe


def with_fresh_ids(rows: pd.DataFrame, recipe: dict | None) -> pd.DataFrame:
    """`rows` (the decoded, modelled columns) with the id column inserted at the recipe's place,
    holding fresh ids in its dtype (module docstring); `rows` unchanged without a recipe or
    for an id dtype that gets none."""
    if not recipe or ("start" not in recipe and "prefix" not in recipe):
        return rows
    n = len(rows)
    if "start" in recipe:
        ids = pd.Series(np.arange(recipe["start"], recipe["start"] + n), index=rows.index)
    else:
        ids = pd.Series([f"{recipe['prefix']}{i}" for i in range(n)], index=rows.index,
                        dtype=object)
    out = rows.copy()
    out.insert(min(recipe["position"], len(out.columns)), recipe["name"],
               ids.astype(recipe["dtype"]))
    return out


def id_note(recipe: dict | None) -> str | None:
    """One clause for a line that reports rows: what the id column holds ('customer_id: fresh
    ids from 5001', 'customer_id: fresh ids synthetic-0 ...', 'customer_id (a datetime64[s]
    column) left out: no fresh values of its dtype'), or None without an id column."""
    if not recipe:
        return None
    if "start" in recipe:
        return f"{recipe['name']}: fresh ids from {recipe['start']}, no real row's"
    if "prefix" in recipe:
        return f"{recipe['name']}: fresh ids {recipe['prefix']}0, ..., no real row's"
    return (f"{recipe['name']} (a {recipe['dtype']} id column) left out: "
            "no fresh values of its dtype are made")
