"""Folders that appear complete or not at all.

Every artefact folder (processed dataset, checkpoint, model) is written into a hidden
sibling and renamed onto its name only when complete, so a crash or an error never leaves
a folder that looks finished but is not, and a reader never sees half of one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_folder(target):
    """Yield a temporary folder; on success it replaces `target` (an existing one is moved
    aside first and put back if the final rename fails); on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    old = None
    try:
        yield tmp
        if target.exists():
            # a directory cannot be renamed over a non-empty one: move the old aside first
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            if old is not None:
                os.replace(old, target)
                old = None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path, text: str):
    """Replace a small file in one rename (e.g. the `latest` checkpoint pointer)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)
