"""Folders and files that appear complete or not at all, and write errors that say why.

Every artefact folder (processed dataset, checkpoint, model) is written into a hidden
sibling and renamed onto its name only when complete, so a crash or an error never leaves
a folder that looks finished but is not, and a reader never sees half of one.  Single files
(the `latest` pointer, pictures, tables) are written the same way, one rename each.

A write the operating system refuses (a full disk, a quota, a file-size limit, a read-only
or failing filesystem, no permission) is raised as one `WriteError` naming the artefact, the
path and the cause, whichever library did the writing: PyTorch's zip writer says only
"unexpected pos", safetensors "I/O error: No space left on device (os error 28)", numpy
"100000 requested and 65504 written".  The temporary copy is removed first and the previous
complete artefact is left as it was.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

# Errors that only a write meets: whatever file they name, the write failed for this reason.
WRITE_ONLY_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
# Errors a read can meet too: a write error only when the file they name is being written.
AMBIGUOUS_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EIO, errno.ENOTDIR})
WRITE_ERRNOS = WRITE_ONLY_ERRNOS | AMBIGUOUS_ERRNOS

_HINTS = {
    errno.ENOSPC: "free space on that filesystem or write to another one",
    errno.EDQUOT: "free space within your quota or write to another filesystem",
    errno.EFBIG: "a file reached the size limit (`ulimit -f`, or the filesystem's largest file): "
                 "raise the limit or write to another filesystem",
    errno.EROFS: "write to a writable filesystem (or remount that one read-write)",
    errno.EACCES: "make the folder writable for this user or write elsewhere",
    errno.EPERM: "make the folder writable for this user or write elsewhere",
    errno.EIO: "the storage device failed: check it (dmesg) and write elsewhere",
    errno.ENOTDIR: "a component of that path is a file, not a folder: choose another path",
}
# Causes that belong to a filesystem: the message names its mount point.
_FILESYSTEM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})

# how libraries spell an errno inside their own messages: Rust's io::Error (safetensors),
# Python's OSError text
_ERRNO_IN_TEXT = re.compile(r"os error (\d+)|\[Errno (\d+)\]")
_STRERROR = {code: os.strerror(code).lower() for code in WRITE_ONLY_ERRNOS}


class WriteError(OSError):
    """An artefact could not be written.  `str()` is the one line for the user:

        cannot write checkpoint runs/x/checkpoints/step_00000020: no space left on device
        (errno 28, filesystem /srv); free space on that filesystem or write to another one

    Attributes: `path` (the artefact's final path, or None), `errno` (int), `what` (e.g.
    "checkpoint", or None), `filesystem` (its mount point when the cause is the filesystem's).
    Raised from the library's own error, which stays in the traceback's chain."""

    def __init__(self, path, code: int, what: str | None = None, filesystem: str | None = None):
        super().__init__(code, os.strerror(code), None if path is None else str(path))
        self.path = None if path is None else Path(path)
        self.what = what
        self.filesystem = filesystem

    def __str__(self) -> str:
        subject = " ".join(str(s) for s in (self.what, self.path) if s is not None)
        cause = f"{self.strerror[:1].lower()}{self.strerror[1:]} (errno {self.errno}"
        cause += f", filesystem {self.filesystem})" if self.filesystem else ")"
        head = f"cannot write {subject}" if subject else "a write failed"
        return f"{head}: {cause}; {_HINTS.get(self.errno, 'write elsewhere')}"

    def __repr__(self) -> str:  # Prefect's retry lines show the repr
        return f"{type(self).__name__}({str(self)!r})"

    def __reduce__(self):  # pickled by process pools and Prefect like any exception
        return type(self), (self.path, self.errno, self.what, self.filesystem)


def write_error(exc: BaseException, path=None, what: str | None = None, scratch=None
                ) -> WriteError | None:
    """The WriteError that `exc` amounts to while writing `path` (into `scratch`, a temporary
    file or folder still present), or None when `exc` is not an operating-system write error.

    Recognised: an OSError with a write errno (EACCES, EPERM, EIO and ENOTDIR only when the
    file it names is `scratch` or `path`, lies in them or above them: a read meets them too), anywhere
    in `exc`'s chain; a library's message carrying the errno ("os error 28", "[Errno 28]") or
    its text ("No space left on device"); and a bare RuntimeError / OSError without an errno
    (PyTorch's and numpy's writers) raised while the filesystem under `scratch` has no free
    blocks or inodes left, which is then ENOSPC."""
    if isinstance(exc, WriteError):
        return exc
    if not isinstance(exc, Exception):
        return None
    roots = [Path(p) for p in (scratch, path) if p is not None]
    code = _errno_of(exc, roots)
    if code is None and type(exc) in (RuntimeError, OSError) and getattr(exc, "errno", None) is None:
        probe = scratch if scratch is not None else path
        if probe is not None and _filesystem_full(Path(probe)):
            code = errno.ENOSPC
    if code is None:
        return None
    target = path if path is not None else getattr(exc, "filename", None)
    filesystem = _mount_point(Path(target)) if target is not None and code in _FILESYSTEM_ERRNOS else None
    return WriteError(target, code, what, filesystem)


def _errno_of(exc: BaseException, roots: list[Path]) -> int | None:
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        code = getattr(e, "errno", None) if isinstance(e, OSError) else None
        if code in WRITE_ONLY_ERRNOS or (code in AMBIGUOUS_ERRNOS and _names_ours(e, roots)):
            return code
        text = str(e)
        for match in _ERRNO_IN_TEXT.finditer(text):
            found = int(match.group(1) or match.group(2))
            if found in WRITE_ONLY_ERRNOS:
                return found
        lowered = text.lower()
        for found, words in _STRERROR.items():
            if words in lowered:
                return found
        todo += [e.__cause__, e.__context__]
    return None


def _names_ours(e: OSError, roots: list[Path]) -> bool:
    """True when the file `e` names is one being written: a root, a file inside one, or a
    folder above one (a parent being created)."""
    names = [n for n in (e.filename, e.filename2) if n is not None]
    if not names or not roots:
        return False
    for name in names:
        p = Path(os.path.abspath(os.fsdecode(name)))
        for root in roots:
            root = Path(os.path.abspath(root))
            if p == root or root in p.parents or p in root.parents:
                return True
    return False


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _filesystem_full(path: Path) -> bool:
    try:
        st = os.statvfs(_existing_ancestor(path))
    except OSError:
        return False
    free = st.f_bavail * st.f_frsize
    # "full": less than 1 % of it or 1 MiB free, whichever is smaller (a write that failed
    # for space leaves a few blocks at most), or no inode left on a filesystem that counts them
    return free < min(1 << 20, st.f_blocks * st.f_frsize // 100) or (st.f_files > 0 and st.f_favail == 0)


def _mount_point(path: Path) -> str:
    path = _existing_ancestor(path)
    try:
        path = path.resolve()
        while not os.path.ismount(path):
            path = path.parent
    except OSError:
        pass
    return str(path)


@contextmanager
def writing(path, what: str | None = None, scratch=None):
    """Run a block that writes `path` (through `scratch`, when that is a temporary copy):
    an operating-system write error in it is raised as WriteError (see `write_error`),
    from the original error; any other error passes unchanged."""
    try:
        yield
    except Exception as exc:
        error = write_error(exc, path, what, scratch)
        if error is None or error is exc:
            raise
        raise error from exc


@contextmanager
def atomic_folder(target, what: str | None = None):
    """Yield a temporary folder; on success it replaces `target` (an existing one is moved
    aside first and put back if the final rename fails); on error it is removed.

    `what` names the artefact in errors ("checkpoint", "processed dataset", ...).  Raises
    WriteError (path `target`) when the operating system refuses a write, a folder or the
    rename; the previous `target`, if any, is then left as it was."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    old = None
    try:
        with writing(target, what, scratch=tmp):  # classified before the copy is removed
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
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


@contextmanager
def atomic_file(path, what: str | None = None):
    """Yield a temporary path beside `path` for the block to write; on success it is synced
    to disk and renamed onto `path` (the parent folder is created); on error it is removed
    and `path` keeps its previous content.  Raises WriteError as `atomic_folder` does."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with writing(path, what, scratch=tmp):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            # a filesystem may report a full disk only when the data is flushed: before the
            # rename, so `path` never names a file that lost its tail
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only filesystem, say: there is no copy to remove then
            pass
        raise


def atomic_write_text(path, text: str, what: str | None = None):
    """Replace a small file in one rename (e.g. the `latest` checkpoint pointer); raises
    WriteError (see `atomic_file`) with `path` unchanged."""
    with atomic_file(path, what) as tmp:
        tmp.write_text(text)
