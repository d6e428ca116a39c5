"""Claims are safe against cancellation, and fast on a big journal (index, checked by its plan)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest

from wan22bot.jobs import JobState

from .conftest import claim, photo_bytes, spec


async def test_cancel_during_the_claim_leaves_the_job_queued_with_no_attempt_spent(queues):
    q = await queues.open(max_attempts=3)
    job, _ = await q.submit(spec(), photo_bytes(1))
    entered, release = threading.Event(), threading.Event()
    real = q.journal.claim_next

    def gated():
        # the claim is inside the journal thread when the worker task is cancelled (a shutdown)
        entered.set()
        assert release.wait(10)
        return real()

    q.journal.claim_next = gated
    task = asyncio.create_task(q.next_job())
    assert await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    q.journal.claim_next = real
    await q.run_db(lambda: None)  # the journal thread has finished whatever it was doing
    row = await q.get(job.id)
    assert (row.state, row.attempts, row.started) == (JobState.queued, 0, None)
    # and the next claim is the job's first attempt
    got = await claim(q)
    assert (got.id, got.attempts) == (job.id, 1)


async def test_cancel_before_the_claim_runs_claims_nothing(queues):
    q = await queues.open()
    job, _ = await q.submit(spec(), photo_bytes(2))
    blocker = threading.Event()
    busy = asyncio.ensure_future(q.run_db(blocker.wait, 10))  # the journal thread is busy elsewhere
    task = asyncio.create_task(q.next_job())
    for _ in range(3):
        await asyncio.sleep(0)
    task.cancel()
    blocker.set()
    await busy
    with pytest.raises(asyncio.CancelledError):
        await task
    await q.run_db(lambda: None)
    row = await q.get(job.id)
    assert (row.state, row.attempts) == (JobState.queued, 0)


def _fill(db_path, n: int) -> None:
    """n finished rows over 50 lanes, written straight into the journal file (fast)."""
    con = sqlite3.connect(str(db_path))
    spec_json = spec().model_copy(update={"input_path": "/nonexistent", "name": "x"}).model_dump_json()
    now = time.time()
    with con:
        con.executemany(
            "INSERT INTO jobs (id, state, source, lane, spec, created, started, finished, attempts, delivered) "
            "VALUES (?, 'done', 'watch', ?, ?, ?, ?, ?, 1, 1)",
            [(f"old{i:07d}", f"watch:u{i % 50}", spec_json, now - 1000 + i * 1e-3, now - 900 + i * 1e-3,
              now - 800 + i * 1e-3) for i in range(n)])
    con.close()


async def test_claim_uses_the_lane_index_and_stays_fast_on_20k_finished_rows(queues):
    q = await queues.open(max_length=1000)
    await queues.close(q)
    _fill(queues.state / "jobs.sqlite", 20_000)
    q = await queues.open(max_length=1000)
    for i in range(30):
        await q.submit(spec(user=f"u{i % 50}"), photo_bytes(f"n{i}"))

    # the plan of the statement claim_next really runs, as traced on the journal's own connection
    statements: list[str] = []
    q.journal._db.set_trace_callback(statements.append)
    try:
        await q.submit(spec(user="u1"), photo_bytes("traced"))
        statements.clear()
        await claim(q)
    finally:
        q.journal._db.set_trace_callback(None)
    select = next(s for s in statements if s.lstrip().upper().startswith("SELECT") and "LIMIT 1" in s)
    con = sqlite3.connect(str(queues.state / "jobs.sqlite"))
    try:
        plan = [r[3] for r in con.execute("EXPLAIN QUERY PLAN " + select)]
    finally:
        con.close()
    text = "\n".join(plan)
    assert any("jobs_lane_started" in p for p in plan), text  # the per-lane MAX is an index lookup ...
    assert not any(p.startswith("SCAN") for p in plan), text  # ... and nothing scans the table

    t0 = time.perf_counter()
    for _ in range(30):
        job = await claim(q)
        await q.finish(job, JobState.done)
    per_claim = (time.perf_counter() - t0) / 30
    # generous (2 shared cores): without the index a claim here took about 100 ms, with it a few ms
    assert per_claim < 0.1, f"{per_claim * 1000:.0f} ms per claim"
