"""Every `dmops` command checks what was typed before it imports torch, diffusers, MLflow or
Prefect: a bad argument is exit code 2 with one line that names the fix, and no heavy library
has been imported by then (so it is answered at once; benchmarks/cli_latency.py measures it).
A missing servers' environment is exit code 1 with one line naming the variables and the fix
(`dmops up`, `eval "$(dmops env)"`, or the team's variables), also before anything heavy.

The command lines run through tests/cli_probe.py: one interpreter, a forked child per case."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER_VARS = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL",
               "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

# (command line, fragments of the error that name what is wrong and the fix)
BAD_ARGUMENTS = {
    "config": (["config", "-p", "nosuch"], ["unknown profile 'nosuch'", "quick"]),
    "config-set": (["config", "--set", "train.steps"], ["train.steps=200"]),
    "prepare": (["prepare", "--fingerprint", "/nonexistent/fp.json"],
                ["--fingerprint /nonexistent/fp.json does not exist", "dmops fingerprint"]),
    "fingerprint": (["fingerprint", "-p", "nosuch"], ["unknown profile", "quick"]),
    "train": (["train", "-p", "tiny", "--set", "train.learning_rate=1"],
              ["train.learning_rate", "unknown key", "lr"]),
    "distill-method": (["distill", "--method", "magic", "--teacher", "."],
                       ["--method must be one of progressive, consistency", "'magic'"]),
    "distill-teacher": (["distill", "--method", "progressive", "--teacher", "/nonexistent"],
                        ["--teacher /nonexistent does not exist", "dmops train"]),
    "sample-steps": (["sample", "-d", ".", "--steps", "-1"],
                     ["--steps", "greater than or equal to 1"]),
    "sample-n": (["sample", "-d", ".", "--n", "0"], ["--n", "greater than or equal to 1"]),
    # torch seeds are 64-bit: a larger one failed deep in torch ("Overflow when unpacking long")
    "sample-seed": (["sample", "-d", ".", "--seed", str(2**64)], ["--seed", "less than or equal to 18446744073709551615"]),
    "sample-source": (["sample"], ["give exactly one of --model-dir PATH, --model", "(got none)"]),
    "sample-two-sources": (["sample", "-d", ".", "--model", "digits-diffusion@champion"],
                           ["exactly one of", "--model-dir, --model"]),
    "sample-model": (["sample", "--model", "digits"],
                     ["--model 'digits' names no model version", "digits-diffusion@champion",
                      "--model-dir PATH"]),
    "sample-release": (["sample", "--release", "s3:/bucket/x"], ["s3://<bucket>/<model>/<version>/"]),
    "sample-model-dir": (["sample", "-d", "/nonexistent"],
                         ["--model-dir /nonexistent does not exist", "dmops train"]),
    "sample-no-model": (["sample", "-d", "tests"], ["--model-dir tests holds no model", "model.json"]),
    "evaluate-no-model": (["evaluate", "-d", "tests"], ["--model-dir tests holds no model"]),
    "distill-no-model": (["distill", "--method", "progressive", "--teacher", "tests"],
                         ["--teacher tests holds no model", "checkpoints/latest"]),
    "sample-sampler": (["sample", "-d", ".", "--sampler", "euler"],
                       ["unknown sampler(s) 'euler'", "dpmpp_2m"]),
    "sample-device": (["sample", "-d", ".", "--device", "tpu"], ["'tpu'", "cpu, cuda"]),
    "evaluate-model-dir": (["evaluate", "-d", "/nonexistent"], ["--model-dir /nonexistent does not exist"]),
    "evaluate-nfe": (["evaluate", "-d", ".", "--nfe", "1,x"], ["comma-separated integers", "1,2,4,8"]),
    "evaluate-samplers": (["evaluate", "-d", ".", "--samplers", "heun,euler"],
                          ["unknown sampler(s) 'euler'", "heun"]),
    "evaluate-students": (["evaluate", "-d", ".", "--students", "/nonexistent"],
                          ["--students /nonexistent does not exist", "dmops distill"]),
    "history-name": (["history", "digits-diffusion/3"], ["give the name alone", "digits-diffusion"]),
    "history-at": (["history", "digits-diffusion", "--at", "yesterday"],
                   ["'yesterday' is not a time", "2026-11-29T02:00"]),
    "reproduce-ref": (["reproduce", "digits"], ["'digits' names no model version",
                                                "digits-diffusion@champion"]),
    "reproduce-repo": (["reproduce", "digits-diffusion@champion", "--repo", "/nonexistent"],
                       ["--repo /nonexistent is not a folder"]),
    "run-profile": (["run", "-p", "nosuch"], ["unknown profile 'nosuch'"]),
    "run-repo": (["run", "--repo", "/nonexistent"], ["--repo /nonexistent is not a folder"]),
    "deploy-file": (["deploy", "--prefect-file", "/nonexistent.yaml"],
                    ["/nonexistent.yaml not found", "--prefect-file"]),
    "deploy-pool": (["deploy", "--pool", "elsewhere"], ["'dmops-process'", "leave --pool out"]),
    "worker-pool": (["worker", "--pool", " "], ["is not a work pool name", "dmops-process"]),
    "up-port": (["up", "--s3-port", "0"], ["--s3-port", "greater than or equal to 1"]),
    "status-ports": (["status", "--s3-port", "5000", "--mlflow-port", "5000"],
                     ["cannot share a port", "give each its own"]),
    "env-port": (["env", "--prefect-port", "70000"], ["--prefect-port", "less than or equal to 65535"]),
    "down-ports": (["down", "--mlflow-port", "4200", "--prefect-port", "4200"], ["cannot share a port"]),
    # PostgreSQL runs as an unprivileged OS user (1024: Linux's default unprivileged port start)
    "up-team-privileged": (["up", "--team", "--postgres-port", "80"],
                           ["--postgres-port 80: a privileged port", "choose one of"]),
}

# (command line, the variables the error must name): run without any server's variables and
# with no local stack running
MISSING_ENV = {
    "sample-model": (["sample", "--model", "digits-diffusion@champion"], ["MLFLOW_TRACKING_URI"]),
    "sample-release": (["sample", "--release", "s3://dmops-releases/digits-diffusion/1/"],
                       ["AWS_ENDPOINT_URL_S3"]),
    "history": (["history", "digits-diffusion"], ["AWS_ENDPOINT_URL_S3"]),
    "reproduce": (["reproduce", "digits-diffusion@champion"],
                  ["MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL_S3"]),
    "run": (["run", "-p", "tiny"], ["MLFLOW_TRACKING_URI", "PREFECT_API_URL", "AWS_ENDPOINT_URL_S3"]),
    "deploy": (["deploy"], ["PREFECT_API_URL"]),
    "worker": (["worker"], ["MLFLOW_TRACKING_URI", "PREFECT_API_URL", "AWS_ENDPOINT_URL_S3"]),
}


def probe(cases: list[list[str]], env: dict[str, str] | None = None) -> list[dict]:
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_probe.py")], cwd=ROOT,
                          input=json.dumps(cases), capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def no_servers_env(tmp_path_factory) -> dict[str, str]:
    """This environment without any server variable, the local stack looked for in an empty
    state folder (so none runs): a check that failed to stop a command would still never reach
    a server, nor start a worker."""
    env = {k: v for k, v in os.environ.items() if k not in SERVER_VARS}
    env["DMOPS_STACK_DIR"] = str(tmp_path_factory.mktemp("no-stack"))
    return env


@pytest.fixture(scope="module")
def bad_arguments(no_servers_env):
    names = list(BAD_ARGUMENTS)
    return dict(zip(names, probe([BAD_ARGUMENTS[name][0] for name in names], no_servers_env)))


@pytest.fixture(scope="module")
def missing_env(no_servers_env):
    names = list(MISSING_ENV)
    return dict(zip(names, probe([MISSING_ENV[name][0] for name in names], no_servers_env)))


def _one_line_error(result, code: int, fragments) -> None:
    where = (result["args"], result["stderr"], result["exception"])
    assert result["exit_code"] == code, where
    assert result["exception"] is None and "Traceback" not in result["stderr"], where
    # every error, Typer's own usage errors (a number out of range) too: one `error: ...` line
    assert result["stderr"].startswith("error: "), where
    assert len(result["stderr"].strip().splitlines()) == 1, where
    for fragment in fragments:
        assert fragment in result["stderr"], (fragment, where)


@pytest.mark.parametrize("name", list(BAD_ARGUMENTS))
def test_a_bad_argument_is_exit_2_naming_the_fix_before_heavy_imports(bad_arguments, name):
    result = bad_arguments[name]
    _one_line_error(result, 2, BAD_ARGUMENTS[name][1])
    assert result["heavy"] == [], f"dmops {' '.join(result['args'])} imported {result['heavy']} first"


def test_every_command_has_a_bad_argument_case():
    from typer.main import get_command

    from flows.cli import app

    commands = set(get_command(app).commands)
    covered = {args[0] for args, _ in BAD_ARGUMENTS.values()}
    assert commands - covered == set(), f"no bad-argument case for {sorted(commands - covered)}"


@pytest.mark.parametrize("name", list(MISSING_ENV))
def test_a_missing_stack_environment_names_the_variables_and_the_fix(missing_env, name):
    result = missing_env[name]
    _one_line_error(result, 1, [*MISSING_ENV[name][1], "not set", "`dmops up`",
                                'eval "$(dmops env)"', "team's"])
    assert "is not running" in result["stderr"]
    assert result["heavy"] == [], f"dmops {' '.join(result['args'])} imported {result['heavy']} first"


def test_a_partial_environment_is_refused_naming_the_missing_variable(tmp_path):
    """Some servers' variables set but not all: never mixed with the local stack's servers."""
    env = {k: v for k, v in os.environ.items() if k not in SERVER_VARS}
    env.update(DMOPS_STACK_DIR=str(tmp_path), MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    [result] = probe([["run", "-p", "tiny"]], env)
    _one_line_error(result, 1, ["PREFECT_API_URL (the Prefect API)", "AWS_ENDPOINT_URL_S3",
                                "while MLFLOW_TRACKING_URI is", 'eval "$(dmops env)"',
                                # the team's viewer settings (MLflow only) running the pipeline
                                'eval "$(dmops env --team --role pipeline)"` sets all of them'])


@pytest.mark.parametrize("args, role_fix", [
    (["run", "-p", "tiny"], 'run `eval "$(dmops env --team --role pipeline)"` (a role'),
    (["history", "digits-diffusion"],
     'run `eval "$(dmops env --team --role pipeline)"` or `eval "$(dmops env --team --role reader)"`'),
])
def test_a_team_roles_settings_that_lack_a_server_name_the_role_that_has_them(tmp_path, args, role_fix):
    """The viewer's settings (MLflow only) running the pipeline, or reading the promotion
    history (kept in S3): the fix is another role's settings, not the local stack."""
    env = {k: v for k, v in os.environ.items() if k not in SERVER_VARS}
    env.update(DMOPS_STACK_DIR=str(tmp_path), MLFLOW_TRACKING_URI="http://127.0.0.1:9",
               MLFLOW_TRACKING_USERNAME="viewer", MLFLOW_TRACKING_PASSWORD="not-a-real-one")
    [result] = probe([args], env)
    _one_line_error(result, 1, ["this shell holds a team role's settings without", role_fix])
    assert "dmops up" not in result["stderr"]


