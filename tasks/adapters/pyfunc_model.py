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
the samples as float32 (N, C, H, W) for images or (N, D) for vectors, drawn with
`diffusion.samplers.generate`: the same seed gives the same samples as `dmops sample`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

ARTIFACT = "model"
# A guard for served endpoints: one request must not be able to exhaust the server's memory.
MAX_SAMPLES_PER_REQUEST = 4096


class SampleRequestError(ValueError):
    """A prediction request the model cannot answer; the message says which field is wrong."""


@dataclass(frozen=True)
class SampleRequest:
    n: int
    seed: int
    sampler: str | None = None
    steps: int | None = None


def _given(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _as_int(value, field: str, minimum: int) -> int:
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise SampleRequestError(f"{field} must be an integer, got {value!r}") from None
    if not as_float.is_integer() or as_float < minimum:
        raise SampleRequestError(f"{field} must be an integer >= {minimum}, got {value!r}")
    return int(as_float)


def parse_requests(model_input) -> list[SampleRequest]:
    """Rows of a DataFrame (or a dict of scalars or of lists) -> validated requests."""
    if isinstance(model_input, dict):
        values = model_input.values()
        model_input = (pd.DataFrame(model_input) if all(isinstance(v, (list, tuple, np.ndarray))
                                                        for v in values)
                       else pd.DataFrame([model_input]))
    if not isinstance(model_input, pd.DataFrame):
        raise SampleRequestError("the input must be a DataFrame or dict with columns n, seed and "
                                 f"optional sampler, steps; got {type(model_input).__name__}")
    unknown = sorted(set(model_input.columns) - {"n", "seed", "sampler", "steps"})
    if unknown or not {"n", "seed"} <= set(model_input.columns):
        raise SampleRequestError(f"input columns must be n, seed and optional sampler, steps; got "
                                 f"{list(model_input.columns)}")
    if model_input.empty:
        raise SampleRequestError("the input has no rows: give one row per request")
    requests = []
    for row in model_input.to_dict("records"):
        sampler = row.get("sampler")
        steps = row.get("steps")
        requests.append(SampleRequest(
            n=_as_int(row["n"], "n", 1),
            seed=_as_int(row["seed"], "seed", 0),
            sampler=str(sampler) if _given(sampler) and sampler != "" else None,
            steps=_as_int(steps, "steps", 1) if _given(steps) else None))
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
    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        from diffusion.samplers import SAMPLERS, generate

        shape = self._spec.shape
        batches = []
        for request in parse_requests(model_input):
            options = self._spec.sampling.model_dump()
            if request.sampler is not None:
                if request.sampler not in SAMPLERS:
                    raise SampleRequestError(f"unknown sampler {request.sampler!r}; allowed: "
                                             f"{sorted(SAMPLERS)}")
                options["sampler"] = request.sampler
            if request.steps is not None:
                options["steps"] = request.steps
            out = generate(self._denoiser, shape, request.n, seed=request.seed,
                           device=self._device, **options)
            batches.append(out.x.detach().cpu().numpy().astype(np.float32))
        return np.concatenate(batches)


def signature(sample_shape) -> ModelSignature:
    """Input: n, seed, optional sampler and steps; output: float32 samples (-1, *shape)."""
    inputs = Schema([ColSpec("long", "n"), ColSpec("long", "seed"),
                     ColSpec("string", "sampler", required=False),
                     ColSpec("long", "steps", required=False)])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, *map(int, sample_shape)))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example() -> pd.DataFrame:
    return pd.DataFrame({"n": [4], "seed": [0]})

