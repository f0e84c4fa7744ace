"""Retries of transient server errors (tasks/adapters/servers.py) against real servers: an S3 store that
is stopped and started again within the backoff window, and servers that stay down."""

from __future__ import annotations

import re
import time
import uuid

import pytest

from infra import Stack, StackSettings
from infra.credentials import load_credentials
from infra.ports import free_ports
from infra.s3 import s3_client
from outages import outage
from tasks.adapters.servers import (MLFLOW, S3, RetryPolicy, ServerUnavailable, is_transient,
                                    retry_call)

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SeaweedFS S3 store of this module's own (no MLflow, no Prefect), on free ports: the
    tests stop and start it."""
    s3_port, mlflow_port, prefect_port = free_ports(3)
    stack = Stack(StackSettings(state_dir=tmp_path_factory.mktemp("store") / "state", s3_port=s3_port,
                                mlflow_port=mlflow_port, prefect_port=prefect_port))
    stack.up(services=("seaweedfs",))
    try:
        yield stack
    finally:
        stack.down()


def no_retry_client(stack: Stack):
    """A client without botocore retries, so every transient error reaches retry_call."""
    return s3_client(stack.settings.s3_url, load_credentials(stack.layout.credentials), attempts=1)


def test_read_succeeds_when_the_store_comes_back_within_the_backoff_window(store):
    client = no_retry_client(store)
    bucket, key, body = store.settings.data_bucket, f"retry/{uuid.uuid4().hex}", b"kept across a restart"
    client.put_object(Bucket=bucket, Key=key, Body=body)
    lines: list[str] = []
    # killed, as a crash stops it (a graceful stop spends 15 s in SeaweedFS's filer first, and
    # proves nothing more), and started again 1 s later on the same port and state
    with outage(store, "seaweedfs") as down:
        down.restore_after(1.0)
        t0 = time.monotonic()
        got = retry_call(lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read(),
                         server=S3, url=store.settings.s3_url, log=lines.append,
                         # waits of at most 2 s: the read comes back within 2 s of the restart
                         policy=RetryPolicy(attempts=40, base_s=0.5, max_wait_s=2, max_total_s=120))
        elapsed = time.monotonic() - t0
        assert down.restored   # the read came back from the restarted store
    assert got == body
    # It did meet the stopped server, said so, and waited for it.
    assert lines and all(line.startswith(f"S3 store at {store.settings.s3_url}: ") for line in lines), lines
    assert "retrying in" in lines[0]
    assert elapsed > 1.0
    print(f"read back after {len(lines)} retries in {elapsed:.1f} s", lines[0])


def test_store_down_for_good_fails_with_one_line_naming_it():
    port = free_ports(1)[0]        # nothing listens there
    url = f"http://127.0.0.1:{port}"
    client = s3_client(url, _dummy_credentials(), attempts=1)
    calls = []

    def read():
        calls.append(1)
        return client.get_object(Bucket="b", Key="k")

    with pytest.raises(ServerUnavailable) as info:
        retry_call(read, server=S3, url=url, log=lambda line: None,
                   policy=RetryPolicy(attempts=3, base_s=0.05))
    message = str(info.value)
    assert re.match(rf"S3 store at {url} did not answer after 3 tries over \d+ s: EndpointConnectionError: ", message)
    assert "\n" not in message
    assert len(calls) == 3
    assert info.value.tries == 3 and info.value.server == S3


def test_mlflow_down_for_good_names_the_server_after_mlflows_own_retries(monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    url = f"http://127.0.0.1:{free_ports(1)[0]}"
    with pytest.raises(ServerUnavailable) as info:
        retry_call(MlflowClient(tracking_uri=url).search_experiments, server=MLFLOW, url=url,
                   log=lambda line: None, policy=RetryPolicy(attempts=2, base_s=0.05))
    assert str(info.value).startswith(f"MLflow server at {url} did not answer after 2 tries")


def test_errors_that_are_not_transient_are_raised_at_once(store):
    from botocore.exceptions import ClientError

    client = no_retry_client(store)
    calls = []

    def missing():
        calls.append(1)
        return client.get_object(Bucket=store.settings.data_bucket, Key=f"no/{uuid.uuid4().hex}")

    with pytest.raises(ClientError, match="NoSuchKey"):
        retry_call(missing, server=S3, url=store.settings.s3_url, policy=RetryPolicy(attempts=4, base_s=0.05))
    assert len(calls) == 1
    wrong = s3_client(store.settings.s3_url, _dummy_credentials(), attempts=1)
    with pytest.raises(ClientError) as info:
        retry_call(wrong.list_buckets, server=S3, url=store.settings.s3_url, policy=RetryPolicy(attempts=4))
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ValueError):
        retry_call(int, "x", server=S3, url="u", policy=RetryPolicy(attempts=4))


def test_transient_errors_are_recognised_through_the_exception_chain():
    from botocore.exceptions import ClientError

    def server_error(status, code):
        return ClientError({"Error": {"Code": code, "Message": "m"},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    assert is_transient(server_error(500, "InternalError"))
    assert is_transient(server_error(503, "SlowDown"))
    assert not is_transient(server_error(404, "NoSuchKey"))
    assert not is_transient(server_error(403, "AccessDenied"))
    try:
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError:
            raise RuntimeError("wrapped by a library that does not chain explicitly")
    except RuntimeError as e:
        assert is_transient(e)
    assert not is_transient(ServerUnavailable(S3, "u", 3, 1.0, ConnectionRefusedError()))


def test_policy_waits_double_within_the_budget_and_come_from_the_environment(monkeypatch):
    assert list(RetryPolicy().waits()) == [1, 2, 4, 8]
    assert list(RetryPolicy(attempts=10, base_s=1, max_wait_s=16, max_total_s=20).waits()) == [1, 2, 4, 8]
    assert list(RetryPolicy(attempts=1).waits()) == []
    monkeypatch.setenv("DMOPS_RETRY_ATTEMPTS", "3")
    monkeypatch.setenv("DMOPS_RETRY_BASE_S", "0.5")
    assert list(RetryPolicy.from_env().waits()) == [0.5, 1.0]
    monkeypatch.setenv("DMOPS_RETRY_ATTEMPTS", "three")
    with pytest.raises(ValueError, match="DMOPS_RETRY_ATTEMPTS='three' is not a number"):
        RetryPolicy.from_env()
    monkeypatch.setenv("DMOPS_RETRY_ATTEMPTS", "0")
    with pytest.raises(ValueError, match="DMOPS_RETRY_ATTEMPTS='0' is out of range"):
        RetryPolicy.from_env()


def _dummy_credentials():
    from infra.credentials import Credentials

    return Credentials("0" * 20, "0" * 40)


def test_the_one_line_ends_with_the_fix_and_a_detail_goes_before_it():
    message = str(ServerUnavailable(MLFLOW, "http://127.0.0.1:5000", 3, None, ConnectionRefusedError("refused"),
                                    detail="4 metric points were not delivered"))
    assert message == ("MLflow server at http://127.0.0.1:5000 did not answer after 3 tries: "
                       "ConnectionRefusedError: refused; 4 metric points were not delivered; "
                       "check that it runs (`dmops status`, or `dmops status --team` for the team stack; `dmops up [--team]` starts it) and that "
                       "MLFLOW_TRACKING_URI names it")
    s3 = str(ServerUnavailable(S3, "http://127.0.0.1:8333", 1, 2.4, TimeoutError()))
    assert s3.startswith("S3 store at http://127.0.0.1:8333 did not answer after 1 try over 2 s: TimeoutError; ")
    assert s3.endswith("AWS_ENDPOINT_URL_S3 names it")


def test_client_bounds_are_exported_where_the_user_set_none():
    from tasks.adapters.servers import MLFLOW_RETRY_ENV, PREFECT_RETRY_ENV, bound_client_env

    env = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "300"}
    added = bound_client_env(env)
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"            # the user's own setting wins
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in added
    assert env == {**MLFLOW_RETRY_ENV, **PREFECT_RETRY_ENV, "MLFLOW_HTTP_REQUEST_TIMEOUT": "300"}
    assert int(MLFLOW_RETRY_ENV["MLFLOW_HTTP_REQUEST_TIMEOUT"]) <= 30
    assert int(PREFECT_RETRY_ENV["PREFECT_API_REQUEST_TIMEOUT"]) <= 30


def test_only_transient_failures_of_mlflow_requests_become_server_unavailable(monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tasks.adapters.servers import mlflow_unavailable

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    url = f"http://127.0.0.1:{free_ports(1)[0]}"
    try:
        MlflowClient(tracking_uri=url).search_experiments()
    except MlflowException as e:
        refused = e
    converted = mlflow_unavailable(refused, url)
    assert converted is not None and converted.__class__ is ServerUnavailable
    assert str(converted).startswith(f"MLflow server at {url} did not answer after 1 try: ConnectionRefusedError: ")
    assert mlflow_unavailable(MlflowException("RESOURCE_DOES_NOT_EXIST"), url) is None
    assert mlflow_unavailable(ConnectionRefusedError("an S3 or Prefect connection"), url) is None
    assert mlflow_unavailable(converted, url) is None


def test_a_failed_prefect_request_names_the_prefect_server(monkeypatch):
    import httpx

    from flows.pipeline_cli import prefect_unavailable
    from tasks.adapters.servers import mlflow_unavailable

    url = f"http://127.0.0.1:{free_ports(1)[0]}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    with pytest.raises(httpx.ConnectError) as info:
        httpx.get(f"{url}/health")
    converted = prefect_unavailable(info.value)
    assert converted is not None
    assert str(converted).startswith(f"Prefect server at {url} did not answer after ")
    assert str(converted).endswith("PREFECT_API_URL names it")
    assert mlflow_unavailable(info.value) is None
    assert prefect_unavailable(ValueError("not a server error")) is None
