"""Housekeeping deletes only what the journal wrote and delivered; finished rows are retained for
`[queue] keep_finished_days`, never before delivery. Real journal, real files."""

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


def _age(path: Path, days: float) -> None:
    t = time.time() - days * DAY
    os.utime(path, (t, t))


def _age_row(db: Path, job_id: str, days: float) -> None:
    con = sqlite3.connect(str(db))
    with con:
        assert con.execute("UPDATE jobs SET finished=? WHERE id=?", (time.time() - days * DAY, job_id)).rowcount == 1
    con.close()


async def _finished(q: JobQueue, out: Path, name: str, *, delivered: bool, state=JobState.done):
    job, _ = await q.submit(_spec(f"{name}.jpg"), name.encode() * 8)
    running = await q.next_job()
    assert running.id == job.id
    result = None
    if state == JobState.done:
        mp4, side = out / f"{name}.mp4", out / f"{name}.json"
        mp4.write_bytes(b"\0" * 1000)
        side.write_text("{}")
        result = JobResult(output=str(mp4), sidecar=str(side), timings={}, frames=5, fps=16, width=64, height=96,
                           seed=1, bytes=1000)
    await q.finish(running, state, result=result, error=None if result else "failed")
    if delivered:
        await q.mark_delivered(job.id)
    return job


async def _rig(tmp_path, **sched):
    cfg = Config(paths=PathsConfig(input=tmp_path / "in", output=tmp_path / "out", state=tmp_path / "state"),
                 scheduler=SchedulerConfig(**sched))  # [queue] keep_finished_days: its default, 30
    cfg.paths.output.mkdir(parents=True)
    q = JobQueue(cfg.paths.state, cfg.paths.output)
    await q.start()
    return cfg, q


async def test_old_videos_go_only_when_the_journal_wrote_and_delivered_them(tmp_path):
    cfg, q = await _rig(tmp_path, retention_days=7)
    out = cfg.paths.output
    try:
        delivered = await _finished(q, out, "delivered", delivered=True)
        pending = await _finished(q, out, "pending", delivered=False)  # not yet handed back
        users = out / "holiday.mp4"  # the user's own video, never a job's
        users.write_bytes(b"mine")
        (out / "holiday.json").write_text("{}")
        for name in ("delivered", "pending", "holiday"):
            _age(out / f"{name}.mp4", 60)
        await Housekeeper(cfg, q, worker=None).housekeeping()
        assert not (out / "delivered.mp4").exists() and not (out / "delivered.json").exists()
        assert (out / "pending.mp4").exists() and (out / "pending.json").exists()
        assert users.read_bytes() == b"mine" and (out / "holiday.json").exists()
        assert (await q.get(pending.id)).state == JobState.done
        assert (await q.get(delivered.id)) is not None  # its row stays: younger than keep_finished_days
    finally:
        await q.close()


async def test_the_quota_counts_and_deletes_only_delivered_videos(tmp_path):
    cfg, q = await _rig(tmp_path, retention_days=0, disk_quota_gb=1500 / 2**30)
    out = cfg.paths.output
    try:
        await _finished(q, out, "a", delivered=True)
        await _finished(q, out, "b", delivered=False)
        (out / "big-own-file.mp4").write_bytes(b"\0" * 100_000)  # far over the quota on its own
        _age(out / "a.mp4", 3)
        _age(out / "b.mp4", 4)
        await Housekeeper(cfg, q, worker=None).housekeeping()
        # a (1000 + 2 B) is under the quota alone: nothing to delete; the user's file is not counted
        assert (out / "a.mp4").exists() and (out / "b.mp4").exists() and (out / "big-own-file.mp4").exists()
    finally:
        await q.close()


async def test_finished_rows_are_retained_then_pruned_once_delivered(tmp_path):
    cfg, q = await _rig(tmp_path, retention_days=7)
    out = cfg.paths.output
    db = cfg.paths.state / "jobs.sqlite"
    try:
        old_delivered = await _finished(q, out, "olddel", delivered=True, state=JobState.failed)
        old_pending = await _finished(q, out, "oldpend", delivered=False, state=JobState.failed)
        young = await _finished(q, out, "young", delivered=True, state=JobState.failed)
        queued, _ = await q.submit(_spec("waiting.jpg"), b"waiting" * 8)
        _age_row(db, old_delivered.id, 31)
        _age_row(db, old_pending.id, 31)
        _age_row(db, young.id, 29)
        hk = Housekeeper(cfg, q, worker=None)
        assert await hk.prune_rows() == 1
        assert await q.get(old_delivered.id) is None
        for kept in (old_pending, young, queued):
            assert await q.get(kept.id) is not None, kept.id
        cfg.queue.keep_finished_days = 0  # 0 keeps every row
        _age_row(db, young.id, 400)
        assert await hk.prune_rows() == 0
    finally:
        await q.close()


async def test_a_row_outlives_its_videos_retention(tmp_path):
    """keep_finished_days below retention_days would orphan the video (no row: never pruned)."""
    cfg, q = await _rig(tmp_path, retention_days=60)
    db = cfg.paths.state / "jobs.sqlite"
    try:
        job = await _finished(q, cfg.paths.output, "v", delivered=True)
        _age_row(db, job.id, 45)  # past keep_finished_days (30), inside retention_days (60)
        assert await Housekeeper(cfg, q, worker=None).prune_rows() == 0
        _age_row(db, job.id, 61)
        assert await Housekeeper(cfg, q, worker=None).prune_rows() == 1
    finally:
        await q.close()
