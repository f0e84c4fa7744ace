"""The model as MLflow serves it: a pyfunc that draws samples from a dmops model folder.

The folder (model.json + safetensors weights) travels as the pyfunc artifact "model" and is
read back with `diffusion.model.load_model`.  Nothing is pickled: the model is logged from code
(tasks/adapters/pyfunc_entry.py builds a DiffusionSampler at load time), and this module with
the diffusion/ modules it imports travels in the model as code (tasks.adapters.pyfunc_package),
so the loading environment needs only the pinned third-party packages, not dmops.

Before loading, every file of the folder is checked against the sha256 sums registration put in
the MLmodel's `model_config` (`files_sha256`, kept apart from the files it describes) and
load_model checks the weights against model.json's own record: a corrupted stored copy fails
`mlflow.pyfunc.load_model` with a ModelError naming the file, instead of serving wrong samples.

A request is one row (or several) of `n`, `seed` and optional `sampler` / `steps`; the answer is
the samples as float32 (N, C, H, W) for images or (N, D) for vectors, or for a table model a
DataFrame of N rows with the schema's columns and dtypes (decoded by the encoder model.json
carries: diffusion/tabular/encoding.py) and the id column, if the table has one, holding fresh
ids that no real row has (diffusion/tabular/row_ids.py), drawn with
`diffusion.samplers.generate`: the same seed gives the same samples as `dmops sample`.  A row
without sampler or steps (or with null there) gets the model's own.  A request the model cannot
answer raises SampleRequestError, an MlflowException with INVALID_PARAMETER_VALUE: the scoring
server answers HTTP 400 with its message, which names the field.  The signature declares the
columns `Any` so that the values reach `parse_requests` as sent (see `signature`); MLflow's
CSV parser needs typed columns, so served requests are JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema, TensorSpec
from mlflow.types.schema import AnyType

ARTIFACT = "model"
# Guards for served endpoints: one request must not be able to exhaust the server's memory
# (samples) or hold a worker for hours (steps; DDPM's own schedule has 1000).
MAX_SAMPLES_PER_REQUEST = 4096
MAX_STEPS = 1000
# torch.Generator.manual_seed takes any unsigned 64-bit seed, as `dmops sample --seed` does
MAX_SEED = 2**64 - 1
FIELDS = ("n", "seed", "sampler", "steps")


class SampleRequestError(MlflowException, ValueError):
    """A prediction request the model cannot answer; the message says which field is wrong.

    An MlflowException with INVALID_PARAMETER_VALUE, so MLflow's scoring server answers HTTP
    400 with this message in the body; still a ValueError for callers that catch bad input."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


@dataclass(frozen=True)
class SampleRequest:
    n: int
    seed: int
    sampler: str | None = None
    steps: int | None = None


def _missing(value) -> bool:
    """None, NaN or pd.NA: how a row without the field arrives once rows share one frame."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _as_int(value, field: str, minimum: int, maximum: int | None = None, hint: str = "") -> int:
    """An integer field: a JSON integer, or a float that is one (pandas stores an integer
    column with a missing row as floats).  2.5, True, "3" and inf are errors, never rounded."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        number = int(value)
    elif (isinstance(value, (float, np.floating)) and math.isfinite(value)
          and float(value).is_integer()):
        number = int(value)
    else:
        raise SampleRequestError(f"{field} must be an integer, got {value!r}{hint}")
    if number < minimum or (maximum is not None and number > maximum):
        bound = f">= {minimum}" + ("" if maximum is None else f" and <= {maximum}")
        raise SampleRequestError(f"{field} must be an integer {bound}, got {number}{hint}")
    return number


def _sampler(value, field: str) -> str | None:
    from diffusion.samplers import SAMPLERS

    if _missing(value) or value == "":
        return None
    if not isinstance(value, str):
        raise SampleRequestError(f"{field} must be a sampler name, got {value!r}; allowed: "
                                 f"{sorted(SAMPLERS)}, or leave it out for the model's own")
    if value not in SAMPLERS:
        raise SampleRequestError(f"unknown sampler {value!r}; allowed: {sorted(SAMPLERS)}, or "
                                 "leave it out for the model's own")
    return value


def _frame(model_input) -> pd.DataFrame:
    if isinstance(model_input, dict):
        values = model_input.values()
        model_input = (pd.DataFrame(model_input) if all(isinstance(v, (list, tuple, np.ndarray))
                                                        for v in values)
                       else pd.DataFrame([model_input]))
    if not isinstance(model_input, pd.DataFrame):
        raise SampleRequestError("the input must be a DataFrame or dict with columns n, seed and "
                                 f"optional sampler, steps; got {type(model_input).__name__}")
    unknown = sorted(set(model_input.columns) - set(FIELDS))
    if unknown or not {"n", "seed"} <= set(model_input.columns):
        raise SampleRequestError(f"input columns must be n, seed and optional sampler, steps; got "
                                 f"{list(model_input.columns)}")
    if model_input.empty:
        raise SampleRequestError("the input has no rows: give one row per request")
    return model_input


