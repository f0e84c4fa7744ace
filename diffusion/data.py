"""Datasets as tensors: load, check, split, describe and store training data.

Every loader returns a `Dataset` whose `x` is float32 -- images (N, C, H, W) scaled
to [-1, 1], or vectors (N, D) -- with optional int64 labels, a seeded train/val/test
split and a stable id per sample.  Loaders call `validate` before returning, so bad
input (a corrupt image, NaN in an array, a wrong shape) stops here with a `DataError`
naming the file and the problem rather than surfacing later as a NaN loss.

`Dataset.manifest()` gives one row per sample (id, split, label, shape, statistics,
sha256) for data-quality checks and lineage; `save_processed` / `load_processed`
store a dataset as a folder, written atomically:

    data.npz        x, split, ids and, when labelled, y
    manifest.csv    Dataset.manifest()
    meta.json       {"name", "kind", "class_names", "ingestion"}

`ingestion` records what the loader read from its source, what it skipped (by reason, with
folders and examples) and what it changed (alpha composited, EXIF orientation applied,
resized, ...): see diffusion/image_files.py.  Nothing a user's folder or .npz holds is dropped
or altered without being counted there; what cannot be kept faithfully is a DataError.

Only torch, numpy, pandas, PIL and scikit-learn are used, so the module runs
anywhere the training code runs.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import zipfile
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn.datasets
import torch

from .atomic import atomic_folder
from .data_errors import DataError
from .gmm import GaussianMixture
from .data_settings import background_rgb
from .image_files import (EXTENSIONS_TEXT, Background, Fit, FolderScan, ImageFileError,
                          Ingestion, read_images, scan_folder)

SPLITS = ("train", "val", "test")
# image (N, C, H, W); vector (N, D); table: vectors (N, D) encoding a table's rows
KINDS = ("image", "vector", "table")
FITS = ("stretch", "crop", "pad")
TOY_NAMES = ("moons", "swiss_roll", "gmm8")
MANIFEST_COLUMNS = ["id", "split", "label", "shape", "min", "max", "mean", "std",
                    "nonfinite", "sha256"]
PROCESSED_FILES = ("data.npz", "manifest.csv", "meta.json")


@dataclass
class Dataset:
    name: str
    x: torch.Tensor
    y: torch.Tensor | None
    split: np.ndarray
    ids: list[str]
    kind: str
    class_names: list[str] | None = None
    # what the loader read, skipped (by reason) and altered (by kind): image_files.Ingestion
    ingestion: dict | None = None
    # kind "table": the rows' encoder state (diffusion/tabular/vectors.py), to decode vectors
    table: dict | None = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def n_classes(self) -> int:
        """How many classes the labels index: the named ones, or up to the largest label when
        the data names none (an .npz may carry 'y' without 'class_names'); 0 unlabelled."""
        if self.y is None or len(self.y) == 0:
            return 0
        return max(len(self.class_names or ()), int(self.y.max()) + 1)

    def subset(self, split: str) -> Dataset:
        """The rows of one split (not re-validated: a val subset has no train rows)."""
        if split not in SPLITS:
            raise DataError(f"{self.name}: unknown split {split!r}; accepted: {', '.join(SPLITS)}")
        mask = self.split == split
        rows = torch.from_numpy(mask)
        return replace(self, x=self.x[rows], y=None if self.y is None else self.y[rows],
                       split=self.split[mask], ids=[i for i, keep in zip(self.ids, mask) if keep])

    def manifest(self) -> pd.DataFrame:
        """One row per sample; sha256 is over the float32 bytes in C order, so it
        identifies exactly what the network sees."""
        n = len(self.x)
        flat = self.x.detach().cpu().reshape(n, -1).to(torch.float64)
        samples = np.ascontiguousarray(self.x.detach().cpu().numpy(), dtype=np.float32)
        return pd.DataFrame({
            "id": self.ids,
            "split": self.split,
            "label": -1 if self.y is None else self.y.cpu().numpy(),
            "shape": "x".join(map(str, self.sample_shape)),
            "min": flat.min(1).values.numpy(),
            "max": flat.max(1).values.numpy(),
            "mean": flat.mean(1).numpy(),
            "std": flat.std(1, correction=0).numpy(),  # population std: defined for D = 1
            "nonfinite": (~torch.isfinite(flat)).sum(1).numpy(),
            "sha256": [hashlib.sha256(s.tobytes()).hexdigest() for s in samples],
        }, columns=MANIFEST_COLUMNS)


# --- splitting ----------------------------------------------------------------

def split_indices(n: int, seed: int, val_fraction: float, test_fraction: float,
                  stratify: np.ndarray | None = None) -> np.ndarray:
    """The split name of each of n samples, a pure function of its arguments.

    Exactly round(fraction * n) samples go to val and to test, and at least one
    whenever the fraction is positive, so a requested split is never silently empty.
    With `stratify` labels every class is shuffled on its own and the classes are
    interleaved by relative rank, so each split holds each class in proportion
    (to within one sample) while the totals stay exact.
    """
    for label, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise DataError(f"{label}={f} is out of range; accepted: 0 <= fraction < 1")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves "
                        "nothing to train on; accepted: a sum below 1")
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise DataError(f"{n} samples are too few for val_fraction={val_fraction} and "
                        f"test_fraction={test_fraction}: each positive fraction takes at least "
                        "one sample and train needs one; use more samples or fractions of 0")
    if stratify is None:
        groups = np.zeros(n, dtype=np.int64)
    else:
        stratify = np.asarray(stratify)
        if stratify.shape != (n,):
            raise DataError(f"stratify labels have shape {stratify.shape}; accepted: ({n},)")
        groups = np.unique(stratify, return_inverse=True)[1].reshape(n)

    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    order = order[np.argsort(groups[order], kind="stable")]  # by class, shuffled within
    counts = np.bincount(groups)
    group = groups[order]
    rank = np.arange(n) - (np.cumsum(counts) - counts)[group]
    quantile = (rank + 0.5) / counts[group]
    order = order[np.lexsort((rng.random(n), quantile))]  # ties between classes: random

    split = np.full(n, "train", dtype="<U5")
    split[order[:n_test]] = "test"
    split[order[n_test:n_test + n_val]] = "val"
    return split


def _split(where, seed, val_fraction, test_fraction, n, y) -> np.ndarray:
    """split_indices stratified by y when there are labels, its errors naming the source."""
    try:
        return split_indices(n, seed, val_fraction, test_fraction,
                             stratify=None if y is None else y.numpy())
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None


# --- validation -----------------------------------------------------------------

def validate(ds: Dataset, require_finite: bool = True) -> Dataset:
    """Raise DataError unless `ds` is usable for training; return it unchanged.

    val and test may be empty (a fraction of 0, or a given split without them);
    `split_indices` is where a positive fraction is held to a non-empty split.
    `require_finite=False` checks structure only: the pipeline's prepare stage stores
    values as they are, so that its data-quality gate can report NaN/inf with the
    rest of its findings (the manifest counts them per sample).
    """
    where = ds.name
    if ds.kind not in KINDS:
        raise DataError(f"{where}: unknown kind {ds.kind!r}; accepted: {', '.join(map(repr, KINDS))}")
    if (ds.kind == "table") != (ds.table is not None):
        raise DataError(f"{where}: kind {ds.kind!r} with{'out' if ds.table is None else ''} an "
                        "encoder state; a table's vectors carry their encoder, nothing else does")
    if not isinstance(ds.x, torch.Tensor) or ds.x.dtype != torch.float32:
        raise DataError(f"{where}: x must be a float32 torch.Tensor, got "
                        f"{getattr(ds.x, 'dtype', type(ds.x).__name__)}")
    shape = tuple(ds.x.shape)
    if ds.kind == "image":
        if len(shape) != 4:
            raise DataError(f"{where}: image x has shape {shape}; accepted: (N, C, H, W)")
        if shape[1] not in (1, 3) or shape[2] < 2 or shape[3] < 2:
            raise DataError(f"{where}: image x has shape {shape}; accepted: C in (1, 3) "
                            "channels and H, W >= 2")
    elif len(shape) != 2 or shape[1] < 1:
        raise DataError(f"{where}: {ds.kind} x has shape {shape}; accepted: (N, D) with D >= 1")
    n = shape[0]
    if n == 0:
        raise DataError(f"{where}: x is empty (shape {shape}); at least one sample is needed")

    if len(ds.ids) != n:
        raise DataError(f"{where}: {len(ds.ids)} ids for {n} samples; accepted: one id per sample")
    if len(set(ds.ids)) != n:
        raise DataError(f"{where}: ids are not unique; every sample needs its own id")

    bad = ~torch.isfinite(ds.x.reshape(n, -1))
    if require_finite and bad.any():
        rows = bad.any(1).nonzero().flatten().tolist()
        nan = int(torch.isnan(ds.x).sum())
        raise DataError(f"{where}: x has {int(bad.sum())} non-finite values (NaN/inf: {nan} NaN, "
                        f"{int(bad.sum()) - nan} inf) in {len(rows)} samples, first: "
                        f"{[ds.ids[i] for i in rows[:5]]}; all values must be finite")

    if ds.y is not None:
        if not isinstance(ds.y, torch.Tensor) or ds.y.dtype != torch.int64:
            raise DataError(f"{where}: y must be an int64 torch.Tensor, got "
                            f"{getattr(ds.y, 'dtype', type(ds.y).__name__)}")
        if tuple(ds.y.shape) != (n,):
            raise DataError(f"{where}: y has shape {tuple(ds.y.shape)}; accepted: ({n},), "
                            "one label per sample")
        if int(ds.y.min()) < 0:  # -1 means "no label" in the manifest
            raise DataError(f"{where}: y has negative labels (min {int(ds.y.min())}); "
                            "accepted: class indices >= 0")
        if ds.class_names is not None and int(ds.y.max()) >= len(ds.class_names):
            raise DataError(f"{where}: label {int(ds.y.max())} has no class name "
                            f"({len(ds.class_names)} class_names)")

    if not isinstance(ds.split, np.ndarray) or ds.split.shape != (n,):
        raise DataError(f"{where}: split has shape {getattr(ds.split, 'shape', None)}; "
                        f"accepted: a numpy array of shape ({n},)")
    unknown = sorted(set(ds.split.tolist()) - set(SPLITS))
    if unknown:
        raise DataError(f"{where}: unknown split values {unknown}; accepted: {', '.join(SPLITS)}")
    if not (ds.split == "train").any():
        raise DataError(f"{where}: the train split is empty; at least one train sample is needed")
    return ds


# --- loaders --------------------------------------------------------------------------

def _numbered_ids(prefix: str, n: int) -> list[str]:
    width = max(5, len(str(n - 1)))
    return [f"{prefix}-{i:0{width}d}" for i in range(n)]


def load_digits(seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 1797 8x8 handwritten digits (bundled, no download), values
    0..16 mapped exactly onto [-1, 1]."""
    bunch = sklearn.datasets.load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    split = _split("digits", seed, val_fraction, test_fraction, len(x), y)
    return validate(Dataset("digits", x, y, split, _numbered_ids("digits", len(x)), "image",
                            [str(c) for c in range(10)], Ingestion("builtin").as_dict()))


