"""Health checks of the stack's servers over plain HTTP on loopback."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from infra.errors import StackError
from infra.processes import PidRecord, exit_code, is_running, log_tail
from infra.services import ServiceSpec
from infra.layout import StateLayout

# Loopback never goes through a proxy, whatever HTTP_PROXY the user's shell holds.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when GET `url` answers 2xx within `timeout` seconds."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_healthy(spec: ServiceSpec, record: PidRecord, layout: StateLayout, deadline: float,
                 timeout: float) -> None:
    """Poll the health URL until it answers; StackError with the log's tail when the server
    exits first or `deadline` (time.monotonic) passes."""
    log = layout.log(spec.name)
    while True:
        if http_ok(spec.health_url):
            return
        if not is_running(record):
            code = exit_code(record)
            status = f" with exit code {code}" if code is not None else ""
            raise StackError(f"{spec.name} exited during start-up{status}; last 20 lines of {log}:\n"
                             f"{log_tail(log)}")
        if time.monotonic() >= deadline:
            raise StackError(f"{spec.name} did not answer {spec.health_url} within {timeout:.0f} s; "
                             f"last 20 lines of {log}:\n{log_tail(log)}\n"
                             f"(a slow machine may need `dmops up --timeout {2 * timeout:.0f}`)")
        time.sleep(0.25)
