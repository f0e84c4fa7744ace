"""Loading a registered model leaves the user's installed dmops whole.

MLflow puts a logged model's carried code (tasks.adapters.pyfunc_package: only the modules
sampling imports) first on sys.path when it loads the model.  Before this check, the carried
`diffusion` package then shadowed the installed one for the rest of the process:
`mlflow.pyfunc.load_model(...)` followed by `import diffusion.tabular.vectors` failed with
ModuleNotFoundError, the copy's tabular/ holding only three modules.  Each case runs in a fresh
interpreter, as a user's notebook would: this test process has imported dmops already, and an
imported package is never shadowed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pyfunc_saving import save_as_registered

CHECKOUT = Path(__file__).resolve().parents[1]

# load the model, sample from it, then import modules the model does not carry
USER_SESSION = """
import json, sys, warnings
import mlflow.pyfunc
with warnings.catch_warnings(record=True) as raised:
    warnings.simplefilter("always")
    model = mlflow.pyfunc.load_model(sys.argv[1])
x = model.predict({"n": 2, "seed": 0})
import diffusion, diffusion.tabular.vectors, tasks.steps.register
import diffusion.samplers as samplers
print(json.dumps({"diffusion": diffusion.__file__, "samplers": samplers.__file__,
                  "vectors": diffusion.tabular.vectors.__file__, "shape": list(x.shape),
                  "warnings": [str(w.message) for w in raised
                               if "dmops" in str(w.message)]}))
"""


@pytest.fixture(scope="module")
def saved_model(tiny_model, tmp_path_factory) -> Path:
    """tiny_model saved as registration logs it: models from code with the carried code."""
    return save_as_registered(tiny_model, tmp_path_factory.mktemp("pyfunc") / "model")


def _session(model: Path, cwd: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", USER_SESSION, str(model)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_loading_a_model_keeps_the_installed_package_importable(saved_model, tmp_path):
    seen = _session(saved_model, tmp_path)
    assert seen["shape"][0] == 2
    # the installed package, not the model's partial copy: the rest of it imports
    assert Path(seen["diffusion"]) == CHECKOUT / "diffusion" / "__init__.py", seen
    assert Path(seen["vectors"]) == CHECKOUT / "diffusion" / "tabular" / "vectors.py", seen
    assert seen["warnings"] == [], seen


def test_a_model_whose_code_differs_runs_its_own_and_says_so(saved_model, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(saved_model, model)
    carried = model / "code" / "diffusion" / "samplers.py"
    carried.write_text(carried.read_text() + "\n# registered from another commit\n")
    seen = _session(model, tmp_path)
    # the model samples with the code it was registered with, the rest of the package imports
    assert Path(seen["samplers"]) == carried, seen
    assert Path(seen["vectors"]) == CHECKOUT / "diffusion" / "tabular" / "vectors.py", seen
    # ... and one warning names the differing module and what to do
    assert len(seen["warnings"]) == 1, seen
    message = seen["warnings"][0]
    assert "diffusion/samplers.py" in message and "git_commit" in message, message