def load_image_folder(path, size: int, channels: int = 1, seed: int = 0,
                      val_fraction: float = 0.1, test_fraction: float = 0.2,
                      labels: bool | None = None, background: Background = "white",
                      fit: Fit = "stretch") -> Dataset:
    """The images under `path` (every extension in image_files.IMAGE_EXTENSIONS, any case:
    PNG, JPEG, WebP, GIF, BMP, TIFF, ...), in sorted order, as (N, channels, size, size).

    Labels are the first-level sub-folder names (sorted -> class index) when `labels` is True,
    or when it is None and every image lies in a sub-folder; then every non-hidden sub-folder
    is a class, and one without a usable image is a DataError naming it (it would otherwise
    vanish and renumber the classes after it).  Hidden files and folders (name starting with
    '.') are skipped; so are files of other extensions: both are counted, by reason and
    folder, in `Dataset.ingestion`, with what reading changed (image_files' docstring).

    `background` ('white', 'black', a grey level 0..255 or [r, g, b]) is what transparent
    pixels are composited onto.  White is the default because transparent images are mostly
    drawings, icons and scans meant to be seen on a page or screen, which show them on white;
    it keeps the issue's black stroke on transparency a black stroke.  `fit` brings
    non-square images to size x size: 'stretch' (the whole picture, distorted), 'crop' (the
    centred square, undistorted, edges lost) or 'pad' (the whole picture, undistorted, bars
    of the background colour); every non-square image is counted either way.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: {'is not a directory' if root.exists() else 'does not exist'}; "
                        "accepted: a directory of images")
    if channels not in (1, 3):
        raise DataError(f"channels={channels}; accepted: 1 (grey) or 3 (RGB)")
    if not isinstance(size, int) or size < 2:
        raise DataError(f"size={size!r}; accepted: an integer >= 2")
    if fit not in FITS:
        raise DataError(f"fit={fit!r}; accepted: {', '.join(FITS)}")
    try:
        rgb = background_rgb(background)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    scan = scan_folder(root)
    files = scan.files
    if not files:
        found = ", ".join(f"{len(p)} {reason}" for reason, p in scan.skipped.items()) or "nothing"
        raise DataError(f"{root}: no images found (found {found}; looked for "
                        f"{EXTENSIONS_TEXT}, any case, in all sub-folders)")
    top_level = [rel.as_posix() for rel in files if len(rel.parts) == 1]
    if labels is None:
        labels = not top_level
    if labels and top_level:
        raise DataError(f"{root}: labels=True but {len(top_level)} images are not in a class "
                        f"sub-folder, first: {top_level[:3]}; accepted: <class>/<image> paths")
    class_names = None
    if labels:
        class_names = sorted({f for f in scan.folders if "/" not in f})
        used = {rel.parts[0] for rel in files}
        empty = [name for name in class_names if name not in used]
        if empty:
            raise DataError(f"{root}: class folder(s) {empty} hold no usable image "
                            f"({_skipped_in(scan, empty)}); a class with no image would vanish "
                            f"and renumber the classes after it; accepted: an image "
                            f"({EXTENSIONS_TEXT}) in every class folder, or remove the folder")

    try:
        pixels, altered = read_images(root, files, channels, size, rgb, fit)
    except ImageFileError as exc:
        raise DataError(str(exc)) from None

    array = np.stack(pixels).reshape(len(files), size, size, channels).transpose(0, 3, 1, 2)
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / 127.5 - 1.0)
    y = None
    if labels:
        index = {name: k for k, name in enumerate(class_names)}
        y = torch.tensor([index[rel.parts[0]] for rel in files], dtype=torch.int64)
    split = _split(root, seed, val_fraction, test_fraction, len(files), y)
    ingestion = Ingestion("folder", len(files), scan.skipped, dict(altered),
                          {"background": list(rgb), "fit": fit})
    return validate(Dataset(root.resolve().name, x, y, split, [rel.as_posix() for rel in files],
                            "image", class_names, ingestion.as_dict()))


def _skipped_in(scan: FolderScan, folders: list[str]) -> str:
    """What each top-level folder of `folders` held instead of images, e.g.
    "'b': 2 unsupported_extension"."""
    parts = []
    for folder in folders:
        reasons = {reason: sum(1 for p in paths if p.split("/")[0] == folder and p != folder + "/")
                   for reason, paths in scan.skipped.items()}
        held = ", ".join(f"{n} {reason}" for reason, n in reasons.items() if n) or "empty"
        parts.append(f"{folder!r}: {held}")
    return "; ".join(parts)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz archive, with every way of not being one as a DataError."""
    if not path.is_file():
        raise DataError(f"{path}: {'is not a file' if path.exists() else 'does not exist'}; "
                        "accepted: an .npz archive")
    try:
        archive = np.load(path, allow_pickle=False)  # never unpickle data files
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: holds a single .npy array, not an .npz archive; accepted: "
                            "np.savez(path, x=..., y=..., split=...)")
        with archive:
            return {key: archive[key] for key in archive.files}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a valid .npz archive ({exc}); accepted: the output of "
                        "np.savez with numeric and string arrays only") from exc


