"""The HTTP source: a small JSON API, Prometheus metrics and a status page, on aiohttp.

Routes (all JSON unless said otherwise):

    GET    /healthz                 200 {status, model_loaded, queue_depth}         (never needs the token)
    GET    /metrics                 Prometheus text
    GET    /api/status              model, device, GPU memory, queue counts, running job + live progress,
                                    last timings
    GET    /api/jobs                list, newest first; ?state=queued,running&source=http&limit=100
    POST   /api/jobs                multipart/form-data: `photo` (file) + optional prompt, negative_prompt,
                                    frames, seed, interpolate, preset, steps -> 202 + Location
    GET    /api/jobs/{id}           one job (404 if unknown)
    DELETE /api/jobs/{id}           cancel: 200 {outcome: cancelled|cancelling}, 404 unknown, 409 final
    GET    /api/jobs/{id}/video     the MP4 (range requests work, so the page can seek)
    GET    /api/jobs/{id}/sidecar   the sidecar JSON written beside the MP4
    GET    /api/events              server-sent events: one `job` event per queue event
    GET    /                        the status page (wan22bot/web/); /web/{file} its assets

Auth: the server binds 127.0.0.1 by default. A bearer token is read from the environment variable
named by `http.token_env`; it is required when `http.host` is not a loopback address (the source
refuses to start without it) and enforced whenever it is set. Then every route except /healthz,
the page and its assets (which hold no data) needs `Authorization: Bearer <token>`; `?token=<token>`
in the query is accepted too, for places that cannot send headers (`<video src>`, EventSource).
The access log writes the path without the query string, so the token never reaches a log.

Uploads are streamed with a size cap (413 beyond it), checked with `probe_photo` (400 with its
sentence), and only then spooled into the queue. Results are fetched by polling, so a finished
http job counts as delivered as soon as it is final.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from pydantic import ValidationError

from .. import __version__
from ..config import Config
from ..errors import ConfigError, DiskFull, InputError
from ..images import probe_photo
from ..jobs import JobOptions, JobSpec, JobState
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..metrics import Metrics, gpu_memory
from ..queue import Job, JobEvent, JobQueue, QueueFull
from ..queue.jobqueue import safe_stem

log = logging.getLogger(__name__)
access_log = logging.getLogger("wan22bot.http.access")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
WEB_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
PUBLIC_PATHS = {"/healthz", "/"}
OPTION_FIELDS = tuple(JobOptions.model_fields)  # prompt, negative_prompt, frames, seed, interpolate, preset, steps
FIELD_LIMIT = 16 * 1024  # bytes for one text field (prompts are at most 2000 characters)
SOURCES = ("watch", "http", "discord", "cli")
SUFFIX_BY_FORMAT = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif",
                    "GIF": ".gif"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class _RequestError(Exception):
    """Raised inside a handler to answer with a JSON error."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra


