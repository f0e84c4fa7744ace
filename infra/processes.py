"""Background server processes: start detached, record in a pid file, check, stop, measure.

Each server runs in its own session (start_new_session=True), so its process id is also its
process-group id: one signal to the group reaches the server and every worker it forked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

# Popen objects of the servers this interpreter started. Holding them lets us reap a server
# that exited (no zombies that look alive) and keeps Popen from warning "still running" when
# the object would otherwise be garbage-collected while the server keeps serving.
_CHILDREN: dict[int, subprocess.Popen] = {}
START_MARK = "===== "   # how `spawn` begins each start's part of a server's log


@dataclass(frozen=True)
class PidRecord:
    """What a pid file holds: enough to tell our server from a later process given the same pid."""

    pid: int
    start_ticks: Optional[int]   # /proc/<pid>/stat start time; None where /proc is missing
    port: int
    started_at: str


def spawn(argv: list[str], env: dict[str, str], cwd: Path, log_path: Path, port: int) -> PidRecord:
    """Start `argv` detached (own session, no stdin), stdout and stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        # argv holds paths and ports only (secrets travel in env), so it is safe to log.
        log.write(f"\n{START_MARK}{stamp} starting: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    _CHILDREN[proc.pid] = proc
    stat = _stat(proc.pid)
    return PidRecord(proc.pid, stat[1] if stat else None, port, stamp)


def write_pid_file(path: Path, record: PidRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)) + "\n")
    os.replace(tmp, path)


def read_pid_file(path: Path) -> Optional[PidRecord]:
    """The record in `path`; None when there is none or it cannot be read (not trusted)."""
    try:
        data = json.loads(path.read_text())
        return PidRecord(int(data["pid"]), data.get("start_ticks"), int(data["port"]),
                         str(data.get("started_at", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_running(record: PidRecord) -> bool:
    """True while the process of `record` lives: not gone, not a zombie, not a reused pid."""
    child = _CHILDREN.get(record.pid)
    if child is not None and child.poll() is not None:   # reaped; exit_code() can still tell
        return False
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # the pid now belongs to another user's process
        return False
    stat = _stat(record.pid)
    if stat is None:             # no /proc (macOS): the signal check is all we have
        return True
    state, ticks = stat
    return state != "Z" and (record.start_ticks is None or ticks == record.start_ticks)


def exit_code(record: PidRecord) -> Optional[int]:
    """The exit status of a server this interpreter started and that has exited, else None."""
    child = _CHILDREN.get(record.pid)
    return child.returncode if child is not None else None


def signal_group(record: PidRecord, sig: int) -> None:
    """Send `sig` to the server's process group (the server and its workers)."""
    try:
        os.killpg(record.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_stopped(record: PidRecord, timeout: float) -> bool:
    """Wait up to `timeout` s for the process to end; True when it did."""
    deadline = time.monotonic() + timeout
    while is_running(record):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def stop(record: PidRecord, grace: float) -> bool:
    """SIGTERM the group, wait `grace` s, then SIGKILL. Returns True when SIGKILL was needed."""
    signal_group(record, signal.SIGTERM)
    return finish_stop(record, grace)


def finish_stop(record: PidRecord, grace: float) -> bool:
    """Second half of stop(), for callers that signalled several servers first."""
    killed = False
    if not wait_stopped(record, grace):
        signal_group(record, signal.SIGKILL)
        wait_stopped(record, 10)
        killed = True
    # Workers that outlived their parent would keep ports open: end the rest of the group,
    # and return only once it is gone (a SIGKILLed worker takes a moment to be reaped, and
    # until then its group, and perhaps its port, still exists).
    signal_group(record, signal.SIGKILL)
    wait_group_gone(record.pid, 10)
    _CHILDREN.pop(record.pid, None)
    return killed


def wait_group_gone(pgid: int, timeout: float) -> bool:
    """Wait up to `timeout` s until no process is left in group `pgid`; True when none is."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


@dataclass(frozen=True)
class Memory:
    """Memory of one server's processes. `rss`: resident bytes summed over the processes, so a
    page shared by several (PostgreSQL's shared buffers, a forked worker's libraries) counts
    once per process; `pss`: proportional set size, each shared page divided among its sharers,
    so the sum is the memory the server really holds (None where a process's smaps cannot be
    read: another user's process without privileges); `processes`: how many."""

    rss: int
    pss: Optional[int]
    processes: int

    @property
    def bytes(self) -> int:
        """PSS when known, else RSS: what a status line shows."""
        return self.rss if self.pss is None else self.pss


def group_memory(pgid: int) -> Optional[Memory]:
    """Memory of all processes in group `pgid` (psutil); None when none is found."""
    return _memory(lambda p: os.getpgid(p.pid) == pgid)


def tree_memory(pid: int) -> Optional[Memory]:
    """Memory of process `pid` and its direct children (psutil); None when none is found.
    For servers whose workers are process groups of their own (PostgreSQL's backends)."""
    return _memory(lambda p: p.pid == pid or p.ppid() == pid)


def _memory(member) -> Optional[Memory]:
    import psutil   # DVC's dependency, so always installed

    rss, pss, n = 0, 0, 0
    for process in psutil.process_iter():
        try:
            if not member(process):
                continue
            rss += process.memory_info().rss
            n += 1
        except (psutil.Error, ProcessLookupError, PermissionError):   # gone or not ours meanwhile
            continue
        try:
            pss = None if pss is None else pss + process.memory_full_info().pss   # Linux smaps_rollup
        except (psutil.Error, AttributeError):   # not readable here, or not Linux
            pss = None
    return Memory(rss, pss, n) if n else None


def log_tail(path: Path, lines: int = 20, this_start: bool = False) -> str:
    """The last `lines` lines of a log file, or a note that there is none.  `this_start`: only
    the lines since the last start `spawn` marked (a failed start-up's own words, not an
    earlier run's)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64_000))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    kept = text.splitlines()
    if this_start:
        marks = [i for i, line in enumerate(kept) if line.startswith(START_MARK) and " starting: " in line]
        if marks:
            kept = kept[marks[-1]:]
    return "\n".join(kept[-lines:])


def _stat(pid: int) -> Optional[tuple[str, int]]:
    """(state, start time in clock ticks) from /proc/<pid>/stat; None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[19])   # fields 3 (state) and 22 (starttime)
