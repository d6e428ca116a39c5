"""The queue contract the sources and `Worker` rely on, held by both backends (see conftest.py)."""

from __future__ import annotations

import asyncio

import pytest

from wan22bot.jobs import JobOptions, JobState

from .conftest import finish_done, photo_bytes, until


async def test_a_submitted_job_reaches_the_worker_with_its_spec_and_photo(backend):
    data = photo_bytes("beach", size=5000)
    sent = await backend.submit(data, source="http", user="ann", name="beach.jpg",
                                options=JobOptions(prompt="waves roll in", frames=9))
    job = await backend.claim()
    assert job.id == sent.id
    assert job.spec.original_name == "beach.jpg" and job.spec.name == "beach"
    assert (job.spec.source, job.spec.user) == ("http", "ann")
    assert job.spec.options == JobOptions(prompt="waves roll in", frames=9)
    assert open(job.spec.input_path, "rb").read() == data
    assert job.attempts == 1
    assert (await backend.job(job.id)).state == JobState.running


async def test_a_done_result_is_stored_in_the_fronts_output_folder(backend):
    sent = await backend.submit(name="dog.png")
    job = await backend.claim()
    data = await finish_done(backend, job)
    done = await backend.wait_state(sent.id, "done")
    mp4 = backend.output / "dog.mp4"
    assert done.result is not None and done.result.output == str(mp4)
    assert mp4.read_bytes() == data
    assert (backend.output / "dog.json").is_file()
    assert done.result.sidecar == str(backend.output / "dog.json")
    await until(lambda: ("done", sent.id) in backend.events, 2, "the done event")
    assert ("started", sent.id) in backend.events


async def test_positions_and_lanes_two_sources_take_turns(backend):
    watch = [await backend.submit(source="watch", name=f"w{i}.jpg") for i in range(3)]
    http = [await backend.submit(source="http", name=f"h{i}.jpg") for i in range(3)]
    positions = await backend.front.positions()
    queued = sorted(positions, key=positions.get)
    claimed = [(await backend.claim()).id for _ in range(6)]
    expected = [watch[0].id, http[0].id, watch[1].id, http[1].id, watch[2].id, http[2].id]
    assert claimed == expected
    # the positions the front showed are the order the jobs were handed out in
    assert queued == claimed[len(claimed) - len(queued):]
    assert len(queued) >= 5  # at most one job leaves the queue before a worker asks for it


async def test_a_job_cancelled_while_queued_never_reaches_a_worker(backend):
    first = await backend.submit(name="a.jpg")
    second = await backend.submit(name="b.jpg")
    assert await backend.front.cancel(second.id) == "cancelled"
    assert (await backend.claim()).id == first.id
    with pytest.raises(TimeoutError):
        await backend.claim(timeout=1.5)
    assert (await backend.job(second.id)).state == JobState.cancelled


async def test_cancelling_a_running_job_sets_the_workers_cancel_flag(backend):
    await backend.submit()
    job = await backend.claim()
    flag = backend.work.cancel_flag(job.id)
    assert not flag.is_set()
    assert await backend.front.cancel(job.id) == "cancelling"
    await until(flag.is_set, 3.0, "the worker's cancel flag")
    await backend.work.finish(job, JobState.cancelled, error="cancelled")
    done = await backend.wait_state(job.id, "cancelled")
    assert done.error == "cancelled"


async def test_progress_shows_on_the_front(backend):
    await backend.submit()
    job = await backend.claim()
    backend.work.progress(job, "pass1", 2, 8)

    async def stage():
        p = (await backend.job(job.id)).progress or {}
        return p if p.get("stage") == "pass1" else None

    p = await until(stage, 3.0, "progress at the front")
    assert (p["step"], p["steps"]) == (2, 8)


async def test_a_requeued_job_is_claimed_again_without_spending_an_attempt(backend):
    sent = await backend.submit()
    job = await backend.claim()
    await backend.work.requeue(job, count_attempt=False)
    again = await backend.claim()
    assert again.id == sent.id
    assert again.attempts == 1
    assert (await backend.job(sent.id)).attempts == 1


async def test_a_job_whose_worker_keeps_dying_fails_after_max_attempts(backend):
    sent = await backend.submit()
    job = await backend.claim()
    assert job.attempts == 1
    for attempt in (2, 3):
        await backend.crash_worker()
        job = await backend.claim(timeout=5)
        assert (job.id, job.attempts) == (sent.id, attempt)
    await backend.crash_worker()
    with pytest.raises(TimeoutError):  # nobody runs it a fourth time
        await backend.claim(timeout=2.5)
    failed = await backend.wait_state(sent.id, "failed")
    assert failed.error.startswith("gave up after 3 attempts")


async def test_a_failure_and_its_reason_reach_the_front(backend):
    await backend.submit()
    job = await backend.claim()
    reason = "the photo is 0 x 0 pixels: nothing to animate (send a real photo)"
    await backend.work.finish(job, JobState.failed, error=reason)
    failed = await backend.wait_state(job.id, "failed")
    assert failed.error == reason
    await until(lambda: ("failed", job.id) in backend.events, 2, "the failed event")


async def test_only_one_job_waits_on_the_stream_at_a_time(redis_backend):
    b = redis_backend
    jobs = [await b.submit(name=f"p{i}.jpg") for i in range(3)]
    await until(lambda: b.dispatcher.running, 3, "the first dispatch")
    await asyncio.sleep(0.5)  # time for a (wrong) second dispatch
    assert [j.id for j in b.dispatcher.running] == [jobs[0].id]
    assert await b.dispatcher.redis.xlen(b.dispatcher.keys.stream) == 1
    assert (await b.job(jobs[1].id)).state == JobState.queued
    assert await b.front.position(jobs[1].id) == 1
