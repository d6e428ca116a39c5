"""The real path once: folder -> queue -> Worker with the tiny model -> MP4 + JSON -> processed/."""

from __future__ import annotations

import json

import av
import pytest

from wan22bot.jobs import TIMING_KEYS, JobState
from wan22bot.render import Renderer
from wan22bot.worker import Worker

from .conftest import photo_bytes, wait_for


@pytest.mark.timeout(240)
async def test_tiny_model_end_to_end(rig, tiny_generator):
    await rig.open_queue()
    renderer = Renderer(rig.cfg, generator=tiny_generator)
    rig.real_worker = Worker(rig.cfg, rig.queue, renderer)
    await rig.real_worker.load()
    rig.real_worker.start()
    rig.drop("Sunset – beach.jpg", photo_bytes(1, size=(120, 80), noise=True))
    (rig.input / "Sunset – beach.jpg.txt").write_text("the tide rolls in")
    # Wants RIFE, whose weights are not there: the real worker fails the job with a sentence.
    rig.drop("smooth.jpg", photo_bytes(2, size=(80, 120), noise=True))
    (rig.input / "smooth.toml").write_text("interpolate = true\n")
    await rig.start(worker=False)

    jobs = {j.spec.original_name: j for j in await rig.wait_jobs(2, timeout=10)}
    await wait_for(_final(rig, [j.id for j in jobs.values()]), 180, "both jobs to finish")
    await wait_for(lambda: rig.listing(rig.input) == set(), 10, "input to empty")

    done = await rig.queue.get(jobs["Sunset – beach.jpg"].id)
    assert done.state == JobState.done, done.error
    assert done.spec.options.prompt == "the tide rolls in"
    mp4 = rig.output / f"{done.spec.name}.mp4"
    assert done.result.output == str(mp4) and done.spec.name.startswith("Sunset")
    with av.open(str(mp4)) as c:
        frames = sum(1 for _ in c.decode(video=0))
    assert frames == 5
    side = json.loads((rig.output / f"{done.spec.name}.json").read_text())
    assert set(TIMING_KEYS) <= set(side["timings"])
    assert rig.listing(rig.processed) == {"Sunset – beach.jpg", "Sunset – beach.jpg.txt"}

    failed = await rig.queue.get(jobs["smooth.jpg"].id)
    assert failed.state == JobState.failed
    assert {"smooth.jpg", "smooth.toml", "smooth.jpg.error.txt"} <= rig.listing(rig.failed)
    text = (rig.failed / "smooth.jpg.error.txt").read_text()
    assert "RIFE" in text and text.count("\n") == 1
    await wait_for(_delivered_all(rig, [done.id, failed.id]), 5, "delivered flags")


def _final(rig, ids):
    async def check():
        return all([(await rig.queue.get(i)).state.final for i in ids])
    return check


def _delivered_all(rig, ids):
    async def check():
        return all([(await rig.queue.get(i)).delivered for i in ids])
    return check


@pytest.mark.timeout(240)
async def test_four_copies_of_one_photo_give_four_videos_named_after_each(rig, tiny_generator):
    await rig.open_queue()
    rig.real_worker = Worker(rig.cfg, rig.queue, Renderer(rig.cfg, generator=tiny_generator))
    await rig.real_worker.load()
    names = ["photo.jpg", "photo2.jpg", "photo3.jpg", "photo4.jpg"]
    data = photo_bytes(5, size=(64, 96), noise=True)
    for n in names:
        rig.drop(n, data)
    await rig.start(worker=False)
    jobs = await rig.wait_jobs(4, timeout=10)
    assert sorted(j.spec.original_name for j in jobs) == names
    rig.real_worker.start()
    await wait_for(_final(rig, [j.id for j in jobs]), 180, "four jobs to finish")
    await wait_for(lambda: rig.listing(rig.processed) == set(names), 10, "all four photos to move")
    for n in names:
        job = next(j for j in jobs if j.spec.original_name == n)
        job = await rig.queue.get(job.id)
        assert job.state == JobState.done, job.error
        stem = n.rsplit(".", 1)[0]
        assert job.spec.name == stem and job.result.output == str(rig.output / f"{stem}.mp4")
        with av.open(job.result.output) as c:
            assert sum(1 for _ in c.decode(video=0)) == 5
    assert rig.listing(rig.input) == set()
