"""What only the Redis backend has: takeover, heartbeats, acks after delivery, restarts, photos, login."""

from __future__ import annotations

import asyncio
import time

import pytest

from wan22bot.errors import ConfigError
from wan22bot.jobs import JobState
from wan22bot.queue import JobQueue
from wan22bot.queue.dispatcher import OWNER, Dispatcher
from wan22bot.queue.outcome import accept_result
from wan22bot.queue.redis_conn import connect, keys, text

from .conftest import CLAIM_TIMEOUT, Backend, finish_done, freeze, photo_bytes, redis_config, spec, until


async def pending(b: Backend) -> list[dict]:
    k = keys(b.cfg)
    return await b.dispatcher.redis.xpending_range(k.stream, k.group, min="-", max="+", count=100)


async def owner_of(b: Backend) -> list[str]:
    return [p["consumer"].decode() for p in await pending(b)]


async def test_an_entry_not_heartbeated_is_taken_over_after_the_claim_timeout(redis_backend):
    b = redis_backend
    sent = await b.submit()
    job = await b.claim()
    freeze(b.work)  # alive but silent: no heartbeats
    other = await b.new_worker("w2")
    t0 = time.monotonic()
    taken = await b.claim(timeout=5, work=other)
    waited = time.monotonic() - t0
    assert taken.id == job.id == sent.id
    assert waited >= CLAIM_TIMEOUT * 0.8  # not before it went quiet for the claim timeout
    assert taken.attempts == 2
    assert await owner_of(b) == ["w2"]


async def test_a_heartbeating_worker_keeps_its_entry(redis_backend):
    b = redis_backend
    await b.submit()
    job = await b.claim()
    other = await b.new_worker("w2")
    with pytest.raises(TimeoutError):
        await b.claim(timeout=CLAIM_TIMEOUT * 2.5, work=other)
    assert await owner_of(b) == ["w1"]
    await finish_done(b, job)
    await b.wait_state(job.id, "done")


async def test_a_worker_that_lost_its_entry_stops_and_neither_delivers_nor_acks(redis_backend):
    b = redis_backend
    delivered = []
    front = b.front

    async def recording(outcome, video, sidecar):
        delivered.append(outcome)
        return await accept_result(front, outcome, video, sidecar)

    slow = await b.new_worker("slow", deliver=recording)
    await b.submit()
    job = await b.claim(work=slow)
    freeze(slow)
    other = await b.new_worker("w2")
    taken = await b.claim(timeout=5, work=other)
    assert taken.id == job.id
    # the silent worker wakes up: its next heartbeat finds the entry gone to w2 and stops the job
    claim = slow._claims[job.id]
    claim.beat = asyncio.create_task(slow._heartbeat(claim))
    await until(slow.cancel_flag(job.id).is_set, 2, "the cancel flag of the worker that lost its entry")
    await finish_done(b, job, work=slow)  # its render finished anyway: not delivered, not acked
    assert delivered == []
    assert await owner_of(b) == ["w2"]
    assert (await b.job(job.id)).state == JobState.running
    data = await finish_done(b, taken, work=other)
    done = await b.wait_state(job.id, "done")
    assert open(done.result.output, "rb").read() == data
    assert await pending(b) == []


async def test_a_job_claimed_twice_is_stored_once(redis_backend):
    b = redis_backend
    outcomes = []
    front = b.front

    async def recording(outcome, video, sidecar):
        got = await accept_result(front, outcome, video, sidecar)
        outcomes.append(got)
        return got

    first = await b.new_worker("first", deliver=recording)
    second = await b.new_worker("second", deliver=recording)
    await b.submit(name="twice.jpg")
    job = await b.claim(work=first)
    # the same job on the stream a second time (an XADD retried over a dropped connection)
    k = keys(b.cfg)
    r = b.dispatcher.redis
    [(_, fields)] = await r.xrange(k.stream, count=1)
    await r.xadd(k.stream, fields)
    dup = await b.claim(work=second)
    assert dup.id == job.id
    data = await finish_done(b, job, work=first)
    (b.work_out / "twice.mp4").unlink(missing_ok=True)
    await finish_done(b, dup, work=second)
    assert [o.stored for o in outcomes] == [True, False]
    done = await b.wait_state(job.id, "done")
    assert open(done.result.output, "rb").read() == data  # the first result, not overwritten
    assert sorted(p.name for p in b.output.iterdir()) == ["twice.json", "twice.mp4"]
    assert await pending(b) == []
    assert [e for e in b.events if e == ("done", job.id)] == [("done", job.id)]


