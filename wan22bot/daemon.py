"""`wan22bot run`: wiring, signals and lifecycle (the daemon systemd starts).

Start: journal recovery -> models (at start, or lazily) -> worker -> sources -> scheduler -> READY.
SIGTERM/SIGINT: stop taking work, checkpoint the running job at its next step (it is re-queued),
stop sources, exit 0. SIGHUP: reload the config file for the sources; the queue is untouched.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from .config import Config, load_config
from .errors import ConfigError
from .notify import Notifier
from .queue import JobQueue
from .render import Renderer
from .worker import Worker

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, cfg: Config, config_path: Path | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.notifier = Notifier()
        self.queue = JobQueue(cfg.paths.state, cfg.paths.output, max_length=cfg.queue.max_length,
                              max_attempts=cfg.queue.max_attempts)
        self.renderer = Renderer(cfg)
        self.worker = Worker(cfg, self.queue, self.renderer)
        self.sources: list = []
        self.scheduler = None
        self._stop = asyncio.Event()
        self._bg: list[asyncio.Task] = []

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

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        if self.cfg.http.enabled:
            from .sources.http import read_token

            read_token(self.cfg)  # a missing required token stops us before minutes of model loading
        if self.cfg.interpolation.enabled and not Path(self.cfg.interpolation.weights).is_file():
            raise ConfigError(f"interpolation.enabled is on but {self.cfg.interpolation.weights} does not exist: "
                              "run `wan22bot fetch-rife` first (or turn interpolation off)")
        for p in (self.cfg.paths.input, self.cfg.paths.output, self.cfg.paths.state):
            Path(p).mkdir(parents=True, exist_ok=True)
        await self.queue.start()
        self.queue.add_listener(self._on_event)
        if self.cfg.model.load == "start":
            self.notifier.status("loading models")
            await self.worker.load()
        self.worker.start()
        self.sources = self.build_sources()
        for s in self.sources:
            await s.start()
        from .scheduler import Housekeeper

        self.scheduler = Housekeeper(self.cfg, self.queue, self.worker)
        self.scheduler.start()
        if self.notifier.watchdog_seconds:
            self._bg.append(asyncio.create_task(self._watchdog()))
        counts = await self.queue.counts()
        self.notifier.ready(self._status_text(counts))
        log.info("wan22bot ready: %s", ", ".join(s.name for s in self.sources) or "no sources enabled")
        await self._stop.wait()
        await self.shutdown()
        return 0

    def request_stop(self, sig: int | None = None) -> None:
        if not self._stop.is_set():
            log.info("stopping (%s): no new jobs; the running job is checkpointed",
                     signal.Signals(sig).name if sig else "request")
            self.notifier.stopping()
            self._stop.set()

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

    async def shutdown(self) -> None:
        for s in self.sources:
            try:
                await s.stop()
            except Exception:
                log.exception("stopping %s failed", s.name)
        if self.scheduler:
            self.scheduler.stop()
        await self.worker.stop()
        for t in self._bg:
            t.cancel()
        await self.queue.close()
        log.info("stopped")

    async def _watchdog(self) -> None:
        interval = max(0.5, (self.notifier.watchdog_seconds or 10) / 2)
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    def _status_text(self, counts: dict[str, int]) -> str:
        running = self.worker.current
        head = f"running {running.spec.original_name}" if running else "idle"
        return f"{head}; {counts.get('queued', 0)} queued, {counts.get('done', 0)} done, {counts.get('failed', 0)} failed"

    async def _on_event(self, event) -> None:
        if event.kind in ("queued", "started", "done", "failed", "cancelled", "requeued"):
            self.notifier.status(self._status_text(await self.queue.counts()))


def run_daemon(cfg: Config, config_path: Path | None = None) -> int:
    return asyncio.run(Daemon(cfg, config_path).run())
