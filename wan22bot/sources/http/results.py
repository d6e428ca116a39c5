"""PUT /api/jobs/{id}/result: a worker on another box hands back how a job ended, with its files.

The body is multipart: `outcome` (a ResultOutcome as JSON), and for a done job `video` (the MP4)
and `sidecar` (its JSON). Each file part is streamed to a hidden temp file in the output folder,
chunk by chunk, so a large video is never held in memory and the final rename stays on one file
system; the whole body is capped by [queue] max_result_mb and must arrive within
[http] body_timeout_seconds. Then accept_result settles the job (once, however often it is sent).

Only a token holder may do this, even from this machine: without a token anyone on the box could
mark any job done with any video.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from pathlib import Path
from typing import IO, TYPE_CHECKING

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import ValidationError

from ...errors import DiskFull
from ...fsutil import NO_SPACE
from ...queue.outcome import ResultOutcome, UnknownJob, accept_result
from ...validation import first_problem
from .errors import RequestError

if TYPE_CHECKING:
    from .server import HttpSource

log = logging.getLogger("wan22bot.sources.http")

JOB_ID = re.compile(r"[0-9a-f]{12}")  # what JobQueue.submit hands out
OUTCOME_LIMIT = 256 * 1024  # the outcome JSON: a state, an error message and the render's numbers
CHUNK = 1024 * 1024
FILE_PARTS = {"video": ".mp4", "sidecar": ".json"}
PARTS = ("outcome", *FILE_PARTS)
DEFAULT_MAX_RESULT_MB = 4096.0
TEMP_PREFIX = ".result-"  # a part being received: .result-{job}-{random}.mp4.part in the output folder


def result_cap(src: HttpSource) -> tuple[int, float]:
    """(bytes, the setting's value in MiB)."""
    mb = float(getattr(src.cfg.queue, "max_result_mb", DEFAULT_MAX_RESULT_MB))
    return int(mb * 2**20), mb


class Results:
    """The PUT /api/jobs/{id}/result handler; reads the source's current config and queue at each request."""

    def __init__(self, src: HttpSource):
        self.src = src

    async def clear_stale(self) -> None:
        """Remove temp files of results that were arriving when the front last stopped (called at
        start, before any request is served): the workers send those results again."""
        stale = await asyncio.to_thread(lambda: list(Path(self.src.queue.output_dir).glob(f"{TEMP_PREFIX}*.part")))
        if stale:
            log.info("http: removing %d partly received results left by the last stop", len(stale))
            await asyncio.to_thread(_remove, stale)

    async def put_result(self, request: web.Request) -> web.Response:
        src = self.src
        if not src.auth_required:
            raise RequestError(403, "this server has no bearer token, and results from remote workers are only "
                                    f"taken with one: set the environment variable named by [http] token_env "
                                    f"({src.cfg.http.token_env}) to the same long random value here and on the "
                                    "workers, then restart")
        job_id = request.match_info["id"]
        if not JOB_ID.fullmatch(job_id):
            raise RequestError(404, f"there is no job with id {job_id[:40]!r} (job ids are 12 hex characters)")
        if request.content_type != "multipart/form-data":
            raise RequestError(415, "send the result as multipart/form-data with the parts 'outcome', 'video' "
                                    f"and 'sidecar' (got content type {request.content_type or 'none'!r})")
        cap, cap_mb = result_cap(src)
        too_large = RequestError(413, f"the result is larger than the limit of {cap_mb:g} MiB for results "
                                      "([queue] max_result_mb on the front)", close=True)
        if request.content_length is not None and request.content_length > cap + OUTCOME_LIMIT + 64 * 1024:
            raise too_large
        out_dir = Path(src.queue.output_dir)
        files: dict[str, Path] = {}
        try:
            limit_s = src.cfg.http.body_timeout_seconds
            try:
                # One deadline for the whole body, as for photo uploads: a worker (or anyone with the
                # token) trickling bytes must not hold a connection and a temp file for ever.
                async with asyncio.timeout(limit_s):
                    raw = await read_parts(request, job_id, out_dir, cap, too_large, files)
            except TimeoutError:
                log.info("http: the result of job %s from %s did not arrive within %g s; dropped", job_id,
                         request.remote, limit_s)
                raise RequestError(408, f"the result did not arrive within {limit_s:g} seconds "
                                        "(http.body_timeout_seconds on the front); check the connection and send "
                                        "it again", close=True) from None
            outcome = parse_outcome(raw, job_id)
            try:
                accepted = await accept_result(src.queue, outcome, files.get("video"), files.get("sidecar"))
            except UnknownJob as exc:
                raise RequestError(404, str(exc)) from None
            except DiskFull as exc:
                raise RequestError(507, str(exc)) from None
            except ValueError as exc:
                raise RequestError(400, str(exc)) from None
        finally:
            await asyncio.to_thread(_remove, files.values())  # accept_result has moved or removed them already
        return web.json_response({"stored": accepted.stored, "state": accepted.state})



async def read_parts(request: web.Request, job_id: str, out_dir: Path, cap: int, too_large: RequestError,
                     files: dict[str, Path]) -> bytes | None:
    """Stream the file parts into `files` (filled as they are opened, so the caller can always
    remove them) and return the outcome part's bytes (None when it is missing)."""
    raw: bytes | None = None
    seen: set[str] = set()
    total = 0
    try:
        reader = await request.multipart()
        async for part in reader:
            if not hasattr(part, "read_chunk"):
                raise RequestError(400, "nested multipart bodies are not supported; send flat parts")
            name = part.name or ""
            if name not in PARTS:
                raise RequestError(400, f"unknown part {name[:40]!r}; a result has the parts "
                                        f"{', '.join(PARTS)}", field=name[:40])
            if name in seen:
                raise RequestError(400, f"the part {name!r} came twice", field=name)
            seen.add(name)
            if name == "outcome":
                buf = bytearray()
                while chunk := await part.read_chunk(64 * 1024):
                    buf += chunk
                    if len(buf) > OUTCOME_LIMIT:
                        raise RequestError(400, f"the outcome part is longer than {OUTCOME_LIMIT} bytes",
                                           field="outcome")
                raw = bytes(buf)
                continue
            path = out_dir / f"{TEMP_PREFIX}{job_id}-{uuid.uuid4().hex[:8]}{FILE_PARTS[name]}.part"
            f = await asyncio.to_thread(_open_temp, path)
            files[name] = path
            try:
                while chunk := await part.read_chunk(CHUNK):
                    total += len(chunk)
                    if total > cap:
                        raise too_large
                    await asyncio.to_thread(f.write, chunk)
                await asyncio.to_thread(_flush, f)
            finally:
                await asyncio.to_thread(f.close)
    except RequestError:
        raise
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise RequestError(507, f"no space left in the output folder {out_dir} to receive the result of "
                                    f"job {job_id}; free some space (the worker keeps retrying)") from None
        raise
    except HttpProcessingError:
        raise RequestError(400, "the multipart body has a malformed part header; send a standard "
                                "multipart/form-data body") from None
    except (ValueError, AssertionError, RuntimeError, LookupError) as exc:
        raise RequestError(400, f"the multipart body could not be read: {exc}") from None
    return raw


def parse_outcome(raw: bytes | None, job_id: str) -> ResultOutcome:
    if raw is None:
        raise RequestError(400, "the request has no 'outcome' part; send the outcome JSON (job, state, worker, "
                                "...) in the part 'outcome'", field="outcome")
    try:
        outcome = ResultOutcome.model_validate_json(raw)
    except ValidationError as exc:
        problem = first_problem(exc)
        where = f"outcome.{problem.key}" if problem.key else "outcome"
        if problem.unknown_key:
            sentence = f"unknown field {where!r} in the outcome"
        elif problem.kind.startswith("json"):
            sentence = f"the outcome part is not valid JSON: {problem.message}"
        else:
            sentence = problem.explain(where)
        raise RequestError(400, sentence, field="outcome") from None
    if outcome.job != job_id:
        raise RequestError(400, f"the outcome is for job {outcome.job[:40]!r} but was sent to job {job_id}; send "
                                "it to /api/jobs/{its id}/result", field="outcome")
    return outcome


def _open_temp(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "xb")


def _flush(f: IO[bytes]) -> None:
    f.flush()
    os.fsync(f.fileno())


def _remove(paths) -> None:
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("http: could not remove the temporary file %s: %s", p, exc)
