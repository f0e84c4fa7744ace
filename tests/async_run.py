"""`run_async(coroutine)`: asyncio.run in a thread of its own, for tests that drive Prefect's
async client.  An earlier test of the session (an in-process Prefect flow) can leave an event
loop running in the main thread, where asyncio.run refuses to start ("cannot be called from a
running event loop"): the result would depend on which tests ran before."""

from __future__ import annotations

import asyncio
import concurrent.futures


def run_async(coroutine, timeout: float = 120):
    """The coroutine's result, run to completion on a fresh event loop in a fresh thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result(timeout=timeout)