NPZ_KEYS = ("x", "y", "split", "ids", "class_names")


def load_npz(path, seed: int = 0, val_fraction: float = 0.1,
             test_fraction: float = 0.2, require_finite: bool = True) -> Dataset:
    """Arrays 'x' ((N, C, H, W) images or (N, D) vectors), optional integer 'y', optional
    'split' (strings train/val/test), optional 'ids' (N unique strings, else numbered) and
    optional 'class_names' (strings, one per class index in 'y').  Any other key is a
    DataError naming it: an array under a misspelt name ('labels' for 'y') would otherwise be
    ignored and the data silently unlabelled.

    Values are used as stored -- scaling is the caller's job -- but are validated (NaN/inf
    only when `require_finite`).  x becomes float32: a value beyond float32's range is a
    DataError, and the largest change the cast makes (float64 rounding, integers above 2**24)
    is recorded in `Dataset.ingestion["details"]`.
    """
    path = Path(path)
    arrays = _read_npz(path)
    accepted = "'x' (required), " + ", ".join(f"'{k}'" for k in NPZ_KEYS[1:])
    unknown = sorted(set(arrays) - set(NPZ_KEYS))
    if unknown:
        raise DataError(f"{path}: unknown array(s) {unknown} (keys found: {sorted(arrays)}); "
                        f"accepted keys: {accepted}; rename or remove them (labels go in 'y')")
    if "x" not in arrays:
        raise DataError(f"{path}: no 'x' array; keys found: {sorted(arrays)}; accepted keys: "
                        f"{accepted}")
    x = arrays["x"]
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: 'x' has dtype {x.dtype}; accepted: a real numeric dtype")
    if x.ndim not in (2, 4):
        raise DataError(f"{path}: 'x' has shape {x.shape}; accepted: (N, C, H, W) images or "
                        "(N, D) vectors (add a channel axis to (N, H, W) grey images)")
    n = len(x)
    if n == 0:
        raise DataError(f"{path}: 'x' is empty (shape {x.shape}); at least one sample is needed")

    y = arrays.get("y")
    if y is not None:
        if y.dtype.kind not in "iu":
            raise DataError(f"{path}: 'y' has dtype {y.dtype}; accepted: integer class indices")
        if y.shape != (n,):
            raise DataError(f"{path}: 'y' has shape {y.shape} but 'x' has {n} samples; "
                            f"accepted: shape ({n},)")
        if y.dtype == np.uint64 and len(y) and int(y.max()) > np.iinfo(np.int64).max:
            # astype would wrap these round to negative labels
            raise DataError(f"{path}: 'y' holds label {int(y.max())}, beyond int64; accepted: "
                            "class indices 0 .. number of classes - 1")
        y = torch.from_numpy(y.astype(np.int64))

    split = arrays.get("split")
    if split is None:
        split = _split(path, seed, val_fraction, test_fraction, n, y)
    else:
        split = _strings(path, "split", split, n)
        unknown = sorted(set(split.tolist()) - set(SPLITS))
        if unknown:
            raise DataError(f"{path}: 'split' has unknown values {unknown}; "
                            f"accepted: {', '.join(SPLITS)}")
    name = path.stem
    ids = (_strings(path, "ids", arrays["ids"], n).tolist() if "ids" in arrays
           else _numbered_ids(name, n))
    class_names = None
    if "class_names" in arrays:
        names = arrays["class_names"]
        class_names = _strings(path, "class_names", names, len(names)).tolist()
        if y is None:
            raise DataError(f"{path}: 'class_names' without 'y'; accepted: both or neither")

    with np.errstate(over="ignore"):  # overflow is reported below, with its place
        x32 = np.ascontiguousarray(x, dtype=np.float32)
    details = {"x_dtype": str(x.dtype)}
    if x.dtype != np.float32:
        with np.errstate(invalid="ignore", over="ignore"):
            overflow = np.isfinite(x) & ~np.isfinite(x32)
            if overflow.any():
                raise DataError(f"{path}: 'x' has {int(overflow.sum())} finite values beyond "
                                f"float32's range (|x| > {np.finfo(np.float32).max:.3g}), first "
                                f"in sample {int(np.argwhere(overflow)[0][0])}; accepted: values "
                                "that float32 holds (rescale the data)")
            both = np.isfinite(x)
            change = np.abs(x32.astype(np.float64) - x.astype(np.float64))[both]
        details["x_cast"] = {"to": "float32",
                             "max_abs_change": float(change.max()) if change.size else 0.0}
    ingestion = Ingestion("npz", 1, details={"keys": sorted(arrays), **details})
    return validate(Dataset(name, torch.from_numpy(x32), y, split, ids,
                            "image" if x.ndim == 4 else "vector", class_names,
                            ingestion.as_dict()), require_finite)


