"""The pipeline, unchanged, against the team stack (tests/conftest.py `team_stack`: PostgreSQL,
MLflow with basic-auth and workspaces, Prefect behind its API auth string, SeaweedFS with one
identity per role), in one user's repository (tests/user_repo.py). Every command runs as a user
runs it, in a subprocess whose environment holds one role's settings and nothing else of a
server (what `eval "$(dmops env --team --role ROLE)"` leaves in a shell). In file order:

1. a first `dmops run` as `pipeline` (module-scoped, read by several tests): dataset pushed to
   DVC's remote with the pipeline's S3 keys, version 1 registered, promoted, released;
2. the `viewer` samples the champion through MLflow, the `reader` its release from S3: the
   same picture;
3. a wrong or missing password, S3 keys the store does not know, or a role that may not do
   it, is one line naming the server, the account and the fix;
4. two runs started at the same moment: both versions registered, one champion, both decisions
   in the promotion history, every release verifies (as the reader reads it);
5. `dmops deploy` on the team Prefect server, an on-demand run served by `dmops worker`
   holding the pipeline role.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading

import pytest
import requests

from pipeline_run import WEAK, run
from user_repo import make_user_repo, params_for

pytestmark = [pytest.mark.stack, pytest.mark.slow]

MODEL = "team-pipeline-test"
SERVER_PREFIXES = ("MLFLOW_", "PREFECT_", "AWS_", "DMOPS_STACK_DIR", "DMOPS_TEAM_STACK_DIR")


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture(scope="module")
def as_role(team_stack, prefect_home):
    """The environment of a shell that ran `eval "$(dmops env --team --role ROLE)"`: this
    process's, less every server setting the session's local stack exported, plus the role's;
    `changes` then sets (or, with None, removes) variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(SERVER_PREFIXES)}

    def env(role: str, **changes) -> dict[str, str]:
        out = {**base, **team_stack.client_env(role), "PREFECT_HOME": str(prefect_home)}
        for key, value in changes.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return out
    return env


@pytest.fixture(scope="module")
def repo(tmp_path_factory, team_stack):
    return make_user_repo(tmp_path_factory.mktemp("team-repo"), team_stack.settings.data_bucket,
                          params_for(MODEL, MODEL))


@pytest.fixture(scope="module")
def first(repo, as_role):
    """The first `dmops run` on the team stack as `pipeline` (weak model: version 1, champion)."""
    return run("run", "--repo", repo, *WEAK, cwd=repo, env=as_role("pipeline"))


def outcome(proc) -> dict[str, str]:
    """The lines `dmops run` prints at the end, by label."""
    lines = {}
    for line in proc.stdout.splitlines():
        label, sep, value = line.partition(":")
        if sep and label.strip() in ("registered", "promotion", "release", "Prefect run"):
            lines[label.strip()] = value.strip()
    return lines


def mlflow_api(team_stack, role: str, path: str, **query) -> dict:
    """GET <MLflow>/api/2.0/mlflow/<path> as `role` (plain HTTP: the server's own answer)."""
    env = team_stack.client_env(role)
    answer = requests.get(f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/{path}", params=query,
                          auth=(env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]),
                          timeout=30)
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    return answer.json()


def prefect_api(team_stack, method: str, path: str, body: dict | None = None):
    env = team_stack.client_env("pipeline")
    answer = requests.request(method, f"{env['PREFECT_API_URL']}{path}", json=body, timeout=30,
                              auth=tuple(env["PREFECT_API_AUTH_STRING"].split(":", 1)))
    assert answer.status_code < 300, (path, answer.status_code, answer.text[:300])
    return answer.json()


def s3_as(team_stack, role: str):
    import boto3

    from tasks.adapters.servers import boto_config

    env = team_stack.client_env(role)
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], config=boto_config(),
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")


def champion_version(team_stack) -> str:
    return mlflow_api(team_stack, "viewer", "registered-models/alias", name=MODEL,
                      alias="champion")["model_version"]["version"]


def versions(team_stack) -> dict[str, dict]:
    found = mlflow_api(team_stack, "viewer", "model-versions/search", filter=f"name='{MODEL}'")
    return {v["version"]: {t["key"]: t["value"] for t in v.get("tags", [])}
            for v in found.get("model_versions", [])}


def one_error_line(proc, *expected: str, secret: str | None = None, in_flow: bool = False) -> str:
    """The command failed with exit code 1 and one `error:` line holding every `expected`:
    its whole stderr when refused before it started (`in_flow` False), its last line when the
    flow ran (above it Prefect logs the failed flow run, as for every failure in a flow)."""
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    if in_flow:
        assert proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-3000:]
    else:
        assert proc.stderr.strip() == errors[0] and "Traceback" not in proc.stdout, proc.stderr[-3000:]
    for text in expected:
        assert text in errors[0], errors[0]
    assert "not authenticated" not in errors[0] and "Response body" not in errors[0]
    assert secret is None or secret not in proc.stdout + proc.stderr
    return errors[0]


