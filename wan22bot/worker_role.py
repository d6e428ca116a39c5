"""`wan22bot worker`: a GPU box that renders jobs from the shared Redis queue of a front box.

No sources, no watched folder, no HTTP server: the worker takes entries from the stream
(queue/remote.py: RemoteQueue), renders them with the same `Worker` and `Renderer` the daemon
uses, writes the MP4 and sidecar into `<state>/results` and PUTs them to the front
(queue/upload.py: ResultUploader), which stores them under its own output folder.

Lifecycle as the daemon's (daemon.py): every step that started registers its undo on one
AsyncExitStack; SIGTERM/SIGINT checkpoint the running job at its next step and hand it back to
the front (outcome "requeue"), then the process exits 0; sd_notify READY/WATCHDOG/STOPPING go
through the same Notifier; the state folder is locked so two workers cannot share it (exit 11).
A `P:worker:{name}` hash, refreshed every heartbeat, tells the front who is alive and what it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .config import Config
from .credentials import adopt_http_token_credential
from .errors import ConfigError
from .fsutil import remove_files
from .lifecycle import StopRequest, until_stopped
from .notify import Notifier
from .queue.redis_conn import shown_url
from .statedir import StateLock, check_writable

log = logging.getLogger(__name__)

WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]", "*")
NOT_REDIS = "wan22bot worker needs [queue] backend = \"redis\"; on one box use [gpus] devices"


def front_url(cfg: Config) -> str:
    """Where results go: `[queue] front_url`, else the front's own `[http]` address."""
    if cfg.queue.front_url:
        return cfg.queue.front_url.rstrip("/")
    host = cfg.http.host.strip()
    if host in WILDCARD_HOSTS:
        raise ConfigError(
            f"[http] host is {host!r}, which says where the front listens, not where a worker reaches it: set "
            "[queue] front_url to the front box's address, e.g. front_url = \"http://10.0.0.5:8622\"")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal in a URL
    return f"http://{host}:{cfg.http.port}"


def check_worker_config(cfg: Config, environ: dict[str, str] | None = None) -> str:
    """Everything a worker needs that the config alone can tell; returns the front's URL."""
    env = os.environ if environ is None else environ
    if cfg.queue.backend != "redis":
        raise ConfigError(NOT_REDIS)
    if len(cfg.devices) > 1 or cfg.gpus.mode == "split":
        raise ConfigError(
            f"[gpus] devices lists {len(cfg.devices)} devices, but a worker renders on one: run one "
            "`wan22bot worker` per GPU (systemd: wan22bot-worker@N.service sets CUDA_VISIBLE_DEVICES=N and its "
            "own state folder) and leave [gpus] devices empty in the worker's config")
    url = front_url(cfg)
    if not (env.get(cfg.http.token_env) or "").strip():
        raise ConfigError(
            f"a worker sends its results to the front ({url}) with the front's HTTP bearer token, and there is "
            f"none: put the front's token in the environment variable {cfg.http.token_env} ([http] token_env), "
            "or, under systemd, in the credential http-token (/etc/credstore/http-token)")
    return url


def worker_config(cfg: Config, state: Path | None = None) -> Config:
    """The worker's own copy of the config: its state folder (`--state` wins over [paths] state) and
    renders into `<state>/results`; the front's output folder is not the worker's business."""
    out = cfg.model_copy(deep=True)
    if state is not None:
        object.__setattr__(out.paths, "state", Path(state).absolute())
    object.__setattr__(out.paths, "output", Path(out.paths.state).absolute() / "results")
    object.__setattr__(out, "source", cfg.source)
    return out


