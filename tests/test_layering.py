"""The layering rules, checked on every import statement (module level or inside a function):
nothing under diffusion/ imports an orchestration, tracking, data-versioning or storage library;
under tasks/ only the Prefect wrappers (tasks/prefect_tasks.py) import Prefect; the plain steps
(tasks/steps/) reach every server and tool through tasks/adapters/, never a client library of
their own; and `dmops config` runs without importing torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the libraries of the pipeline around the core (tasks/ and flows/ talk to them)
ORCHESTRATION = {"prefect", "mlflow", "great_expectations", "dvc", "dvc_data", "boto3", "botocore",
                 "s3fs", "tasks", "flows", "infra"}


def imported_top_levels(path: Path) -> set[str]:
    """Top-level package names every import statement of `path` names (absolute imports)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_scan_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("import os\ndef f():\n    from mlflow.tracking import MlflowClient\n"
                      "    import boto3.session\nfrom . import sibling\n")
    assert imported_top_levels(sample) == {"os", "mlflow", "boto3"}


@pytest.mark.parametrize("path", sorted((ROOT / "diffusion").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_diffusion_core_imports_no_orchestration(path):
    found = imported_top_levels(path) & ORCHESTRATION
    assert not found, f"{path.relative_to(ROOT)} imports {sorted(found)}: keep diffusion/ free of them"


PREFECT_WRAPPERS = ROOT / "tasks" / "prefect_tasks.py"


@pytest.mark.parametrize("path", sorted((ROOT / "tasks").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_prefect_wrappers_import_prefect_under_tasks(path):
    if path == PREFECT_WRAPPERS:
        assert "prefect" in imported_top_levels(path)  # the rule's one exception is still real
        return
    assert "prefect" not in imported_top_levels(path), (
        f"{path.relative_to(ROOT)} imports Prefect: only tasks/prefect_tasks.py may")


# what only tasks/adapters/ talks to (Prefect: only tasks/prefect_tasks.py, above)
SERVER_CLIENTS = {"mlflow", "great_expectations", "dvc", "dvc_data", "dvc_objects", "boto3",
                  "botocore", "s3fs"}


@pytest.mark.parametrize("path", sorted((ROOT / "tasks" / "steps").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_steps_reach_servers_only_through_the_adapters(path):
    found = imported_top_levels(path) & SERVER_CLIENTS
    assert not found, (f"{path.relative_to(ROOT)} imports {sorted(found)}: talk to that server "
                       "through a module of tasks/adapters/")


def _imported_by(args: list[str]) -> dict:
    """In a fresh interpreter: `dmops <args>`'s exit code, output and which heavy libraries it
    imported (nothing it did not)."""
    code = ("import sys, json\n"
            "from typer.testing import CliRunner\n"
            "from flows.cli import app\n"
            f"result = CliRunner().invoke(app, {args!r})\n"
            "print(json.dumps({'exit': result.exit_code, 'output': result.output,\n"
            "                  'heavy': sorted(m for m in ('torch', 'diffusers', 'mlflow', 'prefect',\n"
            "                                              'sklearn', 'pandas')\n"
            "                                  if m in sys.modules)}))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_dmops_config_does_not_import_torch():
    report = _imported_by(["config", "-p", "quick"])
    assert report["exit"] == 0 and "profile: quick" in report["output"], report
    assert report["heavy"] == [], f"`dmops config` imported {report['heavy']}"


def test_dmops_fingerprint_reads_and_hashes_without_the_ml_libraries(tmp_path):
    """DVC runs `dmops fingerprint` on every `dvc repro` (its stage always runs): it hashes
    files and source code, and a torch import would cost seconds each time."""
    report = _imported_by(["fingerprint", "--out", str(tmp_path / "digits.json")])
    assert report["exit"] == 0, report
    assert report["heavy"] == [], f"`dmops fingerprint` imported {report['heavy']}"
    assert json.loads((tmp_path / "digits.json").read_text())["data"]["name"] == "digits"
