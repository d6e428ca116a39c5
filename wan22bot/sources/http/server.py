"""HttpSource: the aiohttp app wiring (routes, middlewares, access log) and its start/stop/reload."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ...config import Config
from ...links import link_secret
from ...errors import ConfigError
from ...jobs import FINAL_STATES
from ...metrics import Metrics
from ...queue import Job, JobEvent, JobQueue
from .auth import auth_middleware, is_public, read_token
from .errors import RequestError, error_response, http_sentence
from .events import EventHub
from .guard import HostPolicy, guard_middleware
from .results import Results
from .routes import WEB_FILES, Routes, job_json
from .uploads import Uploads, upload_cap

log = logging.getLogger("wan22bot.sources.http")
access_log = logging.getLogger("wan22bot.http.access")
# After an answer that leaves part of the body unread (408, 413, 503), what is still in flight is read
# and dropped for this long, so the client sees the answer rather than a reset; then the connection
# closes. aiohttp's default (10 s) would let a slow client keep it that much longer.
LINGER_SECONDS = 2.0


class _AccessLogger(AbstractAccessLogger):
    """Method, path (never the query string: it may hold the token), status, seconds."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        quiet = request.method in ("GET", "HEAD") and response.status < 400
        self.logger.log(logging.DEBUG if quiet else logging.INFO, "%s %s %s -> %d (%.3f s)",
                        request.remote, request.method, request.path, response.status, time)


class HttpSource:
    name = "http"

    def __init__(self, cfg: Config, queue: JobQueue, worker: Any = None, *, metrics: Metrics | None = None):
        self.cfg = cfg
        self.queue = queue
        self.worker = worker
        self.metrics = metrics or Metrics(queue, worker)
        self.host = cfg.http.host
        self.port = cfg.http.port  # the bound port once started (useful with port 0)
        self.started_at = time.time()
        self.events = EventHub()
        self.routes = Routes(self)
        self.uploads = Uploads(self)
        self.results = Results(self)  # remote workers hand their results back here
        self._token: str | None = None
        self._runner: web.AppRunner | None = None
        self._policy = HostPolicy.build(cfg, cfg.http.port)
        self.link_secret = b""  # signs /v/ links; set at start

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    @property
    def auth_required(self) -> bool:
        return self._token is not None

    async def start(self) -> None:
        self._token = read_token(self.cfg)
        self.link_secret = await asyncio.to_thread(link_secret, self.cfg)
        await self.results.clear_stale()
        app = self.build_app()
        runner = web.AppRunner(app, handle_signals=False, access_log_class=_AccessLogger, access_log=access_log,
                               shutdown_timeout=5.0, lingering_time=LINGER_SECONDS)
        await runner.setup()
        site = web.TCPSite(runner, self.cfg.http.host, self.cfg.http.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"cannot listen on {self.cfg.http.host}:{self.cfg.http.port} "
                              f"(http.host/http.port): {exc.strerror or exc}") from None
        self._runner = runner
        self.host = self.cfg.http.host
        addrs = runner.addresses
        if addrs:
            self.port = addrs[0][1]
        self._policy = HostPolicy.build(self.cfg, self.port)
        self.queue.add_listener(self.metrics.on_event)
        self.queue.add_listener(self._on_event)
        try:  # jobs that finished while the API was down are fetched by polling too
            for job in await self.queue.undelivered("http"):
                await self.queue.mark_delivered(job.id)
        except Exception:
            log.exception("marking finished http jobs delivered failed")
        log.info("http: listening on %s (%s)", self.url,
                 "bearer token required" if self._token else "no token: loopback only")

    async def stop(self) -> None:
        self.queue.remove_listener(self._on_event)
        self.queue.remove_listener(self.metrics.on_event)
        self.events.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def reload(self, cfg: Config) -> None:
        old = self.cfg
        if (cfg.http.host, cfg.http.port) != (old.http.host, old.http.port):
            log.warning("http: host/port changes apply at the next restart (still on %s)", self.url)
        bound = cfg.model_copy(update={"http": cfg.http.model_copy(update={"host": self.host})})
        try:
            token = read_token(bound)
        except ConfigError as exc:
            log.error("http: keeping the old token setting: %s", exc)
            token = self._token
        self.cfg = cfg
        self._token = token
        self._policy = HostPolicy.build(bound, self.port)
        try:
            self.link_secret = link_secret(cfg)  # a new token signs (and revokes) links from now on
        except (OSError, ValueError) as exc:
            log.error("http: keeping the old video link key: %s", exc)

    # ------------------------------------------------------------------ app
    def build_app(self) -> web.Application:
        cap = upload_cap(self.cfg)[0]
        guard = guard_middleware(lambda: self._policy, lambda: self._token, lambda p: is_public(p, WEB_FILES))
        app = web.Application(middlewares=[self._errors_mw, guard, auth_middleware(lambda: self._token, WEB_FILES)],
                              client_max_size=cap + 1024 * 1024)
        r, routes = app.router, self.routes
        r.add_get("/healthz", routes.healthz)
        r.add_get("/metrics", routes.metrics)
        r.add_get("/api/status", routes.status)
        r.add_get("/api/jobs", routes.list_jobs)
        r.add_post("/api/jobs", self.uploads.post_job)
        r.add_get("/api/jobs/{id}", routes.get_job)
        r.add_delete("/api/jobs/{id}", routes.cancel_job)
        r.add_put("/api/jobs/{id}/result", self.results.put_result)
        r.add_get("/api/jobs/{id}/video", routes.video)
        r.add_get("/api/jobs/{id}/sidecar", routes.sidecar)
        r.add_get("/v/{id}", routes.signed_video)
        r.add_get("/api/events", self.events.handle)
        r.add_get("/", routes.page)
        r.add_get("/web/{name}", routes.asset)
        return app

    @web.middleware
    async def _errors_mw(self, request: web.Request, handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        try:
            resp = await handler(request)
        except RequestError as exc:
            resp = error_response(exc.status, exc.message, exc.headers, **exc.extra)
            if exc.close:
                resp.force_close()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
            resp = error_response(exc.status, http_sentence(exc, request), keep)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("http: %s %s failed", request.method, request.path)
            resp = error_response(500, "internal error; the daemon log has the details")
        self.metrics.http_requests.labels(route=route, status=str(resp.status)).inc()
        return resp

    # ------------------------------------------------------------------ shared by the handlers
    def job_json(self, job: Job, position: int | None = None) -> dict[str, Any]:
        return job_json(job, position)

    def user(self, request: web.Request) -> str:
        return "token" if self._token is not None else (request.remote or "unknown")

    def model_loaded(self) -> bool:
        renderer = getattr(self.worker, "renderer", None)
        return bool(renderer is not None and renderer.loaded)

    def interpolation_available(self) -> bool:
        return Path(self.cfg.interpolation.weights).is_file()

    def retry_after(self) -> int:
        last = getattr(self.worker, "last_timings", None) or {}
        return max(5, min(600, int(last.get("total") or 30)))

    # ------------------------------------------------------------------ events
    def _on_event(self, event: JobEvent):
        self.events.publish({"kind": event.kind, "stage": event.stage, "step": event.step, "steps": event.steps,
                             "job": job_json(event.job)})
        if event.job.source == "http" and event.kind in FINAL_STATES:
            return self.queue.mark_delivered(event.job.id)  # fetched by polling: final means delivered
        return None
