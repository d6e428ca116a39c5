"""Races between a cancel, a claim, a hand-back and a takeover, each settled once and correctly."""

from __future__ import annotations

import asyncio
import time

from wan22bot.jobs import JobResult, JobState
from wan22bot.queue.outcome import accept_result
from wan22bot.queue.redis_conn import keys

from .conftest import finish_done, freeze


async def pending(b) -> list[dict]:
    k = keys(b.cfg)
    return await b.dispatcher.redis.xpending_range(k.stream, k.group, min="-", max="+", count=100)


async def test_a_worker_that_lost_its_entry_does_not_hand_the_job_back(redis_backend):
    """Stopped (SIGTERM) after a stall, before any heartbeat noticed the takeover: handing the job
    back would queue it on the front while the other worker runs it."""
    b = redis_backend
    delivered = []
    front = b.front

    async def recording(outcome, video, sidecar):
        delivered.append(outcome.state)
        return await accept_result(front, outcome, video, sidecar)

    slow = await b.new_worker("slow", deliver=recording)
    await b.submit()
    job = await b.claim(work=slow)
    freeze(slow)
    other = await b.new_worker("w2")
    taken = await b.claim(timeout=5, work=other)
    assert taken.id == job.id

    await asyncio.wait_for(slow.requeue(job), 5)

    assert delivered == []
    assert (await b.job(job.id)).state == JobState.running
    assert [p["consumer"].decode() for p in await pending(b)] == ["w2"]
    await finish_done(b, taken, work=other)
    done = await b.wait_state(job.id, "done")
    assert done.attempts == 1  # the hand-back that did not happen spent nothing either


async def test_a_stop_while_redis_is_away_is_not_held_by_the_acknowledgement(redis_backend):
    b = redis_backend
    await b.submit()
    job = await b.claim()
    b.work.requeue_wait = 1.5
    b.server.kill()
    try:
        t0 = time.monotonic()
        await asyncio.wait_for(b.work.requeue(job), 10)
        assert time.monotonic() - t0 < 5
        assert ("requeued", job.id) in b.events  # the front (reachable) took it back
    finally:
        b.server.start()


async def test_a_job_handed_back_after_its_cancel_was_requested_ends_cancelled(redis_backend):
    """The person cancels while the worker is stopping: the worker's checkpoint hands the job
    back, and the front must not queue it to run again."""
    b = redis_backend
    await b.submit()
    job = await b.claim()
    assert await b.front.cancel(job.id) == "cancelling"
    await asyncio.wait_for(b.work.requeue(job), 5)
    got = await b.wait_state(job.id, "cancelled", "queued")
    assert got.state == JobState.cancelled and got.error == "cancelled"
    await asyncio.sleep(0.5)  # nothing sends it out again
    assert await pending(b) == []
    assert await b.dispatcher.redis.xlen(keys(b.cfg).stream) == 0


async def test_a_render_the_front_refuses_from_its_own_worker_fails_the_job(redis_backend):
    """[worker] enabled on a Redis front: its worker settles through accept_result directly; a
    render that cannot be stored must end the job failed, not leave it running."""
    from wan22bot.front import FrontWorkers

    b = redis_backend
    cfg = b.cfg.model_copy(deep=True)
    cfg.worker.enabled = False  # no Renderer here: only the front's delivery path is used
    front_workers = FrontWorkers(cfg, b.front)
    local = await b.new_worker("front-local", deliver=front_workers._deliver)
    await b.submit(name="odd.jpg")
    job = await b.claim(work=local)
    folder = b.root / "front-local" / "results"
    folder.mkdir(parents=True)
    video, side = folder / "odd.mp4", folder / "odd.json"
    video.write_bytes(b"this is not an mp4 file at all")
    side.write_text("{}")
    result = JobResult(output=str(video), sidecar=str(side), timings={"pass1": 1.0, "pass2": 1.0, "total": 2.0},
                       frames=5, fps=16, width=64, height=96, seed=1, bytes=30)
    await asyncio.wait_for(local.finish(job, JobState.done, result=result), 5)
    failed = await b.wait_state(job.id, "failed", "done")
    assert failed.state == JobState.failed and "not an MP4" in failed.error, failed.error
    assert await pending(b) == []
    assert list(b.output.iterdir()) == []


