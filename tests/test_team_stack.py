"""The team stack (`dmops up --team`, infra/team.py) against real servers on loopback: the
session's `team_stack` (tests/conftest.py) runs PostgreSQL, MLflow with basic-auth, Prefect with
its API auth string and SeaweedFS with one identity per role.

What each role may do is checked by doing it: anonymous requests are refused everywhere, the
`viewer` reads MLflow and changes nothing (403), the `pipeline` logs, registers, tags and moves
aliases, the `reader` downloads from the releases bucket only. The runs and versions are read
back from PostgreSQL with SQL; no secret appears on a command line, in a log or in `status`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from async_run import run_async
from infra.errors import StackError
from infra.ports import free_ports
from infra.team import ROLES

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[1]


def dmops(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`dmops ARGS` in a fresh process whose environment names no stack or server, plus `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DMOPS_", "MLFLOW_", "PREFECT_", "AWS_"))}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**clean, **(env or {}), "PYTHONPATH": str(ROOT)})


def port_args(team_stack) -> list[str]:
    s = team_stack.settings
    return ["--team", "--state-dir", str(team_stack.state_dir), "--s3-port", str(s.s3_port),
            "--mlflow-port", str(s.mlflow_port), "--prefect-port", str(s.prefect_port),
            "--postgres-port", str(s.postgres_port)]


def secrets_of(team_stack) -> list[str]:
    """Every secret the team stack holds (its accounts, the stack's S3 key, PostgreSQL's)."""
    layout = team_stack.layout
    team = json.loads(layout.team_credentials.read_text())
    pg = json.loads(team_stack.postgres.credentials_path.read_text())
    return [*team["mlflow_passwords"].values(), team["mlflow_flask_secret"],
            team["prefect_auth_string"].split(":", 1)[1],
            *(c["secret_access_key"] for c in team["s3"].values()),
            json.loads(layout.credentials.read_text())["secret_access_key"],
            pg["superuser_password"], *pg["roles"].values()]


@pytest.fixture
def as_role(monkeypatch):
    """Point this process's MLflow client at the team stack as one role (what `eval "$(dmops env
    --team --role ROLE)"` does in a shell)."""
    def use(team_stack, role: str):
        from mlflow import MlflowClient

        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.delenv(key, raising=False)
        for key, value in team_stack.client_env(role).items():
            monkeypatch.setenv(key, value)
        return MlflowClient(team_stack.settings.mlflow_url)
    return use


@pytest.fixture(scope="module")
def registered(team_stack):
    """The pipeline's records: an experiment, a run with a metric and an artifact, a registered
    model with one version, alias `champion` on it (made over REST as `pipeline`)."""
    env = team_stack.client_env("pipeline")
    api, auth = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow", (env["MLFLOW_TRACKING_USERNAME"],
                                                                env["MLFLOW_TRACKING_PASSWORD"])

    def post(path, body):
        answer = requests.post(f"{api}/{path}", json=body, auth=auth, timeout=30)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
        return answer.json()

    name = f"team-{uuid.uuid4().hex[:6]}"
    experiment_id = post("experiments/create", {"name": name})["experiment_id"]
    run = post("runs/create", {"experiment_id": experiment_id})["run"]["info"]
    post("runs/log-metric", {"run_id": run["run_id"], "key": "fid", "value": 1.5, "timestamp": 0, "step": 0})
    post("registered-models/create", {"name": name})
    version = post("model-versions/create", {"name": name, "source": f"{run['artifact_uri']}/model",
                                             "run_id": run["run_id"]})["model_version"]["version"]
    post("registered-models/alias", {"name": name, "alias": "champion", "version": version})
    return {"name": name, "experiment_id": experiment_id, "run_id": run["run_id"], "version": version}


def test_anonymous_and_wrong_password_mlflow_requests_are_refused(team_stack, registered):
    api = f"{team_stack.settings.mlflow_url}/api/2.0/mlflow"
    for call in (lambda **kw: requests.get(f"{api}/experiments/search?max_results=1", timeout=10, **kw),
                 lambda **kw: requests.get(f"{api}/runs/get?run_id={registered['run_id']}", timeout=10, **kw),
                 lambda **kw: requests.post(f"{api}/experiments/create", json={"name": "anon"}, timeout=10, **kw)):
        assert call().status_code == 401
        assert call(auth=("viewer", "not-the-password")).status_code == 401


