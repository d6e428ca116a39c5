"""Getting a finished job back to Discord: the MP4 with its timings card, or why it failed.

Route, in order:

1. An interaction whose token has more than a minute left: the status message (@original) gets
   its final text, then the video is a followup with the embed. A 401/50027 (or any refusal of the
   webhook) falls through to 2.
2. The channel the request came from, mentioning the user (a reply to their message for watched
   channels).

A video over the target's upload limit is re-encoded in a thread (fit.py); when it cannot be made
to fit, the message links the video if ``http.public_url`` is set (a signed link that expires after
``http.link_days``: ``{public_url}/v/{id}?exp=...&sig=...``, see links.py), or says it is too big.

``deliver`` returns True when the job is settled (delivered, or undeliverable for good: no such
channel, no permission) and False when it should be tried again later (Discord 5xx, network).
Retries are bounded: after ``MAX_DELIVERY_ATTEMPTS`` failed tries (about two hours with the
source's retry delays) the job is marked undeliverable, with the last reason, in its API record.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import discord

from ... import links
from ...jobs import JobState
from ...queue import Job
from . import format as fmt
from .fit import fit_video
from .outbox import too_large, token_dead
from .target import ReplyTarget
from .tracker import TRANSIENT, Tracker

if TYPE_CHECKING:
    from .source import DiscordSource

log = logging.getLogger(__name__)

MAX_DELIVERY_ATTEMPTS = 12  # 5 s, 15 s, 1 min, 5 min, then every 15 min: about two hours in all


class Sent(enum.Enum):
    ok = "ok"  # posted
    fallback = "fallback"  # this route is closed: try the channel
    retry = "retry"  # transient: try again later
    give_up = "give_up"  # permanent: log it and stop
    too_large = "too_large"  # 413 / 40005: the file is over what this route accepts


class Deliverer:
    def __init__(self, owner: "DiscordSource"):
        self.owner = owner
        self._fit_lock = asyncio.Lock()  # one re-encode at a time: it is CPU- and memory-heavy
        self.last_failure: dict[str, str] = {}  # job id -> why its last try is to be retried

    async def gave_up(self, job: Job) -> bool:
        """Count a failed try (deliver returned False or raised); True when that was the last one
        allowed and the job is now settled as undeliverable."""
        why = self.last_failure.pop(job.id, "delivery failed (see the log)")
        return await self.owner.queue.delivery_failed(job.id, why, MAX_DELIVERY_ATTEMPTS)

    @property
    def outbox(self):
        return self.owner.outbox

    def _hook_usable(self, t: ReplyTarget, tr: Tracker | None) -> bool:
        return t.token_usable(time.time()) and not (tr is not None and tr.token_dead)

    async def deliver(self, job: Job, tr: Tracker | None = None) -> bool:
        try:
            t = ReplyTarget.from_dict(job.spec.reply)
        except (KeyError, ValueError, TypeError) as exc:
            log.error("job %s: its Discord reply target is unusable (%s); the result stays on disk", job.id, exc)
            return True
        if job.state == JobState.done and job.result is not None:
            src = Path(job.result.output)
            if await asyncio.to_thread(src.is_file):
                return await self._video(job, t, tr, src)
            job = dataclasses.replace(job, state=JobState.failed,
                                      error="it finished, but its video file is no longer on the server")
        return await self._text(job, t, tr)

    # ------------------------------------------------------------------ failed / cancelled
    async def _text(self, job: Job, t: ReplyTarget, tr: Tracker | None) -> bool:
        text = fmt.final_text(job, where="")
        if t.kind == "interaction" and self._hook_usable(t, tr):
            try:
                await self.outbox.edit_original(t, text)
                return True
            except discord.HTTPException as exc:
                if not token_dead(exc) and exc.status >= 500:
                    return False
                log.info("job %s: could not update the interaction (%s %s); telling the channel", job.id,
                         exc.status, exc.code)
            except TRANSIENT:
                return False
        elif t.kind == "message" and tr is not None and tr.status_id is not None and not tr.status_broken:
            if await tr.put(text):
                return True
        return await self._post(job, t, "channel", fmt.notice(t.user_id, text)) is not Sent.retry

    # ------------------------------------------------------------------ done
    async def _video(self, job: Job, t: ReplyTarget, tr: Tracker | None, src: Path) -> bool:
        final = fmt.final_text(job)
        if t.kind == "interaction" and self._hook_usable(t, tr):
            # The status message takes its last state first; that also resolves a still-deferred
            # (ephemeral) response, so the video below is a message of its own that everyone sees.
            hook_ok = True
            try:
                await self.outbox.edit_original(t, final)
            except discord.HTTPException as exc:
                if token_dead(exc):
                    hook_ok = False
                elif exc.status >= 500:
                    return False
            except TRANSIENT:
                return False
            if hook_ok:
                sent = await self._send_video(job, t, "webhook", src, t.size_limit)
                if sent is not Sent.fallback:
                    return sent is not Sent.retry
        elif (t.kind == "interaction" and t.expires_at is not None and time.time() < t.expires_at - 5
              and (tr is None or tr.can_edit())):
            # too little token time left to trust it with the upload; the status message may still
            # take its last state, pointing at the channel
            try:
                await self.outbox.edit_original(t, fmt.final_text(job, where="channel"))
            except (discord.HTTPException, *TRANSIENT):
                pass
        elif t.kind == "message" and tr is not None and tr.status_id is not None:
            await tr.put(final)
        limit = min(t.size_limit, self.outbox.channel_size_limit(t))
        return await self._send_video(job, t, "channel", src, limit) is not Sent.retry

    async def _send_video(self, job: Job, t: ReplyTarget, route: str, src: Path, limit: int) -> Sent:
        name = fmt.name_of(job)
        size = (await asyncio.to_thread(src.stat)).st_size
        upload, note, temp = await self._fit(job, src, size, limit)
        try:
            embed = fmt.result_embed(job)
            content = fmt.result_content(t.user_id, name, note)
            sent = await self._post(job, t, route, content, embed=embed, file=upload)
            if sent is Sent.too_large:  # the limit we were told was too generous: say so instead
                content = fmt.result_content(t.user_id, name, fmt.too_big_note(size, limit, self.link(job)))
                sent = await self._post(job, t, route, content, embed=embed)
            return Sent.give_up if sent is Sent.too_large else sent
        finally:
            if temp is not None:
                await asyncio.to_thread(temp.unlink, True)

    async def _fit(self, job: Job, src: Path, size: int, limit: int) -> tuple[Path | None, str | None, Path | None]:
        if size <= limit:
            return src, None, None
        dst = self.owner.work_dir / f"{job.id}-{limit}.mp4"
        async with self._fit_lock:
            log.info("job %s: %d bytes is over the %d-byte upload limit; re-encoding to fit", job.id, size, limit)
            try:
                preset = getattr(self.owner.cfg.generation, "encoder_preset", "medium")
                fitted = await asyncio.to_thread(fit_video, src, dst, limit, preset=preset)
            except Exception:
                log.exception("job %s: re-encoding to fit the upload limit failed", job.id)
                fitted = None
        if fitted is None:
            return None, fmt.too_big_note(size, limit, self.link(job)), None
        note = fmt.fitted_note(size, fitted.bytes, limit, fitted.width, fitted.height, fitted.bitrate, fitted.scaled)
        return fitted.path, note, fitted.path

    def link(self, job: Job) -> str | None:
        # Signed and expiring: a Discord message cannot carry the API's bearer token.
        return links.video_link(self.owner.cfg, job.id)

    async def _post(self, job: Job, t: ReplyTarget, route: str, content: str, *, embed: discord.Embed | None = None,
                    file: Path | None = None) -> Sent:
        filename = f"{job.spec.name}.mp4"
        try:
            if route == "webhook":
                await self.outbox.followup(t, content, embed=embed, file=file, filename=filename)
            else:
                await self.outbox.to_channel(t, content, embed=embed, file=file, filename=filename)
            return Sent.ok
        except discord.HTTPException as exc:
            if exc.status >= 500 or exc.status == 429:
                log.warning("job %s: Discord answered %s; the result is sent again later", job.id, exc.status)
                self.last_failure[job.id] = f"Discord answered {exc.status} {exc.text or ''}".strip()
                return Sent.retry
            if too_large(exc) and file is not None:
                log.warning("job %s: Discord says the video is too large for this %s", job.id, route)
                return Sent.too_large
            if route == "webhook":
                log.info("job %s: the interaction webhook refused the result (%s %s); using the channel",
                         job.id, exc.status, exc.code)
                return Sent.fallback
            log.error("job %s: Discord refused the result in channel %s (%s %s: %s); giving up", job.id,
                      t.channel_id, exc.status, exc.code, exc.text)
            return Sent.give_up
        except TRANSIENT as exc:
            log.warning("job %s: sending the result failed (%s); it is sent again later", job.id,
                        type(exc).__name__)
            self.last_failure[job.id] = f"sending to Discord failed: {type(exc).__name__}"
            return Sent.retry
