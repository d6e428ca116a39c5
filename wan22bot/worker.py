"""The worker: takes jobs from the queue and runs them on one dedicated GPU thread.

The event loop only awaits the thread's future; progress hops back with call_soon_threadsafe. A
Discord heartbeat or an HTTP request is never stuck behind a denoising step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .config import Config
from .engine.generator import Progress
from .errors import Cancelled, DiskFull, Wan22Error
from .jobs import JobState
from .queue import Job, JobQueue
from .render import Renderer

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, cfg: Config, queue: JobQueue, renderer: Renderer):
        self.cfg = cfg
        self.queue = queue
        self.renderer = renderer
        self._gpu = ThreadPoolExecutor(1, thread_name_prefix="gpu")
        self._stopping = False
        self._task: asyncio.Task | None = None
        self.current: Job | None = None
        self.last_job_finished = time.time()
        self.last_timings: dict[str, float] | None = None
        self.last_load_seconds: float | None = None

    # ------------------------------------------------------------------ model residency
    async def load(self) -> float:
        loop = asyncio.get_running_loop()
        secs = await loop.run_in_executor(self._gpu, self.renderer.load)
        if secs > 0.01:
            log.info("models loaded in %.1f s", secs)
            self.last_load_seconds = secs
        return secs

    async def unload_if_idle(self, idle_minutes: float) -> bool:
        if self.current is not None or not self.renderer.loaded:
            return False
        if time.time() - self.last_job_finished < idle_minutes * 60:
            return False
        await asyncio.get_running_loop().run_in_executor(self._gpu, self.renderer.unload)
        log.info("models unloaded after %.0f idle minutes; they reload with the next job", idle_minutes)
        return True

    # ------------------------------------------------------------------ loop
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="worker")

    async def stop(self) -> None:
        """Stop taking jobs; a running job is checkpointed at its next step and re-queued."""
        self._stopping = True
        if self.current is not None:
            self.queue.cancel_flag(self.current.id).set()
        if self._task is not None:
            if self.current is None:
                self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._gpu.shutdown(wait=True, cancel_futures=True)

    async def _run(self) -> None:
        while not self._stopping:
            job = await self.queue.next_job()
            if self._stopping:
                await self.queue.requeue(job, count_attempt=False)
                break
            self.current = job
            try:
                await self._run_job(job)
            finally:
                self.current = None
                self.last_job_finished = time.time()

    async def _run_job(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        flag = self.queue.cancel_flag(job.id)
        spec = job.spec

        def progress(p: Progress) -> None:
            loop.call_soon_threadsafe(self.queue.progress, job, p.stage, p.step, p.steps)

        def should_cancel() -> bool:
            return flag.is_set()

        if not self.renderer.loaded:
            self.queue.progress(job, "loading")
            await self.load()
        log.info("job %s: started (attempt %d) %s", job.id, job.attempts, spec.original_name)
        try:
            result = await loop.run_in_executor(
                self._gpu,
                lambda: self.renderer.render(
                    Path(spec.input_path), spec.name, self.cfg.paths.output, spec.options,
                    progress=progress, should_cancel=should_cancel,
                    meta={"job_id": job.id, "source": spec.source, "user": spec.user},
                    photo_name=spec.original_name,
                ),
            )
        except Cancelled as exc:
            if self._stopping:
                log.info("job %s: checkpointed for shutdown; it runs again at the next start", job.id)
                await self.queue.requeue(job, count_attempt=False)
            else:
                log.info("job %s: cancelled (%s)", job.id, exc)
                await self.queue.finish(job, JobState.cancelled, error="cancelled")
            return
        except DiskFull as exc:
            log.error("job %s: failed: %s", job.id, exc)
            await self.queue.finish(job, JobState.failed, error=str(exc))
            return
        except Wan22Error as exc:
            log.warning("job %s: failed: %s", job.id, exc)
            await self.queue.finish(job, JobState.failed, error=str(exc))
            return
        except Exception as exc:  # a bug: keep the daemon up, keep the evidence
            log.exception("job %s: internal error", job.id)
            await self.queue.finish(job, JobState.failed, error=f"internal error: {type(exc).__name__}: {exc}")
            return
        self.last_timings = result.timings
        t = result.timings
        log.info("job %s: done in %.1f s (pass 1 %.2f s, pass 2 %.2f s) -> %s", job.id, t["total"], t["pass1"],
                 t["pass2"], result.output)
        await self.queue.finish(job, JobState.done, result=result)
