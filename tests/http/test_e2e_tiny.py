"""End to end through the HTTP API with the real Worker and the real tiny Renderer (CPU, seconds)."""

from __future__ import annotations

import asyncio
import json

import pytest

from wan22bot.jobs import TIMING_KEYS
from wan22bot.queue import JobQueue
from wan22bot.render import Renderer
from wan22bot.sources.http import HttpSource
from wan22bot.video import probe_mp4
from wan22bot.worker import Worker

from .helpers import Server, make_config, png_bytes

pytestmark = pytest.mark.slow


async def test_upload_to_video_with_the_tiny_model(tmp_path, tiny_generator):
    import aiohttp

    cfg = make_config(tmp_path, generation={"frames": 5, "width": 64, "height": 96})
    queue = JobQueue(cfg.paths.state, cfg.paths.output)
    await queue.start()
    worker = Worker(cfg, queue, Renderer(cfg, generator=tiny_generator))
    src = HttpSource(cfg, queue, worker)
    await src.start()
    worker.start()
    session = aiohttp.ClientSession()
    srv = Server(src, session)
    try:
        seen: list[dict] = []
        subscribed = asyncio.Event()

        async def listen():
            async with session.get(srv.url("/api/events")) as r:
                async for line in r.content:
                    if line.startswith(b"retry:"):  # written once the stream is subscribed
                        subscribed.set()
                    if line.startswith(b"data: "):
                        seen.append(json.loads(line[6:]))
                        if seen[-1]["kind"] in ("done", "failed"):
                            return

        events = asyncio.create_task(listen())
        await asyncio.wait_for(subscribed.wait(), 10)
        status, job, headers = await srv.upload(png_bytes(80, 120), "beach.png", prompt="the sea", seed=3)
        assert status == 202, job

        done = await srv.wait_state(job["id"], timeout=120)
        await asyncio.wait_for(events, 10)
        assert set(TIMING_KEYS) <= set(done["timings"]) and done["timings"]["pass1"] > 0

        async with session.get(srv.url(done["links"]["video"])) as r:
            assert r.status == 200
            data = await r.read()
        got = tmp_path / "from-api.mp4"
        got.write_bytes(data)
        info = probe_mp4(got)
        assert (info.frames, info.width, info.height, info.codec, info.pix_fmt) == (5, 64, 96, "h264", "yuv420p")

        status, side = await srv.get_json(done["links"]["sidecar"])
        assert status == 200
        assert side["job_id"] == job["id"] and side["source"] == "http" and side["seed"] == 3
        assert side["settings"]["prompt"] == "the sea"

        stages = {e["stage"] for e in seen if e["kind"] == "progress"}
        assert {"text_encode", "image_encode", "pass1", "pass2", "vae_decode", "encode"} <= stages
        assert any(e["stage"] == "pass2" and e["step"] == e["steps"] == 2 for e in seen if e["kind"] == "progress")

        status, st = await srv.get_json("/api/status")
        assert st["model"] == {"kind": "tiny", "loaded": True, "device": "cpu",
                               "last_load_seconds": st["model"]["last_load_seconds"]}
        assert st["last_timings"]["total"] == pytest.approx(done["timings"]["total"])

        async with session.get(srv.url("/metrics")) as r:
            text = await r.text()
        assert "wan22bot_model_loaded 1.0" in text
        assert 'wan22bot_stage_seconds_count{stage="pass2"} 1.0' in text
    finally:
        await session.close()
        await src.stop()
        await worker.stop()
        await queue.close()
