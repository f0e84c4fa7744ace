"""What a logged pyfunc carries so that it loads and serves where dmops is not installed.

The model is logged as MLflow "models from code": `python_model` is the path of
tasks/adapters/pyfunc_entry.py, which MLflow copies into the model and runs at load time, so
no Python object is pickled (and MLflow's pickle warning is gone).  The project code that file
imports -- tasks.adapters.pyfunc_model and the parts of diffusion/ that loading and sampling
need -- is found by the same static import scan as the steps' code hashes
(diffusion.provenance.code_files, imports inside functions included), copied with its
package layout and logged as the model's `code_paths` (MLflow stores them under `code/` and
prepends that folder to sys.path before it runs the entry file).  Carrying the code rather
than depending on a dmops wheel keeps the serving environment to what sampling imports: a
dmops requirement would bring Prefect, DVC and Great Expectations along.

The third-party packages the carried code imports are pinned to the versions installed here
(`pip_requirements`), so `mlflow models serve --env-manager virtualenv` builds the environment
the model was registered from; tests/test_serving.py checks the list against the carried code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Iterator

from diffusion.provenance import code_files

ENTRY = Path(__file__).with_name("pyfunc_entry.py")
ENTRY_MODULE = "tasks.adapters.pyfunc_entry"

# Distributions of the modules the carried code imports at load or predict time: mlflow,
# torch, diffusers, safetensors, numpy, pandas, pydantic; scikit-learn and scipy decode a table
# model's rows (its quantile transform).  mlflow-skinny provides the `mlflow`
# package with what loading and the scoring server (uvicorn, FastAPI) need, without the
# tracking server's database and UI dependencies; a full `mlflow` of the same version
# satisfies it too.
SERVING_DISTRIBUTIONS = ("mlflow-skinny", "torch", "diffusers", "safetensors", "numpy", "pandas",
                         "pydantic", "scikit-learn", "scipy")


def carried_modules() -> dict[str, Path]:
    """{module name: source file} of the project code the served model runs: the entry file
    and every project module it imports, transitively."""
    return code_files([ENTRY_MODULE])


@contextmanager
def code_paths() -> Iterator[list[str]]:
    """The carried modules copied with their package layout into a temporary folder; yields
    one folder per top-level package (e.g. [.../diffusion, .../tasks]) for log_model's
    `code_paths`.  The folder is removed on exit."""
    with tempfile.TemporaryDirectory(prefix="dmops-pyfunc-code-") as tmp:
        tops = set()
        for name, path in carried_modules().items():
            parts = name.split(".")
            rel = (Path(*parts, "__init__.py") if path.name == "__init__.py"
                   else Path(*parts[:-1], path.name))
            (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(tmp) / rel)
            tops.add(parts[0])
        yield [str(Path(tmp) / top) for top in sorted(tops)]


def serving_sha256() -> str:
    """sha256 of what a registered version serves with besides its files: the carried code
    (module name -> sha256 of its source) and `pip_requirements()`; equal exactly when both are."""
    code = {name: hashlib.sha256(path.read_bytes()).hexdigest()
            for name, path in sorted(carried_modules().items())}
    text = json.dumps({"code": code, "requirements": pip_requirements()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def pip_requirements() -> list[str]:
    """`name==version` of each SERVING_DISTRIBUTIONS entry as installed here (a local version
    label such as torch's `+cpu` dropped: `==2.13.0` accepts the CPU build and a CUDA build
    alike).  Giving them also skips MLflow's slow dependency inference."""
    return [f"{name}=={version(name).split('+')[0]}" for name in SERVING_DISTRIBUTIONS]
