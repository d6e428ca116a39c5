"""The read and cancel routes: health, metrics, status, jobs, result files and the status page."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from ... import __version__, links
from ...config import max_frames
from ...jobs import JobState
from ...metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ...metrics import gpu_memory
from ...queue import Job
from .errors import RequestError
from .uploads import upload_cap

if TYPE_CHECKING:
    from .server import HttpSource

log = logging.getLogger("wan22bot.sources.http")

WEB_DIR = Path(__file__).resolve().parent.parent.parent / "web"
WEB_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
SOURCES = ("watch", "http", "discord", "cli")
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def job_json(job: Job, position: int | None = None) -> dict[str, Any]:
    out = job.to_api(position)
    base = f"/api/jobs/{job.id}"
    links = {"self": base}
    if job.state == JobState.done and job.result is not None:
        links["video"] = f"{base}/video"
        links["sidecar"] = f"{base}/sidecar"
    out["links"] = links
    return out


def content_disposition(kind: str, filename: str) -> str:
    ascii_name = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in filename)
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"


class Routes:
    """Handlers that read the source's current config, queue and worker at each request."""

    def __init__(self, src: HttpSource):
        self.src = src

    # ------------------------------------------------------------------ health, metrics, status
    async def healthz(self, request: web.Request) -> web.Response:
        try:
            counts = await asyncio.wait_for(self.src.queue.counts(), 5.0)
        except TimeoutError:
            return web.json_response({"status": "degraded", "error": "the job journal is not answering"}, status=503)
        # the worker's own verdict (stuck or dead GPU thread): 503, as the systemd watchdog sees it
        health = getattr(self.src.worker, "health", None)
        worker = health().to_dict() if health is not None else None
        ok = worker is None or worker["ok"]
        return web.json_response({
            "status": "ok" if ok else "unhealthy",
            "model_loaded": self.src.model_loaded(),
            "queue_depth": counts.get("queued", 0),
            "running": counts.get("running", 0),
            **({"worker": worker} if worker is not None else {}),
        }, status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = await self.src.metrics.render()
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def status(self, request: web.Request) -> web.Response:
        src = self.src
        counts = await src.queue.counts()
        running = await self._running_job()
        w = src.worker
        gen = getattr(getattr(w, "renderer", None), "generator", None)
        g = src.cfg.generation
        body = {
            "version": __version__,
            "uptime_seconds": round(time.time() - src.started_at, 1),
            "model": {
                "kind": src.cfg.model.kind,
                "loaded": src.model_loaded(),
                "device": str(gen.device) if gen is not None and getattr(gen, "device", None) is not None else None,
                "last_load_seconds": getattr(w, "last_load_seconds", None),
            },
            "gpu": gpu_memory() or None,
            "queue": {"counts": counts, "depth": counts.get("queued", 0), "max_length": src.queue.max_length},
            "running": running,
            "last_timings": getattr(w, "last_timings", None),
            # [gpus]: one entry per worker process (device, state, busy, job, memory); none in-process
            "gpus": {"mode": src.cfg.gpus.mode, "devices": src.cfg.devices},
            "workers": w.states() if hasattr(w, "states") else None,
            "defaults": {
                "preset": g.preset,
                "frames": g.frames,
                "fps": g.fps,
                "interpolate": src.cfg.interpolation.enabled,
                "interpolate_available": src.interpolation_available(),
            },
            "limits": {"max_upload_mb": upload_cap(src.cfg)[0] / 2**20, "max_megapixels": g.max_megapixels,
                       "max_frames": max_frames(src.cfg.model.kind)},
            "auth": src.auth_required,
        }
        return web.json_response(body)

    async def _running_job(self) -> dict[str, Any] | None:
        job = getattr(self.src.worker, "current", None)
        if job is None:
            found = await self.src.queue.list(states=[JobState.running], limit=1)
            job = found[0] if found else None
        if job is None:
            return None
        if job.id in self.src.queue.live:
            job.progress = self.src.queue.live[job.id]
        return job_json(job)

    # ------------------------------------------------------------------ jobs
    async def _job_or_404(self, request: web.Request) -> Job:
        job_id = request.match_info["id"]
        job = await self.src.queue.get(job_id)
        if job is None:
            raise RequestError(404, f"there is no job with id {job_id!r}")
        return job

    async def list_jobs(self, request: web.Request) -> web.Response:
        q = request.query
        states = None
        if q.get("state"):
            states = []
            for s in q["state"].split(","):
                try:
                    states.append(JobState(s.strip()))
                except ValueError:
                    raise RequestError(400, f"state must be one of {', '.join(x.value for x in JobState)} "
                                            f"(comma-separated), got {s.strip()!r}", field="state") from None
        source = q.get("source") or None
        if source is not None and source not in SOURCES:
            raise RequestError(400, f"source must be one of {', '.join(SOURCES)}, got {source!r}", field="source")
        limit = 100
        if q.get("limit"):
            try:
                limit = int(q["limit"])
            except ValueError:
                limit = -1
            if not 1 <= limit <= 1000:
                raise RequestError(400, f"limit must be a whole number from 1 to 1000, got {q['limit']!r}",
                                   field="limit")
        queue = self.src.queue
        jobs = await queue.list(states=states, source=source, limit=limit)
        positions = await queue.positions() if any(j.state == JobState.queued for j in jobs) else {}
        return web.json_response([job_json(j, positions.get(j.id)) for j in jobs])

    async def get_job(self, request: web.Request) -> web.Response:
        job = await self._job_or_404(request)
        pos = await self.src.queue.position(job.id) if job.state == JobState.queued else None
        return web.json_response(job_json(job, pos))

    async def cancel_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        queue = self.src.queue
        outcome = await queue.cancel(job_id)
        if outcome == "unknown":
            raise RequestError(404, f"there is no job with id {job_id!r}")
        job = await queue.get(job_id)
        if outcome == "final":
            state = job.state.value if job else "final"
            raise RequestError(409, f"job {job_id} is already {state}; there is nothing to cancel", state=state)
        log.info("http: job %s: cancel requested by %s (%s)", job_id, self.src.user(request), outcome)
        return web.json_response({"id": job_id, "outcome": outcome, "job": job_json(job) if job else None})

    # ------------------------------------------------------------------ files
    def _output_file(self, job: Job, path: str) -> Path:
        """The job's file, refused unless it lies inside the output folder."""
        out_dir = os.path.realpath(self.src.cfg.paths.output)
        real = os.path.realpath(path)
        if os.path.commonpath([out_dir, real]) != out_dir:
            log.warning("http: job %s: %s is outside the output folder; not served", job.id, path)
            raise RequestError(403, f"the file of job {job.id} is outside the output folder and is not served")
        p = Path(real)
        if not p.is_file():
            raise RequestError(410, f"the file of job {job.id} is gone (removed by housekeeping or by hand)")
        return p

    @staticmethod
    def _done_result(job: Job):
        if job.state != JobState.done or job.result is None:
            raise RequestError(409, f"job {job.id} is {job.state.value}; its video exists once it is done",
                               state=job.state.value)
        return job.result

    async def video(self, request: web.Request) -> web.StreamResponse:
        job = await self._job_or_404(request)
        p = self._output_file(job, self._done_result(job).output)
        disp = "attachment" if request.query.get("download") in ("1", "true") else "inline"
        return web.FileResponse(p, headers={
            "Content-Type": "video/mp4",
            "Content-Disposition": content_disposition(disp, p.name),
            "Cache-Control": "private, max-age=86400",
        })

    async def signed_video(self, request: web.Request) -> web.StreamResponse:
        """GET /v/{id}?exp=&sig=: the video without the token, for links posted where no token can go."""
        why = links.refusal(self.src.link_secret, request.match_info["id"], request.query.get("exp"),
                            request.query.get("sig"))
        if why is not None:
            raise RequestError(403, why)
        return await self.video(request)

    async def sidecar(self, request: web.Request) -> web.StreamResponse:
        job = await self._job_or_404(request)
        p = self._output_file(job, self._done_result(job).sidecar)
        return web.FileResponse(p, headers={"Content-Type": "application/json; charset=utf-8",
                                            "Cache-Control": "private, no-cache"})

    # ------------------------------------------------------------------ page
    async def page(self, request: web.Request) -> web.StreamResponse:
        return web_file("index.html")

    async def asset(self, request: web.Request) -> web.StreamResponse:
        return web_file(request.match_info["name"])


def web_file(name: str) -> web.StreamResponse:
    if name not in WEB_FILES or not (WEB_DIR / name).is_file():
        raise RequestError(404, f"no page asset named {name!r}")
    return web.FileResponse(WEB_DIR / name, headers={"Content-Type": WEB_FILES[name], **PAGE_HEADERS,
                                                     "X-Content-Type-Options": "nosniff"})
