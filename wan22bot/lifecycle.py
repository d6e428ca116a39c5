"""Shared pieces of the two long-running roles' lifecycles (`wan22bot run` and `wan22bot worker`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .notify import Notifier


class StopRequest:
    """The stop of a role: asked for by SIGTERM/SIGINT (or code) with `request`, acted on by the
    role awaiting `event`. systemd hears STOPPING=1 once: at the request, so `systemctl status`
    says so while the running job checkpoints, or, when nothing asked (a start that failed), as the
    role unwinds (`send_stopping`, registered first on its exit stack so it runs last).

    `logger` and `what` keep each role's own log line: "stopping (SIGTERM): <what>"."""

    def __init__(self, notifier: Notifier, logger: logging.Logger, what: str):
        self.notifier = notifier
        self.log = logger
        self.what = what
        self.event = asyncio.Event()
        self._sent = False

    def request(self, sig: int | None = None) -> None:
        if not self.event.is_set():
            self.log.info("stopping (%s): %s", signal.Signals(sig).name if sig else "request", self.what)
            self.send_stopping()
            self.event.set()

    def install(self, loop: asyncio.AbstractEventLoop, stack: contextlib.AsyncExitStack,
                on_signal: Callable[[int], None] | None = None) -> None:
        """At the top of a role's exit stack: STOPPING=1 goes out last whatever happens, and
        SIGTERM/SIGINT call `on_signal` (default: `request`) until the stack unwinds."""
        stack.callback(self.send_stopping)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal or self.request, sig)
            stack.callback(loop.remove_signal_handler, sig)

    def send_stopping(self) -> None:
        if not self._sent:  # once: a signal sends it early, the unwinding otherwise
            self._sent = True
            self.notifier.stopping()


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
