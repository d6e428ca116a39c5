"""Housekeeper: spooled photos of finished jobs are removed after a day; pending ones are kept."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from wan22bot.config import Config, PathsConfig, SchedulerConfig
from wan22bot.jobs import JobResult, JobSpec, JobState
from wan22bot.queue import JobQueue
from wan22bot.scheduler import Housekeeper

DAY = 86400.0


def _spec(name: str) -> JobSpec:
    return JobSpec(source="watch", original_name=name, input_path="", name="")


def _age_finished(db: Path, job_id: str, seconds_ago: float) -> None:
    """finish() stamps the current time; move it back as if it had happened earlier."""
    con = sqlite3.connect(str(db))
    try:
        with con:
            n = con.execute("UPDATE jobs SET finished=? WHERE id=?", (time.time() - seconds_ago, job_id)).rowcount
        assert n == 1
    finally:
        con.close()


async def _setup(tmp_path):
    cfg = Config(paths=PathsConfig(input=tmp_path / "in", output=tmp_path / "out", state=tmp_path / "state"),
                 scheduler=SchedulerConfig(retention_days=7))
    q = JobQueue(cfg.paths.state, cfg.paths.output)
    await q.start()
    return cfg, q


async def test_prune_spool_removes_finished_photos_older_than_a_day(tmp_path):
    cfg, q = await _setup(tmp_path)
    try:
        jobs = {}
        for name in ("done_old", "failed_old", "cancelled_old", "done_recent", "running", "queued"):
            jobs[name], _ = await q.submit(_spec(f"{name}.jpg"), name.encode() * 10)
        assert await q.cancel(jobs["cancelled_old"].id) == "cancelled"
        for name in ("done_old", "failed_old", "done_recent", "running"):
            job = await q.next_job()
            assert job.id == jobs[name].id
            if name != "running":
                await q.finish(job, JobState.failed if name.startswith("failed") else JobState.done)
        db = cfg.paths.state / "jobs.sqlite"
        for name in ("done_old", "failed_old", "cancelled_old"):
            _age_finished(db, jobs[name].id, 2 * DAY)
        _age_finished(db, jobs["done_recent"].id, DAY - 600)  # younger than a day: kept for a retry by hand

        # a finished job whose photo is not in the spool (never the queue's to delete)
        foreign = tmp_path / "mine.jpg"
        foreign.write_bytes(b"user's own file")
        outside = await q.run_db(q.journal.insert, _spec("mine.jpg").model_copy(update={"input_path": str(foreign)}))
        await q.run_db(q.journal.finish, outside.id, JobState.done)
        _age_finished(db, outside.id, 30 * DAY)
        # an unrelated file in the spool folder
        stray = q.spool / "stray.bin"
        stray.write_bytes(b"x")
        os.utime(stray, (time.time() - 30 * DAY,) * 2)

        hk = Housekeeper(cfg, q, worker=None)
        assert await hk.prune_spool() == 3
        gone = [Path(jobs[n].spec.input_path) for n in ("done_old", "failed_old", "cancelled_old")]
        kept = [Path(jobs[n].spec.input_path) for n in ("done_recent", "running", "queued")]
        assert [p.exists() for p in gone] == [False] * 3
        assert [p.exists() for p in kept] == [True] * 3
        assert Path(jobs["queued"].spec.input_path).read_bytes() == b"queued" * 10
        assert foreign.read_bytes() == b"user's own file"
        assert stray.exists()
        # the jobs themselves stay in the journal (history), and a second pass has nothing to do
        assert (await q.get(jobs["done_old"].id)).state == JobState.done
        assert await hk.prune_spool() == 0
    finally:
        await q.close()


async def test_housekeeping_pass_prunes_outputs_and_spool(tmp_path):
    cfg, q = await _setup(tmp_path)
    try:
        out = cfg.paths.output
        out.mkdir(parents=True, exist_ok=True)
        old_mp4 = out / "old.mp4"
        old_mp4.write_bytes(b"v")
        (out / "old.json").write_text("{}")
        new_mp4 = out / "new.mp4"
        new_mp4.write_bytes(b"v")
        t = time.time() - 8 * DAY
        os.utime(old_mp4, (t, t))
        job, _ = await q.submit(_spec("a.jpg"), b"photo")
        running = await q.next_job()
        # the old video is this job's output, delivered: the only kind housekeeping may delete
        await q.finish(running, JobState.done, result=JobResult(
            output=str(old_mp4), sidecar=str(out / "old.json"), timings={}, frames=5, fps=16, width=64,
            height=96, seed=1, bytes=1))
        await q.mark_delivered(job.id)
        _age_finished(cfg.paths.state / "jobs.sqlite", job.id, 2 * DAY)
        hk = Housekeeper(cfg, q, worker=None)
        before = time.time()
        await hk.housekeeping()
        assert not old_mp4.exists() and not (out / "old.json").exists()
        assert new_mp4.exists()
        assert not Path(job.spec.input_path).exists()
        assert hk.last_run["housekeeping"] >= before
    finally:
        await q.close()
