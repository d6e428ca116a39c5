"""One job's status message: throttled edits while it waits and renders, then the final delivery.

The tracker keeps only the latest wanted text. An edit goes out when the text changed and at least
``edit_interval_seconds`` have passed since the previous edit finished; anything in between is
coalesced. When the job ends the tracker stops editing and hands over to the delivery at once, so
the last state always lands without waiting for the interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import aiohttp
import discord

from ...queue import Job
from .outbox import token_dead
from .target import ReplyTarget

if TYPE_CHECKING:
    from .source import DiscordSource

log = logging.getLogger(__name__)

TRANSIENT = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


class Tracker:
    def __init__(self, owner: "DiscordSource", job_id: str, name: str, target: ReplyTarget, *,
                 waiting: bool = True):
        self.owner = owner
        self.job_id = job_id
        self.name = name
        self.target = target
        self.waiting = waiting  # queued (positions apply) rather than rendering
        self.status_id: int | None = None  # the status message (message targets)
        self.text: str | None = None
        self.sent: str | None = None
        self.token_dead = False
        self.status_broken = False
        self.edits = 0
        self.final: Job | None = None
        self._last_edit = float("-inf")
        self._opened = False
        self._opening: str | None = None
        self._wake = asyncio.Event()
        self._ended = asyncio.Event()
        self.task: asyncio.Task | None = None

    # ------------------------------------------------------------------ input
    def open(self, text: str | None) -> None:
        """The first answer (the queue position). Nothing is shown before it, so a job that starts
        at once still answers with its position first; later states follow, throttled."""
        if not self._opened:
            self._opened = True
            self._opening = text
            self._wake.set()

    def show(self, text: str) -> None:
        if text != self.text:
            self.text = text
            self._wake.set()

    def finish(self, job: Job) -> None:
        self.final = job
        self._ended.set()
        self._wake.set()

    def can_edit(self) -> bool:
        if self.token_dead or self.status_broken:
            return False
        if self.target.kind == "interaction":
            return self.target.expires_at is not None and time.time() < self.target.expires_at - 5
        return True

    # ------------------------------------------------------------------ loop
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.final is None and not self._opened:
                await self._wake.wait()
                self._wake.clear()
            if self.final is None and self._opening is not None and self.can_edit():
                await self.put(self._opening)
                self._last_edit = loop.time()
            self._wake.set()  # whatever came in meanwhile is next (throttled)
            while self.final is None:
                await self._wake.wait()
                self._wake.clear()
                if self.final is not None:
                    break
                if self.text is None or self.text == self.sent or not self.can_edit():
                    continue
                delay = self._last_edit + self.owner.edit_interval - loop.time()
                if delay > 0:
                    try:
                        await asyncio.wait_for(self._ended.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
                    if self.final is not None:
                        break
                text = self.text
                await self.put(text)
                self._last_edit = loop.time()
            await self.owner.deliver_tracked(self.final, self)
        finally:
            self.owner.forget(self)

    async def put(self, text: str) -> bool:
        """Show `text` in the status message (creating it for message targets). Errors are absorbed:
        a status edit is never worth failing a job's delivery for."""
        outbox = self.owner.outbox
        try:
            if self.target.kind == "interaction":
                await outbox.edit_original(self.target, text)
            elif self.status_id is None:
                self.status_id = await outbox.post_status(self.target, text)
            else:
                await outbox.edit_status(self.target, self.status_id, text)
        except discord.HTTPException as exc:
            if token_dead(exc):
                self.token_dead = True
                log.info("job %s: the interaction token no longer works; the result goes to the channel",
                         self.job_id)
            elif exc.status < 500:
                self.status_broken = True
                log.warning("job %s: Discord refused a status update (%s %s); no more updates for it",
                            self.job_id, exc.status, exc.code)
            else:
                log.warning("job %s: status update failed (%s); trying again with the next one", self.job_id,
                            exc.status)
            return False
        except TRANSIENT as exc:
            log.warning("job %s: status update failed (%s); trying again with the next one", self.job_id,
                        type(exc).__name__)
            return False
        self.sent = text
        self.edits += 1
        return True