def _strings(path: Path, key: str, array: np.ndarray, n: int) -> np.ndarray:
    if array.dtype.kind not in "US" or array.shape != (n,):
        raise DataError(f"{path}: '{key}' has dtype {array.dtype} and shape {array.shape}; "
                        f"accepted: a string array of shape ({n},)")
    return array.astype(str)


def load_toy(name: str, n: int = 4096, seed: int = 0, val_fraction: float = 0.1,
             test_fraction: float = 0.2) -> Dataset:
    """2-D point sets of spread order 1: 'moons' (labelled by moon), 'swiss_roll'
    (unlabelled) and 'gmm8' (labelled by mixture component)."""
    if name not in TOY_NAMES:
        raise DataError(f"unknown toy dataset {name!r}; accepted: {', '.join(TOY_NAMES)}")
    if not isinstance(n, int) or n < 1:
        raise DataError(f"n={n!r}; accepted: a positive integer")
    y = class_names = None
    if name == "moons":
        points, labels = sklearn.datasets.make_moons(n, noise=0.05, random_state=seed)
        points = (points - points.mean(0)) / points.std(0)
        y, class_names = torch.from_numpy(labels.astype(np.int64)), ["upper", "lower"]
    elif name == "swiss_roll":
        roll = sklearn.datasets.make_swiss_roll(n, noise=0.25, random_state=seed)[0]
        points = roll[:, [0, 2]] / 5  # the (x, z) plane holds the spiral
    else:
        generator = torch.Generator().manual_seed(seed)
        points, y = GaussianMixture.ring(8, 2.0, 0.15).sample(n, generator)
        points, class_names = points.numpy(), [str(k) for k in range(8)]
    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    split = _split(name, seed, val_fraction, test_fraction, n, y)
    return validate(Dataset(name, x, y, split, _numbered_ids(name, n), "vector", class_names,
                            Ingestion("builtin").as_dict()))


