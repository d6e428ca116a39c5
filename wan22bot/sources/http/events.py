"""Server-sent events: one `job` event per queue event, fanned out to every open page."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web


class EventHub:
    def __init__(self) -> None:
        self.subscribers: set[asyncio.Queue] = set()

    def publish(self, payload: dict[str, Any]) -> None:
        if not self.subscribers:
            return
        data = f"event: job\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
        for q in list(self.subscribers):
            offer(q, data)

    def close(self) -> None:
        """Ends every open stream (at shutdown)."""
        for q in list(self.subscribers):
            offer(q, None)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        q: asyncio.Queue = asyncio.Queue(maxsize=256)
        self.subscribers.add(q)
        try:
            await resp.write(b"retry: 3000\n\n")
            while True:
                try:
                    item = await asyncio.wait_for(q.get(), 15.0)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if item is None:
                    break
                await resp.write(item)
        except ConnectionError:
            pass  # the page went away
        finally:
            self.subscribers.discard(q)
        return resp


def offer(q: asyncio.Queue, item: Any) -> None:
    try:
        q.put_nowait(item)
    except asyncio.QueueFull:  # a slow reader misses events; the page re-reads the state anyway
        if item is None:
            try:
                q.get_nowait()
                q.put_nowait(None)
            except (asyncio.QueueEmpty, asyncio.QueueFull):
                pass