class Beacon:
    """Refreshes `P:worker:{name}` (a hash, expiring after 3 heartbeats): the front's /api/status lists
    the workers whose hash is there. A Redis outage is logged once and retried at the next beat."""

    def __init__(self, cfg: Config, name: str, worker: Any, *, front: str):
        from .queue.redis_conn import keys

        self.cfg = cfg
        self.name = name
        self.worker = worker
        self.key = keys(cfg).worker(name)
        self.interval = cfg.queue.heartbeat_seconds
        self.started = time.time()
        self.static = {"host": socket.gethostname(), "pid": str(os.getpid()), "front": front,
                       "started": f"{self.started:.3f}"}
        self._redis = None
        self._task: asyncio.Task | None = None
        self._down = False

    def fields(self) -> dict[str, str]:
        h = self.worker.health()
        job = getattr(self.worker, "current", None)
        renderer = getattr(self.worker, "renderer", None)
        # the device the generator resolved ("auto" -> cuda:0 or cpu), as the status should show it
        device = getattr(getattr(renderer, "generator", None), "device", None) or self.cfg.model.device
        return {**self.static, "state": h.state, "job": job.id if job is not None else "", "device": str(device),
                "loaded": "1" if renderer is not None and renderer.loaded else "0", "seen": f"{time.time():.3f}"}

    async def beat(self) -> None:
        if self._redis is None:
            from .queue.redis_conn import client

            self._redis = client(self.cfg)  # connects on first use: a beat fails fast while Redis is away
        ttl = max(1, int(round(3 * self.interval)))
        async with self._redis.pipeline(transaction=True) as p:
            p.hset(self.key, mapping=self.fields())
            p.expire(self.key, ttl)
            await p.execute()

    async def _loop(self) -> None:
        from .queue.redis_conn import is_transient

        while True:
            try:
                await self.beat()
                if self._down:
                    log.info("worker %s: Redis answers again; heartbeats resume", self.name)
                self._down = False
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("worker %s: heartbeat failed", self.name)
                elif not self._down:
                    log.warning("worker %s: cannot write its heartbeat to Redis (%s); retrying", self.name, exc)
                self._down = True
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="beacon")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._redis is not None:
            # gone from the status at once rather than after 3 heartbeats
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._redis.delete(self.key), 2.0)
            with contextlib.suppress(Exception):
                await self._redis.aclose()


