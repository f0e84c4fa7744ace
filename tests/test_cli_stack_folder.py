"""The local stack's state folder is found the same way from every working folder: --state-dir,
else $DMOPS_STACK_DIR, else `.stack` in the dmops checkout (infra.settings.default_state_dir).
A folder the user named is checked before anything is read or started (exit code 2): its
parent must exist, and `status`, `env` and `down` refuse one that holds no stack rather than
report it "stopped" (flows/stack_cli.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / ".stack"


def dmops(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`dmops ARGS` as a user runs it from `cwd`, with DMOPS_STACK_DIR only where given."""
    environ = {k: v for k, v in os.environ.items() if k != "DMOPS_STACK_DIR"}
    environ["PYTHONPATH"] = str(ROOT)   # as the editable install does, from any folder
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=120)


def _one_line(result, code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, \
        result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def test_the_default_state_folder_is_the_checkouts_from_any_working_folder(tmp_path):
    code = "from infra.settings import StackSettings; print(StackSettings.from_env().state_dir)"
    for cwd in (tmp_path, ROOT, ROOT / "tests"):
        out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                             env={**{k: v for k, v in os.environ.items() if k != "DMOPS_STACK_DIR"},
                                  "PYTHONPATH": str(ROOT)}, check=True).stdout.strip()
        assert Path(out) == DEFAULT, cwd


def test_status_outside_the_clone_looks_at_the_clones_stack(tmp_path):
    result = dmops("status", cwd=tmp_path)
    # a stack started in the clone (`make run`) is shown; without one, the fix is named
    if (DEFAULT / "credentials.json").is_file():
        # 0 when its servers run, 3 when it is stopped (dmops status's exit status)
        assert result.returncode in (0, 3) and f"stack in {DEFAULT}" in result.stdout, result.stderr
    else:
        _one_line(result, 1, f"no local stack has been started in {DEFAULT}", "`dmops up`")
    assert not (tmp_path / ".stack").exists()


def test_a_named_folder_finds_the_running_stack_from_any_working_folder(stack, tmp_path):
    for env in ({"DMOPS_STACK_DIR": str(stack.state_dir)}, {}):
        args = [] if env else ["--state-dir", str(stack.state_dir)]
        result = dmops("status", *args, cwd=tmp_path, **env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("healthy") == 3, result.stdout
        exported = dmops("env", *args, cwd=tmp_path, **env)
        assert f"MLFLOW_TRACKING_URI={stack.settings.mlflow_url}" in exported.stdout, exported.stderr


@pytest.mark.parametrize("command", ["up", "status", "env", "down"])
def test_a_state_folder_whose_parent_does_not_exist_is_a_usage_error(command, tmp_path):
    folder = tmp_path / "missing" / "state"
    result = dmops(command, "--state-dir", str(folder), cwd=tmp_path)
    _one_line(result, 2, f"--state-dir {folder}", f"{tmp_path / 'missing'} does not exist",
              f"(default {DEFAULT})", "for `dmops up` to start")
    assert not (tmp_path / "missing").exists()
    # the team stack's commands name the team stack's default folder and command
    role = ["--role", "viewer"] if command == "env" else []
    team = dmops(command, "--team", *role, "--state-dir", str(folder), cwd=tmp_path)
    _one_line(team, 2, f"{tmp_path / 'missing'} does not exist", f"(default {ROOT / '.stack-team'})",
              "for `dmops up --team` to start")


def test_a_local_stack_command_that_finds_none_points_at_the_team_stack_when_there_is_one(tmp_path):
    empty, team = tmp_path / "empty", tmp_path / "team"
    empty.mkdir()
    team.mkdir()
    (team / "team-credentials.json").write_text("{}")   # what marks a folder as a team stack's
    result = dmops("status", cwd=tmp_path, DMOPS_STACK_DIR=str(empty), DMOPS_TEAM_STACK_DIR=str(team))
    _one_line(result, 2, f"no stack was ever started in {empty}",
              f"a team stack is in {team}: add --team (`dmops status --team`)")
    env = dmops("env", cwd=tmp_path, DMOPS_STACK_DIR=str(empty), DMOPS_TEAM_STACK_DIR=str(team))
    _one_line(env, 2, "add --team (`dmops env --team --role pipeline|viewer|reader`)")
    named = dmops("down", "--state-dir", str(team), cwd=tmp_path)
    _one_line(named, 2, f"{team} holds a team stack: add --team (`dmops down --team`)")
    assert "team stack" not in dmops("status", cwd=tmp_path, DMOPS_STACK_DIR=str(empty),
                                     DMOPS_TEAM_STACK_DIR=str(empty)).stderr


@pytest.mark.parametrize("command", ["status", "env", "down"])
def test_a_named_folder_without_a_stack_is_refused_not_reported_stopped(command, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = dmops(command, "--state-dir", str(empty), cwd=tmp_path)
    _one_line(result, 2, f"no stack was ever started in {empty}", "`dmops up --state-dir",
              str(DEFAULT))
    assert "stopped" not in result.stdout
    by_env = dmops(command, cwd=tmp_path, DMOPS_STACK_DIR=str(empty))
    _one_line(by_env, 2, f"DMOPS_STACK_DIR={empty}", "no stack was ever started")
    assert list(empty.iterdir()) == []


def test_a_file_is_not_a_state_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    _one_line(dmops("status", "--state-dir", "notes.txt", cwd=tmp_path), 2,
              f"{tmp_path / 'notes.txt'} is a file")


def _without_port_variables(**extra: str) -> dict[str, str]:
    """A new shell's environment: no DMOPS_* stack variables (ports, folders)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DMOPS_")}
    return {**environ, "PYTHONPATH": str(ROOT), **extra}


def test_up_and_status_without_port_options_follow_the_running_stacks_ports(stack, tmp_path):
    """`make run` (dmops up) in a new shell, the stack running on ports nobody names there:
    `up` finds it running instead of refusing the default ports, and the `runs` link of
    `status` points at the MLflow it runs, not at the default port.  A port the user does
    name is still held to."""
    import uuid

    import mlflow

    name = f"runs-line-{uuid.uuid4().hex[:8]}"
    eid = mlflow.MlflowClient().create_experiment(name)
    (tmp_path / "params.yaml").write_text(f"pipeline:\n  experiment: {name}\n")
    where = ["--state-dir", str(stack.state_dir)]

    def run(*args):
        return subprocess.run([sys.executable, "-m", "flows.cli", *args, *where], cwd=tmp_path,
                              env=_without_port_variables(), capture_output=True, text=True,
                              timeout=300)

    up = run("up")
    assert up.returncode == 0, up.stderr
    assert "already running" in up.stdout and f"mlflow  {stack.settings.mlflow_url}" in up.stdout
    status = run("status")
    assert status.returncode == 0, status.stderr
    assert f"runs    {stack.settings.mlflow_url}/#/experiments/{eid}/runs" in status.stdout, \
        status.stdout
    from infra.ports import free_ports

    [other] = free_ports(1)
    chosen = run("up", "--mlflow-port", str(other))
    _one_line(chosen, 1, f"running on port {stack.settings.mlflow_port}, not {other}", "dmops down")