_LOADERS = {
    "digits": load_digits,
    **{toy: partial(load_toy, toy) for toy in TOY_NAMES},
    "folder": load_image_folder,
    "npz": load_npz,
}


def load_dataset(name: str, **options) -> Dataset:
    """Load by name; `options` are the chosen loader's own keyword arguments
    ('folder' and 'npz' need `path`, 'folder' also `size`)."""
    if name not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}; accepted: {', '.join(_LOADERS)}")
    loader = _LOADERS[name]
    params = inspect.signature(loader).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise DataError(f"dataset {name!r} does not accept option(s) {unknown}; "
                        f"accepted: {sorted(params)}")
    missing = [p for p, spec in params.items() if spec.default is spec.empty and p not in options]
    if missing:
        raise DataError(f"dataset {name!r} needs option(s) {missing}")
    return loader(**options)


# --- processed folders ---------------------------------------------------------------

def _write_synced(path: Path, data: bytes):
    # fsync before the rename publishes the folder, so a power cut cannot leave a
    # complete-looking folder with empty files
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def require_replaceable(target: Path, files, what: str) -> Path:
    """`target`, unless it exists as something other than a `what` folder holding only
    `files` (names): DataError then, so that a mistyped path never deletes unrelated data."""
    if target.exists() and not (target.is_dir() and {p.name for p in target.iterdir()} <= set(files)):
        raise DataError(f"{target}: exists and is not a {what} folder; refusing to replace it "
                        f"(accepted: a new path or a folder holding only {', '.join(files)})")
    return target


