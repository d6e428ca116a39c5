"""A Redis outage as the long-running loops live through it: each loop survives it, says so once
when it starts and once when Redis answers again, never at every retry."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter

from .conftest import until

OUTAGE = 4.0  # the loops retry after 0.5, 1 and 2 s: four tries each before Redis is back


def warnings_by_loop(caplog) -> Counter:
    said = Counter()
    for r in caplog.records:
        if r.levelno < logging.WARNING or not r.name.startswith("wan22bot.queue"):
            continue
        m = re.match(r"(dispatcher \(\w+\)|worker \S+: reading the stream|connecting to \S+): Redis", r.getMessage())
        said[m.group(1) if m else r.getMessage()] += 1
    return said


async def test_a_redis_outage_is_logged_once_per_loop_and_its_end_once(redis_backend, caplog):
    caplog.set_level(logging.INFO, "wan22bot.queue")
    b = redis_backend
    reading = asyncio.create_task(b.work.next_job())  # an idle worker waiting for work
    await asyncio.sleep(0.3)
    b.server.kill()
    await asyncio.sleep(OUTAGE)
    assert not reading.done()
    b.server.start()
    job = await b.submit()
    got = await asyncio.wait_for(reading, 20)  # the loops lived through it
    assert got.id == job.id

    said = warnings_by_loop(caplog)
    assert said["dispatcher (events)"] == 1, said
    assert said["dispatcher (workers)"] == 1, said
    assert said["worker w1: reading the stream"] == 1, said
    assert all(n == 1 for n in said.values()), said  # nothing else repeats either
    infos = lambda: [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]  # noqa: E731
    await until(lambda: any("dispatcher: Redis at" in m and "answers again" in m for m in infos()), 5,
                "the dispatcher to say Redis answers again")
    assert any(m.startswith("worker w1: reading the stream: Redis answers again") for m in infos())
    assert b.dispatcher.health().state != "waiting"


async def test_what_a_worker_says_while_the_fronts_events_read_waits_to_retry_is_not_lost(redis_backend):
    b = redis_backend
    await b.submit()
    job = await b.claim()
    await until(lambda: b.dispatcher.current is not None, 5, "the front to hear of the claim")
    b.server.kill()
    await until(lambda: "events" in b.dispatcher._away, 5, "the events read to fail")
    b.server.start()  # back at once: the events read waits 0.5 s before its next try
    b.work.progress(job, "pass1", 1, 2)  # said in that wait
    await until(lambda: (b.front.live.get(job.id) or {}).get("stage") == "pass1", 5,
                "the front to show the progress said in between")
