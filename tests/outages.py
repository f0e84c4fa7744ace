"""Server outages for fault tests: stop one server of a running test stack by its process id,
as an operator's crash or an out-of-memory kill would, and bring it back afterwards.

    with outage(stack, "mlflow") as down:
        ...                 # the server is gone (SIGKILL to its process group)
        down.restore()      # optional: bring it back before the block ends
    # here the server runs again (restored on the way out whatever happened in the block)

The server restarts on the same port with the same state folder, so what it stored before the
outage is served again, as after a real restart."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from infra import processes
from infra.processes import read_pid_file, wait_group_gone


class Outage:
    def __init__(self, stack, service: str):
        self.stack, self.service = stack, service
        self.restored = False
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def kill(self) -> int:
        """SIGKILL the server's process group; returns its pid."""
        record = read_pid_file(self.stack.layout.pid_file(self.service))
        if record is None:
            raise RuntimeError(f"{self.service} of the test stack is not running")
        os.killpg(record.pid, signal.SIGKILL)
        # reap it first when this process started it (the test session's stack): until then
        # the killed server is a zombie whose group still answers, and the wait below took its
        # full 10 s (infra.processes.is_running calls a zombie stopped without reaping it)
        child = processes._CHILDREN.get(record.pid)
        if child is not None:
            child.wait(10)
        wait_group_gone(record.pid, 10)
        return record.pid

    def restore(self) -> None:
        """Start the server again and wait until it is ready (idempotent)."""
        with self._lock:
            if not self.restored:
                self.stack.up(services=[self.service])
                self.restored = True

    def restore_after(self, seconds: float) -> threading.Thread:
        """Restore the server from a background thread after `seconds` (a short outage)."""
        self._timer = threading.Timer(seconds, self.restore)
        self._timer.daemon = True
        self._timer.start()
        return self._timer


@contextmanager
def outage(stack, service: str) -> Iterator[Outage]:
    """Kill `service` ("seaweedfs", "mlflow" or "prefect") of `stack` now; restart it at the end."""
    down = Outage(stack, service)
    down.kill()
    try:
        yield down
    finally:
        if down._timer is not None:
            down._timer.join(300)
        down.restore()
