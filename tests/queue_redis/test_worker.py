"""The unchanged `Worker` (worker.py) on a RemoteQueue: it renders, reports, checkpoints as on one box."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from wan22bot.engine.generator import Progress
from wan22bot.errors import Cancelled
from wan22bot.jobs import JobResult
from wan22bot.worker import Worker

from .conftest import fake_mp4, until, worker_config


class StepRenderer:
    """Stands in for Renderer: `steps` steps of `step_seconds`, honouring cancel, then an MP4 + sidecar."""

    def __init__(self, steps: int = 4, step_seconds: float = 0.05):
        self.loaded = True
        self.steps, self.step_seconds = steps, step_seconds
        self.started = threading.Event()
        self.inputs: list[bytes] = []

    def load(self) -> float:
        return 0.0

    def unload(self) -> None:
        pass

    def render(self, input_path: Path, name: str, output_dir: Path, options, *, progress, should_cancel, meta,
               photo_name) -> JobResult:
        self.inputs.append(Path(input_path).read_bytes())
        self.started.set()
        for i in range(1, self.steps + 1):
            if should_cancel():
                raise Cancelled("cancelled at a step boundary")
            time.sleep(self.step_seconds)
            progress(Progress("pass1", i, self.steps))
        output_dir.mkdir(parents=True, exist_ok=True)
        video, side = output_dir / f"{name}.mp4", output_dir / f"{name}.json"
        data = fake_mp4(meta["job_id"])
        video.write_bytes(data)
        side.write_text(json.dumps({"name": name, "job_id": meta["job_id"]}))
        return JobResult(output=str(video), sidecar=str(side), timings={"pass1": 0.2, "pass2": 0.0, "total": 0.2},
                         frames=5, fps=16, width=64, height=96, seed=1, bytes=len(data))


def box_config(b, name: str):
    cfg = worker_config(b.cfg, name)
    cfg.paths.output = b.root / name / "results"  # as `wan22bot worker` does: renders stay on the box
    return cfg


async def test_worker_renders_a_job_from_the_stream_and_the_front_stores_it(redis_backend):
    b = redis_backend
    renderer = StepRenderer()
    worker = Worker(box_config(b, "w1"), b.work, renderer)
    worker.start()
    try:
        data = b"\xff\xd8\xff\xe0 a real photo's bytes"
        sent = await b.submit(data, name="harbour.jpg")
        done = await b.wait_state(sent.id, "done", timeout=10)
        assert renderer.inputs == [data]
        assert done.result.output == str(b.output / "harbour.mp4") and (b.output / "harbour.mp4").is_file()
        assert ("started", sent.id) in b.events
        # the photo copy goes with the ack, which follows the delivery
        await until(lambda: not list((b.root / "w1" / "spool").iterdir()), 3, "the spooled photo to go")
    finally:
        await worker.stop()


async def test_a_stopping_worker_hands_its_job_back_and_another_box_finishes_it(redis_backend):
    b = redis_backend
    slow = StepRenderer(steps=200, step_seconds=0.02)
    first = Worker(box_config(b, "w1"), b.work, slow)
    first.start()
    sent = await b.submit(name="long.jpg")
    await until(slow.started.is_set, 5, "the render to start")
    await first.stop()  # SIGTERM: checkpoint at the next step, outcome "requeue"
    requeued = await b.wait_state(sent.id, "queued", "running", timeout=5)
    assert requeued.attempts <= 1  # a checkpoint spends no attempt
    assert ("requeued", sent.id) in b.events
    other = await b.new_worker("w2")
    second = Worker(box_config(b, "w2"), other, StepRenderer())
    second.start()
    try:
        done = await b.wait_state(sent.id, "done", timeout=10)
        assert done.attempts == 1
        assert json.loads((b.output / "long.json").read_text())["job_id"] == sent.id
    finally:
        await second.stop()
