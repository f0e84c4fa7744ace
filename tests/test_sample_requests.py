"""Requests to the served model: a row without sampler or steps (or with null there) gets the
model's own, exactly as when the column is absent; anything else that is not what the field
takes (2.5, true, "3", a negative or huge value, an unknown sampler) is an HTTP 400 whose body
names the field, never a silently truncated value or a generic error.

The served answers go through MLflow's own scoring app (the FastAPI app `mlflow models serve`
runs under uvicorn) in this process, on a model saved the way registration logs it: the same
signature casts and the same exception handling as a served request, in seconds.
tests/test_serving.py checks a few of them against the real `mlflow models serve`."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from pyfunc_saving import save_as_registered

from tasks.adapters.pyfunc_model import (MAX_SAMPLES_PER_REQUEST, MAX_STEPS, SampleRequestError,
                                         parse_requests)

# --- parse_requests: what each field takes -------------------------------------------------

BAD_ROWS = [   # (one request row, the message it must get)
    ({"n": 0, "seed": 1}, "n must be an integer >= 1, got 0"),
    ({"n": -3, "seed": 1}, "n must be an integer >= 1, got -3"),
    ({"n": 2.5, "seed": 1}, "n must be an integer, got 2.5"),
    ({"n": True, "seed": 1}, "n must be an integer, got True"),
    ({"n": "3", "seed": 1}, "n must be an integer, got '3'"),
    ({"n": float("inf"), "seed": 1}, "n must be an integer, got inf"),
    ({"n": MAX_SAMPLES_PER_REQUEST + 1, "seed": 1}, f"at most {MAX_SAMPLES_PER_REQUEST} per request"),
    ({"n": 10**30, "seed": 1}, f"at most {MAX_SAMPLES_PER_REQUEST} per request"),
    ({"n": 2, "seed": 1.5}, "seed must be an integer, got 1.5"),
    ({"n": 2, "seed": False}, "seed must be an integer, got False"),
    ({"n": 2, "seed": -1}, r"seed must be an integer >= 0 and <= 18446744073709551615, got -1"),
    ({"n": 2, "seed": 2**64}, r"seed must be an integer >= 0 and <= 18446744073709551615"),
    ({"n": 2, "seed": 1, "steps": 0}, f"steps must be an integer >= 1 and <= {MAX_STEPS}, got 0"),
    ({"n": 2, "seed": 1, "steps": 2.5}, "steps must be an integer, got 2.5; leave it out"),
    ({"n": 2, "seed": 1, "steps": MAX_STEPS + 1}, f"<= {MAX_STEPS}, got {MAX_STEPS + 1}"),
    ({"n": 2, "seed": 1, "sampler": "euler"}, r"unknown sampler 'euler'; allowed: \['consistency'"),
    ({"n": 2, "seed": 1, "sampler": 3}, "sampler must be a sampler name, got 3"),
    ({"n": 2}, "columns must be n, seed"),
    ({"n": 2, "seed": 1, "temperature": 1.0}, "columns must be n, seed"),
]


@pytest.mark.parametrize("row, message", BAD_ROWS, ids=[m[:40] for _, m in BAD_ROWS])
def test_each_bad_field_gets_its_own_message(row, message):
    with pytest.raises(SampleRequestError, match=message):
        parse_requests(row)


def test_rows_name_the_row_and_every_row_needs_n_and_seed():
    with pytest.raises(SampleRequestError, match="n of row 2 is missing: every row needs n and seed"):
        parse_requests({"n": [2, None], "seed": [0, 1]})
    with pytest.raises(SampleRequestError, match="steps of row 2 must be an integer, got 2.5"):
        parse_requests({"n": [2, 1], "seed": [0, 1], "steps": [4, 2.5]})
    with pytest.raises(SampleRequestError, match=f"6000 samples requested; at most {MAX_SAMPLES_PER_REQUEST}"):
        parse_requests({"n": [3000, 3000], "seed": [0, 1], "steps": [None, 3]})


def test_a_row_without_sampler_or_steps_gets_the_models_own():
    absent = parse_requests({"n": [2], "seed": [0]})[0]
    assert (absent.sampler, absent.steps) == (None, None)
    # mixed rows: pandas turns the missing steps into NaN and the column into floats
    rows = parse_requests(pd.DataFrame({"n": [2, 3, 1], "seed": [0, 1, 2],
                                        "sampler": [None, "dpmpp_2m", ""],
                                        "steps": [None, 4, np.nan]}))
    assert [(r.n, r.seed, r.sampler, r.steps) for r in rows] == [
        (2, 0, None, None), (3, 1, "dpmpp_2m", 4), (1, 2, None, None)]
    assert all(type(v) is int for r in rows for v in (r.n, r.seed))
    assert type(rows[1].steps) is int
    # JSON's null and pandas' own missing markers mean the same
    for missing in (None, np.nan, pd.NA):
        assert parse_requests({"n": 2, "seed": 0, "steps": missing, "sampler": missing})[0] == absent
    # the largest seed torch takes arrives exactly (no float rounding on the way)
    assert parse_requests({"n": 1, "seed": 2**64 - 1})[0].seed == 2**64 - 1


def test_the_request_error_is_an_invalid_parameter_and_still_a_value_error():
    error = SampleRequestError("n must be an integer >= 1, got 0")
    assert isinstance(error, MlflowException) and isinstance(error, ValueError)
    assert error.error_code == "INVALID_PARAMETER_VALUE" and error.get_http_status_code() == 400
    assert error.error_code == MlflowException("", error_code=INVALID_PARAMETER_VALUE).error_code
    assert str(error) == "n must be an integer >= 1, got 0"


# --- through MLflow's scoring app ------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    """(HTTP client of MLflow's scoring app serving tiny_model, denoiser, spec): the model
    saved as registration logs it (models from code, carried code, the real signature)."""
    import os

    import mlflow
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    from diffusion.model import load_for_sampling

    denoiser, spec = load_for_sampling(tiny_model)
    path = save_as_registered(tiny_model, tmp_path_factory.mktemp("pyfunc") / "model")
    saved_env = dict(os.environ)   # init marks the process as a serving environment
    try:
        with TestClient(scoring_server.init(mlflow.pyfunc.load_model(str(path)))) as client:
            yield client, denoiser, spec
    finally:
        os.environ.clear()
        os.environ.update(saved_env)


def _samples(denoiser, spec, n, seed, **override):
    from diffusion.samplers import generate

    return generate(denoiser, spec.shape, n, seed=seed,
                    **{**spec.sampling.model_dump(), **override}).x.numpy()


def test_rows_with_and_without_steps_serve_the_default_for_the_missing(served):
    client, denoiser, spec = served
    expected = np.concatenate([_samples(denoiser, spec, 2, 0), _samples(denoiser, spec, 1, 1, steps=3),
                               _samples(denoiser, spec, 1, 2, sampler="dpmpp_2m")])
    bodies = {
        "records, field absent": {"dataframe_records": [
            {"n": 2, "seed": 0}, {"n": 1, "seed": 1, "steps": 3},
            {"n": 1, "seed": 2, "sampler": "dpmpp_2m"}]},
        "records, null": {"dataframe_records": [
            {"n": 2, "seed": 0, "sampler": None, "steps": None},
            {"n": 1, "seed": 1, "sampler": None, "steps": 3},
            {"n": 1, "seed": 2, "sampler": "dpmpp_2m", "steps": None}]},
        "split": {"dataframe_split": {"columns": ["n", "seed", "sampler", "steps"], "data": [
            [2, 0, None, None], [1, 1, None, 3], [1, 2, "dpmpp_2m", None]]}},
        "inputs": {"inputs": {"n": [2, 1, 1], "seed": [0, 1, 2],
                              "sampler": [None, None, "dpmpp_2m"], "steps": [None, 3, None]}},
    }
    for form, body in bodies.items():
        answer = client.post("/invocations", json=body)
        assert answer.status_code == 200, (form, answer.text)
        x = np.asarray(answer.json()["predictions"], dtype=np.float32)
        assert np.array_equal(x, expected), form   # same code, same process: bit for bit


@pytest.mark.parametrize("row, message", [
    ({"n": 2.5, "seed": 0}, "n must be an integer, got 2.5"),     # a long column would make it 2
    ({"n": True, "seed": 0}, "n must be an integer, got True"),   # ... and this 1
    ({"n": 1, "seed": 1.5}, "seed must be an integer, got 1.5"),
    ({"n": 0, "seed": 0}, "n must be an integer >= 1, got 0"),
    ({"n": MAX_SAMPLES_PER_REQUEST + 1, "seed": 0}, "per request: split it into several"),
    ({"n": 1, "seed": 0, "steps": 0}, "steps must be an integer >= 1"),
    ({"n": 1, "seed": 0, "sampler": "euler"}, "unknown sampler 'euler'"),
    ({"n": 1, "seed": 0, "sampler": "consistency"}, "sampler 'consistency' needs a consistency-"
                                                    "distilled model; this one is sampled with 'heun'"),
])
def test_a_bad_request_is_a_400_naming_the_field(served, row, message):
    client, _, _ = served
    answer = client.post("/invocations", json={"dataframe_records": [row]})
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE" and message in body["message"], body
    assert "stack_trace" not in body   # the message says it all; no traceback for a typo
