"""Health and readiness waits for the stack's servers, over plain HTTP on loopback.

A health URL answering means the process is up; readiness (infra/readiness.py) means it can
serve what it holds. Both are waited for with `wait_until`, which fails fast when the server
exits and otherwise gives up at the deadline with the server's name and its log's tail."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Callable, Optional

from infra.errors import StackError
from infra.layout import StateLayout
from infra.processes import PidRecord, exit_code, is_running, log_tail
from infra.services import ServiceSpec

# Loopback never goes through a proxy, whatever HTTP_PROXY the user's shell holds.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
POLL_S = 0.25


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when GET `url` answers 2xx within `timeout` seconds."""
    return http_problem(url, timeout=timeout, expect_json=False) is None


def basic_auth(user: str, password: str) -> dict[str, str]:
    """The `Authorization` header of HTTP basic authentication (MLflow's basic-auth app, and
    Prefect's API auth string "user:password")."""
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def http_problem(url: str, body: Optional[dict] = None, timeout: float = 5.0,
                 expect_json: bool = True, headers: Optional[dict[str, str]] = None) -> Optional[str]:
    """None when GET `url` (POST of JSON `body` when given) answers 2xx within `timeout`
    seconds, with a JSON (or empty) body when `expect_json`; otherwise a short reason
    ("HTTP 503 from ...: ...", "connection refused", "not JSON"). `headers` (credentials)
    go with the request and never into the reason."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                     headers=({"Content-Type": "application/json"} if data else {}) | (headers or {}))
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            text = response.read()
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code} from {url}: {e.read()[:200].decode(errors='replace')}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return f"{url}: {getattr(e, 'reason', e)}"
    if expect_json and text.strip():
        try:
            json.loads(text)
        except ValueError:
            return f"{url} answered 2xx but not JSON: {text[:100]!r}"
    return None


def wait_until(spec: ServiceSpec, record: PidRecord, layout: StateLayout, deadline: float,
               timeout: float, problem: Callable[[], Optional[str]], what: str) -> None:
    """Poll `problem()` (None when the condition holds, else why not) until it holds.

    Raises StackError, with the last 20 lines of the server's log, when the server exits first
    or when `deadline` (time.monotonic) passes; the message says "<name> did not <what> within
    <timeout> s" and the last reason."""
    log = layout.log(spec.name)
    while True:
        reason = problem()
        if reason is None:
            return
        if not is_running(record):
            code = exit_code(record)
            status = f" with exit code {code}" if code is not None else ""
            raise StackError(f"{spec.name} exited during start-up{status}; its log {log} from this "
                             f"start:\n{log_tail(log, this_start=True)}")
        if time.monotonic() >= deadline:
            raise StackError(f"{spec.name} did not {what} within {timeout:.0f} s (last: {reason}); "
                             f"last 20 lines of {log}:\n{log_tail(log)}\n"
                             f"(a slow machine may need `dmops up --timeout {2 * timeout:.0f}`)")
        time.sleep(POLL_S)


def wait_healthy(spec: ServiceSpec, record: PidRecord, layout: StateLayout, deadline: float,
                 timeout: float) -> None:
    """Poll the health URL until it answers 2xx; StackError as in `wait_until`."""
    wait_until(spec, record, layout, deadline, timeout,
               lambda: None if http_ok(spec.health_url) else "no 2xx answer",
               f"answer {spec.health_url}")
