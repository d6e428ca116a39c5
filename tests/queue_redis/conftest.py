"""One queue contract, two backends: what the sources use (`front`) and what `Worker` uses (`work`).

- sqlite: today's single box; the front's JobQueue is also the worker's queue.
- redis: the front's JobQueue (keep_claimed_by="redis") with a Dispatcher started on it, and a
  RemoteQueue whose `deliver` is `accept_result` on the front (in-process, no HTTP), all on one
  real redis-server (tests/redis_server.py). Timings are small: heartbeat 0.2 s, takeover after 1 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from wan22bot.config import Config, config_from_dict
from wan22bot.jobs import JobResult, JobSpec, JobState
from wan22bot.queue import Job, JobQueue
from wan22bot.queue.dispatcher import Dispatcher
from wan22bot.queue.outcome import accept_result
from wan22bot.queue.remote import RemoteQueue

HEARTBEAT = 0.2
CLAIM_TIMEOUT = 1.0


def spec(source: str = "watch", user: str | None = None, name: str = "photo.jpg", **kw) -> JobSpec:
    return JobSpec(source=source, user=user, original_name=name, input_path="", name="", **kw)


def photo_bytes(tag: Any, size: int = 64) -> bytes:
    """Distinct content per tag (dedupe is by content); nothing here decodes it."""
    return b"\xff\xd8\xff\xe0" + f"photo-{tag}-".encode() + os.urandom(size)


def fake_mp4(tag: str) -> bytes:
    """What accept_result checks of an MP4: it starts with an 'ftyp' box."""
    return b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + f"video of {tag}".encode() + os.urandom(32)


def render_files(folder: Path, job: Job) -> tuple[JobResult, bytes]:
    """The MP4 and sidecar a render leaves, and its JobResult (paths where the worker wrote them)."""
    folder.mkdir(parents=True, exist_ok=True)
    video, side = folder / f"{job.spec.name}.mp4", folder / f"{job.spec.name}.json"
    data = fake_mp4(job.id)
    video.write_bytes(data)
    side.write_text(json.dumps({"job_id": job.id, "name": job.spec.name}))
    return JobResult(output=str(video), sidecar=str(side), timings={"pass1": 1.0, "pass2": 1.0, "total": 2.5},
                     frames=5, fps=16, width=64, height=96, seed=3, bytes=len(data)), data


def redis_config(root: Path, url: str, **queue: Any) -> Config:
    q = {"backend": "redis", "url": url, "heartbeat_seconds": HEARTBEAT, "claim_timeout_seconds": CLAIM_TIMEOUT,
         **queue}
    return config_from_dict({"paths": {"state": str(root / "state"), "output": str(root / "out"),
                                       "input": str(root / "in")}, "queue": q})


def worker_config(cfg: Config, name: str) -> Config:
    out = cfg.model_copy(deep=True)
    out.worker.name = name
    return out


async def until(pred, timeout: float = 5.0, what: str = "the condition"):
    """Poll an (async or plain) predicate until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


class Backend:
    """`front`: the JobQueue sources use. `work`: what Worker calls. `work_out`: where a render lands."""

    def __init__(self, kind: str, root: Path, server=None):
        self.kind = kind
        self.root = root
        self.server = server
        self.state, self.output = root / "state", root / "out"
        self.output.mkdir(parents=True, exist_ok=True)
        self.front: JobQueue | None = None
        self.work: Any = None
        self.dispatcher: Dispatcher | None = None
        self.workers: list[RemoteQueue] = []
        self.events: list[tuple[str, str]] = []
        self.cfg = redis_config(root, server.url) if server is not None else None
        self._names = 0

    @property
    def work_out(self) -> Path:
        return self.output if self.kind == "sqlite" else self.root / "worker-results"

    async def open(self, *, max_attempts: int = 3) -> None:
        self.max_attempts = max_attempts
        await self._open_front()
        if self.kind == "sqlite":
            self.work = self.front
        else:
            self.work = await self.new_worker()

    async def _open_front(self) -> None:
        keep = "redis" if self.kind == "redis" else None
        self.front = JobQueue(self.state, self.output, max_attempts=self.max_attempts, keep_claimed_by=keep)
        self.front.add_listener(lambda ev: self.events.append((ev.kind, ev.job.id)))
        await self.front.start()
        if self.kind == "redis":
            self.dispatcher = Dispatcher(self.cfg, self.front)
            self.dispatcher.start()
            await asyncio.wait_for(self.dispatcher.ready.wait(), 10)

    async def new_worker(self, name: str | None = None, deliver=None) -> RemoteQueue:
        self._names += 1
        name = name or f"w{self._names}"
        async def to_front(outcome, video, sidecar):
            return await accept_result(self.front, outcome, video, sidecar)  # the front of now (it may restart)

        rq = RemoteQueue(worker_config(self.cfg, name), deliver or to_front, spool_dir=self.root / name / "spool")
        rq.DELIVER_RETRY = (0.1, 0.5)
        await rq.start()
        self.workers.append(rq)
        return rq

    async def claim(self, timeout: float = 5.0, work=None) -> Job:
        return await asyncio.wait_for((work or self.work).next_job(), timeout)

    async def submit(self, data: bytes | None = None, **kw) -> Job:
        job, created = await self.front.submit(spec(**kw), data if data is not None else photo_bytes(os.urandom(4)))
        assert created
        return job

    async def job(self, job_id: str) -> Job:
        j = await self.front.get(job_id)
        assert j is not None
        return j

    async def wait_state(self, job_id: str, *states: str, timeout: float = 5.0) -> Job:
        async def check():
            j = await self.front.get(job_id)
            return j if j is not None and j.state.value in states else None

        return await until(check, timeout, f"job {job_id} to be {'/'.join(states)}")

    async def crash_worker(self) -> None:
        """The process running the job dies mid-job; a new one starts (the same box for SQLite: the
        daemon restarts; another box for Redis: a second worker takes the entry over)."""
        if self.kind == "sqlite":
            await self.front.close()
            await self._open_front()
            self.work = self.front
        else:
            await abandon(self.work)
            self.workers.remove(self.work)
            self.work = await self.new_worker()

    async def close(self) -> None:
        for w in self.workers:
            await w.close()
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        if self.front is not None:
            await self.front.close()


async def abandon(rq: RemoteQueue) -> None:
    """A worker that dies: no more heartbeats, nothing acknowledged, its connection gone."""
    for c in list(rq._claims.values()):
        if c.beat is not None:
            c.beat.cancel()
    await rq.close()


def freeze(rq: RemoteQueue) -> None:
    """A worker that is alive but silent (a stall): its heartbeats stop, nothing else."""
    for c in rq._claims.values():
        if c.beat is not None:
            c.beat.cancel()


@pytest.fixture
async def redis_backend(tmp_path, redis_server):
    b = Backend("redis", tmp_path, redis_server)
    await b.open()
    yield b
    await b.close()


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request, tmp_path):
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    b = Backend(request.param, tmp_path, server)
    await b.open()
    yield b
    await b.close()


async def finish_done(b: Backend, job: Job, work=None) -> bytes:
    result, data = render_files(b.work_out, job)
    await (work or b.work).finish(job, JobState.done, result=result)
    return data
