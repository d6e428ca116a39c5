"""Worker processes on the CPU: real subprocesses, the real journal, the tiny model."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from wan22bot.config import config_from_dict
from wan22bot.gpus.supervisor import WorkerPool
from wan22bot.jobs import JobOptions, JobSpec
from wan22bot.queue import JobQueue

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "examples" / "photo.jpg"
# every worker process imports torch and builds the tiny model: seconds each on two busy cores
START_TIMEOUT = 120.0


def make_config(root: Path, devices: list[str], mode: str = "per-device", frames: int = 5, width: int = 64,
                height: int = 96, **gen):
    return config_from_dict({
        "paths": {"input": str(root / "in"), "output": str(root / "out"), "state": str(root / "state")},
        "model": {"kind": "tiny", "device": "cpu"},
        "generation": {"frames": frames, "width": width, "height": height, "seed": 7, **gen},
        "interpolation": {"enabled": False},
        "watch": {"enabled": False}, "http": {"enabled": False}, "discord": {"enabled": False},
        "gpus": {"devices": devices, "mode": mode},
    })


async def wait_for(cond, timeout: float, what: str, step: float = 0.05):
    """Poll `cond` on the event loop until it is truthy (bounded); returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(step)


class Harness:
    def __init__(self, cfg):
        self.cfg = cfg
        self.queue = JobQueue(cfg.paths.state, cfg.paths.output, max_attempts=cfg.queue.max_attempts)
        self.pool = WorkerPool(cfg, self.queue)
        self.events: list = []

    async def __aenter__(self):
        await self.queue.start()
        self.queue.add_listener(self.events.append)
        await asyncio.wait_for(self.pool.load(), START_TIMEOUT)
        return self

    async def __aexit__(self, *exc):
        await self.pool.stop()
        await self.queue.close()

    async def submit(self, name: str, **options):
        job, _ = await self.queue.submit(JobSpec(source="http", input_path="", original_name=f"{name}.jpg", name=name,
                                                 options=JobOptions(**options)), PHOTO.read_bytes())
        return job

    def on_first(self, kind: str, stage: str, job_id: str, action) -> None:
        """Run `action` inside the event's delivery (no polling delay) the first time it is seen."""
        def listener(e) -> None:
            if e.kind == kind and e.stage == stage and e.job.id == job_id:
                self.queue.remove_listener(listener)
                action()

        self.queue.add_listener(listener)

    def final(self, job_id: str):
        return [e for e in self.events if e.job.id == job_id and e.kind in ("done", "failed", "cancelled")]


@pytest.fixture
def harness(tmp_path):
    return lambda devices, **kw: Harness(make_config(tmp_path, devices, **kw))
