"""sha256 sums of an artefact's files: recorded when it is written, checked before it is read.

A model folder records the sums of its weights and configuration in its model.json
(diffusion/model.py), a checkpoint those of its safetensors files in its state.json
(diffusion/checkpoint.py), and the registry records those of a registered folder as a version
tag (tasks/adapters/registry.py).  A copy whose bytes changed since (a flipped bit on a disk or in
an object store) is then refused by name before a single tensor is read from it, instead of
being sampled with wrong weights.

Files are hashed in 1 MiB chunks, so multi-GB weights never need the memory at once.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def sha256_file(path) -> str:
    """Hex sha256 of the file at `path`."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def folder_files(folder, exclude: Iterable[str] = ()) -> list[str]:
    """Relative POSIX paths of every file under `folder` (sub-folders included, hidden files and
    folders skipped: atomic writers' leftovers), less `exclude`, sorted."""
    folder, skip = Path(folder), set(exclude)
    names = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            name = rel.as_posix()
            if name not in skip:
                names.append(name)
    return sorted(names)


def file_sha256s(folder, names: Iterable[str]) -> dict[str, str]:
    """{relative path: hex sha256} of the files `names` of `folder`."""
    folder = Path(folder)
    return {name: sha256_file(folder / name) for name in sorted(names)}


def _plain_relative(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name


@dataclass(frozen=True)
class Mismatch:
    """A recorded file whose bytes are not the recorded ones (`actual` None: it is missing)."""
    name: str
    expected: str
    actual: str | None

    def describe(self, when: str, what: str = "the file") -> str:
        """One phrase, e.g. "unet/x.safetensors has sha256 1a2b3c4d5e6f... but 9f8e7d6c5b4a...
        was recorded at registration: the file is corrupted" (`when`: "at registration")."""
        if self.actual is None:
            return f"{self.name} is missing, but its sha256 was recorded {when}: the copy is incomplete"
        return (f"{self.name} has sha256 {self.actual[:12]}... but {self.expected[:12]}... was "
                f"recorded {when}: {what} is corrupted")


def find_mismatch(folder, recorded: Mapping[str, str]) -> Mismatch | None:
    """The first file of `recorded` ({relative path: hex sha256}) that is missing under `folder`
    or has another sha256, or None when all match.  A recorded name that is not a plain relative
    path (absolute, '..') counts as missing: the record never points outside the folder."""
    folder = Path(folder)
    for name, expected in sorted(recorded.items()):
        path = folder / name
        if not _plain_relative(name) or not path.is_file():
            return Mismatch(name, str(expected), None)
        actual = sha256_file(path)
        if actual != expected:
            return Mismatch(name, str(expected), actual)
    return None


_warned: set[str] = set()


def warn_unverified(what: str) -> None:
    """A warning record on this module's logger, once per `what` and process (shown as one
    "warning: ..." line on stderr by diffusion.messages.show_messages): a copy written before
    checksums were recorded is still read (refusing it would strand every older model), but
    the user is told that its bytes are not checked."""
    if what not in _warned:
        _warned.add(what)
        logger.warning(what)