async def test_the_entry_is_acknowledged_only_after_delivery_succeeded(redis_backend):
    b = redis_backend
    calls = []
    two_failed = asyncio.Event()
    front = b.front

    async def flaky(outcome, video, sidecar):
        calls.append(outcome.state)
        if len(calls) <= 2:
            if len(calls) == 2:
                two_failed.set()
            raise ConnectionResetError("the front restarted")
        return await accept_result(front, outcome, video, sidecar)

    w = await b.new_worker("flaky", deliver=flaky)
    w.DELIVER_RETRY = (0.3, 0.3)
    await b.submit()
    job = await b.claim(work=w)
    task = asyncio.create_task(finish_done(b, job, work=w))
    await asyncio.wait_for(two_failed.wait(), 5)
    assert await owner_of(b) == ["flaky"]  # still pending while delivery fails
    assert await b.dispatcher.redis.xlen(keys(b.cfg).stream) == 1
    await asyncio.wait_for(task, 5)
    assert calls == ["done", "done", "done"]
    assert await pending(b) == []
    assert await b.dispatcher.redis.xlen(keys(b.cfg).stream) == 0
    assert (await b.job(job.id)).state == JobState.done


async def test_a_redis_restart_mid_run_loses_nothing(redis_backend):
    b = redis_backend
    first = await b.submit(name="one.jpg")
    second = await b.submit(name="two.jpg")
    job = await b.claim()
    assert job.id == first.id
    b.server.restart()  # SIGTERM then start on the same port and folder: the AOF brings it back
    b.work.progress(job, "pass1", 1, 2)
    await finish_done(b, job)
    await b.wait_state(first.id, "done", timeout=10)
    nxt = await b.claim(timeout=10)
    assert nxt.id == second.id
    b.server.kill()  # SIGKILL this time: what was acknowledged is in the AOF (appendfsync always)
    finishing = asyncio.create_task(finish_done(b, nxt))  # the front is up: delivered; the ack waits
    third = await b.submit(name="three.jpg")  # the front takes jobs while Redis is away
    await asyncio.sleep(1.5)  # longer than the client's own quick retries: the loops wait it out
    assert b.dispatcher.health().state == "waiting" and "Redis" in b.dispatcher.health().detail
    b.server.start()
    await asyncio.wait_for(finishing, 15)
    await b.wait_state(second.id, "done", timeout=10)
    assert (await b.claim(timeout=15)).id == third.id
    assert await owner_of(b) == ["w1"]


async def test_a_photo_over_the_cap_without_a_shared_folder_fails_naming_both_settings(tmp_path, redis_server):
    b = Backend("redis", tmp_path, redis_server)
    b.cfg = redis_config(tmp_path, redis_server.url, photo_max_mb=0.001)
    await b.open()
    try:
        sent = await b.submit(photo_bytes("big", size=4000))
        failed = await b.wait_state(sent.id, "failed")
        assert "photo_max_mb" in failed.error and "shared_folder" in failed.error
        assert "0.001" in failed.error
        small = await b.submit(photo_bytes("small", size=100))
        assert (await b.claim()).id == small.id  # the queue goes on
    finally:
        await b.close()


async def test_a_large_photo_travels_through_the_shared_folder(tmp_path, redis_server):
    shared = tmp_path / "shared"
    b = Backend("redis", tmp_path, redis_server)
    b.cfg = redis_config(tmp_path, redis_server.url, photo_max_mb=0.001, shared_folder=str(shared))
    await b.open()
    try:
        data = photo_bytes("big", size=4000)
        sent = await b.submit(data)
        job = await b.claim()
        assert job.id == sent.id
        assert job.spec.input_path == str(shared / f"{job.id}.jpg")
        assert open(job.spec.input_path, "rb").read() == data
        k = keys(b.cfg)
        [(_, fields)] = await b.dispatcher.redis.xrange(k.stream)
        assert b"photo" not in fields and fields[b"photo_path"] == f"{job.id}.jpg".encode()
        await finish_done(b, job)
        await b.wait_state(job.id, "done")
        await until(lambda: not (shared / f"{job.id}.jpg").exists(), 2, "the shared copy to go")
    finally:
        await b.close()


async def test_a_restarted_worker_resumes_its_own_pending_entry_first(redis_backend):
    b = redis_backend
    first = await b.submit(name="one.jpg")
    job = await b.claim()
    assert job.id == first.id
    await b.work.close()  # the worker process ends mid-job
    b.workers.remove(b.work)
    second = await b.submit(name="two.jpg")
    await until(lambda: second.id in {j.id for j in b.dispatcher.running}, 3, "the second job on the stream")
    again = await b.new_worker("w1")  # the same name: the same consumer
    t0 = time.monotonic()
    resumed = await b.claim(work=again)
    assert resumed.id == first.id
    assert time.monotonic() - t0 < CLAIM_TIMEOUT  # its own entry, not a takeover after the timeout
    assert open(resumed.spec.input_path, "rb").read()  # the photo written again from the entry
    assert (await b.claim(work=again)).id == second.id


