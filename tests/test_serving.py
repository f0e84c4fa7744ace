"""A registered model serves where dmops is not installed: it is logged from code (nothing
pickled), carries the project code it imports and pins every third-party package that code
imports; `mlflow models serve` in an environment MLflow builds itself answers /invocations with
the samples dmops draws for the same seed."""

from __future__ import annotations

import ast
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import warnings
from importlib.metadata import packages_distributions
from importlib.metadata import version as installed_version
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
from mlflow.models import Model

from diffusion.model import load_for_sampling
from diffusion.samplers import generate
from infra.ports import free_ports
from tasks.adapters.registry import CHAMPION, register_model, set_alias

CHECKOUT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = {"diffusion", "tasks", "flows", "infra"}
# MLflow's first `serve` of a model builds its environment (pip install of torch, diffusers,
# mlflow-skinny, ...: about 3 minutes on 2 cores); later runs reuse it from ~/.mlflow/envs.
SERVE_START_TIMEOUT_S = 1200


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)   # MLflow's info chatter at registration counts too
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _register(model_dir: Path, name: str) -> tuple[str, list[str]]:
    """Register `model_dir` as `name`; the version and every message (info and up) MLflow
    logged and every warning raised."""
    handler, logger = _Records(), logging.getLogger("mlflow")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as raised, mlflow.start_run():
            warnings.simplefilter("always")
            version = register_model(model_dir, name, {"git_commit": "0123abc"})
    finally:
        logger.removeHandler(handler)
    return version, handler.messages + [str(w.message) for w in raised]


def _imported_tops(source: str) -> set[str]:
    """Top-level names of every absolute import in `source`, inside functions too."""
    tops = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            tops.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            tops.add(node.module.split(".")[0])
    return tops


def _module_exists(code: Path, module: str) -> bool:
    base = code.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


@pytest.mark.stack
def test_the_logged_model_is_code_with_pinned_requirements_and_no_pickle(tiny_model, experiment,
                                                                          tmp_path, capfd):
    name = f"digits-{uuid.uuid4().hex[:8]}"
    version, logged = _register(tiny_model, name)
    # no CloudPickle warning, nor any other warning or info line a user cannot act on; also
    # not MLflow's own prints ("Created version", and "already exists" for a second version)
    assert not [m for m in logged if "pickle" in m.lower()], logged
    assert logged == [], logged
    again, logged = _register(tiny_model, name)
    assert again == str(int(version) + 1) and logged == [], logged
    printed = capfd.readouterr()
    assert "Created version" not in printed.err + printed.out, printed.err
    assert "already exists" not in printed.err + printed.out, printed.err

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}",
                                                     dst_path=str(tmp_path / "model")))
    pyfunc = Model.load(local).flavors["python_function"]
    # models from code: MLflow runs the carried entry file; no python_model.pkl, no pickle at all
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert "python_model" not in pyfunc
    assert (local / Path(pyfunc["model_code_path"]).name).is_file()
    assert not [p.name for p in local.rglob("*") if p.suffix in {".pkl", ".pickle", ".cloudpickle"}]
    assert pyfunc["config"]["files_sha256"]   # load_context's sha256 check still has its sums

    # the carried code is complete: every project module it imports is carried too
    code = local / pyfunc["code"]
    sources = {p: p.read_text() for p in [*code.rglob("*.py"), local / "pyfunc_entry.py"]}
    assert (code / "tasks" / "adapters" / "pyfunc_model.py").is_file()
    assert (code / "diffusion" / "samplers.py").is_file()
    for path, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for module in names:
                if module.split(".")[0] in PROJECT_PACKAGES:
                    assert _module_exists(code, module), f"{path} imports {module}, not carried"
    # the pipeline's own layers never travel: the sampler needs none of them
    assert not (code / "flows").exists() and not (code / "tasks" / "steps").exists()

    # every third-party package the carried code imports is pinned to the version here
    pins = dict(line.split("==") for line in (local / "requirements.txt").read_text().split())
    third_party = set().union(*map(_imported_tops, sources.values())) \
        - set(sys.stdlib_module_names) - PROJECT_PACKAGES
    distributions = packages_distributions()
    for top in sorted(third_party):
        pinned = [d for d in distributions[top] if d in pins]
        assert pinned, f"the carried code imports {top} (from {distributions[top]}) unpinned: {pins}"
        assert all(pins[d] == installed_version(d).split("+")[0] for d in pinned), (top, pins)
    assert {"torch", "diffusers", "safetensors", "numpy", "pandas", "pydantic"} <= set(pins)


# --- serving in MLflow's own environment ---------------------------------------------------