def test_the_viewer_reads_runs_and_versions_but_changes_nothing(team_stack, registered, as_role):
    from mlflow.exceptions import MlflowException

    viewer = as_role(team_stack, "viewer")
    name, version = registered["name"], registered["version"]
    assert viewer.get_run(registered["run_id"]).data.metrics == {"fid": 1.5}
    assert [r.info.run_id for r in viewer.search_runs([registered["experiment_id"]])] == [registered["run_id"]]
    assert viewer.get_model_version(name, version).run_id == registered["run_id"]
    assert viewer.get_model_version_by_alias(name, "champion").version == version
    run = viewer.get_run(registered["run_id"])
    refused = {
        "register": lambda: viewer.create_model_version(name, f"{run.info.artifact_uri}/model",
                                                        run_id=registered["run_id"]),
        "tag": lambda: viewer.set_model_version_tag(name, version, "promotion", "viewer-was-here"),
        "move alias": lambda: viewer.set_registered_model_alias(name, "champion", version),
        "delete alias": lambda: viewer.delete_registered_model_alias(name, "champion"),
        "log": lambda: viewer.log_metric(registered["run_id"], "fid", 9.0),
        # with workspaces on, creating needs a workspace grant the viewer lacks: no name squatting
        "create model": lambda: viewer.create_registered_model(f"squat-{uuid.uuid4().hex[:6]}"),
        "create experiment": lambda: viewer.create_experiment(f"squat-{uuid.uuid4().hex[:6]}"),
    }
    for what, change in refused.items():
        with pytest.raises(MlflowException) as denied:
            change()
        assert "403" in str(denied.value) or "PERMISSION_DENIED" in str(denied.value), (what, denied.value)
    assert len(viewer.search_model_versions(f"name = '{name}'")) == 1
    assert viewer.get_model_version(name, version).tags == {}


def test_the_pipeline_registers_tags_moves_aliases_and_stores_artifacts(team_stack, registered, as_role, tmp_path):
    pipeline = as_role(team_stack, "pipeline")
    name = registered["name"]
    run = pipeline.get_run(registered["run_id"])
    version = pipeline.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version
    pipeline.set_model_version_tag(name, version, "promotion", "promoted")
    pipeline.set_registered_model_alias(name, "champion", version)
    assert pipeline.get_model_version_by_alias(name, "champion").version == version
    assert pipeline.get_model_version(name, version).tags == {"promotion": "promoted"}
    # artifacts go through MLflow's proxy into S3 (the stack's own identity); the viewer reads them
    pipeline.log_text(run.info.run_id, "hello team", "notes/hello.txt")
    viewer = as_role(team_stack, "viewer")
    local = viewer.download_artifacts(run.info.run_id, "notes/hello.txt", str(tmp_path))
    assert Path(local).read_text() == "hello team"


def test_the_runs_and_versions_are_in_postgres(team_stack, registered):
    with team_stack.postgres.connect("mlflow", role="mlflow") as conn:
        assert conn.execute("SELECT run_uuid, experiment_id FROM runs WHERE run_uuid = %s",
                            (registered["run_id"],)).fetchone() == (registered["run_id"],
                                                                    int(registered["experiment_id"]))
        versions = conn.execute("SELECT version FROM model_versions WHERE name = %s ORDER BY version",
                                (registered["name"],)).fetchall()
        assert versions and versions[0] == (int(registered["version"]),)
        assert conn.execute("SELECT value FROM metrics WHERE run_uuid = %s AND key = 'fid'",
                            (registered["run_id"],)).fetchone() == (1.5,)
    with team_stack.postgres.connect("mlflow_auth", role="mlflow") as conn:   # the accounts too
        users = {row[0] for row in conn.execute("SELECT username FROM users")}
        assert {"admin", "pipeline", "viewer"} <= users


