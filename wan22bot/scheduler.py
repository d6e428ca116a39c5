"""Periodic housekeeping with APScheduler: pruning, idle model unload, journal maintenance.

Pruning removes finished jobs' spooled photos, and videos (with their sidecars) older than
`retention_days`; over `disk_quota_gb`, the oldest videos go first. Only videos the journal wrote
and has delivered are candidates: a user's own files in the output folder, and videos not yet
handed back, are never touched. Finished journal rows are deleted after `[queue]
keep_finished_days` once delivered, never before their video's own retention has run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from .config import Config
from .jobs import JobState

log = logging.getLogger(__name__)
DAY = 86400.0


def prune_outputs(output: Path, retention_days: float, quota_gb: float, now: float | None = None, *,
                  owned: Iterable[Path]) -> list[Path]:
    """Delete old MP4s (and their .json) by age, then oldest-first down to the quota. Returns removed MP4s.

    `owned`: the MP4s housekeeping may delete (the journal's delivered videos). Only those lying
    directly in `output` count; the quota is measured over them alone.
    """
    now = now or time.time()
    folder = Path(output).absolute()
    videos = sorted({Path(p).absolute() for p in owned
                     if Path(p).suffix == ".mp4" and Path(p).absolute().parent == folder
                     and Path(p).is_file()},
                    key=lambda p: p.stat().st_mtime)
    removed: list[Path] = []

    def remove(p: Path) -> None:
        p.unlink(missing_ok=True)
        p.with_suffix(".json").unlink(missing_ok=True)
        removed.append(p)

    if retention_days > 0:
        cutoff = now - retention_days * DAY
        for p in list(videos):
            if p.stat().st_mtime < cutoff:
                remove(p)
                videos.remove(p)
    if quota_gb > 0:
        limit = quota_gb * 2**30

        def size(p: Path) -> int:
            side = p.with_suffix(".json")
            return p.stat().st_size + (side.stat().st_size if side.exists() else 0)

        total = sum(size(p) for p in videos)
        for p in list(videos):
            if total <= limit:
                break
            total -= size(p)
            remove(p)
    return removed


class Housekeeper:
    def __init__(self, cfg: Config, queue, worker):
        self.cfg = cfg
        self.queue = queue
        self.worker = worker
        self.sched = AsyncIOScheduler()
        self.last_run: dict[str, float] = {}

    def start(self) -> None:
        s = self.cfg.scheduler
        self.sched.add_job(self.housekeeping, "interval", minutes=s.housekeeping_minutes, id="housekeeping",
                           next_run_time=None)
        if s.idle_unload_minutes > 0:
            self.sched.add_job(self.idle_unload, "interval", seconds=max(5.0, min(60.0, s.idle_unload_minutes * 15)),
                               id="idle_unload")
        self.sched.add_job(self.maintenance, "interval", hours=24, id="journal_maintenance")
        self.sched.start()
        # one housekeeping pass shortly after start
        asyncio.get_running_loop().call_later(5.0, lambda: asyncio.ensure_future(self.housekeeping()))

    def stop(self) -> None:
        if self.sched.running:
            self.sched.shutdown(wait=False)

    async def housekeeping(self) -> None:
        s = self.cfg.scheduler
        loop = asyncio.get_running_loop()
        owned = [mp4 for _jid, mp4, _side in await self.queue.run_db(self.queue.journal.delivered_outputs)]
        removed = await loop.run_in_executor(
            None, lambda: prune_outputs(self.cfg.paths.output, s.retention_days, s.disk_quota_gb, owned=owned))
        for p in removed:
            log.info("housekeeping: removed %s", p.name)
        spooled = await self.prune_spool()
        rows = await self.prune_rows()
        self.last_run["housekeeping"] = time.time()
        if removed or spooled or rows:
            log.info("housekeeping: %d videos, %d spooled photos and %d finished journal rows removed",
                     len(removed), spooled, rows)

    async def prune_rows(self, now: float | None = None) -> int:
        """Delivered finished rows older than keep_finished_days go (0 keeps them forever). A row
        outlives its video's retention, so the video is pruned by its own rule first."""
        keep = self.cfg.queue.keep_finished_days
        if keep <= 0:
            return 0
        keep = max(keep, self.cfg.scheduler.retention_days)
        cutoff = (now or time.time()) - keep * DAY
        return await self.queue.run_db(self.queue.journal.prune_finished, cutoff)

    async def prune_spool(self) -> int:
        """Spooled photos of finished jobs are kept a day (for retries by hand), then removed."""
        cutoff = time.time() - 86400
        jobs = await self.queue.run_db(self.queue.journal.finished_before, cutoff)
        n = 0
        for j in jobs:
            p = Path(j.spec.input_path)
            if j.state in (JobState.done, JobState.failed, JobState.cancelled) and p.exists() and \
                    p.parent.resolve() == self.queue.spool.resolve():
                p.unlink(missing_ok=True)
                n += 1
        return n

    async def idle_unload(self) -> None:
        await self.worker.unload_if_idle(self.cfg.scheduler.idle_unload_minutes)

    async def maintenance(self) -> None:
        await self.queue.run_db(self.queue.journal.vacuum)
        self.last_run["maintenance"] = time.time()
        log.info("journal maintenance done")
