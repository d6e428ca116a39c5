"""POST /api/jobs: the multipart body streamed with caps, the options validated, the photo checked, spooled."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING
from urllib.parse import unquote

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import ValidationError

from ...config import Config, check_model_frames
from ...errors import DiskFull, InputError
from ...images import check_photo
from ...jobs import JobOptions, JobSpec
from ...queue import QueueFull
from ...queue.jobqueue import safe_stem
from ...validation import first_problem
from .errors import RequestError

if TYPE_CHECKING:
    from .server import HttpSource

log = logging.getLogger("wan22bot.sources.http")

OPTION_FIELDS = tuple(JobOptions.model_fields)  # prompt, negative_prompt, frames, seed, interpolate, preset, steps
FIELD_LIMIT = 16 * 1024  # bytes for one text field (prompts are at most 2000 characters)
REJECT_REASONS = {400: "invalid", 408: "too_slow", 413: "too_large", 415: "not_multipart", 503: "queue_full",
                  507: "disk_full"}
BUSY_RETRY_SECONDS = 5  # uploads take seconds; a client told to wait this long usually gets in


def control_character(text: str) -> str | None:
    """The first C0/C1 control character or DEL in `text` as U+XXXX, or None."""
    for ch in text:
        o = ord(ch)
        if o < 0x20 or 0x7F <= o <= 0x9F:
            return f"U+{o:04X}"
    return None


def check_filename(name: str | None) -> None:
    """Refuse a file name with control characters, raw or percent-encoded (how browsers send CR/LF)."""
    if not name:
        return
    bad = control_character(name) or control_character(unquote(name))
    if bad is not None:
        raise RequestError(400, f"the file name of the photo contains a control character ({bad}); rename the "
                                "file without control characters and send it again", field="photo")


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


def options_error(exc: ValidationError, given: dict[str, str]) -> tuple[str, str]:
    """The first problem in the options as (field, one human sentence naming the field)."""
    problem = first_problem(exc)
    field = problem.key or "options"
    if problem.unknown_key:
        return field, f"unknown field {field!r}; allowed fields are photo, {', '.join(OPTION_FIELDS)}"
    value = given.get(field)
    return field, problem.explain(field, repr(value) if value is not None else "")


def upload_cap(cfg: Config) -> tuple[int, str]:
    """(bytes, the setting that limits them)."""
    http_cap = int(cfg.http.max_upload_mb * 2**20)
    gen_cap = int(cfg.generation.max_file_mb * 2**20)
    return (http_cap, "http.max_upload_mb") if http_cap <= gen_cap else (gen_cap, "generation.max_file_mb")


class Uploads:
    """The POST /api/jobs handler; reads the source's current config and queue at each request."""

    def __init__(self, src: HttpSource):
        self.src = src
        self.active = 0  # uploads being received now

    async def post_job(self, request: web.Request) -> web.Response:
        limit = self.src.cfg.http.max_concurrent_uploads
        if self.active >= limit:
            self.src.metrics.uploads_rejected.labels(reason="busy").inc()
            raise RequestError(503, f"{self.active} uploads are already being received, the most this server "
                                    f"takes at once (http.max_concurrent_uploads = {limit}); try again in a few "
                                    "seconds", headers={"Retry-After": str(BUSY_RETRY_SECONDS)}, close=True)
        self.active += 1
        try:
            return await self._accept(request)
        except RequestError as exc:
            self.src.metrics.uploads_rejected.labels(reason=REJECT_REASONS.get(exc.status, str(exc.status))).inc()
            raise
        finally:
            self.active -= 1

    async def _accept(self, request: web.Request) -> web.Response:
        src = self.src
        cap, cap_key = upload_cap(src.cfg)
        too_large = RequestError(413, f"the photo is larger than the upload limit of {cap / 2**20:g} MiB "
                                      f"({cap_key})", field="photo")
        if request.content_type != "multipart/form-data":
            raise RequestError(415, "send the photo as multipart/form-data with the image in the field 'photo' "
                                    f"(got content type {request.content_type or 'none'!r})")
        if request.content_length is not None and request.content_length > cap + FIELD_LIMIT * 8:
            raise too_large
        limit_s = src.cfg.http.body_timeout_seconds
        try:
            # One deadline for the whole body: a client trickling a byte a second must not hold a
            # connection, its buffer and an upload slot for ever.
            async with asyncio.timeout(limit_s):
                photo, filename, fields = await read_form(request, cap, too_large)
        except TimeoutError:
            log.info("http: an upload from %s did not arrive within %g s; dropped", request.remote, limit_s)
            raise RequestError(408, f"the upload did not arrive within {limit_s:g} seconds "
                                    "(http.body_timeout_seconds); check the connection and send it again",
                               close=True) from None
        if photo is None:
            raise RequestError(400, "the request has no 'photo' field; send the image as a file in the "
                                    "multipart field 'photo'", field="photo")
        check_filename(filename)

        given = {k: v.strip() for k, v in fields.items() if v.strip() != ""}
        try:
            options = JobOptions.model_validate(given)
        except ValidationError as exc:
            field, sentence = options_error(exc, given)
            raise RequestError(400, sentence, field=field) from None
        try:
            check_model_frames(options.frames, src.cfg.model.kind)
        except ValueError as exc:
            raise RequestError(400, str(exc), field="frames") from None
        if options.interpolate and not src.interpolation_available():
            raise RequestError(400, "interpolate is not available on this server (the RIFE weights are not "
                                    "installed); send interpolate=false", field="interpolate")

        shown_name = clean_filename(filename, "") if (filename or "").strip() else "the photo"
        g = src.cfg.generation
        try:
            info = await asyncio.to_thread(check_photo, photo, shown_name,
                                           max_megapixels=g.max_megapixels, max_bytes=int(g.max_file_mb * 2**20))
        except InputError as exc:
            raise RequestError(400, str(exc), field="photo") from None
        suffix = info.suffix
        original = clean_filename(filename, suffix)
        spec = JobSpec(source="http", input_path="", original_name=original, name=safe_stem(original),
                       options=options, user=src.user(request), reply={})
        try:
            job, _ = await src.queue.submit(spec, photo, suffix=suffix)
        except QueueFull as exc:
            raise RequestError(503, str(exc), headers={"Retry-After": str(src.retry_after())}) from None
        except DiskFull as exc:
            raise RequestError(507, str(exc)) from None
        position = await src.queue.position(job.id)
        location = f"/api/jobs/{job.id}"
        if src.cfg.http.public_url:
            location = src.cfg.http.public_url.rstrip("/") + location
        log.info("http: job %s: %s (%dx%d %s, %d bytes) from %s, position %s", job.id, original, info.width,
                 info.height, info.format, len(photo), spec.user, position)
        return web.json_response(src.job_json(job, position), status=202, headers={"Location": location})