def save_processed(ds: Dataset, out_dir, require_finite: bool = True) -> Path:
    """Write `ds` to `out_dir` atomically (see the module docstring for the layout).

    Files go to a hidden sibling folder that is renamed onto `out_dir` only when
    complete.  An existing `out_dir` is replaced only if it holds nothing but these
    files, so a mistyped path cannot delete unrelated data.  DataError for invalid data or
    such a path; diffusion.atomic.WriteError (path and cause) when the disk refuses a write,
    with the previous folder left as it was.
    """
    validate(ds, require_finite)
    target = require_replaceable(Path(out_dir), PROCESSED_FILES, "processed-dataset")
    with atomic_folder(target, "processed dataset") as tmp:
        arrays = {"x": ds.x.detach().cpu().numpy(), "split": ds.split.astype(str),
                  "ids": np.array(ds.ids, dtype=str)}
        if ds.y is not None:
            arrays["y"] = ds.y.cpu().numpy()
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        _write_synced(tmp / "data.npz", buffer.getvalue())
        _write_synced(tmp / "manifest.csv", ds.manifest().to_csv(index=False).encode())
        meta = {"name": ds.name, "kind": ds.kind, "class_names": ds.class_names,
                 "ingestion": ds.ingestion}
        _write_synced(tmp / "meta.json", json.dumps(meta, indent=2, sort_keys=True).encode())
    return target