def parse_requests(model_input) -> list[SampleRequest]:
    """Rows of a DataFrame (or a dict of scalars or of lists) -> validated requests.

    Each row: n (samples, >= 1), seed (0 .. 2**64 - 1) and optional sampler (a name of
    diffusion.samplers.SAMPLERS) and steps (1 .. MAX_STEPS).  A row without sampler or steps,
    or with null there, gets the model's own, exactly as when the column is absent.  At most
    MAX_SAMPLES_PER_REQUEST samples in all.  Raises SampleRequestError naming the field (and
    the row, when there are several)."""
    frame = _frame(model_input)
    rows = frame.to_dict("records")
    requests = []
    for i, row in enumerate(rows, start=1):
        where = f" of row {i}" if len(rows) > 1 else ""
        for field in ("n", "seed"):
            if _missing(row[field]):
                raise SampleRequestError(f"{field}{where} is missing: every row needs n and seed")
        steps = row.get("steps")
        requests.append(SampleRequest(
            n=_as_int(row["n"], f"n{where}", 1),
            seed=_as_int(row["seed"], f"seed{where}", 0, MAX_SEED),
            sampler=_sampler(row.get("sampler"), f"sampler{where}"),
            steps=None if _missing(steps) else _as_int(steps, f"steps{where}", 1, MAX_STEPS,
                                                         "; leave it out for the model's own")))
    total = sum(r.n for r in requests)
    if total > MAX_SAMPLES_PER_REQUEST:
        raise SampleRequestError(f"{total} samples requested; at most {MAX_SAMPLES_PER_REQUEST} "
                                 "per request: split it into several")
    return requests


class DiffusionSampler(mlflow.pyfunc.PythonModel):
    """Samples from a dmops model folder; deterministic for a given seed."""

    def load_context(self, context):
        from diffusion.checksums import find_mismatch
        from diffusion.model import ModelError, load_model

        config = context.model_config or {}
        folder = context.artifacts[ARTIFACT]
        files = config.get("files_sha256")   # tasks.adapters.registry.FILES_TAG; absent before
        if files is not None:
            mismatch = find_mismatch(folder, files)
            if mismatch is not None:
                raise ModelError(f"pyfunc artifact {ARTIFACT!r} ({folder}): "
                                 f"{mismatch.describe('at registration', 'the stored copy')}; "
                                 "re-register the model or restore the file")
        device = config.get("device", "cpu")
        self._denoiser, self._spec = load_model(folder, device)
        self._device = device

    # The pd.DataFrame hint tells MLflow to take the explicit signature as the schema (dicts
    # arrive converted to a one-row frame) instead of inferring one from type hints.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray | pd.DataFrame:
        from diffusion.samplers import generate

        # every row is checked before any is sampled: a bad row answers at once
        settings = [self._options(request) for request in parse_requests(model_input)]
        batches = [generate(self._denoiser, self._spec.shape, request.n, seed=request.seed,
                            device=self._device, **options).x.detach().cpu().numpy()
                   for request, options in settings]
        x = np.concatenate(batches).astype(np.float32)
        if self._spec.data.kind != "table":
            return x
        # a table model answers rows: the schema's columns in their dtypes, categories as labels,
        # and the id column (never modelled) with fresh ids that no real row has
        from diffusion.tabular.encoding import TableEncoder
        from diffusion.tabular.row_ids import with_fresh_ids

        state = self._spec.data.table
        return with_fresh_ids(TableEncoder.from_dict(state).inverse_transform(x), state.get("id"))

    def _options(self, request: SampleRequest) -> tuple[SampleRequest, dict]:
        """(request, generate's keyword arguments): the model's sampling settings with the
        request's sampler and steps; SampleRequestError for a sampler this model cannot use."""
        options = self._spec.sampling.model_dump()
        if request.sampler is not None:
            options["sampler"] = request.sampler
        if request.steps is not None:
            options["steps"] = request.steps
        # the consistency sampler's boundary condition needs the model's sigma_min, which
        # only a consistency-distilled model's preconditioning has (samplers.sample_consistency)
        if (options["sampler"] == "consistency"
                and getattr(self._denoiser.precond, "sigma_min", None) is None):
            raise SampleRequestError(
                "sampler 'consistency' needs a consistency-distilled model; this one is sampled "
                f"with {self._spec.sampling.sampler!r}: leave sampler out or pick another")
        return request, options


# a table column's type as MLflow's column spec names it (the output schema of a table model)
_COLUMN_TYPES = {"numerical": "double", "integer": "long", "categorical": "string"}


def signature(sample_shape, table: dict | None = None) -> ModelSignature:
    """Input columns: n (samples), seed, optional sampler and steps; output: float32 samples
    (-1, *shape), or for a table model (`table`: its encoder state, ModelSpec.data.table) one
    column per schema column (numerical: double, integer: long, categorical: string), and the
    id column, first, where it gets fresh ids (long or string).

    Every column is declared `Any` (the names and which are required still say what a row
    holds; parse_requests checks the values): MLflow's scoring server casts typed columns
    with pandas before predict sees them, so as `long` a row without steps (NaN) fails the
    whole request ("Cannot convert non-finite values") and 2.5 or true silently become 2 or 1,
    and as `string` a null sampler in the `inputs` form becomes the name "None".  As `Any` the
    JSON values reach parse_requests as sent."""
    inputs = Schema([ColSpec(AnyType(), "n"), ColSpec(AnyType(), "seed"),
                     ColSpec(AnyType(), "sampler", required=False),
                     ColSpec(AnyType(), "steps", required=False)])
    if table is None:
        outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, *map(int, sample_shape)))])
    else:
        columns = [ColSpec(_COLUMN_TYPES[c["type"]], c["name"]) for c in table["schema"]["columns"]]
        made = table.get("id") or {}   # the id column, fresh ids (diffusion/tabular/row_ids.py)
        if "start" in made or "prefix" in made:
            kind = "integer" if "start" in made else "categorical"
            columns.insert(min(made["position"], len(columns)), ColSpec(_COLUMN_TYPES[kind], made["name"]))
        outputs = Schema(columns)
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example() -> pd.DataFrame:
    return pd.DataFrame({"n": [4], "seed": [0]})