def test_prefect_refuses_calls_without_credentials_and_answers_with_them(team_stack):
    from prefect.client.orchestration import PrefectClient

    env = team_stack.client_env("pipeline")
    api = env["PREFECT_API_URL"]
    assert requests.post(f"{api}/flows/filter", json={"limit": 1}, timeout=10).status_code == 401
    assert requests.post(f"{api}/flows/filter", json={"limit": 1}, timeout=10,
                         auth=("pipeline", "not-the-string")).status_code == 401

    async def with_prefects_client():
        async with PrefectClient(api, auth_string=env["PREFECT_API_AUTH_STRING"]) as client:
            flow_id = await client.create_flow_from_name(f"team-{uuid.uuid4().hex[:6]}")
            return (await client.read_flow(flow_id)).id == flow_id

    assert run_async(with_prefects_client())
    with team_stack.postgres.connect("prefect", role="prefect") as conn:
        assert conn.execute("SELECT count(*) FROM flow").fetchone()[0] >= 1


def _s3(team_stack, role: str | None):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    s = team_stack.settings
    if role is None:
        return boto3.client("s3", endpoint_url=s.s3_url, region_name="us-east-1",
                            config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"}))
    env = team_stack.client_env(role)
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))


def _denied(call) -> str:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as refused:
        call()
    return str(refused.value.response["Error"]["Code"])


def test_s3_refuses_anonymous_requests_and_the_reader_only_reads_releases(team_stack):
    s = team_stack.settings
    releases, data = s.releases_bucket, s.data_bucket
    key = f"digits-diffusion/{uuid.uuid4().hex[:6]}/manifest.json"
    pipeline, reader, anonymous = _s3(team_stack, "pipeline"), _s3(team_stack, "reader"), _s3(team_stack, None)
    pipeline.put_object(Bucket=releases, Key=key, Body=b'{"files": {}}')
    pipeline.put_object(Bucket=data, Key="files/md5/ab/cd", Body=b"data")
    assert _denied(lambda: anonymous.get_object(Bucket=releases, Key=key)) == "AccessDenied"
    assert _denied(lambda: anonymous.list_objects_v2(Bucket=releases)) == "AccessDenied"
    assert _denied(lambda: anonymous.put_object(Bucket=releases, Key="x", Body=b"x")) == "AccessDenied"

    assert reader.get_object(Bucket=releases, Key=key)["Body"].read() == b'{"files": {}}'
    assert key in [o["Key"] for o in reader.list_objects_v2(Bucket=releases)["Contents"]]
    assert _denied(lambda: reader.put_object(Bucket=releases, Key=key, Body=b"changed")) == "AccessDenied"
    assert _denied(lambda: reader.put_object(Bucket=releases, Key="new.json", Body=b"{}")) == "AccessDenied"
    assert _denied(lambda: reader.delete_object(Bucket=releases, Key=key)) == "AccessDenied"
    assert _denied(lambda: reader.get_object(Bucket=data, Key="files/md5/ab/cd")) == "AccessDenied"
    assert _denied(lambda: reader.list_objects_v2(Bucket=s.artifacts_bucket)) == "AccessDenied"
    assert reader.get_object(Bucket=releases, Key=key)["Body"].read() == b'{"files": {}}'   # still there
    pipeline.delete_object(Bucket=releases, Key=key)                                       # the writer may


