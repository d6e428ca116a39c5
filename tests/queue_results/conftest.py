"""Fixtures for settling remote results: a real JobQueue in tmp folders, real MP4 files, outcomes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from wan22bot.jobs import JobResult, JobSpec
from wan22bot.queue import Job, JobQueue
from wan22bot.queue.outcome import ResultOutcome
from wan22bot.video import encode_mp4


def spec(name: str = "beach.jpg") -> JobSpec:
    return JobSpec(source="watch", original_name=name, input_path="", name="")


def frames(n: int = 5, h: int = 96, w: int = 64, *, noise: bool = False) -> np.ndarray:
    if noise:  # incompressible: a video of a predictable, larger size
        return np.random.default_rng(n * h * w).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([np.stack([(xx * 4 + i * 20) % 256, (yy * 2 + i * 10) % 256, np.full_like(xx, 180)], -1)
                     for i in range(n)]).astype(np.uint8)


def make_mp4(path: Path, *, noise: bool = False, n: int = 5) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    encode_mp4(frames(n, noise=noise), path, 16, crf=0 if noise else 18)
    return path.read_bytes()


def make_sidecar(path: Path, **extra) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": "remote", "timings": {"total": 3.5}, **extra}))
    return path.read_bytes()


def result(**kw) -> JobResult:
    base = dict(output="/worker/results/x.mp4", sidecar="/worker/results/x.json",
                timings={"pass1": 1.0, "pass2": 2.0, "total": 3.5}, frames=5, fps=16, width=64, height=96,
                seed=7, bytes=1)
    base.update(kw)
    return JobResult(**base)


def outcome(job: Job | str, state: str = "done", **kw) -> ResultOutcome:
    jid = job if isinstance(job, str) else job.id
    if state == "done":
        kw.setdefault("result", result())
    return ResultOutcome(job=jid, state=state, worker=kw.pop("worker", "gpu-box-1"), **kw)


class Front:
    """A real JobQueue like the front's, with helpers to put a job in the state a test needs."""

    def __init__(self, queue: JobQueue):
        self.queue = queue
        self.events: list[tuple[str, str]] = []
        queue.add_listener(lambda ev: self.events.append((ev.kind, ev.job.id)))

    async def running_job(self, name: str = "beach.jpg") -> Job:
        await self.queue.submit(spec(name), b"\xff\xd8\xff\xe0" + name.encode())
        return await asyncio.wait_for(self.queue.next_job(), 5)

    async def queued_job(self, name: str = "beach.jpg") -> Job:
        job, _ = await self.queue.submit(spec(name), b"\xff\xd8\xff\xe0" + name.encode())
        return job


@pytest.fixture
async def open_front(tmp_path):
    opened: list[JobQueue] = []

    async def factory(output: Path | None = None) -> Front:
        q = JobQueue(tmp_path / "state", output or tmp_path / "out")
        await q.start()
        opened.append(q)
        return Front(q)

    yield factory
    for q in opened:
        await q.close()


@pytest.fixture
async def front(open_front) -> Front:
    return await open_front()


# ---------------------------------------------------------------------------------------- the front's API
TOKEN = "front-token-0123456789abcdef"


class HttpFront:
    """A started HttpSource on a real JobQueue, as the front box runs it."""

    def __init__(self, source, queue: JobQueue, session):
        self.source = source
        self.queue = queue
        self.jobs = Front(queue)
        self.session = session

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.source.port}"

    def url(self, path: str) -> str:
        return self.base + path

    async def put_result(self, job_id: str, parts: list[tuple[str, bytes, str]], *, token: str | None = TOKEN,
                         headers: dict[str, str] | None = None) -> tuple[int, dict]:
        form = aiohttp.FormData()
        for name, data, ctype in parts:
            form.add_field(name, data, content_type=ctype, filename=None if name == "outcome" else f"{name}.bin")
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        async with self.session.put(self.url(f"/api/jobs/{job_id}/result"), data=form, headers=hdrs) as r:
            return r.status, await r.json()


def outcome_part(o) -> tuple[str, bytes, str]:
    return ("outcome", o.model_dump_json().encode() if not isinstance(o, bytes) else o, "application/json")


@pytest.fixture
async def open_http_front(tmp_path, monkeypatch):
    """Start a front: `token` (default TOKEN, None for none), config sections as make_config takes them."""
    from wan22bot.sources.http import HttpSource
    from tests.http.helpers import TOKEN_ENV, make_config

    started: list[HttpFront] = []

    async def factory(*, token: str | None = TOKEN, port: int = 0, folder: str = "front", **sections) -> HttpFront:
        if token is None:
            monkeypatch.delenv(TOKEN_ENV, raising=False)
        else:
            monkeypatch.setenv(TOKEN_ENV, token)
        root = tmp_path / folder
        http = {"port": port, **sections.pop("http", {})}
        cfg = make_config(root, http=http, **sections)
        q = JobQueue(cfg.paths.state, cfg.paths.output)
        await q.start()
        src = HttpSource(cfg, q)
        try:
            await src.start()
        except BaseException:
            await q.close()
            raise
        f = HttpFront(src, q, aiohttp.ClientSession())
        started.append(f)
        return f

    yield factory
    for f in started:
        await f.session.close()
        await f.source.stop()
        await f.queue.close()