def test_model_references_are_checked_without_mlflow_as_the_registry_reads_them():
    """The CLI's check and the registry use one grammar (tasks/adapters/model_ref.py), which
    imports nothing heavy."""
    import subprocess
    import sys

    from flows.cli_options import model_ref_problem
    from tasks.adapters import registry

    assert registry.parse_model_ref("digits-diffusion@champion") == ("digits-diffusion", "champion", None)
    for ref in ("digits-diffusion/3", "models:/m@a", "a/b/3"):
        assert model_ref_problem(ref) is None, ref
    for ref in ("digits", "digits@", "@champion", "digits/", "digits/x", "/3", "models:/", ""):
        assert "NAME@ALIAS" in model_ref_problem(ref), ref
    loaded = subprocess.run([sys.executable, "-c", "import sys; import flows.cli_options as c; "
                             "c.model_ref_problem('x'); print(sorted(m for m in sys.modules if "
                             "m.split('.')[0] in ('mlflow', 'torch', 'prefect')))"],
                            capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout


def test_the_model_folder_check_accepts_what_the_model_loader_accepts(tmp_path):
    """flows/cli_options.check_model_source decides without torch what
    diffusion.model.resolve_model_path decides: the same folders pass, the same fail."""
    import typer

    from diffusion.model import ModelError, resolve_model_path
    from flows.cli_options import MODEL_MARKERS, check_model_source

    layouts = {"empty": [], "other": ["notes.txt"], "run-without-latest": ["checkpoints/step_1/x"],
               **{marker: [marker] for marker in MODEL_MARKERS}}
    for name, files in layouts.items():
        folder = tmp_path / name.replace("/", "-")
        folder.mkdir()
        for rel in files:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text("step_1\n" if rel.endswith("latest") else "{}")
        try:
            resolve_model_path(folder)
            loads = True
        except ModelError:
            loads = False
        try:
            check_model_source(folder, "--model-dir")
            passes = True
        except typer.Exit:
            passes = False
        assert passes == loads, (name, passes, loads)


def test_the_cli_offers_the_distillation_methods_there_are():
    from flows.cli import DISTILL_METHODS
    from tasks.steps.distill import METHODS

    assert tuple(DISTILL_METHODS) == tuple(METHODS)


def test_the_cli_offers_the_samplers_there_are():
    from diffusion.samplers import SAMPLERS
    from flows.cli_options import sampler_names

    assert set(sampler_names()) == set(SAMPLERS)


def test_the_flow_itself_names_the_fix_for_a_missing_server_environment(monkeypatch):
    """A flow started without `dmops run` (a deployment, a notebook) says the same as the CLI."""
    from flows.pipeline import PipelineError, _require_stack_env

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.raises(PipelineError) as e:
        _require_stack_env()
    assert "AWS_ENDPOINT_URL_S3 (the S3 store's endpoint) is not set" in str(e.value)
    assert 'eval "$(dmops env)"' in str(e.value) and "while MLFLOW_TRACKING_URI is" in str(e.value)