# --- 1. the first run -----------------------------------------------------------------------

def test_first_run_as_pipeline_registers_promotes_and_releases_on_the_team_servers(first, team_stack, repo):
    result = outcome(first)
    assert "PROMOTED" in result["promotion"], first.stdout[-3000:]
    assert result["release"] == f"s3://{team_stack.settings.releases_bucket}/{MODEL}/1/"
    assert champion_version(team_stack) == "1"
    tags = versions(team_stack)["1"]
    # the dataset DVC pushed with the pipeline's keys is in the team's bucket, where the tag says
    md5 = tags["dataset_md5"]
    key = f"datasets/files/md5/{md5[:2]}/{md5[2:]}"
    s3 = s3_as(team_stack, "pipeline")
    assert s3.list_objects_v2(Bucket=team_stack.settings.data_bucket, Prefix=key)["KeyCount"] == 1
    # MLflow's artifacts, proxied to S3 under the workspace's prefix
    artifacts = s3.list_objects_v2(Bucket=team_stack.settings.artifacts_bucket, MaxKeys=5)
    assert artifacts["KeyCount"] and all(o["Key"].startswith("workspaces/default/")
                                         for o in artifacts["Contents"])
    # the flow run is the team Prefect server's, completed
    flow_run_id = result["Prefect run"].rstrip("/").rsplit("/", 1)[-1]
    assert tags["prefect_flow_run_id"] == flow_run_id
    assert prefect_api(team_stack, "GET", f"/flow_runs/{flow_run_id}")["state"]["type"] == "COMPLETED"
    # the decision is in the promotion history (written with the pipeline's S3 keys)
    from tasks.adapters.promotion_history import read_history

    [entry] = read_history(s3, team_stack.settings.releases_bucket, MODEL)
    assert (entry["version"], entry["decision"], entry["flow_run_id"]) == ("1", "promoted", flow_run_id)


# --- 2. what the other roles read -------------------------------------------------------------

def test_viewer_samples_the_champion_and_reader_the_release_alike(first, repo, as_role, tmp_path):
    release = outcome(first)["release"]
    viewer, reader = as_role("viewer"), as_role("reader")
    assert "AWS_ACCESS_KEY_ID" not in viewer and "MLFLOW_TRACKING_URI" not in reader
    a, b = tmp_path / "registry.png", tmp_path / "release.png"
    run("sample", "--model", f"{MODEL}@champion", "--out", a, "--n", 9, "--seed", 5, cwd=repo, env=viewer)
    run("sample", "--release", release, "--out", b, "--n", 9, "--seed", 5, cwd=repo, env=reader)
    assert a.read_bytes() == b.read_bytes()


# --- 3. refused credentials -------------------------------------------------------------------

def test_a_wrong_or_missing_password_is_one_line_naming_server_account_and_fix(first, repo, as_role,
                                                                              team_stack, tmp_path):
    s = team_stack.settings
    sample = ["sample", "--model", f"{MODEL}@champion", "--out", tmp_path / "x.png", "--n", 4]
    wrong = "not-the-password"
    one_error_line(run(*sample, cwd=repo, check=False, env=as_role("viewer", MLFLOW_TRACKING_PASSWORD=wrong)),
                   f"MLflow server at {s.mlflow_url} refused the password of account 'viewer' (401",
                   'eval "$(dmops env --team --role viewer)"', secret=wrong)
    one_error_line(run(*sample, cwd=repo, check=False,
                       env=as_role("viewer", MLFLOW_TRACKING_USERNAME=None, MLFLOW_TRACKING_PASSWORD=None)),
                   f"MLflow server at {s.mlflow_url} wants an account (401", "MLFLOW_TRACKING_USERNAME is not set",
                   'eval "$(dmops env --team --role pipeline)"')
    one_error_line(run("sample", "--release", outcome(first)["release"], "--out", tmp_path / "y.png",
                       cwd=repo, check=False, env=as_role("reader", AWS_SECRET_ACCESS_KEY=wrong)),
                   f"S3 store at {s.s3_url} refused the secret key of access key "
                   f"'{team_stack.client_env('reader')['AWS_ACCESS_KEY_ID']}'",
                   'eval "$(dmops env --team --role reader)"` (`--role pipeline` to write)', secret=wrong)
    # the flow's own Prefect client: refused before anything runs
    auth = team_stack.client_env("pipeline")["PREFECT_API_AUTH_STRING"]
    one_error_line(run("run", "--repo", repo, *WEAK, cwd=repo, check=False,
                       env=as_role("pipeline", PREFECT_API_AUTH_STRING="pipeline:" + wrong)),
                   f"Prefect server at {s.prefect_api_url} refused the API auth string of user 'pipeline'",
                   'eval "$(dmops env --team --role pipeline)"', secret=wrong)
    # S3 keys the store does not know: DVC's push fails inside the flow, the store is asked why
    one_error_line(run("run", "--repo", repo, *WEAK, cwd=repo, check=False,
                       env=as_role("pipeline", AWS_ACCESS_KEY_ID="DMOPSNOSUCHKEY")),
                   f"S3 store at {s.s3_url} does not know access key 'DMOPSNOSUCHKEY' (InvalidAccessKeyId)",
                   'eval "$(dmops env --team --role pipeline)"', in_flow=True)
    # a role that may not register: the flow starts, MLflow refuses its first write (403)
    viewer = team_stack.client_env("viewer")
    proc = run("run", "--repo", repo, *WEAK, cwd=repo, check=False,
               env=as_role("pipeline", MLFLOW_TRACKING_USERNAME="viewer",
                           MLFLOW_TRACKING_PASSWORD=viewer["MLFLOW_TRACKING_PASSWORD"]))
    line = one_error_line(proc, f"MLflow server at {s.mlflow_url} refused account 'viewer' (403",
                          'eval "$(dmops env --team --role pipeline)"', in_flow=True)
    assert line.startswith("error: the pipeline failed: ")
    assert auth.split(":", 1)[1] not in proc.stdout + proc.stderr
    assert set(versions(team_stack)) == {"1"}     # nothing was registered by the refused runs


