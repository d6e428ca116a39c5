"""Delivery retries are bounded: a result Discord keeps refusing is marked undeliverable, with the
reason, in the job's record; it is not retried forever. Real bot against the local fake Discord."""

from __future__ import annotations

import asyncio
import time

from tests.discord.conftest import WAIT
from wan22bot.jobs import JobState
from wan22bot.sources.discord import delivery as delivery_mod
from wan22bot.sources.discord import source as source_mod


async def test_a_result_refused_again_and_again_becomes_undeliverable_with_the_reason(rig, monkeypatch):
    # the real schedule is minutes to hours apart; the bound and the code path are the same
    monkeypatch.setattr(source_mod, "RETRY_DELAYS", (0.05, 0.05, 0.05, 0.05))
    monkeypatch.setattr(delivery_mod, "MAX_DELIVERY_ATTEMPTS", 3, raising=False)
    await rig.start()
    fake = rig.fake
    # the status edits work; every upload of the video is refused as rate-limited
    fake.fail_next("POST /webhooks/", 429, message="You are being rate limited.", count=1000)
    await rig.animate()
    job = await rig.wait_final()
    assert job.state == JobState.done, job.error

    deadline = time.monotonic() + WAIT
    while True:
        job = await rig.queue.get(job.id)
        if getattr(job, "delivery_error", None):  # (code without the bound has no such field)
            break
        assert time.monotonic() < deadline, "the job was never given up on"
        await asyncio.sleep(0.05)
    assert job.delivered and job.delivery_error.startswith("undeliverable after 3 attempts: Discord answered 429")
    api = job.to_api()
    assert api["delivery"] == "undeliverable" and api["delivery_error"] == job.delivery_error
    assert api["state"] == "done" and api["output"]  # the video itself is still there
    assert await rig.queue.undelivered("discord") == []  # no sweep picks it up again
    tries = [r for r in fake.rejected if r["status"] == 429 and r["method"] == "POST"]
    assert len(tries) == 3, tries
    assert not rig.bot._retries  # nothing left scheduled


async def test_a_result_that_gets_through_on_a_retry_is_delivered_normally(rig, monkeypatch):
    monkeypatch.setattr(source_mod, "RETRY_DELAYS", (0.05, 0.05, 0.05, 0.05))
    monkeypatch.setattr(delivery_mod, "MAX_DELIVERY_ATTEMPTS", 3, raising=False)
    await rig.start()
    rig.fake.fail_next("POST /webhooks/", 429, message="You are being rate limited.", count=2)
    await rig.animate()
    job = await rig.wait_final()
    job = await rig.wait_delivered(job.id)
    assert job.delivery_error is None and job.to_api()["delivery"] == "delivered"
