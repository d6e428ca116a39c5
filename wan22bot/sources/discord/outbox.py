"""The REST calls that show a job's status and post its result. No gateway needed: these work while
the websocket is down or resuming.

Interaction targets go through the interaction webhook (``Webhook.partial(application_id, token)``),
built from the persisted target alone, so a job queued before a restart is answered the same way
as a live one. Message targets (and interactions whose token has lapsed) go to the channel.
"""

from __future__ import annotations

from pathlib import Path

import discord

from .target import DEFAULT_SIZE_LIMIT, ReplyTarget

TOKEN_DEAD_CODES = {50027, 10015}  # Invalid Webhook Token, Unknown Webhook


def token_dead(exc: discord.HTTPException) -> bool:
    """The interaction token can no longer be used (expired, or the webhook is gone)."""
    return exc.status == 401 or exc.code in TOKEN_DEAD_CODES


def too_large(exc: discord.HTTPException) -> bool:
    return exc.status == 413 or exc.code == 40005


def mention_only(user_id: int | None) -> discord.AllowedMentions:
    users = [discord.Object(user_id)] if user_id else False
    return discord.AllowedMentions(everyone=False, roles=False, users=users, replied_user=True)


class Outbox:
    def __init__(self, client: discord.Client):
        self.client = client

    # ------------------------------------------------------------------ addresses
    def webhook(self, t: ReplyTarget) -> discord.Webhook:
        assert t.application_id is not None and t.token
        return discord.Webhook.partial(t.application_id, t.token, client=self.client)

    def channel(self, t: ReplyTarget) -> discord.PartialMessageable:
        return self.client.get_partial_messageable(t.channel_id, guild_id=t.guild_id)

    def channel_size_limit(self, t: ReplyTarget) -> int:
        """What the bot itself may upload in the target's channel (the guild's boost tier decides;
        the asking user's Nitro does not count for the bot's own messages)."""
        guild = self.client.get_guild(t.guild_id) if t.guild_id else None
        return guild.filesize_limit if guild is not None else DEFAULT_SIZE_LIMIT

    # ------------------------------------------------------------------ status message
    async def edit_original(self, t: ReplyTarget, text: str) -> None:
        # "@original" addresses the interaction's first response (the deferred message).
        await self.webhook(t).edit_message("@original", content=text,  # type: ignore[arg-type]
                                           allowed_mentions=discord.AllowedMentions.none())

    async def post_status(self, t: ReplyTarget, text: str) -> int:
        """A new status message replying to the user's photo; returns its id."""
        ref = self.reference(t)
        msg = await self.channel(t).send(text, reference=ref, mention_author=False,
                                         allowed_mentions=discord.AllowedMentions.none())
        return msg.id

    async def edit_status(self, t: ReplyTarget, message_id: int, text: str) -> None:
        await self.channel(t).get_partial_message(message_id).edit(
            content=text, allowed_mentions=discord.AllowedMentions.none())

    # ------------------------------------------------------------------ results
    @staticmethod
    def reference(t: ReplyTarget) -> discord.MessageReference | None:
        if t.message_id is None:
            return None
        return discord.MessageReference(message_id=t.message_id, channel_id=t.channel_id, guild_id=t.guild_id,
                                        fail_if_not_exists=False)

    async def followup(self, t: ReplyTarget, content: str, *, embed: discord.Embed | None = None,
                       file: Path | None = None, filename: str | None = None) -> int:
        kw: dict = {"content": content, "wait": True, "allowed_mentions": mention_only(t.user_id)}
        if embed is not None:
            kw["embed"] = embed
        if file is not None:
            kw["file"] = discord.File(file, filename=filename or file.name)
        msg = await self.webhook(t).send(**kw)
        return msg.id

    async def to_channel(self, t: ReplyTarget, content: str, *, embed: discord.Embed | None = None,
                         file: Path | None = None, filename: str | None = None) -> int:
        kw: dict = {"allowed_mentions": mention_only(t.user_id)}
        if embed is not None:
            kw["embed"] = embed
        if file is not None:
            kw["file"] = discord.File(file, filename=filename or file.name)
        ref = self.reference(t)
        if ref is not None:
            kw["reference"] = ref
        msg = await self.channel(t).send(content, **kw)
        return msg.id
