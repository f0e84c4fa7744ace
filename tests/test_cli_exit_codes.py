"""One fault, one exit code, in every command (flows/cli.py): 2 for what was typed, 1 for a
well-formed request the servers cannot answer -- a model name, alias or version the registry
does not hold, a model the releases bucket does not know, a server away.  `sample --model`,
`reproduce` and `history` answer such a request with one `error: ...` line and without
importing torch or diffusers (the registry adapter imports the model code only to read a
model), so the answer comes in the time of a request, not of torch's import."""

import os
import uuid

import pytest
from test_cli_arguments import probe

pytestmark = pytest.mark.stack

MODEL_LIBRARIES = ("torch", "diffusers")


@pytest.fixture(scope="module")
def registered(stack):
    """A registered model without versions or aliases, and a name nothing is registered under."""
    from mlflow.tracking import MlflowClient

    name = f"exit-codes-{uuid.uuid4().hex[:6]}"
    MlflowClient().create_registered_model(name)
    return name, f"nothing-{uuid.uuid4().hex[:6]}"


def _cases(name: str, unknown: str) -> dict[str, tuple[list[str], list[str]]]:
    return {
        "sample-alias": (["sample", "--model", f"{name}@nosuch"],
                         [f"model {name!r} has no alias 'nosuch'", "NAME/VERSION"]),
        "sample-version": (["sample", "--model", f"{name}/7"], ["has no version 7"]),
        "sample-model": (["sample", "--model", f"{unknown}@champion"],
                         [f"there is no model {unknown!r}", "check the name"]),
        "reproduce-alias": (["reproduce", f"{name}@nosuch"], ["has no alias 'nosuch'"]),
        "reproduce-model": (["reproduce", f"{unknown}/3"], [f"there is no model {unknown!r}"]),
        "history-model": (["history", unknown],
                          [f"there is no model {unknown!r} in s3://dmops-releases/", "--bucket"]),
    }


def _one_line(result, code: int, fragments) -> None:
    where = (result["args"], result["stdout"][-500:], result["stderr"], result["exception"])
    assert result["exit_code"] == code, where
    assert result["exception"] is None, where
    assert result["stderr"].startswith("error: ") and len(result["stderr"].strip().splitlines()) == 1, where
    for fragment in fragments:
        assert fragment in result["stderr"], (fragment, where)


def test_what_the_registry_does_not_hold_is_exit_1_in_every_command_without_torch(registered):
    cases = _cases(*registered)
    results = dict(zip(cases, probe([args for args, _ in cases.values()], dict(os.environ))))
    for key, (_, fragments) in cases.items():
        _one_line(results[key], 1, fragments)
        loaded = [m for m in MODEL_LIBRARIES if m in results[key]["heavy"]]
        assert loaded == [], f"{key} imported {loaded} to answer"
    # the releases bucket needs boto3 only
    assert "mlflow" not in results["history-model"]["heavy"], results["history-model"]["heavy"]


def test_the_same_commands_exit_2_for_what_was_typed(registered):
    name, _ = registered
    cases = {"sample": (["sample", "--model", name], ["names no model version"]),
             "reproduce": (["reproduce", f"{name}/x"], ["names no model version"]),
             "history": (["history", f"{name}@champion"], ["give the name alone"])}
    results = probe([args for args, _ in cases.values()], dict(os.environ))
    for (key, (_, fragments)), result in zip(cases.items(), results):
        _one_line(result, 2, fragments)


def test_a_server_away_is_exit_1_naming_it_without_torch(stack, registered):
    """The servers' variables name a port nothing listens on: after the bounded retries (one
    try here, DMOPS_RETRY_ATTEMPTS; MLflow's own retries remain), one line naming the server."""
    from infra.ports import free_ports

    name, _ = registered
    [port] = free_ports(1)
    dead = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": dead, "DMOPS_RETRY_ATTEMPTS": "1"}
    results = probe([["sample", "--model", f"{name}@champion"], ["reproduce", f"{name}@champion"]], env)
    for result in results:
        _one_line(result, 1, [f"MLflow server at {dead}", "MLFLOW_TRACKING_URI"])
        assert not [m for m in MODEL_LIBRARIES if m in result["heavy"]], result["heavy"]


def test_keys_the_store_refuses_are_exit_1_naming_the_store_and_the_fix(stack):
    """`dmops history` and `dmops sample --release` with S3 keys the store does not know: one
    line naming S3 and how to set the keys (before: botocore's own text), exit 1."""
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY0000000", "AWS_SECRET_ACCESS_KEY": "x" * 40,
           "DMOPS_RETRY_ATTEMPTS": "1"}
    results = probe([["history", "any-model"],
                     ["sample", "--release", "s3://dmops-releases/any-model/1/"]], env)
    for result in results:
        _one_line(result, 1, ["AWS_ACCESS_KEY_ID"])
        assert "S3" in result["stderr"], result["stderr"]
        assert "x" * 40 not in result["stderr"]
