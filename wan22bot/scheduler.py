"""Periodic housekeeping with APScheduler: pruning, idle model unload, journal maintenance.

Pruning removes finished jobs' spooled photos, and videos (with their sidecars) older than
`retention_days`; over `disk_quota_gb`, the oldest videos go first. Only files wan22bot wrote are
touched: it never walks outside the output and spool folders.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from .config import Config
from .jobs import JobState

log = logging.getLogger(__name__)


def prune_outputs(output: Path, retention_days: float, quota_gb: float, now: float | None = None) -> list[Path]:
    """Delete old MP4s (and their .json) by age, then oldest-first down to the quota. Returns removed MP4s."""
    now = now or time.time()
    videos = sorted((p for p in Path(output).glob("*.mp4") if p.is_file()), key=lambda p: p.stat().st_mtime)
    removed: list[Path] = []

    def remove(p: Path) -> None:
        p.unlink(missing_ok=True)
        p.with_suffix(".json").unlink(missing_ok=True)
        removed.append(p)

    if retention_days > 0:
        cutoff = now - retention_days * 86400
        for p in list(videos):
            if p.stat().st_mtime < cutoff:
                remove(p)
                videos.remove(p)
    if quota_gb > 0:
        limit = quota_gb * 2**30
        total = sum(p.stat().st_size + (p.with_suffix(".json").stat().st_size if p.with_suffix(".json").exists() else 0)
                    for p in videos)
        for p in list(videos):
            if total <= limit:
                break
            side = p.with_suffix(".json")
            total -= p.stat().st_size + (side.stat().st_size if side.exists() else 0)
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
        removed = await loop.run_in_executor(None, prune_outputs, self.cfg.paths.output, s.retention_days,
                                             s.disk_quota_gb)
        for p in removed:
            log.info("housekeeping: removed %s", p.name)
        spooled = await self.prune_spool()
        self.last_run["housekeeping"] = time.time()
        if removed or spooled:
            log.info("housekeeping: %d videos and %d spooled photos removed", len(removed), spooled)

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
