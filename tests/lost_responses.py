"""A lost response, made on the client side of a real server: the server carries the request out
and answers, the client acts as if the answer never came and sends the request again.

That is what botocore does after a connection reset or read timeout that happened after the
store had applied a PUT; only the client's retry decision is steered (botocore's `needs-retry`
event), never what the server does or answers."""

from __future__ import annotations

from typing import Callable


class LostResponses:
    """Make `client` (a boto3 S3 client with retries, max_attempts >= 2) retry the first
    `times` successful responses of `operation` (e.g. "PutObject") whose request URL passes
    `which` (default: all), as botocore retries a request whose answer was lost.

    `dropped` lists the URLs whose answer was dropped, in order."""

    def __init__(self, client, operation: str, which: Callable[[str], bool] = lambda url: True,
                 times: int = 1):
        self.operation, self.which, self.times = operation, which, times
        self.dropped: list[str] = []
        # the most specific event: botocore's own retry handler (on needs-retry.s3) comes later
        client.meta.events.register(f"needs-retry.s3.{operation}", self._needs_retry)

    def _needs_retry(self, response=None, request_dict=None, **_):
        if response is None or len(self.dropped) >= self.times:
            return None
        http, _parsed = response
        url = request_dict["url"]
        if 200 <= http.status_code < 300 and self.which(url):
            self.dropped.append(url)
            return 0.01   # seconds to wait, then the same request again
        return None
