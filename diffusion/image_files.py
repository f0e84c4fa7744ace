"""The files of an image folder, read as the user made them, with every change accounted for.

`scan_folder` lists what a folder holds and sorts it into files to read and files skipped, by
reason; `read_image` decodes one file into uint8 pixels and says what it had to change on the
way (`Ingestion` adds both up for the dataset's meta.json and the data gate).  Nothing a user
put in the folder is dropped or altered without being counted:

    skipped, by reason      hidden (name starts with '.': .DS_Store, ._x.png, .ipynb_checkpoints/,
                            .git/: tool droppings, not data; hidden folders are not looked into),
                            unsupported_extension, not_a_file (broken links, sockets, ...),
                            symlink_loop (a linked folder already read)
    altered, by kind        alpha_composited, exif_transposed, resized, non_square (then
                            stretched, cropped or padded, the `fit` setting), colour_to_grey
    refused (DataError)     undecodable files, 16/32-bit images, multi-frame files (animations,
                            TIFF pages), files of a format Pillow can open but not decode here

Only PIL and numpy are used.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps


class ImageFileError(ValueError):
    """One image file that cannot be used; the message names the file (data.DataError wraps it)."""


# Formats Pillow registers an opener for but cannot decode without outside help: stub formats
# (BUFR, GRIB, HDF5, WMF/EMF need a handler the application installs), EPS/PS (Ghostscript) and
# MPEG (no decoder at all).  Their files are counted as unsupported, not tried and failed.
_UNREADABLE_FORMATS = frozenset({"BUFR", "GRIB", "HDF5", "WMF", "EPS", "MPEG"})


def _readable_extensions() -> tuple[str, ...]:
    Image.init()  # load every format plugin, so the registry is complete
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items()
                        # MPO (multi-picture JPEG, from phone cameras) is opened by JPEG's opener
                        if (fmt in Image.OPEN or fmt == "MPO") and fmt not in _UNREADABLE_FORMATS))


#: Every extension an image folder is read for (lower case, matched in any case): the formats
#: this Pillow opens and decodes by itself -- PNG, JPEG, WebP, GIF, BMP, TIFF, AVIF, JPEG 2000,
#: PNM, TGA, ICO, PSD, QOI, ... -- taken from Pillow's own registry, so a Pillow that learns a
#: format is read without a change here.
IMAGE_EXTENSIONS: tuple[str, ...] = _readable_extensions()
_COMMON = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
#: IMAGE_EXTENSIONS for messages: the common ones by name, the rest counted
EXTENSIONS_TEXT = (", ".join(e for e in _COMMON if e in IMAGE_EXTENSIONS)
                   + f" and {len(set(IMAGE_EXTENSIONS) - set(_COMMON))} more formats Pillow "
                   "reads (diffusion.image_files.IMAGE_EXTENSIONS)")

# frame 1 of these is the whole picture: PSD's further "frames" are its layers, whose merged
# result frame 1 already is; MPO's are a camera's auxiliary pictures (preview, depth map)
_COMPOSITE_FIRST_FRAME = frozenset({"PSD", "MPO"})
# 16/32-bit modes: converting them to "L" clips at 255 instead of rescaling
_HIGH_DEPTH_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")
EXAMPLES = 5  # paths kept per reason in the record; the counts are complete

Fit = Literal["stretch", "crop", "pad"]
Background = Union[Literal["white", "black"], int, tuple[int, int, int], list[int]]


# --- what a folder holds ------------------------------------------------------------------

@dataclass
class FolderScan:
    root: Path
    files: list[Path]                                 # to read: relative, sorted by POSIX path
    skipped: dict[str, list[str]]                     # reason -> relative paths, sorted
    folders: list[str]                                # every non-hidden sub-folder, relative


def scan_folder(root: Path) -> FolderScan:
    """Walk `root` (following linked folders once each) and sort every entry into files to
    read or skipped, by reason.  Hidden folders are counted as one entry and not entered."""
    root = Path(root)
    files: list[Path] = []
    skipped: dict[str, list[str]] = defaultdict(list)
    folders: list[str] = []
    visited = {os.path.realpath(root)}
    for current, dirnames, filenames in os.walk(root, followlinks=True):
        rel_dir = Path(current).relative_to(root)
        keep = []
        for name in sorted(dirnames):
            rel = (rel_dir / name).as_posix()
            real = os.path.realpath(os.path.join(current, name))
            if name.startswith("."):
                skipped["hidden"].append(rel + "/")
            elif real in visited:
                skipped["symlink_loop"].append(rel + "/")
            else:
                visited.add(real)
                folders.append(rel)
                keep.append(name)
        dirnames[:] = keep  # os.walk enters only these
        for name in filenames:
            rel = rel_dir / name
            if name.startswith("."):
                skipped["hidden"].append(rel.as_posix())
            elif not os.path.isfile(os.path.join(current, name)):
                skipped["not_a_file"].append(rel.as_posix())
            elif rel.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped["unsupported_extension"].append(rel.as_posix())
            else:
                files.append(rel)
    return FolderScan(root, sorted(files, key=Path.as_posix),
                      {reason: sorted(paths) for reason, paths in sorted(skipped.items())},
                      sorted(folders))


# --- one file -------------------------------------------------------------------------------

def read_image(file: Path, channels: int, size: int, background: tuple[int, int, int],
               fit: Fit = "stretch") -> tuple[np.ndarray, list[str]]:
    """One image as uint8 (size, size) for channels=1 or (size, size, 3) for channels=3,
    and the list of what was changed on the way (names as in the module docstring).

    In order: EXIF orientation applied (cameras store pixels unrotated and the rotation as a
    tag; every viewer applies it), transparency composited onto `background`, converted to
    grey or RGB, brought to size x size by `fit` (bicubic, antialiased when shrinking).
    Raises ImageFileError naming the file for anything that cannot be read faithfully.
    """
    try:
        with Image.open(file) as img:
            img.load()  # open() reads only the header: decode inside the try
            frames = getattr(img, "n_frames", 1)
            if frames > 1 and img.format not in _COMPOSITE_FIRST_FRAME:
                raise ImageFileError(
                    f"{file}: holds {frames} frames ({img.format}, animation or pages); reading "
                    "only the first would drop the rest; accepted: one picture per file (save "
                    "each frame or page as its own file)")
            if img.mode in _HIGH_DEPTH_MODES:
                raise ImageFileError(f"{file}: {img.mode} images are not supported; accepted: "
                                     "8-bit grey, palette or RGB(A) images")
            return _to_pixels(img, channels, size, background, fit)
    except ImageFileError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageFileError(f"{file}: cannot decode image ({exc}); accepted: a complete file "
                             "in one of the formats this Pillow reads") from exc


def _to_pixels(img: Image.Image, channels: int, size: int, background: tuple[int, int, int],
               fit: Fit) -> tuple[np.ndarray, list[str]]:
    notes = []
    if img.getexif().get(0x0112, 1) not in (1, None):  # 0x0112: Orientation, 1 = as stored
        notes.append("exif_transposed")
        img = ImageOps.exif_transpose(img)  # without rotation it would only copy the image
    if any(band in ("A", "a") for band in img.getbands()) or "transparency" in img.info:
        # alpha is coverage: a pixel shows alpha x its colour over whatever lies behind it.
        # convert() would drop alpha and keep the colour under fully transparent pixels
        # (often black), so a black stroke on transparency became a blank image.
        flat = Image.new("RGBA", img.size, (*background, 255))
        img = Image.alpha_composite(flat, img.convert("RGBA")).convert("RGB")
        notes.append("alpha_composited")
    if channels == 1 and img.mode not in ("1", "L"):
        rgb = np.asarray(img.convert("RGB"))
        if (rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any():
            notes.append("colour_to_grey")
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        notes.append("resized")
        if img.width != img.height:
            notes.append("non_square")
        if fit == "crop" and img.width != img.height:
            img = ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC)
        elif fit == "pad" and img.width != img.height:
            fill = round(0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2])
            img = ImageOps.pad(img, (size, size), Image.Resampling.BICUBIC,
                               color=fill if channels == 1 else background)
        else:
            # bicubic with PIL's support scaling: antialiased when shrinking
            img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8), notes


def read_images(root: Path, files: list[Path], channels: int, size: int,
                background: tuple[int, int, int], fit: Fit) -> tuple[list[np.ndarray], Counter]:
    """read_image for each of `files` (relative to root); the pixels and the count of every
    change.  A truncated file fails here, whatever some other import set globally."""
    altered: Counter = Counter()
    pixels = []
    truncated_ok, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        for rel in files:
            array, notes = read_image(root / rel, channels, size, background, fit)
            pixels.append(array)
            altered.update(notes)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok
    return pixels, altered


# --- the record -------------------------------------------------------------------------------

@dataclass
class Ingestion:
    """What a loader read from its source, what it skipped (by reason) and what it changed (by
    kind): stored as meta.json's "ingestion", printed by prepare, checked by the data gate."""

    source: str                                           # folder | npz | builtin
    read: int = 0                                         # files read
    skipped: dict[str, list[str]] = field(default_factory=dict)
    altered: dict[str, int] = field(default_factory=dict)
    details: dict = field(default_factory=dict)           # e.g. {"fit": ..., "background": ...}

    def as_dict(self) -> dict:
        """JSON-able: counts complete, paths cut to EXAMPLES per reason, folders counted."""
        skipped = {}
        for reason, paths in sorted(self.skipped.items()):
            folders = Counter(str(Path(p.rstrip("/")).parent.as_posix()) for p in paths)
            skipped[reason] = {"count": len(paths), "folders": dict(sorted(folders.items())),
                               "examples": paths[:EXAMPLES]}
        return {"source": self.source, "files_read": self.read,
                "files_skipped": sum(len(p) for p in self.skipped.values()),
                "skipped": skipped, "altered": dict(sorted(self.altered.items())),
                **({"details": self.details} if self.details else {})}


def describe(ingestion: dict) -> list[str]:
    """Readable lines for an Ingestion.as_dict() record (what prepare prints)."""
    lines = [f"read {ingestion['files_read']} file(s), skipped {ingestion['files_skipped']}"]
    for reason, info in ingestion.get("skipped", {}).items():
        where = ", ".join(f"{folder}/: {n}" for folder, n in info["folders"].items())
        lines.append(f"  skipped ({reason}): {info['count']} in {where}; e.g. "
                     + ", ".join(info["examples"]))
    for kind, count in ingestion.get("altered", {}).items():
        lines.append(f"  altered ({kind}): {count}")
    for key, value in ingestion.get("details", {}).items():
        lines.append(f"  {key}: {value}")
    return lines
