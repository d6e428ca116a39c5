"""Shared pieces of the two long-running roles' lifecycles (`wan22bot run` and `wan22bot worker`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable


async def until_stopped(coro: Awaitable, stop: asyncio.Event, *, settle_seconds: float = 0.0) -> bool:
    """Await `coro` unless `stop` is set first; True when it finished (its exception is raised).

    On a stop the await is cancelled. A model load runs in the GPU thread, which finishes (or not)
    on its own, so nothing waits for it (settle_seconds 0); a coroutine that holds connections is
    given `settle_seconds` to unwind its cancellation.
    """
    task = asyncio.ensure_future(coro)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    if settle_seconds > 0:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, settle_seconds)
    return False
