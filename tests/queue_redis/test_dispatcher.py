"""The front's dispatcher beyond the contract: recovery ownership, withdrawn entries, skips, status."""

from __future__ import annotations

import asyncio

import pytest

from wan22bot.jobs import JobState
from wan22bot.queue import JobQueue
from wan22bot.queue.dispatcher import OWNER
from wan22bot.queue.redis_conn import keys

from .conftest import photo_bytes, spec, until


async def test_recovery_keeps_the_jobs_out_on_other_boxes_and_requeues_the_rest(tmp_path):
    q = JobQueue(tmp_path / "state", tmp_path / "out")
    await q.start()
    ids = [(await q.submit(spec(name=f"{n}.jpg"), photo_bytes(n)))[0].id for n in ("a", "b", "c")]
    remote = await q.run_db(q.journal.claim_next, OWNER)
    local = await q.run_db(q.journal.claim_next, "gpu0")
    plain = await q.run_db(q.journal.claim_next)
    assert [remote.id, local.id, plain.id] == ids
    await q.close()  # a crash: all three are left running

    q = JobQueue(tmp_path / "state", tmp_path / "out", keep_claimed_by=OWNER)
    requeued, failed = await q.start()
    try:
        assert sorted(requeued) == sorted([local.id, plain.id]) and failed == []
        assert (await q.get(remote.id)).state == JobState.running
        assert [j.id for j in await q.run_db(q.journal.running_owned, OWNER)] == [remote.id]
    finally:
        await q.close()


async def test_a_cancelled_job_no_worker_has_taken_is_withdrawn_from_the_stream(redis_backend):
    b = redis_backend
    await b.work.close()  # no worker reads the stream
    b.workers.remove(b.work)
    sent = await b.submit()
    await until(lambda: b.dispatcher.running, 3, "the dispatch")
    r, k = b.dispatcher.redis, keys(b.cfg)
    assert await r.xlen(k.stream) == 1
    assert await b.front.cancel(sent.id) == "cancelling"
    done = await b.wait_state(sent.id, "cancelled", timeout=3)
    assert done.error == "cancelled"
    assert await r.xlen(k.stream) == 0
    assert b.dispatcher.running == []
    nxt = await b.submit()  # the queue goes on
    await until(lambda: [j.id for j in b.dispatcher.running] == [nxt.id], 3, "the next dispatch")


async def test_an_entry_whose_job_was_cancelled_is_skipped_by_the_worker(redis_backend):
    b = redis_backend
    await b.work.close()
    b.workers.remove(b.work)
    first = await b.submit(name="skip.jpg")
    await until(lambda: b.dispatcher.running, 3, "the dispatch")
    r, k = b.dispatcher.redis, keys(b.cfg)
    await r.set(k.cancel(first.id), "1")  # the cancel reached Redis (a withdraw that lost the race)
    worker = await b.new_worker("late")
    with pytest.raises(TimeoutError):
        await b.claim(timeout=1.5, work=worker)
    assert (await b.wait_state(first.id, "cancelled")).error == "cancelled"
    assert await r.xlen(k.stream) == 0
    second = await b.submit(name="run.jpg")
    assert (await b.claim(work=worker)).id == second.id


async def test_started_is_published_once_and_claimed_by_shows_in_the_progress(redis_backend):
    b = redis_backend
    sent = await b.submit()
    job = await b.claim()
    stage = await until(lambda: (b.front.live.get(job.id) or {}).get("stage") == "claimed by w1", 3,
                        "the claimed-by progress")
    assert stage
    await asyncio.sleep(0.3)
    assert b.events.count(("started", sent.id)) == 1
    assert b.dispatcher.current.id == job.id
    assert b.dispatcher.health().state == "running"


async def test_states_lists_the_live_workers_from_their_hashes(redis_backend):
    b = redis_backend
    r, k = b.dispatcher.redis, keys(b.cfg)
    await r.hset(k.worker("gpu-a"), mapping={"host": "box1", "pid": "4242", "device": "cuda:0", "state": "running",
                                             "job": "abc123", "loaded": "1", "started": "100.5", "seen": "200.25"})
    await r.hset(k.worker("gpu-b"), mapping={"host": "box2", "pid": "7", "device": "cuda:1", "state": "idle",
                                             "job": "", "loaded": "0", "started": "1", "seen": "2"})
    await r.hset("otherinstall:worker:gpu-z", mapping={"state": "idle"})
    states = await until(lambda: len(b.dispatcher.states()) == 2 and b.dispatcher.states(), 3, "two workers")
    a, bb = states
    assert (a["name"], a["host"], a["pid"], a["device"], a["busy"], a["job"], a["loaded"]) == \
        ("gpu-a", "box1", 4242, "cuda:0", True, "abc123", True)
    assert a["state"] == "busy" and a["seen"] == 200.25
    assert (bb["name"], bb["state"], bb["busy"], bb["loaded"]) == ("gpu-b", "idle", False, False)
    await r.delete(k.worker("gpu-a"))  # expired: gone from the list
    await until(lambda: [s["name"] for s in b.dispatcher.states()] == ["gpu-b"], 3, "gpu-a to go")


async def test_at_start_a_settled_jobs_stale_entry_is_cancelled_and_a_queued_jobs_is_not(redis_backend):
    b = redis_backend
    await b.work.close()
    b.workers.remove(b.work)
    settled = await b.submit(name="settled.jpg")
    queued = await b.submit(name="queued.jpg")
    await until(lambda: [j.id for j in b.dispatcher.running] == [settled.id], 3, "the first dispatch")
    r, k = b.dispatcher.redis, keys(b.cfg)
    [(_, fields)] = await r.xrange(k.stream)
    await b.dispatcher.stop()
    await b.front.finish(await b.job(settled.id), JobState.failed, error="settled elsewhere")
    # an entry for the queued job too (a worker handed it back, then died before its ack)
    await r.xadd(k.stream, {**fields, b"job": queued.id.encode()})
    await b.front.close()
    await b._open_front()
    assert await r.get(k.cancel(settled.id)) == b"1"
    assert await r.exists(k.cancel(queued.id)) == 0
    w = await b.new_worker("w9")
    # the settled job's entry is skipped; the queued job runs (from its old entry or its new one)
    job = await b.claim(work=w)
    assert job.id == queued.id
    assert (await b.job(settled.id)).error == "settled elsewhere"


async def test_a_front_stopping_while_redis_is_away_keeps_the_unsent_job_queued(redis_backend):
    b = redis_backend
    b.server.kill()
    sent = await b.submit(name="unsent.jpg")
    await until(lambda: b.dispatcher.health().state == "waiting", 5, "the dispatcher to wait for Redis")
    await until(lambda: sent.id in {j.id for j in b.dispatcher.running}, 3, "the job claimed for sending")
    await b.dispatcher.stop()
    job = await b.job(sent.id)
    assert (job.state, job.attempts) == (JobState.queued, 0)  # as if never claimed
    assert await b.front.position(sent.id) == 1
