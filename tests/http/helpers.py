"""Helpers for the HTTP source tests: configs in tmp dirs, photos, a client wrapper and a stand-in worker
that claims jobs like the real one and finishes them with real MP4 files."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from PIL import Image

from wan22bot.config import Config
from wan22bot.jobs import JobResult, JobState
from wan22bot.queue import JobQueue
from wan22bot.sources.http import HttpSource
from wan22bot.video import encode_mp4

TOKEN_ENV = "WAN22BOT_TEST_HTTP_TOKEN"


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "paths": {"input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "state": str(tmp_path / "state")},
        "http": {"host": "127.0.0.1", "port": 0, "token_env": TOKEN_ENV},
        "watch": {"enabled": False},
        "interpolation": {"weights": str(tmp_path / "no-rife.pkl")},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    cfg = Config.model_validate(data)
    for p in (cfg.paths.input, cfg.paths.output, cfg.paths.state):
        Path(p).mkdir(parents=True, exist_ok=True)
    return cfg


def png_bytes(w: int = 80, h: int = 120, *, noise: bool = False, mode: str = "RGB") -> bytes:
    if noise:
        arr = np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(arr, "RGB")
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.stack([xx * 255 // max(1, w - 1), yy * 255 // max(1, h - 1), np.full_like(xx, 140)], -1)
        img = Image.fromarray(arr.astype(np.uint8), "RGB").convert(mode)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def photo_form(data: bytes, filename: str = "cat.png", **fields: Any) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("photo", data, filename=filename, content_type="application/octet-stream")
    for k, v in fields.items():
        form.add_field(k, str(v))
    return form


def gradient_frames(n: int = 5, h: int = 96, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(n):
        r = (xx * 4 + i * 20) % 256
        g = (yy * 2 + i * 10) % 256
        b = np.full_like(xx, 180)
        frames.append(np.stack([r, g, b], -1).astype(np.uint8))
    return np.stack(frames)


class StandInWorker:
    """Claims jobs like the real worker and finishes them with a real (small) MP4 and sidecar.

    `hold` (an asyncio.Event), when given, keeps each job running at pass 1 step 1/2 until it is set.
    """

    def __init__(self, queue: JobQueue, output: Path, hold: asyncio.Event | None = None):
        self.queue = queue
        self.output = Path(output)
        self.hold = hold
        self.current = None
        self.last_timings: dict[str, float] | None = None
        self.finished: list[str] = []
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            job = await self.queue.next_job()
            self.current = job
            for stage in ("text_encode", "image_encode"):
                self.queue.progress(job, stage)
            self.queue.progress(job, "pass1", 1, 2)
            if self.hold is not None:
                await self.hold.wait()
            if self.queue.cancel_flag(job.id).is_set():
                await self.queue.finish(job, JobState.cancelled, error="cancelled")
                self.current = None
                continue
            self.queue.progress(job, "pass1", 2, 2)
            self.queue.progress(job, "pass2", 1, 2)
            self.queue.progress(job, "pass2", 2, 2)
            self.queue.progress(job, "vae_decode")
            self.queue.progress(job, "encode")
            mp4 = self.output / f"{job.spec.name}.mp4"
            size = await asyncio.to_thread(encode_mp4, gradient_frames(), mp4, 16)
            timings = {"text_encode": 0.21, "image_encode": 0.45, "pass1": 1.8, "pass2": 1.6, "vae_decode": 0.9,
                       "interpolate": 0.0, "encode": 0.05}
            timings["total"] = round(sum(timings.values()), 4)
            sidecar = self.output / f"{job.spec.name}.json"
            sidecar.write_text(json.dumps({"name": job.spec.name, "timings": timings, "job_id": job.id}))
            result = JobResult(output=str(mp4), sidecar=str(sidecar), timings=timings, frames=5, fps=16, width=64,
                               height=96, seed=7, bytes=size)
            self.last_timings = timings
            await self.queue.finish(job, JobState.done, result=result)
            self.finished.append(job.id)
            self.current = None


class Server:
    """A started HttpSource plus a client session pointed at it."""

    def __init__(self, source: HttpSource, session: aiohttp.ClientSession):
        self.source = source
        self.session = session

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.source.port}"

    def url(self, path: str) -> str:
        return self.base + path

    async def get_json(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.session.get(self.url(path), **kw) as r:
            return r.status, await r.json()

    async def upload(self, data: bytes | None = None, filename: str = "cat.png", *,
                     headers: dict[str, str] | None = None, **fields: Any):
        form = photo_form(png_bytes() if data is None else data, filename, **fields)
        async with self.session.post(self.url("/api/jobs"), data=form, headers=headers) as r:
            return r.status, await r.json(), r.headers

    async def wait_state(self, job_id: str, states: tuple[str, ...] = ("done",), timeout: float = 60.0, *,
                         headers: dict[str, str] | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status, body = await self.get_json(f"/api/jobs/{job_id}", headers=headers)
            assert status == 200, body
            if body["state"] in states:
                return body
            if body["state"] in ("done", "failed", "cancelled"):
                raise AssertionError(f"job ended {body['state']}: {body.get('error')}")
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {body['state']} after {timeout} s")
            await asyncio.sleep(0.05)
