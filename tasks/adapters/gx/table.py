"""A processed dataset folder -> the table the validation suite runs on.

The suite validates the manifest (one row per sample) joined by id with what data.npz
really holds, so a manifest that does not describe the arrays beside it fails as well:

    data_sha256   sha256 of the sample's float32 bytes in data.npz (missing when the id is)
    data_shape    the array's per-sample shape in the manifest's notation, e.g. '1x8x8'
    data_dtype    the array's dtype, e.g. 'float32'

and, when meta.json records the loader's `ingestion` (what it read, skipped and altered):

    source_files_skipped   files of the source the loader skipped for a reason other than
                           being hidden (the same number in every row: a dataset-level fact)

Nothing here trusts the dataset loaders (a bad dataset can come from anywhere): the files
are read with numpy and pandas directly, and every column the suite checks is parsed
leniently (garbage -> NaN) so that bad values become failed expectations, not crashes.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# The manifest columns the gate reads: its own input contract (diffusion.data writes them).
MANIFEST_COLUMNS = ("id", "split", "label", "shape", "min", "max", "mean", "std", "nonfinite",
                    "sha256")
NUMERIC_COLUMNS = ("label", "min", "max", "mean", "std", "nonfinite")
UNLABELLED = -1  # the manifest's label of a sample without one
SKIPPED_COLUMN = "source_files_skipped"
# hidden files and folders (.DS_Store, ._x.png, .ipynb_checkpoints/, .git/) are tool
# droppings, not data: skipping them is counted but never a failure
HARMLESS_SKIPS = ("hidden",)


class StructureError(ValueError):
    """A processed folder that cannot be read into a table; `problems` lists each one."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class ProcessedTable:
    name: str
    frame: pd.DataFrame          # manifest columns + data_sha256, data_shape, data_dtype
    n_samples: int               # samples in data.npz
    class_names: list[str] | None
    ingestion: dict | None = None  # meta.json's record of what the loader read and skipped

    @property
    def labelled(self) -> bool:
        return bool((self.frame["label"] != UNLABELLED).any())


