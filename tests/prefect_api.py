"""Requests to the Prefect server of the `stack` fixture (PREFECT_API_URL) for tests that look
at what it holds: workers of a pool, deployments.  Plain HTTP, so a test sees the server's
answer and not a client's interpretation of it (a 5xx of a busy SQLite server is retried
a few times, as the product's own client does)."""

import json
import os
import time
import urllib.error
import urllib.request


def prefect_api(method: str, path: str, body: dict | None = None):
    """The JSON answer to `method path` (path below /api, e.g. /work_pools/x/workers/filter);
    None for 404 (no such object) or an empty answer."""
    request = urllib.request.Request(f"{os.environ['PREFECT_API_URL']}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    for attempt in range(5):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
            break
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            # the test stack's Prefect keeps SQLite: under load a write may meet a locked
            # database and answer 503; the product's own client retries these too
            if e.code not in (500, 502, 503) or attempt == 4:
                raise
            time.sleep(0.5 * 2 ** attempt)
    return json.loads(text) if text else None
