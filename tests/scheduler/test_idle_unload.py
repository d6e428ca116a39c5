"""Worker.unload_if_idle on the real tiny Renderer: only after the idle time, never during a job."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from wan22bot.config import Config, GenerationConfig, ModelConfig, PathsConfig
from wan22bot.jobs import JobSpec, JobState
from wan22bot.queue import JobEvent, JobQueue
from wan22bot.render import Renderer
from wan22bot.worker import Worker

PHOTO = Path(__file__).resolve().parents[2] / "examples" / "photo.jpg"
IDLE_MINUTES = 0.01  # 0.6 s


@pytest.fixture
async def rig(tmp_path):
    cfg = Config(
        paths=PathsConfig(input=tmp_path / "in", output=tmp_path / "out", state=tmp_path / "state"),
        model=ModelConfig(kind="tiny", device="cpu"),
        generation=GenerationConfig(width=64, height=96, frames=5),
    )
    q = JobQueue(cfg.paths.state, cfg.paths.output)
    await q.start()
    renderer = Renderer(cfg)
    worker = Worker(cfg, q, renderer)
    await worker.load()
    assert renderer.loaded
    yield worker, renderer, q
    await worker.stop()
    await q.close()


async def test_unloads_only_after_the_idle_time(rig):
    worker, renderer, _ = rig
    worker.last_job_finished = time.time()
    assert await worker.unload_if_idle(IDLE_MINUTES) is False
    assert renderer.loaded and renderer.generator.pipe is not None
    await asyncio.sleep(IDLE_MINUTES * 60 + 0.2)
    assert await worker.unload_if_idle(IDLE_MINUTES) is True
    assert not renderer.loaded
    assert renderer.generator.pipe is None and renderer.generator.components is None
    assert await worker.unload_if_idle(IDLE_MINUTES) is False  # nothing left to unload
    # it reloads on demand
    await worker.load()
    assert renderer.loaded


async def test_never_unloads_while_a_job_runs_and_counts_idle_from_the_job_end(rig):
    worker, renderer, q = rig
    worker.last_job_finished = time.time() - 3600  # idle long enough before the job
    during: list[tuple[str, bool, bool]] = []
    done = asyncio.Event()

    async def on_event(ev: JobEvent):
        if ev.kind == "progress" and not during:
            assert worker.current is not None and worker.current.id == ev.job.id
            # idle time 0: only the running job stands in the way
            unloaded = await worker.unload_if_idle(0)
            during.append((ev.stage, unloaded, renderer.loaded))
        if ev.kind in ("done", "failed", "cancelled"):
            done.set()

    q.add_listener(on_event)
    worker.start()
    job, _ = await q.submit(JobSpec(source="cli", original_name="photo.jpg", input_path="", name=""), PHOTO)
    await asyncio.wait_for(done.wait(), 60)
    final = await q.get(job.id)
    assert final.state == JobState.done, final.error
    assert during and during[0][1:] == (False, True), during
    assert Path(final.result.output).is_file()
    assert renderer.loaded
    # the idle clock restarted when the job ended
    assert worker.current is None
    assert time.time() - worker.last_job_finished < IDLE_MINUTES * 60
    assert await worker.unload_if_idle(IDLE_MINUTES) is False
    assert renderer.loaded
    await asyncio.sleep(IDLE_MINUTES * 60 + 0.2)
    assert await worker.unload_if_idle(IDLE_MINUTES) is True
    assert not renderer.loaded
