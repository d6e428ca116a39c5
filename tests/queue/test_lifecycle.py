"""Events, crash recovery and durability of the journal across close/reopen and a hard exit."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from wan22bot.jobs import JobResult, JobState
from wan22bot.queue import JobEvent

from .conftest import claim, photo_bytes, settle, spec

REPO = Path(__file__).resolve().parents[2]


async def test_events_reach_sync_and_async_listeners_in_order(q):
    sync_seen: list[tuple[str, str]] = []
    async_seen: list[tuple[str, str]] = []

    def sync_listener(ev: JobEvent):
        sync_seen.append((ev.kind, ev.job.id))

    async def async_listener(ev: JobEvent):
        await asyncio.sleep(0)
        async_seen.append((ev.kind, ev.job.id))

    def broken_listener(ev: JobEvent):
        raise RuntimeError("a listener bug must not stop the others")

    q.add_listener(sync_listener)
    q.add_listener(broken_listener)
    q.add_listener(async_listener)
    job, _ = await q.submit(spec(), photo_bytes(1))
    running = await claim(q)
    q.progress(running, "pass1", 1, 2)
    done = await q.finish(running, JobState.done)
    await settle()
    expected = [("queued", job.id), ("started", job.id), ("progress", job.id), ("done", job.id)]
    assert sync_seen == expected
    assert async_seen == expected
    assert done.state == JobState.done
    q.remove_listener(sync_listener)
    other, _ = await q.submit(spec(name="b.jpg"), photo_bytes(2))
    await settle()
    assert sync_seen == expected  # removed
    assert async_seen[-1] == ("queued", other.id)


async def test_event_carries_the_final_job(q):
    events: list[JobEvent] = []
    q.add_listener(events.append)
    await q.submit(spec(), photo_bytes(1))
    running = await claim(q)
    await q.finish(running, JobState.failed, error="the photo is not an image")
    final = events[-1]
    assert final.kind == "failed"
    assert final.job.state == JobState.failed and final.job.error == "the photo is not an image"
    assert final.job.finished is not None


async def test_recover_requeues_running_jobs_then_fails_them_after_max_attempts(queues):
    q = await queues.open(max_attempts=2)
    job, _ = await q.submit(spec("discord", "A", "crashy.jpg"), photo_bytes(1))
    other, _ = await q.submit(spec("discord", "A", "fine.jpg"), photo_bytes(2))
    assert (await claim(q)).id == job.id
    await queues.close(q)  # the row says 'running': to the next start this is a crash

    events: list[JobEvent] = []
    q = await queues.open(max_attempts=2, listener=events.append)
    assert queues.last_start == ([job.id], [])
    got = await q.get(job.id)
    assert (got.state, got.attempts) == (JobState.queued, 1)
    assert events == []
    assert (await claim(q)).id == job.id  # FIFO: the interrupted job runs again first
    await queues.close(q)

    events.clear()
    q = await queues.open(max_attempts=2, listener=events.append)
    assert queues.last_start == ([], [job.id])
    got = await q.get(job.id)
    assert got.state == JobState.failed and got.attempts == 2 and got.finished is not None
    assert "gave up after 2 attempts" in got.error and "crash or out-of-memory" in got.error
    assert [(e.kind, e.job.id) for e in events] == [("failed", job.id)]
    assert events[0].job.error == got.error
    # the failed job is never claimed again; the other one is
    assert (await claim(q)).id == other.id
    assert await q.run_db(q.journal.claim_next) is None


async def test_reopening_keeps_everything(queues):
    q = await queues.open()
    done_job, _ = await q.submit(spec("discord", "A", "a.jpg", reply={"channel": 5, "message": 9}), photo_bytes(1))
    cancelled, _ = await q.submit(spec("discord", "A", "b.jpg"), photo_bytes(2))
    waiting, _ = await q.submit(spec("watch", None, "c.jpg"), photo_bytes(3))
    failed, _ = await q.submit(spec("http", None, "d.jpg"), photo_bytes(4))
    running = await claim(q)
    result = JobResult(output="/o/a.mp4", sidecar="/o/a.json", timings={"pass1": 1.25, "total": 3.5}, frames=5,
                       fps=16, width=64, height=96, seed=42, bytes=999)
    await q.finish(running, JobState.done, result=result)
    await q.mark_delivered(done_job.id)
    await q.cancel(cancelled.id)
    f = await claim(q)
    assert f.id == waiting.id  # never-served lanes first, in arrival order
    await q.requeue(f)  # waiting is queued again, with one attempt less
    f = await claim(q)
    assert f.id == failed.id  # http was never served; watch just was
    await q.finish(f, JobState.failed, error="broken photo")
    before = {j.id: j for j in await q.list(limit=1000)}
    counts = await q.counts()
    await queues.close(q)

    q = await queues.open()
    assert queues.last_start == ([], [])
    after = {j.id: j for j in await q.list(limit=1000)}
    assert after.keys() == before.keys()
    for jid, b in before.items():
        a = after[jid]
        assert (a.seq, a.state, a.spec, a.created, a.started, a.finished, a.attempts, a.error, a.result,
                a.delivered, a.content_hash) == \
               (b.seq, b.state, b.spec, b.created, b.started, b.finished, b.attempts, b.error, b.result,
                b.delivered, b.content_hash), jid
    assert after[done_job.id].result == result and after[done_job.id].delivered
    assert after[done_job.id].spec.reply == {"channel": 5, "message": 9}
    assert await q.counts() == counts
    for j in after.values():
        assert Path(j.spec.input_path).is_file()
    # the queue goes on where it stopped; seq keeps growing
    new, _ = await q.submit(spec("watch", None, "e.jpg"), photo_bytes(5))
    assert new.seq > max(j.seq for j in before.values())


def test_acknowledged_job_survives_a_hard_exit(tmp_path):
    """submit() returned, then the process died without closing anything: the job and photo remain."""
    data = photo_bytes("crash")
    (tmp_path / "photo.bin").write_bytes(data)
    script = textwrap.dedent(
        f"""
        import asyncio, json, os, sys
        from pathlib import Path
        from wan22bot.jobs import JobSpec
        from wan22bot.queue import JobQueue

        async def main():
            q = JobQueue(Path({str(tmp_path / 'state')!r}), Path({str(tmp_path / 'out')!r}))
            await q.start()
            job, _ = await q.submit(JobSpec(source="watch", original_name="crash.jpg", input_path="", name=""),
                                    Path({str(tmp_path / 'photo.bin')!r}).read_bytes())
            print(json.dumps({{"id": job.id, "path": job.spec.input_path}}), flush=True)
            os._exit(0)  # no close(), no checkpoint, no atexit

        asyncio.run(main())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    acked = json.loads(out.stdout.strip().splitlines()[-1])

    async def reopen():
        from wan22bot.queue import JobQueue

        q = JobQueue(tmp_path / "state", tmp_path / "out")
        await q.start()
        try:
            return await q.get(acked["id"])
        finally:
            await q.close()

    job = asyncio.run(reopen())
    assert job is not None and job.state == JobState.queued
    assert job.spec.original_name == "crash.jpg"
    assert Path(acked["path"]).read_bytes() == data
    assert not any(p.name.endswith(".part") for p in (tmp_path / "state" / "spool").iterdir())
    assert os.path.samefile(job.spec.input_path, acked["path"])


async def test_journal_is_wal_with_full_sync(q):
    """What the durability above rests on: WAL (persistent in the file) and synchronous=FULL."""
    import sqlite3

    con = sqlite3.connect(str(q.state_dir / "jobs.sqlite"))
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()
    assert await q.run_db(q.journal._q, "PRAGMA synchronous") == [(2,)]  # 2 = FULL
