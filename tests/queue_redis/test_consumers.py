"""Consumer names of workers gone for good (renamed, replaced, retired) leave the consumer group,
and only those: never one holding an entry, one seen lately, or one whose worker hash is live."""

from __future__ import annotations

import asyncio

import pytest

from wan22bot.queue import dispatcher as dispatcher_mod
from wan22bot.queue.dispatcher import Dispatcher, consumer_idle_bound
from wan22bot.queue.redis_conn import keys, text

from .conftest import CLAIM_TIMEOUT, abandon, redis_config, until

IDLE = 0.4  # the idle bound in these tests, in seconds (an hour at least in production)


@pytest.fixture
def short_bound(monkeypatch):
    monkeypatch.setattr(dispatcher_mod, "CONSUMER_IDLE_MIN_SECONDS", IDLE)
    monkeypatch.setattr(dispatcher_mod, "CONSUMER_IDLE_CLAIM_TIMEOUTS", IDLE / CLAIM_TIMEOUT)


async def consumers(b) -> dict[str, dict]:
    k = keys(b.cfg)
    return {text(c["name"]): c for c in await b.dispatcher.redis.xinfo_consumers(k.stream, k.group)}


async def restart_dispatcher(b) -> None:
    """The front restarts: a new dispatcher reconciles at its start."""
    await b.dispatcher.stop()
    b.dispatcher = Dispatcher(b.cfg, b.front)
    b.dispatcher.start()
    await asyncio.wait_for(b.dispatcher.ready.wait(), 10)


async def holding_consumer(b, name: str = "holding") -> str:
    """A worker `name` that took a job, then died: its entry stays pending to it, and it goes idle."""
    w = await b.new_worker(name)
    await b.submit(name=f"{name}.jpg")
    await b.claim(work=w)
    await abandon(w)
    b.workers.remove(w)
    return name


def test_the_idle_bound_is_ten_claim_timeouts_and_at_least_an_hour(tmp_path):
    assert consumer_idle_bound(redis_config(tmp_path, "redis://127.0.0.1:1/0", claim_timeout_seconds=60)) == 3600
    assert consumer_idle_bound(redis_config(tmp_path, "redis://127.0.0.1:1/0", claim_timeout_seconds=900)) == 9000


async def test_at_start_a_stale_consumer_goes_and_one_with_an_entry_or_a_live_worker_stays(redis_backend,
                                                                                          short_bound):
    b = redis_backend
    r, k = b.dispatcher.redis, keys(b.cfg)
    await r.xgroup_createconsumer(k.stream, k.group, "renamed-box")  # a worker since renamed
    await holding_consumer(b)
    await r.xgroup_createconsumer(k.stream, k.group, "alive")
    await r.hset(k.worker("alive"), mapping={"host": "box3", "state": "idle"})  # its beacon says it is up
    before = await consumers(b)
    assert {"renamed-box", "holding", "alive"} <= set(before)
    await asyncio.sleep(IDLE + 0.2)

    await restart_dispatcher(b)

    after = await consumers(b)
    assert "renamed-box" not in after
    assert "alive" in after
    assert after["holding"]["pending"] == 1  # its claim kept: another worker can still take it over
    [p] = await r.xpending_range(k.stream, k.group, min="-", max="+", count=10)
    assert text(p["consumer"]) == "holding"


async def test_a_consumer_seen_within_the_bound_stays(redis_backend, monkeypatch):
    b = redis_backend
    monkeypatch.setattr(dispatcher_mod, "CONSUMER_IDLE_MIN_SECONDS", 30.0)
    monkeypatch.setattr(dispatcher_mod, "CONSUMER_IDLE_CLAIM_TIMEOUTS", 0.0)
    r, k = b.dispatcher.redis, keys(b.cfg)
    await r.xgroup_createconsumer(k.stream, k.group, "just-restarted")
    await asyncio.sleep(0.5)

    await restart_dispatcher(b)

    assert "just-restarted" in await consumers(b)


async def test_a_front_that_runs_on_forgets_stale_consumers_without_a_restart(redis_backend, short_bound,
                                                                             monkeypatch):
    b = redis_backend
    monkeypatch.setattr(dispatcher_mod, "CONSUMER_SWEEP_SECONDS", 0.5)
    r, k = b.dispatcher.redis, keys(b.cfg)
    await r.xgroup_createconsumer(k.stream, k.group, "retired-box")
    await holding_consumer(b)

    await until(lambda: _without(b, "retired-box"), 5, "retired-box to be forgotten")

    assert (await consumers(b))["holding"]["pending"] == 1


async def _without(b, name: str) -> bool:
    return name not in await consumers(b)


async def test_the_delete_is_refused_in_redis_itself_for_a_consumer_holding_an_entry(redis_backend, short_bound):
    # the check runs again inside the script that deletes: an entry read between the listing and
    # the delete cannot be dropped with its consumer
    b = redis_backend
    name = await holding_consumer(b)
    r, k = b.dispatcher.redis, keys(b.cfg)
    await r.xgroup_createconsumer(k.stream, k.group, "renamed-box")
    await asyncio.sleep(IDLE + 0.2)
    await r.hset(k.worker("renamed-box"), mapping={"state": "idle"})

    for who in (name, "renamed-box"):
        assert await b.dispatcher._forget_consumer(keys=[k.stream, k.worker(who)], args=[k.group, who, 0]) == 0

    assert {name, "renamed-box"} <= set(await consumers(b))
