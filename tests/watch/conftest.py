"""A real JobQueue (SQLite in tmp), the real FolderSource with its watchdog observer, and a small
stand-in worker that finishes jobs without the model (tests that need the model use the real one)."""

from __future__ import annotations

import asyncio
import io
import json
import random
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from wan22bot.config import Config, GenerationConfig, InterpolationConfig, PathsConfig, WatchConfig
from wan22bot.jobs import JobResult, JobState
from wan22bot.queue import JobQueue
from wan22bot.sources.watch import FolderSource

SETTLE = 0.3
POLL = 0.05


def photo_bytes(seed: int = 0, size: tuple[int, int] = (48, 32), fmt: str = "JPEG", noise: bool = False) -> bytes:
    """A small real image; each seed gives different bytes (the queue dedupes by content)."""
    rnd = random.Random(seed)
    if noise:
        img = Image.frombytes("RGB", size, rnd.randbytes(size[0] * size[1] * 3))
    else:
        img = Image.new("RGB", size, tuple(rnd.randrange(256) for _ in range(3)))
        img.putpixel((seed % size[0], 0), (255 - img.getpixel((0, 0))[0], 0, 0))
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def make_config(tmp_path: Path, **watch) -> Config:
    return Config(
        paths=PathsConfig(input=tmp_path / "in", output=tmp_path / "out", state=tmp_path / "state"),
        watch=WatchConfig(settle_seconds=watch.pop("settle_seconds", SETTLE), poll_seconds=POLL, **watch),
        generation=GenerationConfig(frames=5, width=64, height=96),
        interpolation=InterpolationConfig(weights=tmp_path / "no-rife" / "flownet.pkl"),
    )


class StandInWorker:
    """Claims jobs like the real worker and finishes them with a dummy output file."""

    def __init__(self, queue: JobQueue, output: Path):
        self.queue = queue
        self.output = output
        self.fail: dict[str, str] = {}  # original_name -> error
        self.jobs: list = []
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            job = await self.queue.next_job()
            self.jobs.append(job)
            name = job.spec.original_name
            if name in self.fail:
                await self.queue.finish(job, JobState.failed, error=self.fail[name])
                continue
            self.output.mkdir(parents=True, exist_ok=True)
            mp4 = self.output / f"{job.spec.name}.mp4"
            side = self.output / f"{job.spec.name}.json"
            mp4.write_bytes(b"not really an mp4")
            side.write_text(json.dumps({"name": job.spec.name}))
            result = JobResult(output=str(mp4), sidecar=str(side), timings={"total": 0.0}, frames=5, fps=16,
                               width=64, height=96, seed=1, bytes=17)
            await self.queue.finish(job, JobState.done, result=result)


class Rig:
    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.cfg = make_config(tmp_path)
        self.input = Path(self.cfg.paths.input)
        self.output = Path(self.cfg.paths.output)
        self.processed = Path(self.cfg.paths.processed_dir)
        self.failed = Path(self.cfg.paths.failed_dir)
        self.input.mkdir(parents=True, exist_ok=True)
        self.queue: JobQueue | None = None
        self.source: FolderSource | None = None
        self.worker: StandInWorker | None = None
        self.real_worker = None

    async def open_queue(self, max_length: int = 100) -> JobQueue:
        self.queue = JobQueue(self.cfg.paths.state, self.output, max_length=max_length)
        await self.queue.start()
        self.worker = StandInWorker(self.queue, self.output)
        return self.queue

    async def start(self, *, worker: bool = True, max_length: int = 100, **source_kw) -> FolderSource:
        if self.queue is None:
            await self.open_queue(max_length)
        self.source = FolderSource(self.cfg, self.queue, **source_kw)
        await self.source.start()
        if worker:
            self.worker.start()
        return self.source

    async def close(self) -> None:
        """Stop everything (a test may call it to simulate a daemon stop; the fixture calls it again)."""
        if self.source:
            await self.source.stop()
        if self.worker:
            await self.worker.stop()
        if self.real_worker:
            await self.real_worker.stop()
        if self.queue:
            await self.queue.close()
        self.source = self.worker = self.real_worker = self.queue = None

    def drop(self, name: str, data: bytes | None = None, seed: int = 0) -> bytes:
        data = photo_bytes(seed) if data is None else data
        (self.input / name).write_bytes(data)
        return data

    async def jobs(self) -> list:
        return sorted(await self.queue.list(limit=10000), key=lambda j: j.seq)

    async def wait_jobs(self, n: int, state: JobState | None = None, timeout: float = 10) -> list:
        async def ok():
            js = await self.jobs()
            return len([j for j in js if state is None or j.state == state]) >= n

        await wait_for(ok, timeout, f"{n} jobs{' ' + state.value if state else ''}")
        return await self.jobs()

    async def wait_file(self, path: Path, timeout: float = 10) -> Path:
        await wait_for(lambda: path.exists(), timeout, f"{path} to exist")
        return path

    def listing(self, folder: Path) -> set[str]:
        return {p.name for p in folder.iterdir() if p.is_file() or p.is_symlink()} if folder.exists() else set()


def stalling_writer(path: Path, data: bytes, chunks: int, pause: float, done: threading.Event) -> threading.Thread:
    """A started thread that writes `data` to `path` in `chunks`, holding the file open and pausing
    `pause` s between chunks (the writer's own pace: a slow or stalling copy), then sets `done`."""

    def run():
        size = -(-len(data) // chunks)
        with open(path, "wb") as f:
            for i in range(chunks):
                f.write(data[i * size:(i + 1) * size])
                f.flush()
                if i < chunks - 1:
                    time.sleep(pause)
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


async def wait_for(pred, timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        out = pred()
        if asyncio.iscoroutine(out):
            out = await out
        if out:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def quiet(rig: "Rig", timeout: float = 10) -> None:
    """Until the source has scanned the folder again after this call and holds nothing waiting to
    settle: whatever it would take from the folder has been taken (or refused) by then."""
    src = rig.source
    seen = src.scans
    src.rescan()
    await wait_for(lambda: src.scans > seen and not src.busy(), timeout, "the folder source to be idle")


async def scans(rig: "Rig", n: int, timeout: float = 10) -> None:
    """Until the source has scanned the folder `n` more times (each scan also retries waiting photos)."""
    src = rig.source
    target = src.scans + n
    await wait_for(lambda: src.scans >= target, timeout, f"{n} more scans")


@pytest.fixture
async def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    await r.close()
