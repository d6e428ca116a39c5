"""A result the front refuses for good (HTTP 413 over [queue] max_result_mb, 400) still settles the
job: the worker reports it failed with the refusal as the reason, and the entry is acknowledged once.
Real pieces throughout: the front's PUT route, a Dispatcher and a RemoteQueue on a real redis-server,
the worker's ResultUploader."""

from __future__ import annotations

import asyncio

from tests.http.helpers import make_config
from wan22bot.jobs import JobState
from wan22bot.queue.dispatcher import Dispatcher
from wan22bot.queue.outcome import BadResult, ResultOutcome
from wan22bot.queue.redis_conn import keys
from wan22bot.queue.remote import RemoteQueue
from wan22bot.queue.upload import ResultUploader

from .conftest import make_mp4, make_sidecar, result, spec

BOUND = 20.0


def redis_queue(url: str, **extra) -> dict:
    return {"backend": "redis", "url": url, "heartbeat_seconds": 0.2, "claim_timeout_seconds": 1.0, **extra}


async def test_a_result_over_the_fronts_cap_ends_the_job_failed_naming_the_setting(open_http_front, redis_server,
                                                                                   tmp_path):
    front = await open_http_front(queue=redis_queue(redis_server.url, max_result_mb=0.01))
    dispatcher = Dispatcher(front.source.cfg, front.queue)
    dispatcher.start()
    box = tmp_path / "box"
    worker_cfg = make_config(box, http={"port": front.source.port}, queue=redis_queue(redis_server.url),
                             worker={"name": "gpu-1"})
    uploader = ResultUploader(worker_cfg)
    rq = RemoteQueue(worker_cfg, uploader.deliver, spool_dir=box / "spool")
    rq.DELIVER_RETRY = (0.1, 0.5)
    await rq.start()
    try:
        await asyncio.wait_for(dispatcher.ready.wait(), BOUND)
        sent, _ = await front.queue.submit(spec("big.jpg"), b"\xff\xd8\xff\xe0big")
        job = await asyncio.wait_for(rq.next_job(), BOUND)
        assert job.id == sent.id
        video, sidecar = box / "results" / "big.mp4", box / "results" / "big.json"
        make_mp4(video, noise=True, n=6)  # well over 0.01 MiB
        make_sidecar(sidecar)
        await asyncio.wait_for(rq.finish(job, JobState.done, result=result(output=str(video),
                                                                           sidecar=str(sidecar))), BOUND)

        stored = await front.queue.get(job.id)
        assert stored.state == JobState.failed, stored
        assert "413" in stored.error and "[queue] max_result_mb" in stored.error, stored.error
        assert "gpu-1" in stored.error  # which box rendered what the front would not take
        assert [p.name for p in front.queue.output_dir.iterdir()] == []  # nothing half-stored
        k = keys(worker_cfg)
        assert await rq.redis.xpending_range(k.stream, k.group, min="-", max="+", count=10) == []
        assert await rq.redis.xlen(k.stream) == 0
    finally:
        await rq.close()
        await uploader.close()
        await dispatcher.stop()


async def test_a_refused_outcome_that_is_not_done_is_dropped_after_one_try(redis_server, tmp_path):
    """A "failed" outcome the front refuses as well has nothing left to fall back to: the entry is
    acknowledged after that one refusal, not offered again for ever."""
    cfg = make_config(tmp_path, queue=redis_queue(redis_server.url), worker={"name": "gpu-1"})
    tries: list[str] = []

    async def refusing(outcome: ResultOutcome, video, sidecar):
        tries.append(outcome.state)
        raise BadResult(f"the front at http://front refused the {outcome.state} result (HTTP 400: no)")

    rq = RemoteQueue(cfg, refusing, spool_dir=tmp_path / "spool")
    rq.DELIVER_RETRY = (0.05, 0.1)
    await rq.start()
    try:
        k = keys(cfg)
        await rq.redis.xadd(k.stream, {"job": "0123456789ab", "spec": spec("x.jpg").model_copy(update={"name": "x"}).model_dump_json(),
                                       "photo": b"\xff\xd8\xff\xe0x", "ext": ".jpg", "attempt": "0",
                                       "max_attempts": "3", "sent": "1"})
        job = await asyncio.wait_for(rq.next_job(), BOUND)
        video = tmp_path / "results" / "x.mp4"
        make_mp4(video)
        await asyncio.wait_for(rq.finish(job, JobState.done, result=result(output=str(video))), BOUND)
        assert tries == ["done", "failed"]
        assert await rq.redis.xpending_range(k.stream, k.group, min="-", max="+", count=10) == []
    finally:
        await rq.close()
