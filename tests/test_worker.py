"""`dmops worker` never leaves a Prefect worker behind: killed by its pid, with SIGTERM (which
Prefect's worker handles: it stops polling and exits) or SIGKILL (which nothing can handle or
forward), no worker process of its pool is left and the pool's worker stops heartbeating.

Before, `dmops worker` ran the worker as a child process: killing the parent left the child
re-parented and polling (it would have run the nightly deployment).  Now it execs the worker,
so the pid the user kills is the worker's.  Against the real Prefect server of the `stack`
fixture, on a work pool of the test's own."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from prefect_api import prefect_api

ROOT = Path(__file__).resolve().parents[1]
HEARTBEAT_S = 2   # the worker's heartbeat interval in this test (Prefect's default is 30 s)


def pool_workers(pool: str) -> list[dict]:
    """The workers the Prefect server knows for `pool` (name, status, last_heartbeat_time)."""
    return prefect_api("POST", f"/work_pools/{pool}/workers/filter", {}) or []


def worker_processes(pool: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process on this machine that serves `pool`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:   # gone meanwhile
            continue
        words = [a.decode(errors="replace") for a in args if a]
        if pool in words and "worker" in words:
            found.append((int(entry.name), " ".join(words)))
    return found


def _wait_for_polling(pool: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Until the pool's worker has sent two heartbeats (it is polling, not just registered)."""
    deadline = time.monotonic() + timeout
    beats = set()
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dmops worker exited {proc.returncode}:\n{log.read_text()}"
        beats |= {w["last_heartbeat_time"] for w in pool_workers(pool)
                  if w["status"] == "ONLINE" and w["last_heartbeat_time"]}
        if len(beats) >= 2:
            return
        time.sleep(0.5)
    raise AssertionError(f"no polling worker of {pool} within {timeout:.0f} s:\n{log.read_text()}")


def _ignore_sigint() -> None:
    """What `dmops worker &` in a script gets: a non-interactive shell starts background jobs
    with SIGINT ignored, and the ignored disposition survives exec."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow
@pytest.mark.parametrize("sig, background", [(signal.SIGTERM, False), (signal.SIGTERM, True),
                                             (signal.SIGKILL, False)],
                         ids=["SIGTERM", "SIGTERM-background-job", "SIGKILL"])
def test_killing_dmops_worker_by_pid_leaves_no_worker_polling(stack, tmp_path, sig, background):
    pool = f"test-worker-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PREFECT_WORKER_HEARTBEAT_SECONDS": str(HEARTBEAT_S),
           "PREFECT_WORKER_QUERY_SECONDS": "1"}
    prefect_api("POST", "/work_pools/", {"name": pool, "type": "process"})
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        # its own session: the test's cleanup can reach anything it started, and a signal to
        # the test's process group never reaches it
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "worker", "--pool", pool],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=_ignore_sigint if background else None)
    try:
        _wait_for_polling(pool, proc, log)
        os.kill(proc.pid, sig)
        t0 = time.monotonic()
        # SIGTERM is Prefect's graceful stop (its handler turns it into an interrupt; the worker
        # stops polling at once and then closes its clients and tasks): about a second when it
        # works; a worker that kept SIGINT ignored never stops at all
        proc.wait(timeout=60)
        print(f"{sig.name}: dmops worker exited after {time.monotonic() - t0:.1f} s")
        assert worker_processes(pool) == [], f"left behind after {sig.name}: {worker_processes(pool)}"
        # no heartbeat after the kill: three intervals (the server's own offline threshold)
        time.sleep(1)
        last = {w["name"]: w["last_heartbeat_time"] for w in pool_workers(pool)}
        time.sleep(3 * HEARTBEAT_S + 1)
        assert {w["name"]: w["last_heartbeat_time"] for w in pool_workers(pool)} == last, \
            f"a worker of {pool} still heartbeats after {sig.name}"
        if sig == signal.SIGTERM:
            assert "stopped" in log.read_text(), log.read_text()
    finally:
        for pid, _ in worker_processes(pool):   # only on failure: never leave one polling
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        prefect_api("DELETE", f"/work_pools/{pool}")


@pytest.mark.stack
def test_a_pool_the_server_lacks_or_of_another_type_is_refused_not_created(stack, tmp_path):
    """Prefect's worker creates a missing pool itself: a misspelt --pool polled an empty pool
    for ever (with --run-once: exit 0 after a round of nothing).  Refused, naming the fix; and
    a pool of another type is left to its own worker."""
    missing = f"test-missing-{uuid.uuid4().hex[:8]}"
    other = f"test-k8s-{uuid.uuid4().hex[:8]}"
    prefect_api("POST", "/work_pools/", {"name": other, "type": "kubernetes"})
    try:
        for pool, fragments in ((missing, [f"has no work pool {missing!r}", "dmops deploy"]),
                                (other, [f"{other!r}", "of type kubernetes", "its own worker"])):
            proc = subprocess.run([sys.executable, "-m", "flows.cli", "worker", "--pool", pool,
                                   "--run-once"], cwd=ROOT, capture_output=True, text=True,
                                  timeout=120)
            assert proc.returncode == 1, (proc.stdout, proc.stderr)
            assert proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1, proc.stderr
            assert all(f in proc.stderr for f in fragments), proc.stderr
        assert prefect_api("GET", f"/work_pools/{missing}") is None   # not created
    finally:
        prefect_api("DELETE", f"/work_pools/{other}")
