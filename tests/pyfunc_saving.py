"""Save a model folder as the registration logs it (models from code, the carried code, the
real signature and requirements), for tests that load it back without a registry."""

from __future__ import annotations

import warnings
from pathlib import Path


def save_as_registered(model_dir: Path, path: Path) -> Path:
    """mlflow.pyfunc.save_model of `model_dir` into `path`, as tasks/adapters/registry.py logs
    it; returns `path`."""
    import mlflow

    from diffusion.model import load_for_sampling
    from tasks.adapters.pyfunc_model import ARTIFACT, signature
    from tasks.adapters.pyfunc_package import ENTRY, code_paths, pip_requirements
    from tasks.adapters.registry import files_sha256, model_config

    _, spec = load_for_sampling(model_dir)
    with code_paths() as code, warnings.catch_warnings():
        # registration gives an input example; a check that loads the model back needs none
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        mlflow.pyfunc.save_model(path, python_model=str(ENTRY), code_paths=code,
                                 artifacts={ARTIFACT: str(model_dir)},
                                 signature=signature(spec.shape),
                                 pip_requirements=pip_requirements(),
                                 model_config=model_config(files_sha256(model_dir)))
    return path
