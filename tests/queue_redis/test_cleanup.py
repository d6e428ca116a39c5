"""What a worker leaves on its disk: nothing once a job is over, even when it crashed or lost the
job to another worker; and an entry cannot make it write outside its folders."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from wan22bot.jobs import JobState
from wan22bot.queue.redis_conn import keys

from .conftest import finish_done, freeze, render_files, spec, until


async def pending(b) -> list[dict]:
    k = keys(b.cfg)
    return await b.dispatcher.redis.xpending_range(k.stream, k.group, min="-", max="+", count=100)


async def test_photos_left_in_the_spool_by_a_crash_are_removed_at_the_next_start(redis_backend):
    b = redis_backend
    spool = b.root / "box" / "spool"
    spool.mkdir(parents=True)
    (spool / "0123456789ab.jpg").write_bytes(b"\xff\xd8 a photo of a job that went to another worker")
    await b.new_worker("box")
    assert list(spool.iterdir()) == []


async def test_the_render_of_a_job_lost_to_a_takeover_is_removed(redis_backend):
    b = redis_backend
    slow = await b.new_worker("slow")
    await b.submit(name="lost.jpg")
    job = await b.claim(work=slow)
    freeze(slow)
    other = await b.new_worker("w2")
    taken = await b.claim(timeout=5, work=other)
    result, _ = render_files(b.root / "slow-results", job)  # the silent worker's render ends anyway
    await asyncio.wait_for(slow.finish(job, JobState.done, result=result), 5)
    assert list((b.root / "slow-results").iterdir()) == []  # not delivered, and not kept either
    await finish_done(b, taken, work=other)
    await b.wait_state(job.id, "done")


async def test_an_entry_naming_files_outside_the_workers_folders_is_dropped(redis_backend):
    b = redis_backend
    k = keys(b.cfg)
    r = b.dispatcher.redis
    escape = b.root / "escape.jpg"
    worker = b.work
    # a job id that is a path: the photo would land beside the spool folder
    await r.xadd(k.stream, {"job": "../../escape", "spec": spec().model_dump_json(), "photo": b"\xff\xd8x",
                            "ext": ".jpg", "attempt": "1", "max_attempts": "3", "sent": "1"})
    # a real job whose output name is a path: the render would land outside the results folder
    job = await b.submit(name="fine.jpg")
    await until(lambda: b.dispatcher.running, 5, "the dispatcher to send the job")
    await r.xadd(k.stream, {"job": job.id, "spec": json.dumps({**json.loads(spec().model_dump_json()),
                                                              "name": "../../../escape"}),
                            "photo": b"\xff\xd8x", "ext": ".jpg", "attempt": "1", "max_attempts": "3", "sent": "1"})
    got = await b.claim(work=worker)  # the dispatcher's own entry for the job, first in the stream
    assert got.spec.name == "fine"
    await finish_done(b, got, work=worker)
    await b.wait_state(job.id, "done")
    with pytest.raises(TimeoutError):  # the entry with the path for a name is settled, never run
        await b.claim(timeout=1.5, work=worker)
    assert await pending(b) == []
    assert not escape.exists() and not (b.root / "escape").exists()
    assert sorted(p.name for p in (b.root / "w1" / "spool").iterdir()) == []


async def test_the_spool_photo_is_removed_off_the_event_loop(redis_backend, monkeypatch):
    b = redis_backend
    spool = (b.root / "w1" / "spool").absolute()
    removed_on_loop: list[bool] = []
    real_unlink = Path.unlink

    def watched_unlink(self, *args, **kw):
        if self.parent == spool:
            removed_on_loop.append(threading.current_thread() is threading.main_thread())
        return real_unlink(self, *args, **kw)

    monkeypatch.setattr(Path, "unlink", watched_unlink)
    await b.submit()
    job = await b.claim()
    assert Path(job.spec.input_path).parent == spool
    await finish_done(b, job)
    assert removed_on_loop == [False]
    assert list(spool.iterdir()) == []


async def test_a_shared_folder_copy_is_removed_when_its_job_settles_after_a_front_restart(tmp_path, redis_server):
    from .conftest import Backend, photo_bytes, redis_config

    shared = tmp_path / "shared"
    b = Backend("redis", tmp_path, redis_server)
    b.cfg = redis_config(tmp_path, redis_server.url, photo_max_mb=0.001, shared_folder=str(shared))
    await b.open()
    try:
        await b.submit(photo_bytes("big", size=4000))
        job = await b.claim()
        copy = Path(job.spec.input_path)
        assert copy.parent == shared and copy.is_file()
        await b.dispatcher.stop()
        await b.front.close()
        await b._open_front()  # the front restarts while w1 renders
        await finish_done(b, job)
        await b.wait_state(job.id, "done")
        await until(lambda: not copy.exists(), 3, "the shared copy to go")
    finally:
        await b.close()


async def test_the_front_workers_results_left_by_a_crash_are_removed_at_start(redis_backend):
    """[worker] enabled on a Redis front: its renders go to <state>/local-worker/results first."""
    from wan22bot.front import FrontWorkers

    b = redis_backend
    cfg = b.cfg.model_copy(deep=True)
    cfg.worker.enabled = True
    cfg.worker.name = "front-box"
    results = Path(cfg.paths.state).absolute() / "local-worker" / "results"
    results.mkdir(parents=True, exist_ok=True)
    stale = results / "beach.mp4"
    stale.write_bytes(b"\x00\x00\x00\x18ftyp a render whose entry went to another worker")
    front_workers = FrontWorkers(cfg, b.front)
    try:
        front_workers.start()
        await until(lambda: front_workers.beacon is not None, 10, "the front's worker to start")
        assert not stale.exists()
    finally:
        await front_workers.stop()
