"""Launch a module as data-parallel ranks with torchrun, and turn a failed rank into one error.

Parent side, `run_torchrun(module, args, ...)`: runs `python -m torch.distributed.run` from this
interpreter, each rank being `python -m tasks.adapters.torchrun LOG_DIR MODULE ARGS...`, and
waits for it, calling `on_poll()` every `poll_s` seconds meanwhile (the caller relays metrics
and rank 0's output from there).  One machine (`nnodes` 1, no endpoint): torchrun's standalone
rendezvous on 127.0.0.1 with a port the OS picks free.  Several: c10d rendezvous at
`rdzv_endpoint`, joined under `rdzv_id` by the same launch on every machine.  torchrun itself
and its ranks run in their own process group, stopped when the caller's wait ends in an error
(and torchrun when this process dies).

Rank side (this module as __main__): stdout and stderr, the C level included, go to
LOG_DIR/rank<R>.log, whose first line names the rank and its pid; MODULE runs as __main__; an
exception is printed there and recorded as LOG_DIR/rank<R>.error.json (time, type, message, and
errno / path / what / filesystem when the exception has them) before the rank exits with 1.

A failure becomes one TorchrunError naming the rank that failed first and carrying the tail of
that rank's log.  "First": a rank killed by a signal other than torchrun's own SIGTERM (the
others only fail in reaction to losing it), else the earliest recorded exception, else
torchrun's own output (a rank that died before it could record anything).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import runpy
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

TAIL_LINES = 25
AGENT_LOG = "torchrun.log"


class TorchrunError(RuntimeError):
    """A torchrun launch failed.  `str()`: a first line naming the rank (of how many), its error
    and its log, then the last lines of that log.  Attributes: `rank` (None when no rank could
    be named), `world`, `error` (the rank's recorded exception as a dict, or None), `log_path`,
    `tail` (text)."""

    def __init__(self, summary: str, rank: int | None, world: int, error: dict | None,
                 log_path: Path, tail: str):
        super().__init__(f"{summary}; the last lines of {log_path}:\n{tail}")
        self.summary, self.rank, self.world, self.error = summary, rank, world, error
        self.log_path, self.tail = log_path, tail


@dataclass
class Launch:
    """How many ranks and where they meet.  `rdzv_id`: the same on every machine of one run."""
    nproc_per_node: int
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    rdzv_id: str = "dmops"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def world(self) -> int:
        return self.nproc_per_node * self.nnodes


def torchrun_command(launch: Launch, log_dir: Path, module: str, args: list[str]) -> list[str]:
    """The command line run_torchrun runs (argv list)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
           str(launch.nproc_per_node), "--nnodes", str(launch.nnodes), "--max-restarts", "0"]
    if launch.nnodes == 1 and launch.rdzv_endpoint is None:
        # the rendezvous store on loopback, its port picked free by the OS (no race), and the
        # ranks' own store on loopback too: nothing depends on the host name resolving
        cmd += ["--standalone", "--local-addr", "127.0.0.1"]
    else:
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", launch.rdzv_endpoint,
                "--rdzv-id", launch.rdzv_id]
    return cmd + ["-m", __name__, str(log_dir), module, *args]