def load_processed(path) -> Dataset:
    """Read a folder written by `save_processed`, and validate it."""
    folder = Path(path)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{folder}: no meta.json; accepted: a folder written by save_processed")
    try:
        meta = json.loads(meta_path.read_text())
        name, kind, class_names = meta["name"], meta["kind"], meta["class_names"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{meta_path}: unreadable ({exc!r}); accepted: a JSON object with "
                        "'name', 'kind' and 'class_names'") from exc
    arrays = _read_npz(folder / "data.npz")
    missing = sorted({"x", "split", "ids"} - set(arrays))
    if missing:
        raise DataError(f"{folder / 'data.npz'}: missing arrays {missing}; keys found: "
                        f"{sorted(arrays)}")
    x = torch.from_numpy(arrays["x"])
    inferred = {4: "image", 2: "vector"}.get(x.ndim)
    if inferred != kind:
        raise DataError(f"{folder / 'data.npz'}: x has shape {tuple(x.shape)}, which does not "
                        f"match kind {kind!r} in meta.json; accepted: (N, C, H, W) for 'image', "
                        "(N, D) for 'vector'")
    y = torch.from_numpy(arrays["y"]) if "y" in arrays else None
    return validate(Dataset(name, x, y, arrays["split"], arrays["ids"].tolist(), kind,
                            class_names, meta.get("ingestion")))
