"""Write errors: a full disk, a file-size limit or a read-only filesystem while an artefact is
written gives one line naming the path and the cause (exit code 2 from the CLI), and the last
complete state stays: the previous checkpoint and `latest`, the old folder or file, no
temporary copies.

The filesystems are real: a small tmpfs mounted for the test (marked `tmpfs`: they need mount
rights, root as CI runs; where the process has none they fail saying so, and a user without
them deselects them explicitly with `-m "not tmpfs"`), and, needing no mount rights, the
process's file-size limit (RLIMIT_FSIZE, which makes the kernel refuse a write with EFBIG)."""

import errno
import os
import pickle
import resource
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from cli_assertions import fails_cleanly
from diffusion.atomic import WriteError, atomic_folder, atomic_write_text, write_error
from flows.cli import app

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
PAGE = 4096

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dmops(*args):
    """`dmops ARGS` in this process (Typer's runner): no interpreter start per command."""
    return CliRunner().invoke(app, [*map(str, args)])


@contextmanager
def file_size_limit(size: int):
    """This process may not write files beyond `size` bytes (the soft RLIMIT_FSIZE; the
    kernel answers EFBIG, Python ignores SIGXFSZ): no mount rights needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def one_line(result, *fragments) -> str:
    """Exit code 2 and exactly one line on stderr, naming each fragment, no traceback."""
    fails_cleanly(result, 2, *map(str, fragments))
    return result.stderr.strip()


def leftovers(folder: Path) -> list[str]:
    """Temporary or moved-aside copies anywhere under `folder`."""
    return sorted(str(p) for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def size_on_disk(folder: Path) -> int:
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def tmpfs(tmp_path):
    """mount(name, size, read_only=False) -> a freshly mounted tmpfs of `size` bytes;
    unmounted at the end.  Fails the test, saying what it needs, where mounting is refused."""
    mounted = []

    def mount(name: str, size: int, read_only: bool = False) -> Path:
        where = tmp_path / name
        where.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            # never a skip: a test that cannot set up its filesystem has not shown anything
            pytest.fail(f"mount -t tmpfs -o {options} failed: {(proc.stderr or proc.stdout).strip()}; "
                        "these tests need mount rights (run the suite as root, as CI does, or "
                        "deselect them with -m \"not tmpfs\"; the file-size-limit tests cover "
                        "the same errors without them)")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(fs: Path, leave: int = 0) -> Path:
    """A filler file that leaves `leave` bytes (rounded down to a page) free on `fs`."""
    st = os.statvfs(fs)
    size = st.f_bavail * st.f_frsize - leave
    size -= size % PAGE
    filler = fs / "filler"
    with open(filler, "wb") as f:
        chunk = bytes(1 << 20)
        while size > 0:
            size -= f.write(chunk[:min(size, len(chunk))])
    return filler


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny training run on the ordinary disk: its checkpoints give the size one
    takes, its model is sampled from."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = dmops("train", "-c", PARAMS, "--profile", "tiny", "--set", f"out_dir={out}")
    assert result.exit_code == 0, result.stdout + result.stderr
    return out


# --- dmops train ----------------------------------------------------------------------------

@pytest.mark.tmpfs
def test_train_on_a_full_disk_names_the_checkpoint_keeps_the_last_one_and_resumes(trained, tmpfs):
    checkpoint = size_on_disk(trained / "checkpoints" / "step_00000010")
    fs = tmpfs("fs", 16 << 20)
    # room for the first checkpoint (step 10), not for the second (step 20)
    filler = fill(fs, leave=checkpoint * 3 // 2)
    run = fs / "run"

    result = dmops("train", "-c", PARAMS, "--profile", "tiny", "--set", f"out_dir={run}")

    one_line(result, f"error: cannot write checkpoint {run / 'checkpoints' / 'step_00000020'}: "
                     f"no space left on device (errno 28, filesystem {fs})",
             "free space on that filesystem")
    assert (run / "checkpoints" / "latest").read_text() == "step_00000010"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000010"]
    assert leftovers(fs) == []
    from diffusion.checkpoint import read_state
    from diffusion.model import load_for_sampling

    assert read_state(run / "checkpoints" / "step_00000010")["step"] == 10
    load_for_sampling(run)  # `latest` -> step 10's EMA weights load

    filler.unlink()
    again = dmops("train", "-c", PARAMS, "--profile", "tiny", "--set", f"out_dir={run}")
    assert again.exit_code == 0, again.stdout + again.stderr
    assert f"resuming from {run / 'checkpoints' / 'step_00000010'} (step 10)" in again.stdout
    assert (run / "checkpoints" / "latest").read_text() == "step_00000020"
    assert (run / "model" / "model.json").is_file()
    assert leftovers(fs) == []


def test_train_beyond_the_file_size_limit_names_the_checkpoint_and_keeps_the_last_one(trained, tmp_path):
    # a run stopped after its step-10 checkpoint: exactly what the reference run held then
    run = tmp_path / "run"
    shutil.copytree(trained / "checkpoints" / "step_00000010", run / "checkpoints" / "step_00000010")
    (run / "checkpoints" / "latest").write_text("step_00000010")
    before = tree(run)
    biggest = max(p.stat().st_size for p in (run / "checkpoints").rglob("*.safetensors"))

    with file_size_limit(biggest // 2):
        result = dmops("train", "-c", PARAMS, "--profile", "tiny", "--set", f"out_dir={run}")

    one_line(result, f"error: cannot write checkpoint {run / 'checkpoints' / 'step_00000020'}: "
                     "file too large (errno 27)", "ulimit -f")
    assert tree(run) == before
    assert leftovers(tmp_path) == []


# --- dmops prepare ------------------------------------------------------------------------

@pytest.mark.tmpfs
def test_prepare_on_a_full_disk_is_one_line_and_writes_nothing(tmpfs):
    fs = tmpfs("fs", 256 << 10)
    root = fs / "processed"

    result = dmops("prepare", "-c", PARAMS, "--root", root)

    one_line(result, f"error: cannot write processed dataset {root / 'digits'}: "
                     f"no space left on device (errno 28, filesystem {fs})")
    assert not (root / "digits").exists()
    assert leftovers(fs) == []


def test_prepare_beyond_the_file_size_limit_keeps_the_previous_folder(tmp_path):
    root = tmp_path / "processed"
    first = dmops("prepare", "-c", PARAMS, "--root", root)
    assert first.exit_code == 0, first.stdout + first.stderr
    before = tree(root)

    with file_size_limit(64 << 10):
        result = dmops("prepare", "-c", PARAMS, "--root", root)

    one_line(result, f"error: cannot write processed dataset {root / 'digits'}: "
                     "file too large (errno 27)")
    assert tree(root) == before
    assert leftovers(tmp_path) == []


# --- dmops sample -o ----------------------------------------------------------------------

@pytest.mark.tmpfs
def test_sample_to_a_full_disk_keeps_the_previous_picture(trained, tmpfs):
    fs = tmpfs("fs", 1 << 20)
    png = fs / "grid.png"
    png.write_bytes(b"previous picture")
    fill(fs)

    result = dmops("sample", "-d", trained, "--n", 16, "-o", png)

    one_line(result, f"error: cannot write sample grid {png}: no space left on device (errno 28")
    assert png.read_bytes() == b"previous picture"
    assert leftovers(fs) == []


# --- the helpers themselves ---------------------------------------------------------------

WRITERS = {
    # safetensors reports "I/O error: No space left on device (os error 28)" in its own type
    "safetensors": lambda path: save_file({"w": torch.zeros(1 << 16)}, str(path)),
    # PyTorch's zip writer: "[enforce fail at inline_container.cc:672] . unexpected pos ..."
    "torch.save": lambda path: torch.save({"w": torch.zeros(1 << 16)}, path),
    # numpy: "OSError: 262144 requested and 61440 written", no errno
    "numpy": lambda path: np.save(path, np.zeros(1 << 16, np.float32)),
    "open": lambda path: Path(path).write_bytes(bytes(1 << 18)),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.tmpfs
def test_atomic_folder_on_a_full_disk_keeps_the_old_folder(tmpfs, writer):
    fs = tmpfs("fs", 128 << 10)
    target = fs / "model"
    target.mkdir()
    (target / "weights").write_bytes(b"old weights")

    with pytest.raises(WriteError) as caught:
        with atomic_folder(target, "model folder") as tmp:
            (tmp / "model.json").write_text("{}")
            WRITERS[writer](tmp / "weights")

    e = caught.value
    assert (e.errno, e.path, e.what, e.filesystem) == (errno.ENOSPC, target, "model folder", str(fs))
    assert str(e) == (f"cannot write model folder {target}: no space left on device (errno 28, "
                      f"filesystem {fs}); free space on that filesystem or write to another one")
    assert e.__cause__ is not None  # the library's own error stays in the chain
    assert tree(target) == {"weights": b"old weights"}
    assert sorted(p.name for p in fs.iterdir()) == ["model"]


@pytest.mark.tmpfs
def test_atomic_write_text_on_a_full_disk_keeps_the_old_pointer(tmpfs):
    fs = tmpfs("fs", 64 << 10)
    pointer = fs / "latest"
    atomic_write_text(pointer, "step_00000010")
    fill(fs)

    with pytest.raises(WriteError) as caught:
        atomic_write_text(pointer, "step_00000020" * 1000, "checkpoint pointer")

    assert caught.value.errno == errno.ENOSPC
    assert str(caught.value).startswith(f"cannot write checkpoint pointer {pointer}: no space left")
    assert pointer.read_text() == "step_00000010"
    assert sorted(p.name for p in fs.iterdir()) == ["filler", "latest"]


@pytest.mark.tmpfs
def test_read_only_filesystem_is_named(tmpfs):
    fs = tmpfs("ro", 64 << 10, read_only=True)
    with pytest.raises(WriteError) as caught:
        with atomic_folder(fs / "ds", "processed dataset"):
            pass
    assert caught.value.errno == errno.EROFS
    assert str(caught.value) == (f"cannot write processed dataset {fs / 'ds'}: read-only file "
                                 f"system (errno 30, filesystem {fs}); write to a writable "
                                 "filesystem (or remount that one read-write)")
    with pytest.raises(WriteError, match="read-only file system"):
        atomic_write_text(fs / "latest", "x")


def test_a_path_through_a_file_is_named(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(WriteError) as caught:
        with atomic_folder(tmp_path / "file" / "sub" / "digits", "processed dataset"):
            pass
    assert caught.value.errno == errno.ENOTDIR
    assert "a component of that path is a file" in str(caught.value)


def test_other_errors_pass_unchanged_and_the_folder_is_removed(tmp_path):
    with pytest.raises(ValueError, match="bad data"):
        with atomic_folder(tmp_path / "out"):
            raise ValueError("bad data")
    assert list(tmp_path.iterdir()) == []
    # a permission error on a file that is read, not written, is not called a write error
    denied = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "elsewhere" / "x"))
    assert write_error(denied, tmp_path / "out", scratch=tmp_path / ".out.tmp-1") is None
    assert write_error(PermissionError(errno.EACCES, "Permission denied",
                                       str(tmp_path / ".out.tmp-1" / "x")),
                       tmp_path / "out", scratch=tmp_path / ".out.tmp-1").errno == errno.EACCES


def test_write_error_survives_pickling_and_is_found_inside_library_messages(tmp_path):
    e = WriteError(tmp_path / "ckpt", errno.ENOSPC, "checkpoint", "/srv")
    again = pickle.loads(pickle.dumps(e))
    assert (type(again), str(again), again.errno) == (WriteError, str(e), errno.ENOSPC)
    assert isinstance(e, OSError) and e.filename == str(tmp_path / "ckpt")

    wrapped = Exception("Error while serializing: I/O error: File too large (os error 27)")
    assert write_error(wrapped, tmp_path / "w").errno == errno.EFBIG
    assert write_error(RuntimeError("[Errno 122] Disk quota exceeded"), tmp_path / "w").errno == errno.EDQUOT
    assert write_error(RuntimeError("shapes do not match"), tmp_path / "w") is None


# --- the pipeline -------------------------------------------------------------------------

@pytest.mark.stack
@pytest.mark.tmpfs
def test_the_pipelines_training_task_fails_with_the_same_line(stack, trained, tmpfs, tmp_path):
    """The real train-teacher task in a flow run against the stack's Prefect and MLflow: the
    task's exception, and the message Prefect records for it, carry the one line."""
    from prefect import flow

    from diffusion.config import load_config
    from tasks.prefect_tasks import train_teacher_task

    assert dmops("prepare", "-c", PARAMS, "--root", tmp_path).exit_code == 0
    dataset = {"path": str(tmp_path / "digits"), "md5": "test-write-errors"}
    cfg_json = load_config(PARAMS, "tiny", []).model_dump(mode="json")
    checkpoint = size_on_disk(trained / "checkpoints" / "step_00000010")
    fs = tmpfs("fs", 16 << 20)
    fill(fs, leave=checkpoint * 3 // 2)

    @flow(name="write-errors")
    def pipeline() -> dict:
        state = train_teacher_task(cfg_json, dataset, str(fs / "work"), return_state=True)
        try:
            state.result()
        except WriteError as e:
            return {"failed": state.is_failed(), "message": state.message, "error": str(e)}
        return {"failed": state.is_failed(), "message": state.message}

    seen = pipeline()

    line = (f"cannot write checkpoint {fs / 'work' / 'teacher' / 'checkpoints' / 'step_00000020'}: no space "
            f"left on device (errno 28, filesystem {fs}); free space on that filesystem or write "
            "to another one")
    assert seen["failed"] and seen.get("error") == line, seen
    assert seen["message"].endswith(f"WriteError: {line}"), seen
    assert (fs / "work" / "teacher" / "checkpoints" / "latest").read_text() == "step_00000010"
    assert leftovers(fs) == []
