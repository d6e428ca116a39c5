"""What stands in for the daemon's worker on a box that does not render every job itself.

- `[queue] backend = "redis"`: `FrontWorkers`, the Dispatcher (queue/dispatcher.py) that hands
  the journal's jobs to the workers on the Redis stream, plus, when `[worker] enabled` is true, a
  worker in this process that takes its jobs from the same stream like any other box and settles
  them with `accept_result` directly (no HTTP round trip to itself).
- `[worker] enabled = false` with the SQLite queue: `NoWorker`; jobs are accepted and wait.

Both quack like `Worker` to the daemon, the sources and the housekeeper: start, stop, load,
health, current, running, states.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from .config import Config
from .errors import DiskFull
from .health import Health
from .jobs import JobState
from .queue import Job, JobQueue

log = logging.getLogger(__name__)


class NoWorker:
    """Nothing renders on this box ([worker] enabled = false, SQLite queue): jobs wait in the queue."""

    renderer = None
    current: Job | None = None
    running: list[Job] = []
    gpu_busy = False
    last_load_seconds: float | None = None
    last_timings: dict[str, float] | None = None

    async def load(self) -> float:
        return 0.0

    def start(self) -> None:
        pass

    async def stop(self, *, wait_for_gpu: bool = True) -> None:
        pass

    def health(self) -> Health:
        return Health(True, "disabled", "[worker] enabled = false: nothing renders on this box")

    async def unload_if_idle(self, idle_minutes: float) -> bool:
        return False


class FrontWorkers:
    """The Dispatcher, and the front's own worker when [worker] enabled is true."""

    def __init__(self, cfg: Config, queue: JobQueue):
        from .queue.dispatcher import Dispatcher

        self.cfg = cfg
        self.queue = queue
        self.dispatcher = Dispatcher(cfg, queue)
        self.local = None
        self.remote = None
        self.beacon = None
        self._starting: asyncio.Task | None = None
        if cfg.worker.enabled:
            from .queue.remote import RemoteQueue
            from .render import Renderer
            from .worker import Worker

            # renders land in the state folder; accept_result moves them into the output folder
            # under the job's name exactly as it does for a remote worker's upload
            local_dir = Path(cfg.paths.state).absolute() / "local-worker"
            wcfg = cfg.model_copy(deep=True)
            object.__setattr__(wcfg.paths, "output", local_dir / "results")
            (local_dir / "results").mkdir(parents=True, exist_ok=True)
            self.remote = RemoteQueue(wcfg, self._deliver, spool_dir=local_dir / "spool")
            self.local = Worker(wcfg, self.remote, Renderer(wcfg))

    # ------------------------------------------------------------------ what the daemon asks
    @property
    def renderer(self):
        return self.local.renderer if self.local is not None else None

    @property
    def current(self) -> Job | None:
        return self.dispatcher.current

    @property
    def running(self) -> list[Job]:
        return self.dispatcher.running

    @property
    def gpu_busy(self) -> bool:
        return self.local.gpu_busy if self.local is not None else False

    @property
    def last_load_seconds(self) -> float | None:
        return self.local.last_load_seconds if self.local is not None else None

    @property
    def last_timings(self) -> dict[str, float] | None:
        return getattr(self.dispatcher, "last_timings", None) or (self.local.last_timings if self.local else None)

    def states(self) -> list[dict[str, Any]]:
        return self.dispatcher.states()

    def health(self) -> Health:
        h = self.dispatcher.health()
        if not h.ok or self.local is None:
            return h
        local = self.local.health()
        return local if not local.ok else h

    async def unload_if_idle(self, idle_minutes: float) -> bool:
        return await self.local.unload_if_idle(idle_minutes) if self.local is not None else False

    # ------------------------------------------------------------------ lifecycle
    async def load(self) -> float:
        await self.dispatcher.load()
        return await self.local.load() if self.local is not None else 0.0

    def start(self) -> None:
        self.dispatcher.start()
        if self.local is not None:
            self._starting = asyncio.create_task(self._start_local(), name="local-worker-start")

    async def _start_local(self) -> None:
        from .worker_role import Beacon, worker_name

        # renders a crash left here belong to entries that are rendered again (resumed, or taken
        # over): nobody's now, as `wan22bot worker` clears its own results folder at start
        await asyncio.to_thread(_clear_files, Path(self.local.cfg.paths.output))
        await self.remote.start()  # connects (retrying while Redis is away)
        name = worker_name(self.cfg, self.remote)
        self.beacon = Beacon(self.cfg, name, self.local, front="(this box)")
        self.beacon.start()
        self.local.start()
        log.info("worker %s in this process takes jobs from the stream too ([worker] enabled = true)", name)

    async def stop(self, *, wait_for_gpu: bool = True) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting
        if self.local is not None:
            # first: its running job is checkpointed and handed back while the journal is still open
            await self.local.stop(wait_for_gpu=wait_for_gpu)
            if self.beacon is not None:
                await self.beacon.stop()
            with contextlib.suppress(Exception):
                await self.remote.close()
        await self.dispatcher.stop(wait_for_gpu=wait_for_gpu)

    # ------------------------------------------------------------------ the local worker's results
    async def _deliver(self, outcome, video: Path | None, sidecar: Path | None) -> None:
        # BadResult (a render that cannot be stored as it is) is not caught here: RemoteQueue
        # reports the job failed with the reason, as for a remote worker's refused upload;
        # swallowing it would leave the job running on the front for ever
        from .queue.outcome import UnknownJob, accept_result

        try:
            await accept_result(self.queue, outcome, video, sidecar)
        except UnknownJob as exc:
            log.warning("job %s: %s", outcome.job, exc)
        except DiskFull as exc:
            # the render is gone with the files accept_result removed: the job fails with the
            # reason, as a job on the SQLite queue does when its MP4 does not fit
            log.error("job %s: failed: %s", outcome.job, exc)
            job = await self.queue.get(outcome.job)
            if job is not None and not job.state.final:
                await self.queue.finish(job, JobState.failed, error=str(exc))


def _clear_files(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            p.unlink(missing_ok=True)