class WorkerRole:
    def __init__(self, cfg: Config, config_path: Path | None = None, *, state: Path | None = None):
        self.config_path = config_path
        self.cfg = worker_config(cfg, state)
        self.notifier = Notifier()
        self.lock = StateLock(self.cfg.paths.state, "worker")
        self.name = ""
        self.front = ""
        self.worker = None
        self.remote = None
        self.beacon: Beacon | None = None
        self.stopper = StopRequest(self.notifier, log, "no new jobs; the running job is checkpointed and handed back")
        self._stop = self.stopper.event
        self._watchdog_ok = True
        self._last_status = ""
        self.abandon_gpu = False

    def _preflight(self) -> None:
        cfg = self.cfg
        adopt_http_token_credential(cfg)
        self.front = check_worker_config(cfg)
        state = Path(cfg.paths.state)
        check_writable(state)
        self.lock.acquire()
        try:
            for sub in ("results", "spool"):
                (state / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.lock.release()
            raise ConfigError(f"cannot create {state / sub} ({exc.strerror}): fix [paths] state") from None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        async with contextlib.AsyncExitStack() as stack:
            self.stopper.install(loop, stack, self.request_stop)  # STOPPING=1 last out, signals handled

            self._preflight()  # a second worker on this state folder stops here (exit 11)
            stack.callback(self.lock.release)
            await asyncio.to_thread(self._clear_results)

            from .queue.outcome import BadResult
            from .queue.remote import RemoteQueue
            from .queue.upload import ResultUploader

            uploader = ResultUploader(cfg)
            if hasattr(uploader, "close"):
                stack.push_async_callback(uploader.close)

            async def deliver(outcome, video, sidecar):
                try:
                    accepted = await uploader.deliver(outcome, video, sidecar)
                except BadResult:
                    # refused for good: the job is reported failed without them, so they are nobody's
                    await asyncio.to_thread(remove_files, video, sidecar)
                    raise
                # the front has the files now: this box's copies are nobody's
                await asyncio.to_thread(remove_files, video, sidecar)
                return accepted

            self.remote = RemoteQueue(cfg, deliver, spool_dir=Path(cfg.paths.state) / "spool")
            self.name = worker_name(cfg, self.remote)
            log.info("wan22bot worker %s starting: config %s; state %s; queue %s (prefix %s); results to %s; "
                     "model %s, device %s", self.name,
                     Path(self.config_path).absolute() if self.config_path else "(built-in defaults)",
                     cfg.paths.state, shown_url(cfg.queue.url), cfg.queue.redis_prefix, self.front,
                     cfg.model.kind, cfg.model.device)

            # torch and diffusers load here, after the cheap checks: a refused start takes no time
            from .render import Renderer
            from .worker import Worker

            self.worker = Worker(cfg, self.remote, Renderer(cfg))
            # unwound in reverse: the worker stops first, so its checkpointed job is handed back
            # through a RemoteQueue that is still connected; then the queue closes
            stack.push_async_callback(self.remote.close)
            stack.push_async_callback(self._stop_worker)

            self.notifier.status("connecting to Redis")
            if not await until_stopped(self.remote.start(), self._stop, settle_seconds=5):
                return 0

            self.beacon = Beacon(cfg, self.name, self.worker, front=self.front)
            self.beacon.start()
            stack.push_async_callback(self.beacon.stop)

            if cfg.model.load == "start":
                self.notifier.status("loading models")
                if not await until_stopped(self.worker.load(), self._stop, settle_seconds=5):
                    log.info("stopped during the model load; the load is abandoned")
                    self.abandon_gpu = True
                    return 0
            self.worker.start()
            tasks = [asyncio.create_task(self._watchdog(), name="watchdog")]
            if cfg.scheduler.idle_unload_minutes > 0:
                tasks.append(asyncio.create_task(self._idle_unload(), name="idle-unload"))
            for t in tasks:
                stack.callback(t.cancel)
            if self._stop.is_set():
                return 0
            self.notifier.ready(self._status_text())
            log.info("ready: worker %s takes jobs from %s and sends results to %s", self.name,
                     shown_url(cfg.queue.url), self.front)
            await self._stop.wait()
        log.info("stopped")
        return 0

    def _clear_results(self) -> None:
        """Renders left by an earlier run are not anybody's: the entry they belong to is rendered
        again (its own pending entry, or another worker's takeover)."""
        for p in (Path(self.cfg.paths.state) / "results").iterdir():
            if p.is_file():
                p.unlink(missing_ok=True)

    async def _stop_worker(self) -> None:
        if self.worker is None:
            return
        h = self.worker.health()
        if not h.ok and not self.abandon_gpu:
            log.warning("worker %s (%s): not waiting for the GPU thread", h.state, h.detail)
            self.abandon_gpu = True
        await self.worker.stop(wait_for_gpu=not self.abandon_gpu)

    def request_stop(self, sig: int | None = None) -> None:
        self.stopper.request(sig)

    def _status_text(self) -> str:
        job = self.worker.current if self.worker is not None else None
        what = f"running {job.spec.original_name} ({job.id})" if job is not None else "idle"
        return f"worker {self.name}: {what}"

    async def _watchdog(self) -> None:
        """WATCHDOG=1 only while the GPU thread is healthy, as the daemon does; STATUS follows the job."""
        interval = max(0.5, (self.notifier.watchdog_seconds or 10) / 2)
        if self.notifier.enabled:
            interval = min(interval, 1.0)  # STATUS follows the running job within a second
        while True:
            h = self.worker.health()
            if h.ok:
                if not self._watchdog_ok:
                    log.info("worker healthy again (%s); watchdog pings resume", h.state)
                self._watchdog_ok = True
                if self.notifier.watchdog_seconds:
                    self.notifier.watchdog()
                text = self._status_text()
                if text != self._last_status:
                    self._last_status = text
                    self.notifier.status(text)
            elif self._watchdog_ok:
                self._watchdog_ok = False
                log.error("worker unhealthy (%s: %s): watchdog pings stop so systemd restarts the worker",
                          h.state, h.detail)
                self.notifier.status(f"worker {h.state}: {h.detail}")
            await asyncio.sleep(interval)

    async def _idle_unload(self) -> None:
        minutes = self.cfg.scheduler.idle_unload_minutes
        while True:
            await asyncio.sleep(min(60.0, minutes * 60 / 4))
            try:
                await self.worker.unload_if_idle(minutes)
            except Exception:
                log.exception("idle unload failed")


def worker_name(cfg: Config, remote: Any = None) -> str:
    """The consumer name RemoteQueue uses ([worker] name, else host + a hash of the state folder)."""
    name = getattr(remote, "name", None)
    if name:
        return str(name)
    from .queue.redis_conn import worker_name as default_name

    return default_name(cfg)


def run_worker(cfg: Config, config_path: Path | None = None, *, state: Path | None = None) -> int:
    role = WorkerRole(cfg, config_path, state=state)
    code = asyncio.run(role.run())
    if role.abandon_gpu:
        # the GPU thread is still inside a load or a stuck call: leave without joining it
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
