"""What made a result: the lineage record every checkpoint, model folder and pipeline step carries.

The rule (one place, used everywhere a result may be reused -- a resumed checkpoint, a finished
distillation round or student, a cached pipeline step):

    a result is reused only when everything that determines it is the same:
      * the settings it uses (the canonical JSON of exactly those settings; cadence settings
        such as log_every or checkpoint_every, which do not change the result, are left out),
      * the data it trained on (sha256 of the training tensor, plus DVC's md5 when known),
      * the identity of every upstream artifact it consumes (the teacher's weights for a student),
      * the project code it runs: `code_sha256`, the sha256 over the source of the entry module
        and of every project module it imports, transitively (static imports, found with `ast`,
        including imports inside functions), so a change to any file a step depends on -- say
        the loss weighting in objectives.py -- changes the hash, and a change elsewhere does not.

When anything differs the step recomputes or refuses with `ProvenanceError`, whose message
names each difference; a silent reuse is never an option.  The git commit is recorded for
people (and `dmops reproduce`), not compared: the code hash is what identifies the code.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:   # no torch at import: `dmops fingerprint` (run on every `dvc repro`) needs none
    import torch

PROJECT_PACKAGES = ("diffusion", "tasks", "flows")


class ProvenanceError(ValueError):
    """A stored result was made from other inputs than the ones requested; the message says
    which, and how to start afresh."""


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def settings_sha256(settings: Any) -> str:
    """sha256 of the canonical JSON of `settings` (any JSON-able value)."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()


def tensor_sha256(*tensors: torch.Tensor | None) -> str:
    """sha256 over the dtype, shape and C-order bytes of each tensor (None counts as absent):
    the identity of exactly what a network was trained on."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none;")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype};{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(net_or_state) -> str:
    """The identity of a network's weights: sha256 over every (name, dtype, shape, bytes) of
    its state dict in name order.  The same weights give the same hash whatever file layout
    held them (a model folder, a checkpoint's EMA file, a network in memory)."""
    state = net_or_state.state_dict() if hasattr(net_or_state, "state_dict") else net_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(f"{name};".encode())
        h.update(tensor_sha256(state[name]).encode())
    return h.hexdigest()


# --- code -------------------------------------------------------------------------------

def _package_root(top: str) -> Path | None:
    spec = importlib.util.find_spec(top)  # a top-level spec: found without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _module_file(name: str, roots: dict[str, Path]) -> Path | None:
    top, *rest = name.split(".")
    root = roots.get(top)
    if root is None:
        return None
    base = root.joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute names of every module `module`'s source imports (anywhere in the file),
    plus `pkg.name` for `from pkg import name` (name may be a submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def code_files(entry_modules: Iterable[str], packages: Iterable[str] = PROJECT_PACKAGES) -> dict[str, Path]:
    """{module name: source file} of `entry_modules` and every module of `packages` they import,
    transitively (with the __init__ of every package on the way, which importing runs)."""
    roots = {top: root for top in packages if (root := _package_root(top)) is not None}
    todo, seen = list(entry_modules), {}
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] not in roots:
            continue
        path = _module_file(name, roots)
        if path is None:
            continue
        seen[name] = path
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages
        tree = ast.parse(path.read_bytes(), filename=str(path))
        todo.extend(_imports(tree, name, path.name == "__init__.py"))
    return seen


def code_sha256(entry_modules: Iterable[str], packages: Iterable[str] = PROJECT_PACKAGES) -> str:
    """sha256 over the source of `entry_modules` and their project imports (see `code_files`),
    keyed by module name so that the hash does not depend on where the project lies."""
    files = code_files(entry_modules, packages)
    if not files:
        raise ProvenanceError(f"no source found for {list(entry_modules)} in {list(packages)}")
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{file_sha256(files[name])}\n".encode())
    return h.hexdigest()


# --- the record ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Lineage:
    """What the caller of a training or distillation knows and the library cannot: the code
    that runs it (a code_sha256 over the caller's entry module: the library alone would hash
    only itself), the dataset's DVC md5, and the git commit."""
    code_sha256: str | None = None
    dataset_md5: str | None = None
    git_commit: str | None = None


class Provenance(BaseModel):
    """What determined a result.  `settings` are exactly the settings that change it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    settings: dict[str, Any]
    data_sha256: str
    code_sha256: str
    dataset_md5: str | None = None       # DVC's content hash, when the data came through DVC
    teacher_sha256: str | None = None    # students: the weights they were distilled from
    git_commit: str | None = None        # for people and `dmops reproduce`; not compared

    @property
    def settings_sha256(self) -> str:
        return settings_sha256(self.settings)

    def differences(self, requested: "Provenance") -> list[str]:
        """Human-readable differences between this (stored) record and `requested`, in the
        fields that determine a result; empty when it may be reused."""
        out = [f"{key}: {_short(old)} (stored) vs {_short(new)} (requested)"
               for key, old, new in _dict_diff(self.settings, requested.settings)]
        for field, what in (("data_sha256", "training data"), ("code_sha256", "project code"),
                            ("teacher_sha256", "teacher weights")):
            old, new = getattr(self, field), getattr(requested, field)
            if old != new:
                out.append(f"{what}: sha256 {_short(old)} (stored) vs {_short(new)} (requested)")
        if self.dataset_md5 and requested.dataset_md5 and self.dataset_md5 != requested.dataset_md5:
            out.append(f"dataset md5: {self.dataset_md5} (stored) vs {requested.dataset_md5} (requested)")
        return out

    def require_same(self, requested: "Provenance", what: str, way_out: str) -> None:
        """Raise ProvenanceError naming every difference, when there is one."""
        diff = self.differences(requested)
        if diff:
            raise ProvenanceError(f"{what} was made from other inputs than requested: "
                                  + "; ".join(diff) + f". {way_out}")


def _short(value) -> str:
    if isinstance(value, str) and len(value) == 64:
        return value[:12]
    return json.dumps(value, default=str) if not isinstance(value, str) else repr(value)


def _dict_diff(old: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _dict_diff(a, b, f"{prefix}{key}.")
        elif canonical_json(a) != canonical_json(b):
            out.append((f"{prefix}{key}", a, b))
    return out


def stored_provenance(meta: dict, where: str, way_out: str) -> Provenance:
    """The Provenance recorded in a checkpoint's or model's metadata; a record without one
    (written before provenance was recorded) cannot be trusted for reuse."""
    record = meta.get("provenance")
    if not record:
        raise ProvenanceError(f"{where} records no provenance (written by an older dmops), so it "
                              f"cannot be reused safely. {way_out}")
    return Provenance.model_validate(record)
