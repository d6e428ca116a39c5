"""Who may ask, where, and how often. Pure functions over plain data: no discord objects, no I/O.

Each check returns None (allowed) or one sentence for the person asking. Nothing is queued when a
check refuses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePath

from ...config import DiscordConfig
from .format import human_bytes

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jfif"}
HOUR = 3600.0


@dataclass(frozen=True)
class Requester:
    """The person asking and where they asked."""

    user_id: int
    guild_id: int | None = None  # None: a DM
    channel_id: int | None = None
    parent_id: int | None = None  # a thread's parent channel
    role_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def in_dm(self) -> bool:
        return self.guild_id is None


def is_admin(dc: DiscordConfig, who: Requester) -> bool:
    return not who.in_dm and bool(who.role_ids & set(dc.admin_roles))


def _channels(ids: Iterable[int]) -> str:
    listed = [f"<#{c}>" for c in ids]
    if len(listed) > 5:
        listed = listed[:5] + ["..."]
    return ", ".join(listed)


def refusal(dc: DiscordConfig, who: Requester, *, watched: bool = False) -> str | None:
    """The access rules: DMs, allowed guilds, channels (a watched channel counts as allowed), roles."""
    if who.in_dm:
        if not dc.allow_dms:
            return "I don't take requests in direct messages here; use the command in a server channel."
        if dc.allowed_roles:
            return "Requests here need a server role, which a direct message can't show; use a server channel."
        return None
    if dc.allowed_guilds and who.guild_id not in dc.allowed_guilds:
        return "This server is not on the bot's list of allowed servers."
    if dc.allowed_channels and not watched:
        here = {who.channel_id, who.parent_id} - {None}
        if not here & set(dc.allowed_channels):
            return f"This channel isn't one the bot works in; try {_channels(dc.allowed_channels)}."
    if dc.allowed_roles and not is_admin(dc, who) and not who.role_ids & set(dc.allowed_roles):
        roles = ", ".join(f"<@&{r}>" for r in dc.allowed_roles[:5])
        return f"You need one of these roles to use the bot: {roles}."
    return None


def queued_limit_refusal(active: int, limit: int) -> str | None:
    if active < limit:
        return None
    jobs = "video" if limit == 1 else "videos"
    return (f"You already have {active} {jobs} waiting or rendering (the limit is {limit}); "
            "wait for one to finish or cancel one with /cancel.")


def rate_limit_refusal(created: Iterable[float], limit: int, now: float) -> str | None:
    """Sliding one-hour window over the times this user's jobs were queued."""
    recent = sorted(t for t in created if now - t < HOUR)
    if len(recent) < limit:
        return None
    free_at = recent[len(recent) - limit] + HOUR
    minutes = max(1, math.ceil((free_at - now) / 60))
    unit = "minute" if minutes == 1 else "minutes"
    return (f"You have asked for {len(recent)} videos in the last hour (the limit is {limit} an hour); "
            f"try again in {minutes} {unit}.")


def looks_like_image(filename: str | None, content_type: str | None) -> bool:
    if content_type:
        return content_type.split(";")[0].strip().lower().startswith("image/")
    return PurePath(filename or "").suffix.lower() in IMAGE_EXTENSIONS


def attachment_refusal(filename: str, content_type: str | None, size: int, max_bytes: int) -> str | None:
    """What the attachment's metadata already rules out, before downloading it."""
    if not looks_like_image(filename, content_type):
        what = f" ({content_type.split(';')[0]})" if content_type else ""
        return (f"{filename} is not a photo{what}; attach a JPEG, PNG, WebP, BMP, TIFF or GIF image.")
    if size > max_bytes:
        return f"{filename} is {human_bytes(size)}; the limit is {human_bytes(max_bytes)}. Send a smaller photo."
    if size == 0:
        return f"{filename} is empty (0 bytes)."
    return None