def test_env_prints_one_roles_settings_and_nothing_else_prints_a_secret(team_stack, tmp_path):
    expected = {"pipeline": {"MLFLOW_TRACKING_USERNAME", "PREFECT_API_AUTH_STRING", "AWS_SECRET_ACCESS_KEY"},
                "viewer": {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"},
                "reader": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"}}
    for role in ROLES:
        out = dmops("env", *port_args(team_stack), "--role", role)
        assert out.returncode == 0, out.stderr
        keys = {line.split("=", 1)[0].removeprefix("export ") for line in out.stdout.splitlines()}
        assert expected[role] <= keys, (role, keys)
    viewer_keys = {line.split("=", 1)[0] for line in dmops("env", *port_args(team_stack), "--role", "viewer").stdout.splitlines()}
    assert not any("AWS" in k or "PREFECT" in k for k in viewer_keys)   # MLflow reads only
    missing = dmops("env", *port_args(team_stack))
    assert missing.returncode == 2 and "--team needs --role pipeline|viewer|reader (none given)" in missing.stderr
    assert dmops("env", "--role", "viewer", "--state-dir", str(team_stack.state_dir)).returncode == 2
    # one kind of stack per folder: the team folder is not read as a local stack, nor the reverse
    local_view = dmops("status", "--state-dir", str(team_stack.state_dir))
    assert local_view.returncode == 2 and "holds a team stack: add --team" in local_view.stderr
    local = tmp_path / "local"
    local.mkdir()
    (local / "credentials.json").write_text('{"access_key_id": "x", "secret_access_key": "y"}')
    team_view = dmops("up", "--team", "--state-dir", str(local))
    assert team_view.returncode == 2 and "holds a local stack, not a team stack" in team_view.stderr
    assert sorted(p.name for p in local.iterdir()) == ["credentials.json"]   # nothing started or written

    secrets = secrets_of(team_stack)
    status = dmops("status", *port_args(team_stack))
    assert status.returncode == 0 and status.stdout.count("healthy") == 4, status.stdout
    shown = status.stdout + status.stderr
    logs = "".join(p.read_text(errors="replace") for p in team_stack.layout.logs.iterdir())
    argv = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv.append((proc / "cmdline").read_bytes().decode(errors="replace"))
            except OSError:
                pass
    for secret in secrets:
        assert secret not in shown and secret not in logs, "a secret was printed or logged"
        assert not any(secret in line for line in argv), "a secret is on a command line"
    for private in (team_stack.layout.team_credentials, team_stack.layout.mlflow_auth_config,
                    team_stack.layout.credentials, team_stack.postgres.credentials_path,
                    team_stack.layout.seaweedfs_identities):
        assert private.stat().st_mode & 0o077 == 0, private


def test_a_wrong_password_or_a_stopped_postgres_is_one_line_naming_the_server_and_the_fix(team_stack, tmp_path):
    pg = team_stack.postgres
    with pytest.raises(StackError) as refused:
        pg.connect("mlflow", role="mlflow", password="not-the-password")
    assert str(refused.value) == (f"PostgreSQL at 127.0.0.1:{pg.port} refused the password of role 'mlflow' "
                                  f"(password authentication failed): use the role's password kept in "
                                  f"{pg.credentials_path} (0600)")
    team_stack.down(services=["postgres"])
    try:
        line = (f"PostgreSQL at 127.0.0.1:{pg.port} is not running (connection refused): start it with "
                f"`dmops up --team`")
        # no port options: the stopped server is looked for on the port it last ran on
        status = dmops("status", "--team", "--state-dir", str(team_stack.state_dir))
        assert status.returncode == 3 and line in status.stdout.splitlines()[2], status.stdout
        assert status.stdout.splitlines()[1].split()[:2] == ["postgres", "stopped"]
        # MLflow's and Prefect's health pages answer without it; they are not healthy
        assert status.stdout.count("its database, PostgreSQL, does not answer") == 2, status.stdout
        # a client of MLflow (whose answer, a server error, says nothing of why) is told too
        viewer = {**team_stack.client_env("viewer"), "DMOPS_TEAM_STACK_DIR": str(team_stack.state_dir)}
        sample = dmops("sample", "--model", "digits-diffusion@champion", "--out", str(tmp_path / "x.png"),
                       env=viewer)
        err = sample.stderr.strip().splitlines()
        assert sample.returncode == 1 and len(err) == 1, sample.stderr
        assert err[0].startswith(f"error: MLflow server at {team_stack.settings.mlflow_url} answers 5"), err
        assert err[0].endswith(f"its database is down: {line}"), err
        # a Prefect-only command too (its probe reads the database)
        pipeline = {**team_stack.client_env("pipeline"), "DMOPS_TEAM_STACK_DIR": str(team_stack.state_dir)}
        deploy = dmops("deploy", env=pipeline)
        err = deploy.stderr.strip().splitlines()
        assert deploy.returncode == 1 and len(err) == 1, deploy.stderr
        assert err[0].startswith("error: ") and err[0].endswith(f"its database is down: {line}"), err
        # another PostgreSQL port while its clients run: refused at once, naming the fix
        [other] = free_ports(1)
        moved = dmops("up", "--team", "--state-dir", str(team_stack.state_dir), "--postgres-port", str(other))
        assert moved.returncode == 1 and f"run against it on port {pg.port}, not {other}" in moved.stderr, moved.stderr
        assert "dmops down --team" in moved.stderr
    finally:
        team_stack.up()   # PostgreSQL alone; MLflow's and Prefect's pools reconnect (pre-ping)
    answer = requests.get(f"{team_stack.settings.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1",
                          auth=("viewer", team_stack.team_credentials().mlflow_passwords["viewer"]), timeout=30)
    assert answer.status_code == 200, answer.text[:300]
