"""The asyncio front of the journal: submit, claim, cancel, positions, and job events.

All SQLite work runs on one dedicated thread so the event loop never waits on a disk flush. A
photo is copied into the spool (and fsynced) before its job row exists, and the row exists before
the source tells the user "queued": an acknowledged job survives a crash.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import re
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import Wan22Error
from ..fsutil import atomic_write
from ..jobs import JobResult, JobSpec, JobState
from .journal import Journal
from .models import Job, JobEvent

log = logging.getLogger(__name__)

Listener = Callable[[JobEvent], Any]
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]+")


class QueueFull(Wan22Error):
    exit_code = 9


def safe_stem(name: str, fallback: str = "photo") -> str:
    """The photo's stem as an output name that stays inside its folder.

    Spaces, unicode and leading dashes are kept (nothing is ever passed to a shell); path
    separators and control characters are replaced, leading dots dropped (no hidden files, no
    "..") and the name is capped at 200 bytes of UTF-8 (file systems allow 255).
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    stem = _UNSAFE.sub("_", stem).strip().lstrip(".").strip()
    raw = stem.encode("utf-8")[:200]
    stem = raw.decode("utf-8", errors="ignore")
    return stem or fallback


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class JobQueue:
    def __init__(self, state_dir: Path, output_dir: Path, *, max_length: int = 100, max_attempts: int = 3,
                 keep_claimed_by: str | None = None):
        # absolute, so the journal never stores a path whose meaning depends on the working directory
        self.state_dir = Path(state_dir).absolute()
        self.spool = self.state_dir / "spool"
        self.output_dir = Path(output_dir).absolute()
        self.max_length = max_length
        self.max_attempts = max_attempts
        # jobs claimed under this name live on other boxes (the Redis dispatcher's "redis"): a restart
        # of this process says nothing about them, so recovery leaves them running
        self.keep_claimed_by = keep_claimed_by
        self.spool.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.state_dir / "jobs.sqlite")
        self._db = ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._wakeup: asyncio.Event | None = None
        self._listeners: list[Listener] = []
        self._cancel: dict[str, threading.Event] = {}
        self._submit_lock: asyncio.Lock | None = None
        self.live: dict[str, dict[str, Any]] = {}  # job id -> latest progress (not persisted per step)
        self._tasks: set[asyncio.Task] = set()

    async def _run(self, fn, *args, **kw):
        return await asyncio.get_running_loop().run_in_executor(self._db, partial(fn, *args, **kw))

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> tuple[list[str], list[str]]:
        self._wakeup = asyncio.Event()
        self._submit_lock = asyncio.Lock()
        migrated = await self._run(self.journal.absolutize_paths, self.spool, self.output_dir)
        if migrated:
            log.info("journal: %d jobs had paths relative to an old working directory; re-anchored in %s and %s",
                     migrated, self.spool, self.output_dir)
        requeued, failed = await self._run(self.journal.recover, self.max_attempts,
                                           keep_claimed_by=self.keep_claimed_by)
        for jid in requeued:
            log.info("job %s: re-queued after an unclean stop", jid)
        for jid in failed:
            log.error("job %s: failed, too many attempts", jid)
            job = await self.get(jid)
            if job:
                self.publish(JobEvent(job, "failed"))
        if requeued:
            self._wakeup.set()
        return requeued, failed

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await self._run(self.journal.close)
        self._db.shutdown(wait=True)

    # ------------------------------------------------------------------ events
    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def publish(self, event: JobEvent) -> None:
        for fn in list(self._listeners):
            try:
                out = fn(event)
                if inspect.isawaitable(out):
                    task = asyncio.ensure_future(out)
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)
            except Exception:
                log.exception("job %s: listener failed on %s", event.job.id, event.kind)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("listener task failed: %r", task.exception())

    # ------------------------------------------------------------------ submit
    async def submit(self, spec: JobSpec, data: bytes | Path, *, suffix: str = "",
                     dedupe: bool = False) -> tuple[Job, bool]:
        """Spool the photo, journal the job, wake the worker. Returns (job, created).

        With `dedupe`, a photo whose content matches a queued or running job of the same source is
        that job (created=False): the same file dropped twice while pending is one job.
        """
        assert self._submit_lock is not None, "start() first"
        async with self._submit_lock:
            payload = data if isinstance(data, bytes) else await self._run(Path(data).read_bytes)
            chash = sha256_bytes(payload)
            if dedupe:
                existing = await self._run(self.journal.find_active_hash, chash, spec.source)
                if existing:
                    return existing, False
            counts = await self._run(self.journal.counts)
            if counts["queued"] >= self.max_length:
                raise QueueFull(f"the queue is full ({self.max_length} jobs waiting); try again later")
            job_id = uuid.uuid4().hex[:12]
            ext = (suffix or Path(spec.original_name).suffix or ".img").lower()
            if not re.fullmatch(r"\.[a-z0-9]{1,8}", ext):
                ext = ".img"
            spooled = self.spool / f"{job_id}{ext}"
            await self._run(_write_durably, spooled, payload)
            name = await self._run(self._unique_name, safe_stem(spec.name or spec.original_name))
            spec = spec.model_copy(update={"input_path": str(spooled), "name": name})
            try:
                job = await self._run(self.journal.insert, spec, chash, job_id)
            except BaseException:
                spooled.unlink(missing_ok=True)
                raise
        log.info("job %s: queued from %s (%s -> %s.mp4)", job.id, spec.source, spec.original_name, name)
        self.publish(JobEvent(job, "queued"))
        assert self._wakeup is not None
        self._wakeup.set()
        return job, True

    def _unique_name(self, stem: str) -> str:
        taken = {j.spec.name for j in self.journal.list(states=[JobState.queued, JobState.running], limit=100000)}
        name, n = stem, 1
        while name in taken or (self.output_dir / f"{name}.mp4").exists():
            n += 1
            name = f"{stem}-{n}"
        return name

    # ------------------------------------------------------------------ worker side
    async def next_job(self) -> Job:
        assert self._wakeup is not None, "start() first"
        loop = asyncio.get_running_loop()
        while True:
            self._wakeup.clear()
            # The claim runs to its end in the journal thread even when this task is cancelled
            # (shutdown): then the job is put back as if never claimed, not left running with an
            # attempt spent.
            fut = loop.run_in_executor(self._db, self.journal.claim_next)
            try:
                job = await asyncio.shield(fut)
            except asyncio.CancelledError:
                try:
                    claimed = await fut
                except (asyncio.CancelledError, Exception):
                    claimed = None  # never started in the journal thread, or failed there: nothing to undo
                if claimed is not None:
                    await loop.run_in_executor(self._db, self.journal.unclaim, claimed)
                    log.info("job %s: claim undone by shutdown; still queued", claimed.id)
                raise
            if job is not None:
                self._cancel[job.id] = threading.Event()
                self.publish(JobEvent(job, "started"))
                return job
            await self._wakeup.wait()

    def cancel_flag(self, job_id: str) -> threading.Event:
        return self._cancel.setdefault(job_id, threading.Event())

    def progress(self, job: Job, stage: str, step: int = 0, steps: int = 0, **extra: Any) -> None:
        """Called on the loop (the worker hops here with call_soon_threadsafe)."""
        info = {"stage": stage, "step": step, "steps": steps, **extra}
        changed = self.live.get(job.id, {}).get("stage") != stage
        self.live[job.id] = info
        job.progress = info
        if changed:  # persist stage changes only, not every step
            asyncio.ensure_future(self._run(self.journal.set_progress, job.id, info))
        self.publish(JobEvent(job, "progress", stage, step, steps))

    async def finish(self, job: Job, state: JobState, *, error: str | None = None,
                     result: JobResult | None = None) -> Job:
        await self._run(self.journal.finish, job.id, state, error=error, result=result)
        self._cancel.pop(job.id, None)
        self.live.pop(job.id, None)
        done = await self.get(job.id) or job
        self.publish(JobEvent(done, state.value))
        return done

    async def requeue(self, job: Job, *, count_attempt: bool = False) -> bool:
        """A running job back to the queue; False (and nothing done) when it settled meanwhile."""
        if not await self._run(self.journal.requeue, job.id, count_attempt=count_attempt):
            return False
        self._cancel.pop(job.id, None)
        self.live.pop(job.id, None)
        fresh = await self.get(job.id) or job
        self.publish(JobEvent(fresh, "requeued"))
        assert self._wakeup is not None
        self._wakeup.set()
        return True

    # ------------------------------------------------------------------ queries and control
    async def get(self, job_id: str) -> Job | None:
        job = await self._run(self.journal.get, job_id)
        if job and job.id in self.live:
            job.progress = self.live[job.id]
        return job

    async def list(self, **kw: Any) -> list[Job]:
        jobs = await self._run(self.journal.list, **kw)
        for j in jobs:
            if j.id in self.live:
                j.progress = self.live[j.id]
        return jobs

    async def positions(self) -> dict[str, int]:
        order = await self._run(self.journal.queued_in_order)
        return {j.id: i + 1 for i, j in enumerate(order)}

    async def position(self, job_id: str) -> int | None:
        return (await self.positions()).get(job_id)

    async def counts(self) -> dict[str, int]:
        return await self._run(self.journal.counts)

    async def cancel(self, job_id: str) -> str:
        """'cancelled' (was queued), 'cancelling' (running: stops at the next step), 'final', 'unknown'."""
        job = await self.get(job_id)
        if job is None:
            return "unknown"
        if job.state.final:
            return "final"
        if job.state == JobState.queued and await self._run(self.journal.cancel_queued, job_id):
            log.info("job %s: cancelled while queued", job_id)
            fresh = await self.get(job_id)
            self.publish(JobEvent(fresh or job, "cancelled"))
            return "cancelled"
        self.cancel_flag(job_id).set()
        log.info("job %s: cancel requested; stops at the next step", job_id)
        return "cancelling"

    async def undelivered(self, source: str) -> list[Job]:
        return await self._run(self.journal.undelivered, source)

    async def mark_delivered(self, job_id: str) -> None:
        await self._run(self.journal.mark_delivered, job_id)

    async def delivery_failed(self, job_id: str, reason: str, max_attempts: int) -> bool:
        """One failed delivery try; True when it was the last allowed and the job is now undeliverable."""
        tries, gave_up = await self._run(self.journal.delivery_failed, job_id, reason, max_attempts)
        if gave_up:
            log.error("job %s: result undeliverable after %d attempts (%s); it stays on disk", job_id, tries, reason)
        return gave_up

    async def run_db(self, fn, *args, **kw):
        """Run a journal method on the journal thread (for housekeeping)."""
        return await self._run(fn, *args, **kw)


def _write_durably(path: Path, data: bytes) -> None:
    # the spool folder is fsynced too: an acknowledged photo's name must survive a power cut
    atomic_write(path, data, disk_full="no space left in the state folder to accept the photo")