def read_processed_table(folder: str | Path) -> ProcessedTable:
    """Read manifest.csv, data.npz and meta.json of `folder`; raise StructureError listing
    every file or column that is missing or unreadable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StructureError([f"{folder}: is not a directory; accepted: a processed dataset "
                              "folder written by diffusion.data.save_processed"])
    problems: list[str] = []
    meta = _read_meta(folder / "meta.json", problems)
    manifest = _read_manifest(folder / "manifest.csv", problems)
    arrays = _read_arrays(folder / "data.npz", problems)
    if problems:
        raise StructureError(problems)

    x, ids = arrays
    hashes = _sample_sha256(x)
    frame = manifest.copy()
    frame["data_sha256"] = frame["id"].map(dict(zip(ids, hashes)))
    frame["data_shape"] = "x".join(map(str, x.shape[1:]))
    frame["data_dtype"] = str(x.dtype)
    ingestion = meta.get("ingestion")
    if ingestion is not None:
        frame[SKIPPED_COLUMN] = sum(info["count"] for reason, info in ingestion["skipped"].items()
                                    if reason not in HARMLESS_SKIPS)
    return ProcessedTable(name=meta["name"], frame=frame, n_samples=len(x),
                          class_names=meta["class_names"], ingestion=ingestion)


def reference_statistics(table: ProcessedTable) -> dict:
    """This dataset's summary, to pass as `reference` when validating its next version.

    per_sample.<column>.std is the sample standard deviation (ddof = 1), the statistic
    Great Expectations' column stdev reports.
    """
    frame = table.frame
    shapes = frame["shape"].unique()
    shares = None
    if table.labelled:
        counts = frame["label"].value_counts(normalize=True).sort_index()
        shares = {str(int(label)): float(share) for label, share in counts.items()
                  if np.isfinite(label)}
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf in a bad table's std: NaN
        per_sample = {column: {"mean": float(frame[column].mean()),
                               "std": float(frame[column].std(ddof=1))}
                      for column in ("mean", "std")}
    return {
        "rows": int(len(frame)),
        "shape": str(shapes[0]) if len(shapes) == 1 else None,
        "per_sample": per_sample,
        "label_shares": shares,
    }


def _read_meta(path: Path, problems: list[str]) -> dict:
    if not path.is_file():
        problems.append(f"{path}: missing; a processed folder needs meta.json "
                        "({\"name\", \"kind\", \"class_names\"}), as save_processed writes it")
        return {}
    try:
        meta = json.loads(path.read_text())
        name, class_names = meta["name"], meta.get("class_names")
        if not isinstance(name, str) or not (
                class_names is None or (isinstance(class_names, list)
                                        and all(isinstance(c, str) for c in class_names))):
            raise TypeError("'name' must be a string and 'class_names' a list of strings or null")
        ingestion = meta.get("ingestion")
        if ingestion is not None and not (
                isinstance(ingestion.get("skipped"), dict)
                and all(isinstance(info.get("count"), int) and info["count"] >= 0
                        for info in ingestion["skipped"].values())):
            raise TypeError("'ingestion.skipped' must map each reason to {'count': n, ...}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        problems.append(f"{path}: unreadable ({exc!r}); accepted: a JSON object with a string "
                        "'name', 'class_names' (list of strings or null) and optionally "
                        "'ingestion' as diffusion.data.save_processed writes it")
        return {}
    return {"name": name, "class_names": class_names, "ingestion": ingestion}


def _read_manifest(path: Path, problems: list[str]) -> pd.DataFrame:
    if not path.is_file():
        problems.append(f"{path}: missing; a processed folder needs manifest.csv, one row per "
                        "sample, as diffusion.data.Dataset.manifest() writes it")
        return pd.DataFrame()
    try:
        # everything as text first: a stray word in a number column must become a NaN that
        # an expectation reports, not a parse error or an object column
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        problems.append(f"{path}: not a readable CSV table ({exc}); accepted: the manifest "
                        "written by diffusion.data.save_processed")
        return pd.DataFrame()
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        problems.append(f"{path}: missing column(s) {missing}; found {list(frame.columns)}; "
                        f"accepted: {', '.join(MANIFEST_COLUMNS)}")
        return pd.DataFrame()
    for column in NUMERIC_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _read_arrays(path: Path, problems: list[str]) -> tuple[np.ndarray, list[str]]:
    if not path.is_file():
        problems.append(f"{path}: missing; a processed folder needs data.npz with arrays "
                        "'x', 'split', 'ids' (and 'y' when labelled)")
        return np.empty(0), []
    try:
        archive = np.load(path, allow_pickle=False)  # never unpickle data files
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with archive:
            missing = [key for key in ("x", "ids") if key not in archive.files]
            if missing:
                problems.append(f"{path}: missing array(s) {missing}; found {archive.files}")
                return np.empty(0), []
            x, ids = archive["x"], archive["ids"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        problems.append(f"{path}: not a readable .npz archive ({exc}); accepted: np.savez output "
                        "with numeric and string arrays only")
        return np.empty(0), []
    if x.dtype.kind not in "biuf" or x.ndim < 2:
        problems.append(f"{path}: 'x' has dtype {x.dtype} and shape {x.shape}; accepted: a "
                        "float32 array with one sample per row, e.g. (N, 1, 8, 8)")
    if ids.shape != (len(x),):
        problems.append(f"{path}: 'ids' has shape {ids.shape} for {len(x)} samples; accepted: "
                        f"({len(x)},), one id per sample")
    return x, [str(i) for i in ids.tolist()]


def _sample_sha256(x: np.ndarray) -> list[str]:
    # the manifest's definition: float32 bytes in C order, what the network sees
    samples = np.ascontiguousarray(x, dtype=np.float32)
    return [hashlib.sha256(s.tobytes()).hexdigest() for s in samples]
