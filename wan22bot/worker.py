"""The worker: takes jobs from the queue and runs them on one dedicated GPU thread.

The event loop only awaits the thread's future; progress hops back with call_soon_threadsafe. A
Discord heartbeat or an HTTP request is never stuck behind a denoising step.

Health: the GPU thread beats on every progress step and around every load; `health()` says the
worker is stuck when it is busy (loading or rendering) and has not beaten for `[queue] stall_minutes`,
or dead when its loop ended on its own. The daemon stops the systemd watchdog pings and /healthz
answers 503 then, so systemd restarts a stuck daemon instead of it looking well forever.
"""

from __future__ import annotations

import asyncio
import logging
import queue as _queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from .config import Config
from .engine.generator import Progress
from .errors import Cancelled, DiskFull, Wan22Error
from .fsutil import fsync_dir
from .health import Health
from .jobs import JobState
from .queue import Job, JobQueue
from .render import Renderer

log = logging.getLogger(__name__)


class GpuThread:
    """One daemon thread running submitted calls in order.

    Not a ThreadPoolExecutor: the interpreter joins those at exit, so a SIGTERM during a
    minutes-long model load would wait for the load. A daemon thread lets the process leave.
    """

    def __init__(self, name: str = "gpu"):
        self._calls: _queue.SimpleQueue = _queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False
        self.busy_since: float | None = None  # monotonic time the running call started
        self._thread.start()

    def submit(self, fn: Callable[[], Any]) -> Future:
        fut: Future = Future()
        if self._closed:
            fut.set_exception(RuntimeError("the GPU thread is shut down"))
            return fut
        self._calls.put((fn, fut))
        return fut

    def _loop(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            fn, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            self.busy_since = time.monotonic()
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the awaiting coroutine
                fut.set_exception(exc)
            finally:
                self.busy_since = None

    @property
    def busy(self) -> bool:
        return self.busy_since is not None

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> bool:
        """Stop after the running call; True when the thread has ended."""
        if not self._closed:
            self._closed = True
            self._calls.put(None)
        if wait:
            self._thread.join(timeout)
        return not self._thread.is_alive()


class Worker:
    def __init__(self, cfg: Config, queue: JobQueue, renderer: Renderer):
        self.cfg = cfg
        self.queue = queue
        self.renderer = renderer
        self._gpu = GpuThread()
        self._stopping = False
        self._task: asyncio.Task | None = None
        self.current: Job | None = None
        self.last_job_finished = time.time()
        self.last_timings: dict[str, float] | None = None
        self.last_load_seconds: float | None = None
        self.stall_seconds = cfg.queue.stall_minutes * 60
        self.last_beat = time.monotonic()
        self.loading = False
        self._death: str | None = None

    def beat(self) -> None:
        """Called from the GPU thread (and around its calls): proof of life."""
        self.last_beat = time.monotonic()

    def _on_gpu(self, fn: Callable[[], Any]) -> asyncio.Future:
        def call():
            self.beat()
            try:
                return fn()
            finally:
                self.beat()

        return asyncio.wrap_future(self._gpu.submit(call))

    # ------------------------------------------------------------------ health
    def health(self) -> Health:
        since = time.monotonic() - self.last_beat
        if self._death is not None:
            return Health(False, "dead", self._death, since)
        if self._stopping:
            return Health(True, "stopped", "", since)
        busy = self._gpu.busy
        if busy and since > self.stall_seconds:
            what = "loading the models" if self.loading else (
                f"running job {self.current.id}" if self.current is not None else "busy")
            return Health(False, "stuck", f"no progress from the GPU thread for {since:.0f} s while {what}", since)
        if self.loading:
            return Health(True, "loading", "", since)
        if self.current is not None:
            return Health(True, "running", self.current.id, since)
        return Health(True, "idle", "", since)

    # ------------------------------------------------------------------ model residency
    async def load(self) -> float:
        if not self.renderer.loaded:
            m = self.cfg.model
            gen = getattr(self.renderer, "generator", None)
            log.info("loading models: %s on %s (memory mode %s) ...", m.kind, getattr(gen, "device", m.device),
                     m.memory)
        self.loading = True
        try:
            secs = await self._on_gpu(self.renderer.load)
        finally:
            self.loading = False
        if secs > 0.01:
            comps = getattr(getattr(self.renderer, "generator", None), "components", None)
            log.info("models loaded in %.1f s: %s", secs, getattr(comps, "description", self.cfg.model.kind))
            self.last_load_seconds = secs
        return secs

    async def unload_if_idle(self, idle_minutes: float) -> bool:
        if self.current is not None or not self.renderer.loaded:
            return False
        if time.time() - self.last_job_finished < idle_minutes * 60:
            return False
        await self._on_gpu(self.renderer.unload)
        log.info("models unloaded after %.0f idle minutes; they reload with the next job", idle_minutes)
        return True

    # ------------------------------------------------------------------ loop
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="worker")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        if self._stopping or task.cancelled():
            return
        exc = task.exception()
        self._death = f"the worker loop ended: {type(exc).__name__}: {exc}" if exc else "the worker loop ended"
        log.error("%s; no more jobs will run until the daemon restarts", self._death)

    async def stop(self, *, wait_for_gpu: bool = True) -> None:
        """Stop taking jobs; a running job is checkpointed at its next step and re-queued.

        `wait_for_gpu=False` (a stop during the model load, or a stuck GPU thread): whatever the
        GPU thread is doing is left to finish or die with the process; nothing waits for it.
        """
        self._stopping = True
        if self.current is not None:
            self.queue.cancel_flag(self.current.id).set()
        if self._task is not None:
            if self.current is None or not wait_for_gpu:
                self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("the worker loop failed while stopping")
        if wait_for_gpu:
            await asyncio.get_running_loop().run_in_executor(None, self._gpu.shutdown)
        else:
            self._gpu.shutdown(wait=False)

    @property
    def gpu_busy(self) -> bool:
        return self._gpu.busy

    async def _run(self) -> None:
        while not self._stopping:
            job = await self.queue.next_job()
            if self._stopping:
                await self.queue.requeue(job, count_attempt=False)
                break
            self.current = job
            try:
                await self._run_job(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the journal itself failed: keep the loop, the job is recovered at start
                log.exception("job %s: could not be settled (%s); the worker goes on", job.id, type(exc).__name__)
            finally:
                self.current = None
                self.last_job_finished = time.time()

    async def _run_job(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        flag = self.queue.cancel_flag(job.id)
        spec = job.spec
        output_dir = Path(self.cfg.paths.output).absolute()

        def progress(p: Progress) -> None:
            self.beat()
            loop.call_soon_threadsafe(self.queue.progress, job, p.stage, p.step, p.steps)

        def should_cancel() -> bool:
            self.beat()
            return flag.is_set()

        def render():
            result = self.renderer.render(
                Path(spec.input_path), spec.name, output_dir, spec.options,
                progress=progress, should_cancel=should_cancel,
                meta={"job_id": job.id, "source": spec.source, "user": spec.user},
                photo_name=spec.original_name,
            )
            # the MP4 and sidecar renames are durable only once their folder is flushed
            fsync_dir(output_dir)
            return result

        if not self.renderer.loaded:
            self.queue.progress(job, "loading")
            try:
                await self.load()
            except Exception as exc:
                # lazy (re)load after an idle unload: a failure fails this job, not the worker
                reason = str(exc) if isinstance(exc, Wan22Error) else f"{type(exc).__name__}: {exc}"
                log.error("job %s: failed: the models could not be loaded: %s", job.id, reason)
                await self.queue.finish(job, JobState.failed, error=f"the models could not be loaded: {reason}")
                return
        log.info("job %s: started (attempt %d) %s", job.id, job.attempts, spec.original_name)
        try:
            result = await self._on_gpu(render)
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
