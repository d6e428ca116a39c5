"""Fixtures for the queue tests: a real JobQueue on a real SQLite journal in a temporary folder."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from wan22bot.jobs import JobSpec
from wan22bot.queue import JobQueue


def spec(source: str = "watch", user: str | None = None, name: str = "photo.jpg", **kw) -> JobSpec:
    """What a source hands to submit(): the queue fills in input_path and the unique name."""
    return JobSpec(source=source, user=user, original_name=name, input_path="", name="", **kw)


def photo_bytes(tag: str | int) -> bytes:
    """Distinct content per tag (dedupe is by content); not a decodable image, the queue never decodes."""
    return b"\xff\xd8\xff\xe0" + f"photo-{tag}-".encode() + os.urandom(64)


class QueueFactory:
    def __init__(self, root: Path):
        self.root = root
        self.state = root / "state"
        self.output = root / "out"
        self.output.mkdir(parents=True, exist_ok=True)
        self.opened: list[JobQueue] = []

    async def open(self, *, max_length: int = 100, max_attempts: int = 3, listener=None) -> JobQueue:
        q = JobQueue(self.state, self.output, max_length=max_length, max_attempts=max_attempts)
        if listener is not None:
            q.add_listener(listener)
        self.last_start = await q.start()
        self.opened.append(q)
        return q

    async def close(self, q: JobQueue) -> None:
        await q.close()
        self.opened.remove(q)


@pytest.fixture
async def queues(tmp_path):
    f = QueueFactory(tmp_path)
    yield f
    for q in list(f.opened):
        await q.close()


@pytest.fixture
async def q(queues):
    return await queues.open()


async def claim(q: JobQueue, timeout: float = 2.0):
    """The next job exactly as the worker takes it."""
    return await asyncio.wait_for(q.next_job(), timeout)


async def settle() -> None:
    """Let listener tasks scheduled by publish() run."""
    for _ in range(5):
        await asyncio.sleep(0)