def error_response(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


def is_loopback(host: str) -> bool:
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def read_token(cfg: Config) -> str | None:
    """The bearer token from the environment, or None; a ConfigError when one is needed but missing."""
    env = cfg.http.token_env
    token = (os.environ.get(env) or "").strip() or None
    if token is None and not is_loopback(cfg.http.host):
        raise ConfigError(
            f"http.host is {cfg.http.host!r}, which other machines can reach, so the HTTP API needs a bearer "
            f"token: put one in the environment variable {env} (for example the output of `openssl rand -hex 32`) "
            "or set http.host to 127.0.0.1"
        )
    if token is not None and len(token) < 16:
        log.warning("the HTTP bearer token in %s is shorter than 16 characters; use a longer random one", env)
    return token


def clean_filename(name: str | None, suffix: str) -> str:
    """The upload's own file name, reduced to a printable base name; a default when there is none."""
    # Browsers percent-encode '"', CR and LF in multipart file names; some clients encode more.
    base = unquote(name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip().lstrip(".")
    base = base[-200:]
    if not base:
        return f"photo{suffix}"
    if "." not in base:
        base += suffix
    return base


def _content_disposition(kind: str, filename: str) -> str:
    ascii_name = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in filename)
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"


def _options_error(exc: ValidationError, given: dict[str, str]) -> tuple[str, str]:
    """The first problem in the options as (field, one human sentence naming the field)."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err.get("loc", ())) or "options"
    kind = err.get("type", "")
    msg = err.get("msg", "").removeprefix("Value error, ")
    value = given.get(field)
    shown = repr(value) if value is not None else ""
    if kind == "extra_forbidden":
        return field, f"unknown field {field!r}; allowed fields are photo, {', '.join(OPTION_FIELDS)}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return field, f"{field} must be a whole number, got {shown}"
    if kind in ("bool_parsing", "bool_type"):
        return field, f"{field} must be true or false, got {shown}"
    if kind == "literal_error":
        allowed = ", ".join(str(v) for v in err.get("ctx", {}).get("expected", "").replace("'", "").split(" or "))
        return field, f"{field} must be one of {allowed}, got {shown}"
    if kind == "greater_than_equal":
        return field, f"{field} must be at least {err['ctx']['ge']}, got {shown}"
    if kind == "less_than_equal":
        return field, f"{field} must be at most {err['ctx']['le']}, got {shown}"
    if kind == "string_too_long":
        return field, f"{field} is too long: at most {err['ctx']['max_length']} characters"
    if msg.startswith(field):
        return field, msg
    return field, f"{field} {shown}: {msg}" if shown else f"{field}: {msg}"


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
        self._token: str | None = None
        self._runner: web.AppRunner | None = None
        self._subscribers: set[asyncio.Queue] = set()
        self._started_at = time.time()

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
        app = self.build_app()
        runner = web.AppRunner(app, handle_signals=False, access_log_class=_AccessLogger, access_log=access_log,
                               shutdown_timeout=5.0)
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
        for q in list(self._subscribers):
            _offer(q, None)
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

    # ------------------------------------------------------------------ app
    def build_app(self) -> web.Application:
        cap = self._upload_cap()[0]
        app = web.Application(middlewares=[self._errors_mw, self._auth_mw], client_max_size=cap + 1024 * 1024)
        r = app.router
        r.add_get("/healthz", self._healthz)
        r.add_get("/metrics", self._metrics)
        r.add_get("/api/status", self._status)
        r.add_get("/api/jobs", self._list_jobs)
        r.add_post("/api/jobs", self._post_job)
        r.add_get("/api/jobs/{id}", self._get_job)
        r.add_delete("/api/jobs/{id}", self._cancel_job)
        r.add_get("/api/jobs/{id}/video", self._video)
        r.add_get("/api/jobs/{id}/sidecar", self._sidecar)
        r.add_get("/api/events", self._events)
        r.add_get("/", self._page)
        r.add_get("/web/{name}", self._asset)
        return app

    @web.middleware
    async def _errors_mw(self, request: web.Request, handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        try:
            resp = await handler(request)
        except _RequestError as exc:
            resp = error_response(exc.status, exc.message, exc.headers, **exc.extra)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
            resp = error_response(exc.status, _http_sentence(exc, request), keep)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("http: %s %s failed", request.method, request.path)
            resp = error_response(500, "internal error; the daemon log has the details")
        self.metrics.http_requests.labels(route=route, status=str(resp.status)).inc()
        return resp

    @web.middleware
    async def _auth_mw(self, request: web.Request, handler) -> web.StreamResponse:
        if self._token is not None and not self._is_public(request.path):
            given = _bearer(request)
            if given is None or not hmac.compare_digest(given.encode("utf-8"), self._token.encode("utf-8")):
                raise _RequestError(
                    401,
                    "this server needs a bearer token: send 'Authorization: Bearer <token>' "
                    "(or add ?token=<token> to links and video URLs)" if given is None
                    else "the bearer token is not valid",
                    headers={"WWW-Authenticate": 'Bearer realm="wan22bot"'},
                )
        return await handler(request)

    @staticmethod
    def _is_public(path: str) -> bool:
        return path in PUBLIC_PATHS or (path.startswith("/web/") and path[5:] in WEB_FILES)

    # ------------------------------------------------------------------ health, metrics, status
    async def _healthz(self, request: web.Request) -> web.Response:
        try:
            counts = await asyncio.wait_for(self.queue.counts(), 5.0)
        except TimeoutError:
            return web.json_response({"status": "degraded", "error": "the job journal is not answering"}, status=503)
        return web.json_response({
            "status": "ok",
            "model_loaded": self._model_loaded(),
            "queue_depth": counts.get("queued", 0),
            "running": counts.get("running", 0),
        })

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _status(self, request: web.Request) -> web.Response:
        counts = await self.queue.counts()
        running = await self._running_job()
        w = self.worker
        gen = getattr(getattr(w, "renderer", None), "generator", None)
        g = self.cfg.generation
        body = {
            "version": __version__,
            "uptime_seconds": round(time.time() - self._started_at, 1),
            "model": {
                "kind": self.cfg.model.kind,
                "loaded": self._model_loaded(),
                "device": str(gen.device) if gen is not None and getattr(gen, "device", None) is not None else None,
                "last_load_seconds": getattr(w, "last_load_seconds", None),
            },
            "gpu": gpu_memory() or None,
            "queue": {"counts": counts, "depth": counts.get("queued", 0), "max_length": self.queue.max_length},
            "running": running,
            "last_timings": getattr(w, "last_timings", None),
            "defaults": {
                "preset": g.preset,
                "frames": g.frames,
                "fps": g.fps,
                "interpolate": self.cfg.interpolation.enabled,
                "interpolate_available": self._interpolation_available(),
            },
            "limits": {"max_upload_mb": self._upload_cap()[0] / 2**20, "max_megapixels": g.max_megapixels},
            "auth": self.auth_required,
        }
        return web.json_response(body)

    async def _running_job(self) -> dict[str, Any] | None:
        job = getattr(self.worker, "current", None)
        if job is None:
            found = await self.queue.list(states=[JobState.running], limit=1)
            job = found[0] if found else None
        if job is None:
            return None
        if job.id in self.queue.live:
            job.progress = self.queue.live[job.id]
        return self._job_json(job)

    def _model_loaded(self) -> bool:
        renderer = getattr(self.worker, "renderer", None)
        return bool(renderer is not None and renderer.loaded)

    def _interpolation_available(self) -> bool:
        return Path(self.cfg.interpolation.weights).is_file()

    # ------------------------------------------------------------------ jobs
    def _job_json(self, job: Job, position: int | None = None) -> dict[str, Any]:
        out = job.to_api(position)
        base = f"/api/jobs/{job.id}"
        links = {"self": base}
        if job.state == JobState.done and job.result is not None:
            links["video"] = f"{base}/video"
            links["sidecar"] = f"{base}/sidecar"
        out["links"] = links
        return out

    async def _job_or_404(self, request: web.Request) -> Job:
        job_id = request.match_info["id"]
        job = await self.queue.get(job_id)
        if job is None:
            raise _RequestError(404, f"there is no job with id {job_id!r}")
        return job

    async def _list_jobs(self, request: web.Request) -> web.Response:
        q = request.query
        states = None
        if q.get("state"):
            states = []
            for s in q["state"].split(","):
                try:
                    states.append(JobState(s.strip()))
                except ValueError:
                    raise _RequestError(400, f"state must be one of {', '.join(x.value for x in JobState)} "
                                             f"(comma-separated), got {s.strip()!r}", field="state") from None
        source = q.get("source") or None
        if source is not None and source not in SOURCES:
            raise _RequestError(400, f"source must be one of {', '.join(SOURCES)}, got {source!r}", field="source")
        limit = 100
        if q.get("limit"):
            try:
                limit = int(q["limit"])
            except ValueError:
                limit = -1
            if not 1 <= limit <= 1000:
                raise _RequestError(400, f"limit must be a whole number from 1 to 1000, got {q['limit']!r}",
                                    field="limit")
        jobs = await self.queue.list(states=states, source=source, limit=limit)
        positions = await self.queue.positions() if any(j.state == JobState.queued for j in jobs) else {}
        return web.json_response([self._job_json(j, positions.get(j.id)) for j in jobs])

    async def _get_job(self, request: web.Request) -> web.Response:
        job = await self._job_or_404(request)
        pos = await self.queue.position(job.id) if job.state == JobState.queued else None
        return web.json_response(self._job_json(job, pos))

    async def _cancel_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        outcome = await self.queue.cancel(job_id)
        if outcome == "unknown":
            raise _RequestError(404, f"there is no job with id {job_id!r}")
        job = await self.queue.get(job_id)
        if outcome == "final":
            state = job.state.value if job else "final"
            raise _RequestError(409, f"job {job_id} is already {state}; there is nothing to cancel", state=state)
        log.info("http: job %s: cancel requested by %s (%s)", job_id, self._user(request), outcome)
        return web.json_response({"id": job_id, "outcome": outcome, "job": self._job_json(job) if job else None})

    def _user(self, request: web.Request) -> str:
        return "token" if self._token is not None else (request.remote or "unknown")

    def _upload_cap(self) -> tuple[int, str]:
        """(bytes, the setting that limits them)."""
        http_cap = int(self.cfg.http.max_upload_mb * 2**20)
        gen_cap = int(self.cfg.generation.max_file_mb * 2**20)
        return (http_cap, "http.max_upload_mb") if http_cap <= gen_cap else (gen_cap, "generation.max_file_mb")

    async def _post_job(self, request: web.Request) -> web.Response:
        try:
            return await self._accept_upload(request)
        except _RequestError as exc:
            reason = {400: "invalid", 413: "too_large", 415: "not_multipart", 503: "queue_full",
                      507: "disk_full"}.get(exc.status, str(exc.status))
            self.metrics.uploads_rejected.labels(reason=reason).inc()
            raise

    async def _accept_upload(self, request: web.Request) -> web.Response:
        cap, cap_key = self._upload_cap()
        too_large = _RequestError(413, f"the photo is larger than the upload limit of {cap / 2**20:g} MiB "
                                       f"({cap_key})", field="photo")
        if request.content_type != "multipart/form-data":
            raise _RequestError(415, "send the photo as multipart/form-data with the image in the field 'photo' "
                                     f"(got content type {request.content_type or 'none'!r})")
        if request.content_length is not None and request.content_length > cap + FIELD_LIMIT * 8:
            raise too_large
        photo, filename, fields = await self._read_form(request, cap, too_large)
        if photo is None:
            raise _RequestError(400, "the request has no 'photo' field; send the image as a file in the "
                                     "multipart field 'photo'", field="photo")

        given = {k: v.strip() for k, v in fields.items() if v.strip() != ""}
        try:
            options = JobOptions.model_validate(given)
        except ValidationError as exc:
            field, sentence = _options_error(exc, given)
            raise _RequestError(400, sentence, field=field) from None
        if options.interpolate and not self._interpolation_available():
            raise _RequestError(400, "interpolate is not available on this server (the RIFE weights are not "
                                     "installed); send interpolate=false", field="interpolate")

        shown_name = clean_filename(filename, "") if (filename or "").strip() else "the photo"
        g = self.cfg.generation
        try:
            info = await asyncio.to_thread(probe_photo, photo, shown_name,
                                           max_megapixels=g.max_megapixels, max_bytes=int(g.max_file_mb * 2**20))
        except InputError as exc:
            raise _RequestError(400, str(exc), field="photo") from None
        suffix = SUFFIX_BY_FORMAT.get(info.format, ".img")
        original = clean_filename(filename, suffix)
        spec = JobSpec(source="http", input_path="", original_name=original, name=safe_stem(original),
                       options=options, user=self._user(request), reply={})
        try:
            job, _ = await self.queue.submit(spec, photo, suffix=suffix)
        except QueueFull as exc:
            raise _RequestError(503, str(exc), headers={"Retry-After": str(self._retry_after())}) from None
        except DiskFull as exc:
            raise _RequestError(507, str(exc)) from None
        position = await self.queue.position(job.id)
        location = f"/api/jobs/{job.id}"
        if self.cfg.http.public_url:
            location = self.cfg.http.public_url.rstrip("/") + location
        log.info("http: job %s: %s (%dx%d %s, %d bytes) from %s, position %s", job.id, original, info.width,
                 info.height, info.format, len(photo), spec.user, position)
        return web.json_response(self._job_json(job, position), status=202, headers={"Location": location})

    async def _read_form(self, request: web.Request, cap: int,
                         too_large: _RequestError) -> tuple[bytes | None, str | None, dict[str, str]]:
        photo: bytes | None = None
        filename: str | None = None
        fields: dict[str, str] = {}
        try:
            reader = await request.multipart()
            async for part in reader:
                if not hasattr(part, "read_chunk"):
                    raise _RequestError(400, "nested multipart bodies are not supported; send flat form fields")
                name = part.name or ""
                if name == "photo":
                    if photo is not None:
                        raise _RequestError(400, "send one photo per request (the field 'photo' came twice)",
                                            field="photo")
                    filename = part.filename
                    buf = bytearray()
                    while chunk := await part.read_chunk(256 * 1024):
                        buf += chunk
                        if len(buf) > cap:
                            raise too_large
                    photo = bytes(buf)
                elif name in OPTION_FIELDS:
                    if name in fields:
                        raise _RequestError(400, f"the field {name!r} came twice", field=name)
                    buf = bytearray()
                    while chunk := await part.read_chunk(4096):
                        buf += chunk
                        if len(buf) > FIELD_LIMIT:
                            raise _RequestError(400, f"{name} is too long (at most {FIELD_LIMIT} bytes)", field=name)
                    try:
                        fields[name] = buf.decode("utf-8")
                    except UnicodeDecodeError:
                        raise _RequestError(400, f"{name} is not UTF-8 text", field=name) from None
                else:
                    raise _RequestError(400, f"unknown field {name!r}; allowed fields are photo, "
                                             f"{', '.join(OPTION_FIELDS)}", field=name)
        except _RequestError:
            raise
        except (ValueError, AssertionError, RuntimeError, LookupError) as exc:
            raise _RequestError(400, f"the multipart body could not be read: {exc}") from None
        return photo, filename, fields

    def _retry_after(self) -> int:
        last = getattr(self.worker, "last_timings", None) or {}
        return max(5, min(600, int(last.get("total") or 30)))

    # ------------------------------------------------------------------ files
    def _output_file(self, job: Job, path: str) -> Path:
        """The job's file, refused unless it lies inside the output folder."""
        out_dir = os.path.realpath(self.cfg.paths.output)
        real = os.path.realpath(path)
        if os.path.commonpath([out_dir, real]) != out_dir:
            log.warning("http: job %s: %s is outside the output folder; not served", job.id, path)
            raise _RequestError(403, f"the file of job {job.id} is outside the output folder and is not served")
        p = Path(real)
        if not p.is_file():
            raise _RequestError(410, f"the file of job {job.id} is gone (removed by housekeeping or by hand)")
        return p

    def _done_result(self, job: Job):
        if job.state != JobState.done or job.result is None:
            raise _RequestError(409, f"job {job.id} is {job.state.value}; its video exists once it is done",
                                state=job.state.value)
        return job.result

    async def _video(self, request: web.Request) -> web.StreamResponse:
        job = await self._job_or_404(request)
        p = self._output_file(job, self._done_result(job).output)
        disp = "attachment" if request.query.get("download") in ("1", "true") else "inline"
        return web.FileResponse(p, headers={
            "Content-Type": "video/mp4",
            "Content-Disposition": _content_disposition(disp, p.name),
            "Cache-Control": "private, max-age=86400",
        })

    async def _sidecar(self, request: web.Request) -> web.StreamResponse:
        job = await self._job_or_404(request)
        p = self._output_file(job, self._done_result(job).sidecar)
        return web.FileResponse(p, headers={"Content-Type": "application/json; charset=utf-8",
                                            "Cache-Control": "private, no-cache"})

    # ------------------------------------------------------------------ page
    async def _page(self, request: web.Request) -> web.StreamResponse:
        return self._web_file("index.html")

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        return self._web_file(request.match_info["name"])

    def _web_file(self, name: str) -> web.StreamResponse:
        if name not in WEB_FILES or not (WEB_DIR / name).is_file():
            raise _RequestError(404, f"no page asset named {name!r}")
        return web.FileResponse(WEB_DIR / name, headers={"Content-Type": WEB_FILES[name], **PAGE_HEADERS,
                                                         "X-Content-Type-Options": "nosniff"})

    # ------------------------------------------------------------------ events
    def _on_event(self, event: JobEvent):
        if self._subscribers:
            payload = {"kind": event.kind, "stage": event.stage, "step": event.step, "steps": event.steps,
                       "job": self._job_json(event.job)}
            data = f"event: job\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
            for q in list(self._subscribers):
                _offer(q, data)
        if event.job.source == "http" and event.kind in ("done", "failed", "cancelled"):
            return self.queue.mark_delivered(event.job.id)  # fetched by polling: final means delivered
        return None

    async def _events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        q: asyncio.Queue = asyncio.Queue(maxsize=256)
        self._subscribers.add(q)
        try:
            await resp.write(b"retry: 3000\n\n")
            while True:
                try:
                    item = await asyncio.wait_for(q.get(), 15.0)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if item is None:
                    break
                await resp.write(item)
        except ConnectionError:
            pass  # the page went away
        finally:
            self._subscribers.discard(q)
        return resp


def _offer(q: asyncio.Queue, item: Any) -> None:
    try:
        q.put_nowait(item)
    except asyncio.QueueFull:  # a slow reader misses events; the page re-reads the state anyway
        if item is None:
            try:
                q.get_nowait()
                q.put_nowait(None)
            except (asyncio.QueueEmpty, asyncio.QueueFull):
                pass


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.query.get("token") or None


def _http_sentence(exc: web.HTTPException, request: web.Request) -> str:
    if exc.status == 404:
        return f"there is nothing at {request.path}"
    if exc.status == 405:
        return f"{request.method} is not allowed on {request.path}"
    if exc.status == 413:
        return "the request body is too large"
    return exc.reason or f"HTTP {exc.status}"
