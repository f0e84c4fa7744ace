"""A table as the dataset the model steps train, sample and evaluate on: its rows encoded as
float32 vectors (N, D) by a `TableEncoder` fit on the train split, with the encoder's JSON
state carried along so that whatever is made from these vectors can be decoded to rows.

    tds = load_table_processed("data/processed/churn")      # diffusion/tabular/tables.py
    ds = table_vectors(tds, categorical="onehot")            # Dataset, kind "table", x (N, D)
    rows = decode(ds.table, samples)                         # DataFrame in the schema's dtypes
    rows = generated_rows(ds.table, samples)                 # ... and the id column, fresh ids

Everything downstream of the data -- the MLP denoiser, preconditioning, samplers,
distillation, the identity features of the quality-versus-NFE sweep -- sees a vector dataset;
only the kind ("table") and `Dataset.table` say where the vectors came from.  The encoder is a
deterministic function of the train rows and the setting (all rows, no subsampling), so every
step that encodes the same processed table gets the same vectors.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..data import Dataset, validate
from .encoding import TableEncoder
from .row_ids import id_recipe, with_fresh_ids
from .tables import TableDataset


def table_vectors(tds: TableDataset, categorical: str = "onehot") -> Dataset:
    """The dataset of `tds`'s rows as vectors: x (N, D) float32 from a TableEncoder
    (`categorical`: "onehot" | "analog_bits") fit on the train rows; split and ids as in
    `tds`; no labels; `table` = the encoder's state (TableEncoder.to_dict, JSON) plus "id":
    how generated rows get their id column (row_ids.id_recipe; None without one).  DataError
    (diffusion.data) when the rows cannot be encoded."""
    columns = tds.schema.names
    encoder = TableEncoder(tds.schema, categorical).fit(tds.subset("train").table[columns])
    x = torch.from_numpy(np.ascontiguousarray(encoder.transform(tds.table[columns]), dtype=np.float32))
    # the id column, never modelled, comes back in generated rows as fresh ids (row_ids.py)
    state = {**encoder.to_dict(), "id": id_recipe(tds.table, tds.schema.id)}
    return validate(Dataset(tds.name, x, None, np.asarray(tds.split), list(tds.ids), "table",
                            None, tds.ingestion, table=state))


def decode(state: dict, x) -> pd.DataFrame:
    """Rows from vectors: `x` (N, D) float tensor or array in the encoder's layout ->
    DataFrame with the schema's columns in order and dtypes (TableEncoder.inverse_transform).
    `state`: an encoder's to_dict (Dataset.table, a model's data.table)."""
    return _decoded(TableEncoder.from_dict(state), x)


def _decoded(encoder: TableEncoder, x) -> pd.DataFrame:
    values = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return encoder.inverse_transform(values.astype(np.float32))


def generated_rows(state: dict, x) -> pd.DataFrame:
    """What a user receives for generated vectors `x` (N, D): `decode`'s rows with the table's
    id column first, holding fresh ids that no real row has (row_ids.py; none without an id
    column) -- `dmops sample`'s rows and the served model's `predict` answer.  `decode` alone
    gives the modelled columns (what the evaluation scores, real rows included)."""
    return with_fresh_ids(decode(state, x), state.get("id"))


def received_vectors(state: dict, x) -> torch.Tensor:
    """The vectors of the rows that `x` decodes to: encode(decode(x)), float32 (N, D) like `x`.

    What a user receives is the decoded rows, so that is what a table model's FID / KID /
    PRDC are computed on: each category snapped to its code (a generated bit of 0.3 that
    decodes to the same label as 1.0 scores the same), each number clipped and rounded as
    decoding does.  The real rows' vectors are already of this form.  `state`: an encoder's
    to_dict (Dataset.table, a model's data.table); DataError as `decode`."""
    encoder = TableEncoder.from_dict(state)   # one encoder both ways
    return torch.from_numpy(np.ascontiguousarray(encoder.transform(_decoded(encoder, x)),
                                                 dtype=np.float32))

