"""`wan22bot run`: wiring, signals and lifecycle (the daemon systemd starts).

Start: state folder checked and locked -> journal recovery -> models (at start, or lazily) ->
worker -> sources -> scheduler -> READY. Every step that started registers its own undo on one
AsyncExitStack, so whatever fails (a port already taken, a bad token, a model that will not load)
the steps that did start are undone in reverse order: sources stopped, worker stopped, journal
closed, lock released, STOPPING sent.

SIGTERM/SIGINT: stop taking work, checkpoint the running job at its next step (it is re-queued),
stop sources, exit 0. The model load runs in the GPU thread, so a signal during it is acted on at
once: the load's result is dropped and the process leaves without waiting for it (or for READY).
SIGHUP: reload the config file for the sources; the queue is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from .config import Config, load_config
from .credentials import adopt_http_token_credential
from .errors import ConfigError
from .lifecycle import StopRequest, until_stopped
from .notify import Notifier
from .queue import JobQueue
from .statedir import StateLock, check_writable

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, cfg: Config, config_path: Path | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.notifier = Notifier()
        self.queue: JobQueue | None = None
        self.renderer = None
        self.worker = None
        self.sources: list = []
        self.scheduler = None
        self.lock = StateLock(cfg.paths.state, "daemon")
        self.stopper = StopRequest(self.notifier, log, "no new jobs; the running job is checkpointed")
        self._stop = self.stopper.event
        self._watchdog_ok = True
        self.abandon_gpu = False  # the process must not wait for the GPU thread (a load, or a stuck call)

    def build_sources(self) -> list:
        srcs = []
        if self.cfg.watch.enabled:
            from .sources.watch import FolderSource

            srcs.append(FolderSource(self.cfg, self.queue))
        if self.cfg.http.enabled:
            from .sources.http import HttpSource

            srcs.append(HttpSource(self.cfg, self.queue, self.worker))
        if self.cfg.discord.enabled:
            from .sources.discord_bot import DiscordSource

            srcs.append(DiscordSource(self.cfg, self.queue, self.worker))
        return srcs

    def _preflight(self) -> None:
        """Cheap checks that must fail before minutes of model loading, in a fixed order."""
        cfg = self.cfg
        check_writable(Path(cfg.paths.state))
        self.lock.acquire()
        adopt_http_token_credential(cfg)  # the unit's LoadCredential=http-token, when the env has none
        token = None
        if cfg.http.enabled:
            from .sources.http import read_token

            token = read_token(cfg)  # a missing required token stops us before minutes of model loading
        if cfg.queue.backend == "redis":
            if not cfg.http.enabled:
                raise ConfigError("[queue] backend = \"redis\" needs [http] enabled = true: workers on other boxes "
                                  "send their results to this front over HTTP")
            if token is None:
                raise ConfigError(
                    f"[queue] backend = \"redis\": workers send their results to this front with its HTTP bearer "
                    f"token, and there is none: put one in the environment variable {cfg.http.token_env} "
                    "([http] token_env; e.g. the output of `openssl rand -hex 32`), or in the systemd credential "
                    "http-token, and give the workers the same token")
        if cfg.interpolation.enabled and not Path(cfg.interpolation.weights).is_file():
            raise ConfigError(f"interpolation.enabled is on but {cfg.interpolation.weights} does not exist: "
                              "run `wan22bot fetch-rife` first (or turn interpolation off)")
        for p in (cfg.paths.input, cfg.paths.output):
            try:
                Path(p).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the folder {p} ({exc.strerror}): create it or fix [paths]") from None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        async with contextlib.AsyncExitStack() as stack:
            self.stopper.install(loop, stack, self.request_stop)  # STOPPING=1 last out, signals handled
            loop.add_signal_handler(signal.SIGHUP, self.reload)
            stack.callback(loop.remove_signal_handler, signal.SIGHUP)

            self._preflight()  # a second daemon on this state folder stops here, with one line
            stack.callback(self.lock.release)
            log.info("wan22bot starting: config %s; state %s; model %s, device %s",
                     Path(self.config_path).absolute() if self.config_path else "(built-in defaults)",
                     cfg.paths.state, cfg.model.kind, cfg.model.device)

            redis = cfg.queue.backend == "redis"
            # jobs held by workers on other boxes are not "left by an unclean stop" of this one: the
            # dispatcher reconciles them with the stream instead of the journal re-queueing them
            self.queue = JobQueue(cfg.paths.state, cfg.paths.output, max_length=cfg.queue.max_length,
                                  max_attempts=cfg.queue.max_attempts, **({"keep_claimed_by": "redis"} if redis else {}))
            stack.push_async_callback(self.queue.close)
            await self.queue.start()
            self.queue.add_listener(self._on_event)
            if redis:
                from .front import FrontWorkers
                from .queue.redis_conn import shown_url

                self.worker = FrontWorkers(cfg, self.queue)
                log.info("queue on Redis %s (prefix %s): workers on other boxes render%s", shown_url(cfg.queue.url),
                         cfg.queue.redis_prefix, "; so does this box ([worker] enabled = true)" if cfg.worker.enabled
                         else "; this box renders nothing ([worker] enabled = false)")
            elif not cfg.worker.enabled:
                from .front import NoWorker

                self.worker = NoWorker()
                log.warning("[worker] enabled = false with the SQLite queue: nothing renders on this box; jobs are "
                            "accepted and wait in the queue (set [worker] enabled = true, or [queue] backend = "
                            "\"redis\" with workers on other boxes)")
            elif len(cfg.devices) > 1 or cfg.gpus.mode == "split":
                from .gpus.supervisor import WorkerPool  # a worker process per device (or a split group)

                self.worker = WorkerPool(cfg, self.queue)
            else:
                # torch and diffusers load here, after the cheap checks: a refused start takes no time
                from .render import Renderer
                from .worker import Worker

                self.renderer = Renderer(cfg)
                self.worker = Worker(cfg, self.queue, self.renderer)
            stack.push_async_callback(self._stop_worker)

            if cfg.model.load == "start":
                self.notifier.status("loading models")
                if not await until_stopped(self.worker.load(), self._stop):
                    log.info("stopped during the model load; the load is abandoned")
                    self.abandon_gpu = True
                    return 0
            self.worker.start()

            self.sources = []
            for s in self.build_sources():
                await s.start()
                self.sources.append(s)
                stack.push_async_callback(self._stop_source, s)
            from .scheduler import Housekeeper

            self.scheduler = Housekeeper(cfg, self.queue, self.worker)
            self.scheduler.start()
            stack.callback(self.scheduler.stop)
            if self.notifier.watchdog_seconds:
                wd = asyncio.create_task(self._watchdog(), name="watchdog")
                stack.callback(wd.cancel)
            if self._stop.is_set():
                return 0
            counts = await self.queue.counts()
            self.notifier.ready(self._status_text(counts))
            log.info("ready: %s", self._ready_text())
            await self._stop.wait()
        log.info("stopped")
        return 0

    async def _stop_worker(self) -> None:
        if self.worker is None:
            return
        health = getattr(self.worker, "health", None)
        h = health() if health is not None else None
        if h is not None and not h.ok and not self.abandon_gpu:
            # a stuck GPU thread would hold the stop until systemd's SIGKILL: leave it behind; its
            # job stays "running" and is recovered (attempt counted) at the next start
            log.warning("worker %s (%s): not waiting for the GPU thread", h.state, h.detail)
            self.abandon_gpu = True
        if self.abandon_gpu:
            await self.worker.stop(wait_for_gpu=False)
        else:
            await self.worker.stop()

    async def _stop_source(self, s) -> None:
        try:
            await s.stop()
        except Exception:
            log.exception("stopping %s failed", s.name)

    def request_stop(self, sig: int | None = None) -> None:
        self.stopper.request(sig)

    def reload(self) -> None:
        if self.config_path is None:
            log.info("SIGHUP: no config file to reload")
            return
        self.notifier.reloading()
        try:
            new = load_config(self.config_path, required=True)
        except ConfigError as exc:
            log.error("SIGHUP: config not reloaded, keeping the old one: %s", exc)
        else:
            self.cfg = new
            for s in self.sources:
                s.reload(new)
            log.info("SIGHUP: config reloaded for the sources (model settings apply at the next restart)")
        self.notifier.ready()

    async def _watchdog(self) -> None:
        """WATCHDOG=1 only while the worker is healthy: a stuck or dead worker stops the pings, so
        systemd's WatchdogSec restarts the daemon."""
        interval = max(0.5, (self.notifier.watchdog_seconds or 10) / 2)
        while True:
            self.watchdog_tick()
            await asyncio.sleep(interval)

    def watchdog_tick(self) -> bool:
        health = getattr(self.worker, "health", None)
        h = health() if health is not None else None
        if h is None or h.ok:
            if not self._watchdog_ok:
                log.info("worker healthy again (%s); watchdog pings resume", h.state if h else "no worker")
            self._watchdog_ok = True
            self.notifier.watchdog()
            return True
        if self._watchdog_ok:
            log.error("worker unhealthy (%s: %s): watchdog pings stop so systemd restarts the daemon",
                      h.state, h.detail)
            self.notifier.status(f"worker {h.state}: {h.detail}")
        self._watchdog_ok = False
        return False

    def _ready_text(self) -> str:
        parts = []
        for s in self.sources:
            if s.name == "watch":
                parts.append(f"watching {self.cfg.paths.input}")
            elif s.name == "http":
                parts.append(f"http on {getattr(s, 'url', f'{self.cfg.http.host}:{self.cfg.http.port}')}")
            else:
                parts.append(s.name)
        return ", ".join(parts) or "no sources enabled"

    def _status_text(self, counts: dict[str, int]) -> str:
        running = self.worker.current if self.worker else None
        head = f"running {running.spec.original_name}" if running else "idle"
        return f"{head}; {counts.get('queued', 0)} queued, {counts.get('done', 0)} done, {counts.get('failed', 0)} failed"

    async def _on_event(self, event) -> None:
        if event.kind in ("queued", "started", "done", "failed", "cancelled", "requeued"):
            self.notifier.status(self._status_text(await self.queue.counts()))


def run_daemon(cfg: Config, config_path: Path | None = None) -> int:
    daemon = Daemon(cfg, config_path)
    code = asyncio.run(daemon.run())
    if daemon.abandon_gpu:
        # the GPU thread is still inside a model load (or stuck); the interpreter's exit would wait
        # on its imports and locks, so leave now (the journal is closed and the lock released already)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
