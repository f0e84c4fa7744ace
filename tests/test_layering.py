"""The rule that keeps the core reusable: nothing under diffusion/ imports an orchestration,
tracking, data-versioning or storage library, at module level or inside a function."""

from __future__ import annotations

import ast
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