def run_torchrun(module: str, args: list[str], launch: Launch, log_dir,
                 on_poll: Callable[[], None] | None = None, poll_s: float = 0.5) -> None:
    """Run `module` (its __main__, with `args` as sys.argv[1:]) as `launch.world` ranks; see the
    module docstring.  Logs: `log_dir`/rank<R>.log per rank and torchrun.log.  Returns when
    every rank finished; raises TorchrunError when one failed, or what `on_poll` raised (the
    ranks are stopped first)."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **launch.env}
    # torchrun sets 1 thread per rank with a warning when unset; share the cores instead
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // launch.nproc_per_node)))
    cmd = torchrun_command(launch, log_dir, module, args)
    with open(log_dir / AGENT_LOG, "ab") as agent_log:
        agent_log.write((" ".join(cmd) + "\n").encode())
        agent_log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=agent_log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent)
        try:
            while proc.poll() is None:
                if on_poll is not None:
                    on_poll()
                try:
                    proc.wait(poll_s)
                except subprocess.TimeoutExpired:
                    pass
            if on_poll is not None:
                on_poll()   # what the ranks wrote last
        except BaseException:
            _stop(proc)
            raise
    if proc.returncode != 0:
        raise failure(log_dir, launch.world, proc.returncode)


def failure(log_dir: Path, world: int, returncode: int) -> TorchrunError:
    """The TorchrunError of a launch that exited with `returncode` (see the module docstring
    for which rank is named)."""
    log_dir = Path(log_dir)
    agent = log_dir / AGENT_LOG
    agent_text = agent.read_text(errors="replace") if agent.exists() else ""
    errors = sorted((_read_json(p) for p in log_dir.glob("rank*.error.json")),
                    key=lambda e: e.get("time", 0.0))
    killed = _killed_ranks(agent_text)
    if killed:
        rank, sig = killed[0]
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        error = {"rank": rank, "type": "signal", "message": f"killed by signal {sig} ({name})"}
    elif errors:
        error = errors[0]
        rank = int(error["rank"])
    else:
        return TorchrunError(f"torchrun exited with code {returncode} before any of the {world} "
                             "ranks reported an error", None, world, None, agent,
                             _tail(agent_text))
    log = log_dir / f"rank{rank}.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    what = error["message"] if error["type"] == "signal" else \
        f"{error['type'].rsplit('.', 1)[-1]}: {error['message']}"
    return TorchrunError(f"rank {rank} of {world} failed: {' '.join(what.split())}", rank, world,
                         error, log, _tail(text))


def _killed_ranks(agent_text: str) -> list[tuple[int, int]]:
    """(rank, signal) of each rank torchrun's failure summary reports as ended by a signal it
    did not send itself (it stops the surviving ranks with SIGTERM)."""
    found = re.findall(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*\n\s*exitcode\s*:\s*(-\d+)",
                       agent_text)
    return [(int(rank), -int(code)) for rank, code in found if -int(code) != signal.SIGTERM]


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _stop(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM to torchrun's process group (it stops its ranks), SIGKILL after `grace_s`."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _die_with_parent() -> None:
    """In the torchrun child, before exec: Linux sends it SIGTERM when this process dies
    (e.g. a killed worker), so no orphaned ranks keep training; elsewhere a no-op.  (Linux
    means the launching *thread*: run_torchrun waits in that thread until torchrun ended.)"""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# --- rank side --------------------------------------------------------------------------

def _error_record(rank: int, e: BaseException) -> dict:
    record = {"rank": rank, "time": time.time(),
              "type": f"{type(e).__module__}.{type(e).__qualname__}", "message": str(e)}
    for name in ("errno", "what", "filesystem", "path"):
        value = getattr(e, name, None)
        if value is not None:
            record[name] = value if isinstance(value, (int, str)) else str(value)
    return record


def _rank_main(argv: list[str]) -> None:
    log_dir, module, *args = argv
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    log = os.open(Path(log_dir) / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for fd in (1, 2):
        os.dup2(log, fd)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    print(f"rank {rank} of {world} (local rank {os.environ.get('LOCAL_RANK', '0')}), pid "
          f"{os.getpid()}, host {socket.gethostname()}", flush=True)
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code not in (0, None):
            _record(log_dir, rank, RuntimeError(f"exited with {e.code}"))
        raise
    except BaseException as e:  # noqa: BLE001 - recorded, then the rank exits with 1
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename in (__file__, "<frozen runpy>"):
            tb = tb.tb_next   # from the module's own frames on: the launch's are noise
        traceback.print_exception(type(e), e, tb)
        _record(log_dir, rank, e)
        sys.stderr.flush()
        os._exit(1)


def _record(log_dir: str, rank: int, e: BaseException) -> None:
    path = Path(log_dir) / f"rank{rank}.error.json"
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(_error_record(rank, e), default=str))
    os.replace(partial, path)


if __name__ == "__main__":
    _rank_main(sys.argv[1:])
