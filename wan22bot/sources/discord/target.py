"""Where a Discord job's result goes, persisted in ``JobSpec.reply`` so it survives a restart.

Two kinds:

* ``interaction``: a slash command. The answer is the interaction's webhook (application id +
  token), valid for 15 minutes after the interaction was created; after that the result goes to
  the channel with a mention of the user.
* ``message``: a photo posted in a watched channel or with a mention of the bot. The result is a
  reply to that message.

Ids are stored as strings (JSON readers elsewhere may not keep 64-bit integers exact).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_SIZE_LIMIT = 10 * 2**20  # Discord's upload limit without boosts (per file)
TOKEN_LIFETIME = 15 * 60.0  # seconds an interaction token can be used for followups and edits
EXPIRY_MARGIN = 60.0  # a result is not sent through a token with less than this left


def _int(v: Any) -> int | None:
    return None if v in (None, "") else int(v)


@dataclass(frozen=True)
class ReplyTarget:
    kind: str  # "interaction" | "message"
    channel_id: int
    user_id: int
    guild_id: int | None = None
    application_id: int | None = None
    interaction_id: int | None = None
    token: str | None = None
    expires_at: float | None = None  # unix seconds
    message_id: int | None = None  # the user's message (kind "message")
    size_limit: int = DEFAULT_SIZE_LIMIT

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "channel_id": str(self.channel_id), "user_id": str(self.user_id),
                               "size_limit": int(self.size_limit)}
        for key in ("guild_id", "application_id", "interaction_id", "message_id"):
            v = getattr(self, key)
            if v is not None:
                out[key] = str(v)
        if self.token is not None:
            out["token"] = self.token
        if self.expires_at is not None:
            out["expires_at"] = float(self.expires_at)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ReplyTarget":
        kind = d["kind"]
        if kind not in ("interaction", "message"):
            raise ValueError(f"unknown reply kind {kind!r}")
        t = cls(
            kind=kind,
            channel_id=int(d["channel_id"]),
            user_id=int(d["user_id"]),
            guild_id=_int(d.get("guild_id")),
            application_id=_int(d.get("application_id")),
            interaction_id=_int(d.get("interaction_id")),
            token=d.get("token") or None,
            expires_at=float(d["expires_at"]) if d.get("expires_at") is not None else None,
            message_id=_int(d.get("message_id")),
            size_limit=int(d.get("size_limit") or DEFAULT_SIZE_LIMIT),
        )
        if kind == "interaction" and (t.application_id is None or not t.token):
            raise ValueError("an interaction target needs application_id and token")
        return t

    def token_usable(self, now: float, margin: float = EXPIRY_MARGIN) -> bool:
        """True while the interaction webhook can still be used with `margin` seconds to spare."""
        if self.kind != "interaction" or not self.token or self.application_id is None:
            return False
        return self.expires_at is not None and now < self.expires_at - margin
