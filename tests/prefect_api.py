"""Requests to the Prefect server of the `stack` fixture (PREFECT_API_URL) for tests that look
at what it holds: workers of a pool, deployments.  Plain HTTP, so a test sees the server's
answer and not a client's interpretation of it."""

import json
import os
import urllib.error
import urllib.request


def prefect_api(method: str, path: str, body: dict | None = None):
    """The JSON answer to `method path` (path below /api, e.g. /work_pools/x/workers/filter);
    None for 404 (no such object) or an empty answer."""
    request = urllib.request.Request(f"{os.environ['PREFECT_API_URL']}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise
    return json.loads(text) if text else None