async def read_form(request: web.Request, cap: int,
                    too_large: RequestError) -> tuple[bytes | None, str | None, dict[str, str]]:
    photo: bytes | None = None
    filename: str | None = None
    fields: dict[str, str] = {}
    try:
        reader = await request.multipart()
        async for part in reader:
            if not hasattr(part, "read_chunk"):
                raise RequestError(400, "nested multipart bodies are not supported; send flat form fields")
            name = part.name or ""
            if name == "photo":
                if photo is not None:
                    raise RequestError(400, "send one photo per request (the field 'photo' came twice)",
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
                    raise RequestError(400, f"the field {name!r} came twice", field=name)
                buf = bytearray()
                while chunk := await part.read_chunk(4096):
                    buf += chunk
                    if len(buf) > FIELD_LIMIT:
                        raise RequestError(400, f"{name} is too long (at most {FIELD_LIMIT} bytes)", field=name)
                try:
                    fields[name] = buf.decode("utf-8")
                except UnicodeDecodeError:
                    raise RequestError(400, f"{name} is not UTF-8 text", field=name) from None
            else:
                raise RequestError(400, f"unknown field {name!r}; allowed fields are photo, "
                                        f"{', '.join(OPTION_FIELDS)}", field=name)
    except RequestError:
        raise
    except HttpProcessingError as exc:
        # aiohttp refuses a part header holding NUL, ESC, DEL or another control character.
        # The message quotes the header as a bytes repr, so a control character shows as \xNN or \t.
        if any(esc in str(exc.message) for esc in ("\\x", "\\t", "\\r", "\\n")):
            raise RequestError(400, "a header of the multipart body (usually the photo's file name) contains a "
                                    "control character; rename the file without control characters and send it "
                                    "again", field="photo") from None
        raise RequestError(400, "the multipart body has a malformed part header; send a standard "
                                "multipart/form-data body") from None
    except (ValueError, AssertionError, RuntimeError, LookupError) as exc:
        raise RequestError(400, f"the multipart body could not be read: {exc}") from None
    return photo, filename, fields