async def test_the_password_comes_from_the_environment_and_a_wrong_one_is_named(tmp_path, make_redis_server,
                                                                                  monkeypatch):
    server = make_redis_server(password="pa55-w0rd")
    cfg = redis_config(tmp_path, server.url)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("WAN22BOT_REDIS_PASSWORD", "pa55-w0rd")
    r = await connect(cfg, wait=5)
    assert await r.ping()
    await r.aclose()

    monkeypatch.setenv("WAN22BOT_REDIS_PASSWORD", "wrong")
    with pytest.raises(ConfigError) as bad:
        await connect(cfg, wait=5)
    msg = str(bad.value)
    assert f"127.0.0.1:{server.port}" in msg and "WAN22BOT_REDIS_PASSWORD" in msg
    assert "wrong" not in msg

    monkeypatch.delenv("WAN22BOT_REDIS_PASSWORD")
    with pytest.raises(ConfigError) as none:
        await connect(cfg, wait=5)
    assert "none was given" in str(none.value)

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "redis-password").write_text("pa55-w0rd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    r = await connect(cfg, wait=5)
    assert await r.ping()
    await r.aclose()


async def test_a_job_out_on_the_stream_whose_entry_is_gone_is_dispatched_again_at_start(tmp_path, redis_server):
    cfg = redis_config(tmp_path, redis_server.url)
    front = JobQueue(tmp_path / "state", tmp_path / "out", keep_claimed_by=OWNER)
    await front.start()
    sent, _ = await front.submit(spec(name="lost.jpg"), photo_bytes("lost"))
    out = await front.run_db(front.journal.claim_next, OWNER)  # sent to a Redis that then lost it
    assert out.id == sent.id
    await front.close()

    front = JobQueue(tmp_path / "state", tmp_path / "out", keep_claimed_by=OWNER)
    requeued, _ = await front.start()
    assert requeued == []  # a front restart does not take it back: it may be running on another box
    assert (await front.get(sent.id)).state == JobState.running
    b = Backend("redis", tmp_path, redis_server)
    b.cfg, b.front, b.max_attempts = cfg, front, 3
    b.dispatcher = Dispatcher(cfg, front)
    b.dispatcher.start()
    try:
        await asyncio.wait_for(b.dispatcher.ready.wait(), 10)
        b.work = await b.new_worker()
        job = await b.claim()
        assert job.id == sent.id
        assert (await front.get(sent.id)).attempts == 1  # not an attempt of its own
        await finish_done(b, job)
        await b.wait_state(sent.id, "done")
    finally:
        await b.close()


async def test_a_job_with_its_entry_still_there_is_left_to_its_worker_at_start(redis_backend):
    b = redis_backend
    await b.submit()
    job = await b.claim()
    await b.dispatcher.stop()
    await b.front.close()
    await b._open_front()  # the front restarts while w1 renders
    assert (await b.job(job.id)).state == JobState.running
    assert [j.id for j in b.dispatcher.running] == [job.id]
    assert b.dispatcher.current.id == job.id
    await finish_done(b, job)
    await b.wait_state(job.id, "done")
    assert await pending(b) == []


async def test_a_redis_that_lost_its_data_gets_the_jobs_that_were_out_again(tmp_path, make_redis_server):
    server = make_redis_server(appendonly=False)  # a restart comes back empty
    b = Backend("redis", tmp_path, server)
    await b.open()
    try:
        first = await b.submit(name="one.jpg")
        job = await b.claim()
        second = await b.submit(name="two.jpg")  # out on the stream, waiting for a worker
        await until(lambda: second.id in {j.id for j in b.dispatcher.running}, 3, "the second dispatch")
        server.restart()
        # both go back to the queue, and out again: the running one too, since its run is unknown
        await until(lambda: first.id in {j.id for j in b.dispatcher.running}, 5, "the first job out again")
        await finish_done(b, job)  # the run was not lost after all: its result counts
        await b.wait_state(first.id, "done", timeout=10)

        async def on_stream():
            return {text(v) for v in (await b.dispatcher._entries(keys=[keys(b.cfg).stream]))[1::2]}

        # the first job's second entry is withdrawn, unrun; the second job's goes out
        await until(lambda: _eq(on_stream(), {second.id}), 5, "only the second job on the stream")
        again = await b.claim(timeout=10)
        assert again.id == second.id and again.attempts == 1
        await finish_done(b, again)
        await b.wait_state(second.id, "done", timeout=10)
    finally:
        await b.close()


async def _eq(coro, expected) -> bool:
    return await coro == expected