async def test_a_failure_with_a_very_long_reason_still_reaches_the_front(redis_backend):
    """A library's message can be huge (a tensor printed in it); the outcome's error is capped, so
    the outcome must not fail on it and leave the entry held for ever."""
    b = redis_backend
    await b.submit()
    job = await b.claim()
    reason = "RuntimeError: " + "0.1234, " * 5000
    await asyncio.wait_for(b.work.finish(job, JobState.failed, error=reason), 5)
    failed = await b.wait_state(job.id, "failed")
    assert failed.error.startswith("RuntimeError: 0.1234, ") and failed.error.endswith("characters cut)")
    assert len(failed.error) <= 20000
    assert await pending(b) == []


async def test_a_job_settled_just_as_it_is_claimed_again_leaves_nothing_out(redis_backend, monkeypatch):
    """Redis lost the entry of a running job, so the front queued it again; the worker still
    running it reports in just as the dispatcher claims it again. Nothing may stay out for it:
    no entry for a settled job, and the dispatcher not holding it as running for ever."""
    from wan22bot.queue.dispatcher import Dispatcher
    from wan22bot.queue.outcome import ResultOutcome

    b = redis_backend
    real_claim = Dispatcher._claim
    settled: list[str] = []

    async def claim_then_settle(self):
        job = await real_claim(self)
        if not settled:
            settled.append(job.id)
            await accept_result(self.queue, ResultOutcome(job=job.id, state="failed", error="out of memory",
                                                          worker="the-first-run"), None, None)
        return job

    monkeypatch.setattr(Dispatcher, "_claim", claim_then_settle)
    await b.dispatcher.stop()
    b.dispatcher = Dispatcher(b.cfg, b.front)
    b.dispatcher.start()
    await asyncio.wait_for(b.dispatcher.ready.wait(), 10)

    job = await b.submit()
    failed = await b.wait_state(job.id, "failed")
    assert failed.error == "out of memory"
    deadline = time.monotonic() + 3
    while (b.dispatcher.running or await b.dispatcher.redis.xlen(keys(b.cfg).stream)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert b.dispatcher.running == []
    assert await b.dispatcher.redis.xlen(keys(b.cfg).stream) == 0
    assert b.dispatcher.health().state == "idle"


def _deaf_once(monkeypatch, cls, name: str, go_on: bool):
    """Replace cls.name by an await that loses its first cancellation, then either carries on into
    the real method (go_on) or returns None, as a read that found nothing. Returns the event set
    while it waits, and the list that records the lost cancellation."""
    real = getattr(cls, name)
    inside = asyncio.Event()
    swallowed: list[bool] = []

    async def deaf_once(self):
        inside.set()
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed.append(True)
            if not go_on:
                return None
            asyncio.current_task().uncancel()
        finally:
            inside.clear()
        return await real(self)

    monkeypatch.setattr(cls, name, deaf_once)
    return inside, swallowed


async def test_stop_ends_the_dispatcher_even_if_its_cancellation_is_lost_inside_an_await(redis_backend,
                                                                                         monkeypatch):
    """Seen in the suite about once in five runs: stop() hung for good while an entry waited for a
    worker, the dispatch loop polling the stream on, its cancellation lost inside one of its awaits
    (asyncio.wait_for on Python 3.11, or the Redis client). Here an await swallows it on purpose."""
    from wan22bot.queue.dispatcher import Dispatcher

    b = redis_backend
    inside, swallowed = _deaf_once(monkeypatch, Dispatcher, "_last_delivered", go_on=True)
    await b.submit()  # no worker reads: its entry waits, and the dispatch loop polls for it
    await asyncio.wait_for(inside.wait(), 5)
    stopping = asyncio.create_task(b.dispatcher.stop())
    done, _ = await asyncio.wait({stopping}, timeout=3)
    assert swallowed == [True]
    assert done, "stop() did not end: the dispatch loop outlived it"
    b.dispatcher = None  # stopped here; the fixture has nothing left to stop


async def test_a_workers_read_loop_ends_even_if_its_cancellation_is_lost_inside_an_await(redis_backend,
                                                                                        monkeypatch):
    """The worker's side of the same: an idle worker's stop cancels its next_job(); a read that
    loses the cancellation must not keep it reading for a worker that has stopped."""
    from wan22bot.queue.remote import RemoteQueue

    b = redis_backend
    inside, swallowed = _deaf_once(monkeypatch, RemoteQueue, "_take", go_on=False)
    reading = asyncio.create_task(b.work.next_job())
    await asyncio.wait_for(inside.wait(), 5)
    reading.cancel()
    done, _ = await asyncio.wait({reading}, timeout=3)
    assert swallowed == [True]
    assert done and reading.cancelled(), "next_job() went on reading after its cancellation"