# --- 4. two runs at once ----------------------------------------------------------------------

def test_two_runs_started_together_leave_one_champion_and_both_decisions(first, repo, as_role, team_stack):
    """Each trains its own model (another seed: a run that would make the champion again
    registers nothing), so both register at about the same time and promote within seconds
    of each other: the promotion lease in S3 serializes them."""
    from tasks.adapters.promotion_history import read_history
    from tasks.adapters.promotion_lock import lease_key
    from tasks.adapters.release import verify_release

    env, start, procs = as_role("pipeline"), threading.Barrier(2), {}

    def one(i):
        start.wait()
        procs[i] = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--repo", str(repo), *WEAK,
                                   "--set", f"train.seed={i + 1}"],
                                  cwd=repo, env=env, capture_output=True, text=True, timeout=900)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for proc in procs.values():
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    registered = [re.search(r"version (\d+)", outcome(p)["registered"]).group(1) for p in procs.values()]
    assert sorted(registered) == ["2", "3"], registered
    assert {"1", "2", "3"} <= set(versions(team_stack))

    bucket = team_stack.settings.releases_bucket
    history = read_history(s3_as(team_stack, "pipeline"), bucket, MODEL)
    assert [e["version"] for e in history[:1]] == ["1"]
    pair = history[1:]
    assert sorted(e["version"] for e in pair) == ["2", "3"]
    # serialized: the later decision was taken against the champion the earlier one left
    assert pair[1]["previous_champion"] == pair[0]["champion"]
    assert champion_version(team_stack) == pair[1]["champion"]
    reader = s3_as(team_stack, "reader")
    for entry in history:
        assert entry["decision"] in ("promoted", "rejected")
        if entry["release"]:
            assert verify_release(reader, entry["release"])["version"] == entry["version"]
    assert s3_as(team_stack, "pipeline").list_objects_v2(Bucket=bucket, Prefix=lease_key(MODEL))["KeyCount"] == 0


# --- 5. deployments and a worker -------------------------------------------------------------

def test_deployments_on_the_team_server_run_through_a_worker_holding_the_pipeline_role(first, repo, as_role,
                                                                                      team_stack):
    env = as_role("pipeline")
    deployed = run("deploy", cwd=repo, env=env)
    assert "deployments created" in deployed.stdout
    held = prefect_api(team_stack, "POST", "/deployments/filter",
                       {"deployments": {"name": {"any_": ["nightly", "on-demand"]}}})
    by_name = {d["name"]: d for d in held}
    assert set(by_name) == {"nightly", "on-demand"}
    assert [s["schedule"]["cron"] for s in by_name["nightly"]["schedules"]] == ["0 2 * * *"]
    assert not by_name["on-demand"]["schedules"]

    # a worker without the auth string is refused in one line, before it polls
    one_error_line(run("worker", "--run-once", cwd=repo, check=False,
                       env=as_role("pipeline", PREFECT_API_AUTH_STRING=None)),
                   f"Prefect server at {team_stack.settings.prefect_api_url} wants an API auth string")

    started = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", "training-pipeline/on-demand",
                              "--params", json.dumps({"profile": "tiny", "overrides": WEAK[1::2]})],
                             cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", started.stdout).group(1)
    run("worker", "--run-once", cwd=repo, env=env, timeout=900)
    state = prefect_api(team_stack, "GET", f"/flow_runs/{flow_run_id}")["state"]
    assert state["type"] == "COMPLETED", state
    made = [v for v, tags in versions(team_stack).items() if tags.get("prefect_flow_run_id") == flow_run_id]
    assert len(made) == 1, versions(team_stack)
