"""ResultUploader's waits between tries on answers a retry can change (5xx, 408, 429), measured.

A scripted server on a free loopback port stands in front of a real front: it answers the failures
a test lists, one per try, then forwards the next try, untouched, to the real PUT route. The time
between the tries' arrivals is the uploader's wait (the tries themselves take milliseconds on
loopback), and the real front's journal says how often the result was stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from email.utils import formatdate

import aiohttp
import pytest
from aiohttp import web

from tests.http.helpers import make_config
from tests.ports import free_port
from wan22bot.jobs import JobState
from wan22bot.queue import upload
from wan22bot.queue.outcome import Accepted
from wan22bot.queue.upload import ResultUploader

from .conftest import make_mp4, make_sidecar, outcome

BOUND = 30.0
EARLY = 0.05  # a wait may end this much before its time (the loop's clock resolution)
LATE = 0.6  # and this much after it (a loaded test box), never more


class ScriptedFront:
    """Answers `script` [(status, headers)] in turn, then forwards each try to `target`."""

    def __init__(self, target: str, script: list[tuple[int, dict[str, str]]]):
        self.target = target
        self.script = list(script)
        self.arrivals: list[float] = []
        self.forwarded = 0
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:])]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_put("/api/jobs/{job}/result", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        body = await request.read()  # the whole try arrives, as at the real route
        if self.script:
            status, headers = self.script.pop(0)
            return web.json_response({"error": f"scripted {status}"}, status=status, headers=headers)
        self.forwarded += 1
        fwd = {h: request.headers[h] for h in ("Content-Type", "Authorization") if h in request.headers}
        async with self._session.put(self.target + request.path, data=body, headers=fwd) as resp:
            return web.Response(status=resp.status, body=await resp.read(), content_type=resp.content_type)


@pytest.fixture
async def scripted(tmp_path, open_http_front):
    """(front, scripted server, uploader, job, video, sidecar, mp4 bytes) for a script of failures."""
    made: list[tuple[ScriptedFront, ResultUploader]] = []

    async def factory(script):
        front = await open_http_front()
        job = await front.jobs.running_job()
        server = ScriptedFront(front.base, script)
        await server.start()
        up = ResultUploader(make_config(tmp_path / "worker", http={"port": server.port}))
        made.append((server, up))
        video, sidecar = tmp_path / "results" / "clip.mp4", tmp_path / "results" / "clip.json"
        mp4 = make_mp4(video)
        make_sidecar(sidecar)
        return front, server, up, job, video, sidecar, mp4

    yield factory
    for server, up in made:
        await up.close()
        await server.close()


def assert_waits(gaps: list[float], expected: list[float]) -> None:
    assert len(gaps) == len(expected), f"{len(gaps) + 1} tries, expected {len(expected) + 1}"
    for i, (got, want) in enumerate(zip(gaps, expected)):
        assert want - EARLY <= got <= want + LATE, f"wait {i + 1}: {got:.3f} s, expected {want} s (all: {gaps})"


async def assert_stored_once(front, server: ScriptedFront, job, mp4: bytes) -> None:
    assert server.forwarded == 1
    assert (front.queue.output_dir / "beach.mp4").read_bytes() == mp4
    assert (await front.queue.get(job.id)).state == JobState.done
    assert front.jobs.events.count(("done", job.id)) == 1


async def test_503_then_429_with_retry_after_then_the_result_is_stored_once(scripted, caplog):
    caplog.set_level(logging.INFO, "wan22bot.queue.upload")
    front, server, up, job, video, sidecar, mp4 = await scripted([(503, {}), (429, {"Retry-After": "2"})])

    got = await asyncio.wait_for(up.deliver(outcome(job), video, sidecar), BOUND)

    assert got == Accepted(True, "done")
    assert_waits(server.gaps, [1.0, 2.0])  # the backoff's first step, then the front's 2 s
    await assert_stored_once(front, server, job, mp4)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("HTTP 503" in m and "next try in 1 s" in m for m in warned), warned
    assert any("HTTP 429" in m and "next try in 2 s" in m for m in warned), warned


@pytest.mark.parametrize("name", ["Retry-After", "retry-after"])
async def test_a_retry_after_longer_than_the_backoff_is_waited_whatever_its_case(scripted, name):
    # header names are case-insensitive: a proxy in front of the front may send them in lower case
    front, server, up, job, video, sidecar, mp4 = await scripted([(429, {name: "2"})])

    assert await asyncio.wait_for(up.deliver(outcome(job), video, sidecar), BOUND) == Accepted(True, "done")

    assert_waits(server.gaps, [2.0])  # the backoff alone would have waited 1 s
    await assert_stored_once(front, server, job, mp4)


async def test_408_and_5xx_without_retry_after_follow_the_backoff(scripted, caplog):
    caplog.set_level(logging.INFO, "wan22bot.queue.upload")
    front, server, up, job, video, sidecar, mp4 = await scripted([(408, {}), (502, {})])

    assert await asyncio.wait_for(up.deliver(outcome(job), video, sidecar), BOUND) == Accepted(True, "done")

    assert_waits(server.gaps, [1.0, 2.0])
    await assert_stored_once(front, server, job, mp4)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("HTTP 408" in m and "body_timeout_seconds" in m for m in errors), errors


async def test_retry_after_is_capped_and_a_garbled_one_is_ignored(scripted, monkeypatch):
    monkeypatch.setattr(upload, "MAX_DELAY", 2.5)  # the 30 s cap, scaled down to test time
    front, server, up, job, video, sidecar, mp4 = await scripted(
        [(503, {"Retry-After": "3600"}), (503, {"Retry-After": "soon"})])

    assert await asyncio.wait_for(up.deliver(outcome(job), video, sidecar), BOUND) == Accepted(True, "done")

    # an hour asked for, the cap waited; then the backoff's 2 s, the garbled value left aside
    assert_waits(server.gaps, [2.5, 2.0])
    await assert_stored_once(front, server, job, mp4)


async def test_retry_after_as_an_http_date_is_waited_until_that_time(scripted):
    # the date form names a whole second: 3 s from now, truncated, is 2 to 3 s away
    when = formatdate(time.time() + 3.0, usegmt=True)
    front, server, up, job, video, sidecar, mp4 = await scripted([(503, {"Retry-After": when})])

    assert await asyncio.wait_for(up.deliver(outcome(job), video, sidecar), BOUND) == Accepted(True, "done")

    [gap] = server.gaps
    assert 2.0 - EARLY <= gap <= 3.0 + LATE, f"waited {gap:.3f} s for {when}"  # the backoff alone: 1 s
    await assert_stored_once(front, server, job, mp4)


async def test_retry_after_as_a_date_already_past_falls_back_to_the_backoff(scripted):
    front, server, up, job, video, sidecar, mp4 = await scripted(
        [(503, {"Retry-After": formatdate(time.time() - 60.0, usegmt=True)})])

    assert await asyncio.wait_for(up.deliver(outcome(job), video, sidecar), BOUND) == Accepted(True, "done")

    assert_waits(server.gaps, [1.0])
    await assert_stored_once(front, server, job, mp4)
