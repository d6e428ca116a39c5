"""The Discord bot against the local fake Discord, with a real JobQueue (SQLite in tmp) and, where a
test needs results, the real Worker with the real tiny Renderer (one generator loaded per session).

Only the fake's URLs are configured (``[discord] api_base`` / ``gateway_url``); the bot itself
points discord.py at them, as it does in production. The token comes from an environment variable.
"""

from __future__ import annotations

import asyncio
import io
import random
import struct
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import discord
import pytest
from PIL import Image

from tests.fakediscord import FakeDiscord, FakeInteraction
from wan22bot.config import (Config, DiscordConfig, GenerationConfig, HttpConfig, InterpolationConfig,
                             PathsConfig, QueueConfig, WatchConfig)
from wan22bot.queue import JobQueue
from wan22bot.render import Renderer
from wan22bot.sources.discord_bot import DiscordSource
from wan22bot.worker import Worker

TOKEN = "test-bot-token.Zm9vYmFy.c2VjcmV0LXZhbHVl"
TOKEN_ENV = "WAN22BOT_TEST_DISCORD_TOKEN"
MIB = 2**20
WAIT = 60.0  # generous: the machine may be busy; passing runs take a fraction of this


def photo_png(seed: int = 0, size: tuple[int, int] = (48, 32)) -> bytes:
    """A small real PNG; each seed gives different bytes."""
    rnd = random.Random(seed)
    img = Image.frombytes("RGB", size, rnd.randbytes(size[0] * size[1] * 3))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header declares a huge image; its pixel data is a few bytes (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    # the bot sets these from its config and puts them back at stop(); restore them regardless
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY",
                        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
    async with FakeDiscord(token=TOKEN) as server:
        yield server
        server.assert_no_unknown_requests()


class Rig:
    """One daemon's worth of parts: config, queue, worker (optional) and the bot."""

    def __init__(self, tmp_path: Path, fake: FakeDiscord, request: pytest.FixtureRequest):
        self.tmp = tmp_path
        self.fake = fake
        self._request = request
        self.cfg: Config | None = None
        self.queue: JobQueue | None = None
        self.worker: Worker | None = None
        self.bot: DiscordSource | None = None

    def configure(self, *, generation: dict | None = None, http: dict | None = None, queue_length: int = 100,
                  fast_edits: float | None = None, **discord_kw: Any) -> Config:
        d = dict(enabled=True, token_env=TOKEN_ENV, api_base=self.fake.api_base, gateway_url=self.fake.gateway_url,
                 edit_interval_seconds=0.5)
        d.update(discord_kw)
        g = dict(frames=5, width=64, height=96)
        g.update(generation or {})
        self.cfg = Config(
            paths=PathsConfig(input=self.tmp / "in", output=self.tmp / "out", state=self.tmp / "state"),
            generation=GenerationConfig(**g),
            interpolation=InterpolationConfig(weights=self.tmp / "no-rife" / "flownet.pkl"),
            watch=WatchConfig(enabled=False),
            http=HttpConfig(enabled=False, **(http or {})),
            queue=QueueConfig(max_length=queue_length),
            discord=DiscordConfig(**d),
        )
        if fast_edits is not None:
            # Below the config's 0.5 s minimum, so a short CPU job still spans several intervals;
            # the throttle is the same code at any interval.
            object.__setattr__(self.cfg.discord, "edit_interval_seconds", fast_edits)
        return self.cfg

    async def start(self, *, worker: bool = True, bot: bool = True, **config_kw: Any) -> "Rig":
        if self.cfg is None or config_kw:
            self.configure(**config_kw)
        assert self.cfg is not None
        self.queue = JobQueue(self.cfg.paths.state, self.cfg.paths.output, max_length=self.cfg.queue.max_length)
        await self.queue.start()
        if worker:
            self.start_worker()
        if bot:
            await self.start_bot()
        return self

    def start_worker(self) -> Worker:
        assert self.cfg is not None and self.queue is not None
        gen = self._request.getfixturevalue("tiny_generator")
        self.worker = Worker(self.cfg, self.queue, Renderer(self.cfg, generator=gen))
        self.worker.start()
        return self.worker

    async def start_bot(self) -> DiscordSource:
        assert self.cfg is not None and self.queue is not None
        bot = DiscordSource(self.cfg, self.queue, self.worker, guild_ready_timeout=0.1)
        await bot.start()
        self.bot = bot  # stopped at teardown even if it never gets ready
        await bot.wait_ready(WAIT)
        return bot

    async def stop_bot(self) -> None:
        if self.bot is not None:
            await self.bot.stop()
            self.bot = None

    async def close(self) -> None:
        await self.stop_bot()
        if self.worker is not None:
            await self.worker.stop()
            self.worker = None
        if self.queue is not None:
            await self.queue.close()
            self.queue = None

    # ------------------------------------------------------------------ helpers
    def attachment(self, data: bytes | None = None, name: str = "cat.png", content_type: str | None = None,
                   **kw: Any) -> dict:
        return self.fake.add_attachment(name, photo_png() if data is None else data, content_type, **kw)

    async def animate(self, options: dict | None = None, *, photo: dict | None = None, **kw: Any) -> FakeInteraction:
        return await self.fake.send_interaction("animate", options or {}, attachment=photo or self.attachment(),
                                                **kw)

    async def jobs(self, **kw: Any):
        assert self.queue is not None
        return await self.queue.list(**kw)

    async def wait_job(self, predicate: Callable[[Any], bool], timeout: float = WAIT):
        deadline = time.monotonic() + timeout
        while True:
            jobs = await self.jobs()
            found = [j for j in jobs if predicate(j)]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no such job in time: {[(j.id, j.state.value) for j in jobs]}"
            await asyncio.sleep(0.05)

    async def wait_final(self, timeout: float = WAIT):
        return await self.wait_job(lambda j: j.state.final, timeout)

    async def wait_delivered(self, job_id: str, timeout: float = WAIT):
        return await self.wait_job(lambda j: j.id == job_id and j.delivered, timeout)

    def edits_for(self, inter: FakeInteraction) -> list[dict]:
        return [e for e in self.fake.edits if e["token"] == inter.token]

    def followups_for(self, inter: FakeInteraction) -> list[dict]:
        return [f for f in self.fake.followups if f["token"] == inter.token]

    async def refusal_text(self, inter: FakeInteraction) -> str:
        """The ephemeral answer to a refused command: an ephemeral reply, or an ephemeral defer
        followed by an edit of that deferred message."""
        cb = await self.fake.wait_for("callback", timeout=WAIT, token=inter.token)
        assert cb["ephemeral"], cb
        if cb["type"] == 4:
            return cb["data"]["content"]
        assert cb["type"] == 5
        edit = await self.fake.wait_for("edit", timeout=WAIT, token=inter.token)
        assert edit["message"]["flags"] & 64, "the deferred answer must stay ephemeral"
        return edit["content"]


@pytest.fixture
async def rig(tmp_path: Path, fake: FakeDiscord, request: pytest.FixtureRequest):
    r = Rig(tmp_path, fake, request)
    yield r
    await r.close()


def mp4_info(data: bytes, tmp_path: Path) -> tuple[int, float, int, int]:
    """(frames, fps, width, height) of MP4 bytes, read back with PyAV."""
    import av

    p = tmp_path / f"check-{time.monotonic_ns()}.mp4"
    p.write_bytes(data)
    with av.open(str(p)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return n, float(s.average_rate), s.codec_context.width, s.codec_context.height


def field_map(embed: dict) -> dict[str, str]:
    return {f["name"]: f["value"] for f in embed.get("fields", [])}