def _serve_env() -> dict[str, str]:
    """This process's environment (the stack's MLflow URI and S3 credentials) without anything
    that would put the checkout on the served process's path, and with pyenv reachable:
    MLflow's virtualenv manager installs (or finds) the model's Python version with it.  One
    OpenMP thread, as this module samples with (one_torch_thread): torch splits a reduction
    by thread count, and 1 versus 2 threads moves these samples by up to 2e-5."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env["OMP_NUM_THREADS"] = "1"
    pyenv_bin = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "bin"
    if pyenv_bin.is_dir():
        env["PATH"] = f"{pyenv_bin}{os.pathsep}{env.get('PATH', '')}"
    return env


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def _wait_until_serving(proc: subprocess.Popen, port: int, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`mlflow models serve` exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(2)
    pytest.fail(f"`mlflow models serve` did not answer /ping within {timeout_s:.0f} s:\n{_tail(log)}")


def _scoring_process(proc: subprocess.Popen) -> psutil.Process:
    """The uvicorn process that `mlflow models serve` started inside the model's environment."""
    for child in psutil.Process(proc.pid).children(recursive=True):
        if any("uvicorn" in part for part in child.cmdline()[:3]):
            return child
    pytest.fail("no uvicorn process under `mlflow models serve`")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the serve command and everything it started (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _invoke(port: int, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.mark.slow
@pytest.mark.stack
@pytest.mark.timeout(SERVE_START_TIMEOUT_S + 300)
def test_mlflow_serves_the_champion_in_its_own_environment(tiny_model, experiment, tmp_path):
    name = f"digits-{uuid.uuid4().hex[:8]}"
    version, _ = _register(tiny_model, name)
    set_alias(name, CHAMPION, version)
    (port,) = free_ports(1)
    log = tmp_path / "serve.log"
    started = time.monotonic()
    # cwd outside the checkout: uvicorn puts its working directory on sys.path
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "models", "serve",
             "-m", f"models:/{name}@{CHAMPION}", "--env-manager", "virtualenv",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=_serve_env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        _wait_until_serving(proc, port, log, SERVE_START_TIMEOUT_S)
        ready_s = time.monotonic() - started

        # the served process really lacks the checkout: its own interpreter (the environment
        # MLflow built), with its working directory and environment, finds none of the
        # project's packages (the model's code/ folder is added only when MLflow loads it)
        served = _scoring_process(proc)
        probe = subprocess.run(
            [served.cmdline()[0], "-c", "import importlib.util, json, sys; print(json.dumps("
             "[sys.prefix, [p for p in ('flows', 'diffusion', 'tasks', 'infra', 'torch') "
             "if importlib.util.find_spec(p)]]))"],
            cwd=served.cwd(), env=served.environ(), capture_output=True, text=True, check=True)
        prefix, importable = json.loads(probe.stdout)
        assert importable == ["torch"], (prefix, importable)   # torch: the probe can see
        assert Path(prefix).resolve() != Path(sys.prefix).resolve(), prefix
        assert CHECKOUT not in Path(prefix).resolve().parents, prefix

        status, answer = _invoke(port, {"dataframe_records": [{"n": 4, "seed": 0}]})
        assert status == 200, answer
        x = np.asarray(answer["predictions"], dtype=np.float32)
        denoiser, spec = load_for_sampling(tiny_model)
        expected = generate(denoiser, spec.shape, 4, seed=0, **spec.sampling.model_dump()).x
        # Exact: the same code, torch 2.13.0 build, CPU and thread count (one) run the same
        # float32 operations in the same order, and JSON carries each float32 as a double
        # that converts back exactly.
        assert x.shape == (4, *spec.shape)
        assert np.array_equal(x, expected.numpy())

        # rows with and without steps in one request: the row without gets the model's own
        status, answer = _invoke(port, {"dataframe_records": [
            {"n": 2, "seed": 0}, {"n": 1, "seed": 1, "steps": 3, "sampler": None}]})
        assert status == 200, answer
        mixed = np.concatenate([
            generate(denoiser, spec.shape, 2, seed=0, **spec.sampling.model_dump()).x.numpy(),
            generate(denoiser, spec.shape, 1, seed=1, **{**spec.sampling.model_dump(),
                                                         "steps": 3}).x.numpy()])
        assert np.array_equal(np.asarray(answer["predictions"], dtype=np.float32), mixed)

        # a bad field is a 400 whose message names it (not a generic error, not truncated)
        status, answer = _invoke(port, {"dataframe_records": [{"n": 2.5, "seed": 0}]})
        assert status == 400 and answer.get("error_code") == "INVALID_PARAMETER_VALUE", answer
        assert "n must be an integer, got 2.5" in answer["message"], answer
        print(f"\nmlflow models serve: ready after {ready_s:.0f} s, test {time.monotonic() - started:.0f} s "
              f"(environment {prefix})")
    finally:
        _stop(proc)
