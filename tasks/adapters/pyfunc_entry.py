"""The file MLflow runs to build the served model ("models from code").

`register_model` logs the model with this file as its `python_model`: MLflow copies it into the
model and executes it at load time, after it has put the model's carried code
(tasks.adapters.pyfunc_package) on sys.path; `set_model` hands MLflow the sampler.  Nothing is
pickled: the model is this source, the carried project code and the safetensors weights.

The carried code is only what sampling imports, so MLflow's copy first on sys.path would shadow
an installed dmops for the rest of the process (`import diffusion.tabular.vectors` after
`mlflow.pyfunc.load_model` failed).  `_keep_the_installed_packages_whole` prevents that before
anything is imported: where the installed packages hold the same sources, the copy leaves sys.path
and the installed code runs (the same bytes); where they differ, the model keeps its own code, the
installed modules it does not carry stay importable beside it, and one warning names the differing
files.  Where dmops is not installed (a served model's own environment) nothing changes.
"""

import importlib
import importlib.util
import sys
import warnings
from pathlib import Path

from mlflow.models import set_model


def _keep_the_installed_packages_whole() -> None:
    """Drop the model's code/ folder from sys.path when the installed packages carry identical
    sources; otherwise complete each carried package's __path__ with the installed folder and
    warn once (UserWarning) naming the files that differ."""
    code = Path(__file__).resolve().parent / "code"
    ours = [entry for entry in sys.path if entry and Path(entry).resolve() == code]
    if not ours:       # registration's own check, from the checkout: nothing is shadowed
        return
    rest = [entry for entry in sys.path if entry not in ours]
    installed: dict[str, Path] = {}
    for top in sorted(p.name for p in code.iterdir() if (p / "__init__.py").is_file()):
        loaded = sys.modules.get(top)
        origin = getattr(loaded, "__file__", None)
        if loaded is not None and not (origin and code in Path(origin).resolve().parents):
            continue   # imported before the model: it already is the installed package
        saved, sys.path[:] = sys.path[:], rest
        try:
            spec = importlib.util.find_spec(top)
        finally:
            sys.path[:] = saved
        if spec is None or not spec.submodule_search_locations:
            return     # not installed here: the carried code is all there is
        installed[top] = Path(list(spec.submodule_search_locations)[0])
    carried = sorted(p.relative_to(code) for top in installed for p in (code / top).rglob("*.py"))
    differing = [rel for rel in carried if not _same_file(code / rel, installed[rel.parts[0]]
                                                          / Path(*rel.parts[1:]))]
    if not differing:
        sys.path[:] = rest
        return
    for rel in carried:
        if rel.name == "__init__.py":
            package = importlib.import_module(".".join(rel.parts[:-1]))
            fallback = str(installed[rel.parts[0]].joinpath(*rel.parts[1:-1]))
            if fallback not in package.__path__:
                package.__path__.append(fallback)
    warnings.warn(
        f"this model carries dmops code that differs from the dmops installed here "
        f"({', '.join(map(str, differing))}): it samples with its own copy, which stands in for "
        f"those modules in this process; to have one version, install the dmops commit in the "
        f"model version's git_commit tag", UserWarning, stacklevel=2)


def _same_file(a: Path, b: Path) -> bool:
    return b.is_file() and a.read_bytes() == b.read_bytes()


_keep_the_installed_packages_whole()

from tasks.adapters.pyfunc_model import DiffusionSampler  # noqa: E402  -- after the path is set

set_model(DiffusionSampler())
