"""ResultUploader against the real PUT route of a front on a free port: bytes arrive intact, a front
that is down or misconfigured is waited for, answers that no retry can change end the tries."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from tests.http.helpers import TOKEN_ENV, make_config
from wan22bot.errors import ConfigError
from wan22bot.jobs import JobState
from wan22bot.queue.outcome import Accepted, BadResult
from wan22bot.queue.upload import ResultUploader
from wan22bot.sources.http import HttpSource

from .conftest import TOKEN, make_mp4, make_sidecar, outcome
from tests.ports import free_port

BOUND = 20.0


@pytest.fixture
async def uploaders(tmp_path):
    made: list[ResultUploader] = []

    def factory(port: int, **sections) -> ResultUploader:
        http = {"port": port, **sections.pop("http", {})}
        up = ResultUploader(make_config(tmp_path / "worker", http=http, **sections))
        made.append(up)
        return up

    yield factory
    for up in made:
        await up.close()


def rendered(tmp_path, name: str = "clip", **kw):
    video, sidecar = tmp_path / "results" / f"{name}.mp4", tmp_path / "results" / f"{name}.json"
    return video, sidecar, make_mp4(video, **kw), make_sidecar(sidecar)


def logged(caplog, level: int, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "wan22bot.queue.upload" and r.levelno == level and text in r.getMessage()]


async def test_the_mp4_arrives_byte_identical(open_http_front, uploaders, tmp_path):
    front = await open_http_front()
    job = await front.jobs.running_job("sunset.jpg")
    video, sidecar, mp4, side = rendered(tmp_path, noise=True, n=24)

    got = await asyncio.wait_for(uploaders(front.source.port).deliver(outcome(job), video, sidecar), BOUND)

    assert got == Accepted(True, "done")
    out = front.queue.output_dir
    assert (out / "sunset.mp4").read_bytes() == mp4 and (out / "sunset.json").read_bytes() == side
    stored = await front.queue.get(job.id)
    assert stored.state == JobState.done and stored.result.bytes == len(mp4)


async def test_a_second_delivery_of_the_same_result_stores_nothing(open_http_front, uploaders, tmp_path, caplog):
    caplog.set_level(logging.INFO, "wan22bot.queue.upload")
    front = await open_http_front()
    job = await front.jobs.running_job()
    up = uploaders(front.source.port)
    video, sidecar, mp4, _ = rendered(tmp_path)
    assert await asyncio.wait_for(up.deliver(outcome(job), video, sidecar), BOUND) == Accepted(True, "done")
    again_video, again_side, _, _ = rendered(tmp_path, "again", noise=True)
    assert await asyncio.wait_for(up.deliver(outcome(job), again_video, again_side), BOUND) == Accepted(False, "done")
    assert (front.queue.output_dir / "beach.mp4").read_bytes() == mp4
    assert logged(caplog, logging.INFO, "already had the job")


async def test_a_front_that_is_down_at_first_gets_the_result_once_it_is_up(open_http_front, uploaders, tmp_path,
                                                                           caplog):
    caplog.set_level(logging.INFO, "wan22bot.queue.upload")
    port = free_port()
    front = await open_http_front(port=port)
    job = await front.jobs.running_job()
    await front.source.stop()  # the front's API is down; its journal keeps the job
    video, sidecar, mp4, _ = rendered(tmp_path)
    t0 = time.monotonic()
    task = asyncio.create_task(uploaders(port).deliver(outcome(job), video, sidecar))
    # the first try and the one after 1 s both fail (waited for, not slept on: a loaded machine may
    # be late with the second)
    deadline = time.monotonic() + BOUND
    while len(logged(caplog, logging.WARNING, "cannot be reached")) < 2:
        assert time.monotonic() < deadline and not task.done(), "no second failed try"
        await asyncio.sleep(0.01)
    assert not task.done()
    src = HttpSource(front.source.cfg, front.queue)
    await src.start()
    front.source = src  # stopped by the fixture

    assert await asyncio.wait_for(task, BOUND) == Accepted(True, "done")
    assert 2.5 <= time.monotonic() - t0 < BOUND  # the backoff: 1 s, then 2 s
    assert (front.queue.output_dir / "beach.mp4").read_bytes() == mp4
    assert (await front.queue.get(job.id)).state == JobState.done


async def test_403_from_a_front_without_a_token_is_retried_until_it_is_fixed(open_http_front, uploaders, tmp_path,
                                                                             caplog, monkeypatch):
    caplog.set_level(logging.INFO, "wan22bot.queue.upload")
    front = await open_http_front(token=None)
    job = await front.jobs.running_job()
    video, sidecar, mp4, _ = rendered(tmp_path)
    task = asyncio.create_task(uploaders(front.source.port).deliver(outcome(job), video, sidecar))
    await asyncio.sleep(1.5)  # two tries, both 403
    assert not task.done()
    errors = logged(caplog, logging.ERROR, "HTTP 403")
    assert len(errors) == 1  # once a minute, not once a try
    assert TOKEN_ENV in errors[0] and "[http] token_env" in errors[0]

    monkeypatch.setenv(TOKEN_ENV, TOKEN)  # the person sets the token on both boxes
    front.source.reload(front.source.cfg)

    assert await asyncio.wait_for(task, BOUND) == Accepted(True, "done")
    assert (front.queue.output_dir / "beach.mp4").read_bytes() == mp4


async def test_a_wrong_worker_token_is_retried_and_the_fixed_one_is_used(open_http_front, uploaders, tmp_path,
                                                                         caplog, monkeypatch):
    caplog.set_level(logging.INFO, "wan22bot.queue.upload")
    front = await open_http_front()
    job = await front.jobs.running_job()
    monkeypatch.setenv("WORKER_SIDE_TOKEN", "a-token-the-front-never-issued")
    up = uploaders(front.source.port, http={"token_env": "WORKER_SIDE_TOKEN"})
    task = asyncio.create_task(up.deliver(outcome(job, "failed", error="out of memory"), None, None))
    await asyncio.sleep(1.5)
    assert not task.done() and logged(caplog, logging.ERROR, "WORKER_SIDE_TOKEN")
    monkeypatch.setenv("WORKER_SIDE_TOKEN", TOKEN)  # read again at the next try
    assert await asyncio.wait_for(task, BOUND) == Accepted(True, "failed")
    assert (await front.queue.get(job.id)).error == "out of memory"


async def test_413_gives_up_with_an_error_naming_the_setting(open_http_front, uploaders, tmp_path, caplog):
    caplog.set_level(logging.INFO, "wan22bot.queue.upload")
    front = await open_http_front(queue={"max_result_mb": 0.01})
    job = await front.jobs.running_job()
    video, sidecar, _, _ = rendered(tmp_path, noise=True, n=6)
    t0 = time.monotonic()
    with pytest.raises(BadResult, match=r"HTTP 413.*\[queue\] max_result_mb") as refused:
        await asyncio.wait_for(uploaders(front.source.port).deliver(outcome(job), video, sidecar), BOUND)
    assert time.monotonic() - t0 < 1.0  # no retries
    assert "refused the done result from gpu-box-1" in str(refused.value)  # what the job's failure will say
    errors = logged(caplog, logging.ERROR, "HTTP 413")
    assert len(errors) == 1 and "not sent again" in errors[0] and "[queue] max_result_mb" in errors[0]
    # the uploader alone settles nothing: RemoteQueue reports the job failed (test_refused.py)
    assert (await front.queue.get(job.id)).state == JobState.running
    assert list(front.queue.output_dir.iterdir()) == []


async def test_an_unknown_job_ends_the_tries_with_a_warning(open_http_front, uploaders, tmp_path, caplog):
    caplog.set_level(logging.INFO, "wan22bot.queue.upload")
    front = await open_http_front()
    got = await asyncio.wait_for(
        uploaders(front.source.port).deliver(outcome("0123456789ab", "failed", error="x"), None, None), BOUND)
    assert got is None
    assert logged(caplog, logging.WARNING, "does not know the job")


async def test_a_video_removed_before_the_upload_is_reported_as_a_failure(open_http_front, uploaders, tmp_path):
    front = await open_http_front()
    job = await front.jobs.running_job()
    video, sidecar, _, _ = rendered(tmp_path)
    video.unlink()
    got = await asyncio.wait_for(uploaders(front.source.port).deliver(outcome(job), video, sidecar), BOUND)
    assert got == Accepted(True, "failed")
    stored = await front.queue.get(job.id)
    assert stored.state == JobState.failed and "removed there before it was sent" in stored.error


def test_the_front_url_is_front_url_or_the_http_address(tmp_path):
    cfg = make_config(tmp_path, http={"host": "10.1.2.3", "port": 9000})
    assert ResultUploader(cfg).base == "http://10.1.2.3:9000"
    cfg = make_config(tmp_path, queue={"front_url": "https://front.example:8443/"})
    assert ResultUploader(cfg).base == "https://front.example:8443"
    for host in ("0.0.0.0", "::"):
        with pytest.raises(ConfigError, match="front_url"):
            ResultUploader(make_config(tmp_path, http={"host": host}))
