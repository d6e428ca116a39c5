"""Worker side of handing a result back: PUT /api/jobs/{id}/result on the front, until it has it.

A result is the point of minutes of GPU time, so a front that is restarting, overloaded or briefly
unreachable is waited for (backoff from 1 s up to 30 s between tries; longer when a 408, 429 or 5xx
carries a Retry-After, in seconds or as a date, but never more than 30 s) rather than the job lost;
the stream entry is only acknowledged once this returns. A wrong or missing token is a setting a
person has to fix: those tries go on too, with an error logged once a minute naming the setting.
Only answers that no retry can change end it: 2xx (stored, or already stored by a duplicate),
404 (the front does not know the job) and 400/413 (the front refuses this result as it is: raised
as BadResult, so the caller can report the job failed with that reason instead of leaving it
running on the front).

The files are streamed from disk (never read whole into memory) and the token is read from the
environment at each try, so a token fixed while the worker waits is used at the next one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from contextlib import ExitStack
from datetime import timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

import aiohttp

from ..config import Config
from .outcome import Accepted, BadResult, ResultOutcome

log = logging.getLogger(__name__)

MIN_DELAY = 1.0
MAX_DELAY = 30.0
NAG_SECONDS = 60.0  # a problem only a person can fix is logged this often while the tries go on
RETRY_STATUSES = frozenset({408, 429})  # and every 5xx
FINAL_REFUSALS = frozenset({400, 413})
# connect quickly, but give the front time to store a large video (fsync) before it answers
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=300.0)


def front_base(cfg: Config) -> str:
    """The front's base URL (`[queue] front_url`, else its `[http]` address); a ConfigError asking for
    front_url when [http] host only says "every interface"."""
    from ..worker_role import front_url  # one definition for the worker's checks and its uploads

    return front_url(cfg)


class ResultUploader:
    """`deliver(outcome, video, sidecar)` for RemoteQueue: returns once the front has settled the job
    (the front's Accepted) or does not know it (None, logged); raises BadResult when the front
    refuses this outcome for good (400, 413), with the front's reason."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.base = front_base(cfg)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _token(self) -> str | None:
        return (os.environ.get(self.cfg.http.token_env) or "").strip() or None

    async def deliver(self, outcome: ResultOutcome, video: Path | None, sidecar: Path | None) -> Accepted | None:
        outcome, video, sidecar = await asyncio.to_thread(_present, outcome, video, sidecar)
        url = f"{self.base}/api/jobs/{outcome.job}/result"
        what = f"job {outcome.job}: the {outcome.state} result"
        delay = MIN_DELAY
        nagged = -NAG_SECONDS  # monotonic time of the last error logged for a problem that lasts
        tries = 0
        while True:
            tries += 1
            problem = None
            retry_after = 0.0
            try:
                status, body, headers = await self._put(url, outcome, video, sidecar)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"the front at {self.base} cannot be reached ({type(exc).__name__}: {exc or 'no detail'})"
                persistent = False
            else:
                error = _error_of(body)
                if 200 <= status < 300:
                    accepted = _accepted(body)
                    log.info("%s reached the front after %d %s: %s", what, tries, "try" if tries == 1 else "tries",
                             "stored" if accepted.stored else f"it already had the job ({accepted.state}); "
                                                                "nothing changed")
                    return accepted
                if status == 404:
                    log.warning("%s: the front at %s does not know the job (%s); treated as settled", what, self.base,
                                error)
                    return None
                if status in FINAL_REFUSALS:
                    # raised, not returned: the caller still owes the front an outcome it can take
                    # (RemoteQueue reports a refused done result as failed, with this reason)
                    reason = (f"the front at {self.base} refused the {outcome.state} result from {outcome.worker} "
                              f"(HTTP {status}: {error})"
                              + ("; raise [queue] max_result_mb on the front to take results this size"
                                 if status == 413 else ""))
                    log.error("job %s: %s; not sent again as it is", outcome.job, reason)
                    raise BadResult(reason)
                if status in (401, 403):
                    problem = (f"the front refuses the token (HTTP {status}: {error}); the worker must send the "
                               f"front's [http] token in the environment variable {self.cfg.http.token_env} "
                               "([http] token_env) or the credential http-token")
                    persistent = True
                elif status in RETRY_STATUSES or status >= 500:
                    problem = f"the front answered HTTP {status} ({error})"
                    if status == 408:
                        problem += ("; if this repeats, the result is too slow to send within the front's "
                                    "[http] body_timeout_seconds: raise it on the front")
                    persistent = status == 408
                    retry_after = _seconds(headers.get("Retry-After"))
                else:  # 415, 421...: a setting on one side is wrong; nothing is lost while it gets fixed
                    problem = f"the front answered HTTP {status} ({error})"
                    persistent = True
            now = time.monotonic()
            if persistent and now - nagged >= NAG_SECONDS:
                nagged = now
                log.error("%s cannot be delivered: %s; trying again every %g s or less", what, problem, MAX_DELAY)
            elif not persistent:
                log.warning("%s not delivered (try %d): %s; next try in %g s", what, tries, problem,
                            max(delay, min(retry_after, MAX_DELAY)))
            await asyncio.sleep(max(delay, min(retry_after, MAX_DELAY)))
            delay = min(MAX_DELAY, delay * 2)

    async def _put(self, url: str, outcome: ResultOutcome, video: Path | None,
                   sidecar: Path | None) -> tuple[int, bytes, dict[str, str]]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        headers = {}
        token = self._token()
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        with ExitStack() as files:
            form = aiohttp.MultipartWriter("form-data")
            part = form.append(outcome.model_dump_json(), {"Content-Type": "application/json"})
            part.set_content_disposition("form-data", name="outcome")
            for name, path, ctype in (("sidecar", sidecar, "application/json"), ("video", video, "video/mp4")):
                if path is None:
                    continue
                # aiohttp reads an open file in chunks off the loop as it sends it
                f = files.enter_context(await asyncio.to_thread(open, path, "rb"))
                part = form.append(f, {"Content-Type": ctype})
                part.set_content_disposition("form-data", name=name, filename=path.name)
            async with self._session.put(url, data=form, headers=headers) as resp:
                body = await resp.read()
                return resp.status, body, dict(resp.headers)


def _present(outcome: ResultOutcome, video: Path | None,
             sidecar: Path | None) -> tuple[ResultOutcome, Path | None, Path | None]:
    """A file that vanished (the results folder cleared by hand) cannot be retried into existence:
    a done job without its video is reported failed, with the reason, instead of retried for ever."""
    video = Path(video) if video is not None else None
    sidecar = Path(sidecar) if sidecar is not None else None
    if sidecar is not None and not sidecar.is_file():
        log.warning("job %s: the sidecar %s is gone; the front writes one from the result", outcome.job, sidecar)
        sidecar = None
    if video is not None and not video.is_file():
        if outcome.state == "done":
            log.error("job %s: the rendered video %s is gone before it reached the front; reported failed",
                      outcome.job, video)
            outcome = outcome.model_copy(update={
                "state": "failed", "result": None,
                "error": f"the video was rendered on {outcome.worker} but removed there before it was sent"})
        video = None
    return outcome, video, sidecar


def _error_of(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"]
    text = body[:200].decode("utf-8", errors="replace").strip()
    return text or "no message"


def _accepted(body: bytes) -> Accepted:
    try:
        data = json.loads(body)
        return Accepted(bool(data["stored"]), str(data["state"]))
    except (ValueError, KeyError, TypeError):
        return Accepted(True, "unknown")  # a 2xx is the front's word that it has the result


def _seconds(value: str | None) -> float:
    """Retry-After as seconds to wait: a number of seconds, or an HTTP date (the form a proxy in front
    of the front may send); 0 for anything else, which leaves the wait to the backoff."""
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return 0.0
    if when.tzinfo is None:  # HTTP dates are always GMT; "-0000" parses without a zone
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - time.time())
