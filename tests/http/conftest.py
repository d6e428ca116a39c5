"""Fixtures for the HTTP source: a real JobQueue in tmp dirs, a real aiohttp server on 127.0.0.1:0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from wan22bot.config import Config
from wan22bot.queue import JobQueue
from wan22bot.sources.http import HttpSource

from .helpers import Server, StandInWorker, make_config


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
async def queue(cfg: Config):
    q = JobQueue(cfg.paths.state, cfg.paths.output, max_length=cfg.queue.max_length,
                 max_attempts=cfg.queue.max_attempts)
    await q.start()
    yield q
    await q.close()


@pytest.fixture
async def make_server(cfg: Config, queue: JobQueue):
    started: list[Server] = []

    async def factory(worker: Any = None, config: Config | None = None) -> Server:
        src = HttpSource(config or cfg, queue, worker)
        await src.start()
        session = aiohttp.ClientSession()
        s = Server(src, session)
        started.append(s)
        return s

    yield factory
    for s in started:
        await s.session.close()
        await s.source.stop()


@pytest.fixture
async def stand_in(cfg: Config, queue: JobQueue):
    w = StandInWorker(queue, cfg.paths.output)
    yield w
    await w.stop()

