"""The fake Discord speaks the protocol well enough for the real discord.py client.

Nothing inside discord.py is mocked: the client below logs in over HTTP, opens
the gateway websocket, syncs its command tree, receives interactions and
messages, downloads attachments and uploads files, all against
``tests.fakediscord.FakeDiscord`` on loopback.  Only the two base URLs are
redirected.
"""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from typing import Any, Awaitable, Callable, Optional

import discord
import pytest
import yarl
from discord import app_commands

from tests.fakediscord import FakeDiscord, snowflake_time

TOKEN = "fake-bot-token"
MIB = 2**20


def _png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + b"\x80\x40\x20" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


PNG = _png(64, 48)
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(range(256)) * 40

Handler = Callable[[discord.Interaction, discord.Attachment, str, int], Awaitable[Any]]


class Bot(discord.Client):
    """A minimal bot with an /animate command whose body each test supplies."""

    def __init__(self, intents: Optional[discord.Intents] = None):
        super().__init__(intents=intents or discord.Intents.default(), guild_ready_timeout=0.1)
        self.tree = app_commands.CommandTree(self)
        self.handler: Optional[Handler] = None
        self.results: asyncio.Queue[Any] = asyncio.Queue()
        self.inbox: asyncio.Queue[discord.Message] = asyncio.Queue()
        self.resumed_count = 0

        @self.tree.command(name="animate", description="Turn a photo into a short video")
        @app_commands.describe(photo="Photo to animate", prompt="What should happen", frames="Number of frames")
        async def animate(interaction: discord.Interaction, photo: discord.Attachment, prompt: str, frames: int = 24):
            assert self.handler is not None
            try:
                result = await self.handler(interaction, photo, prompt, frames)
            except Exception as exc:  # surfaced to the test through the queue
                result = exc
            await self.results.put(result)

    async def before_identify_hook(self, shard_id: Optional[int], *, initial: bool = False) -> None:
        # The default sleeps 5 s before every re-IDENTIFY (documented, overridable).
        pass

    async def on_message(self, message: discord.Message) -> None:
        await self.inbox.put(message)

    async def on_resumed(self) -> None:
        self.resumed_count += 1


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch):
    async with FakeDiscord(token=TOKEN) as server:
        monkeypatch.setattr(discord.http.Route, "BASE", server.api_base)
        monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(server.gateway_url))
        yield server
        server.assert_no_unknown_requests()


@pytest.fixture
async def start_bot(fake: FakeDiscord):
    running: list[tuple[Bot, asyncio.Task]] = []

    async def start(intents: Optional[discord.Intents] = None) -> Bot:
        bot = Bot(intents)
        task = asyncio.create_task(bot.start(TOKEN))
        ready = asyncio.create_task(bot.wait_until_ready())
        running.append((bot, task))
        done, _ = await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            if task in done:
                task.result()  # re-raise the start-up failure
            raise AssertionError("client never became ready")
        return bot

    yield start
    for bot, task in running:
        await bot.close()
        await asyncio.wait_for(task, 5)


async def result_of(bot: Bot, timeout: float = 10.0) -> Any:
    return await asyncio.wait_for(bot.results.get(), timeout)


async def next_message(bot: Bot, *, from_user: Optional[int] = None, timeout: float = 5.0) -> discord.Message:
    while True:
        message = await asyncio.wait_for(bot.inbox.get(), timeout)
        if from_user is None or message.author.id == from_user:
            return message


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------


async def test_login_ready_and_sync(fake: FakeDiscord, start_bot):
    bot = await start_bot()

    assert bot.user is not None and bot.user.name == "animbot" and bot.user.bot
    assert bot.application_id == int(fake.application_id)
    guild = bot.get_guild(int(fake.guild_id))
    assert guild is not None and guild.name == "Test Guild"
    assert sorted(c.name for c in guild.text_channels) == ["general", "renders"]
    assert fake.identifies[0]["intents"] == bot.intents.value
    query = fake.gateway_connections[0]["query"]
    assert query["v"] == "10" and query["encoding"] == "json" and "compress" in query

    synced = await bot.tree.sync()
    assert [c.name for c in synced] == ["animate"]
    stored = fake.commands["global"][0]
    assert synced[0].id == int(stored["id"])
    assert [(o["name"], o["type"], o.get("required", False)) for o in stored["options"]] == [
        ("photo", 11, True),
        ("prompt", 3, True),
        ("frames", 4, False),
    ]

    # a second sync keeps command ids; a guild sync lands in its own scope
    again = await bot.tree.sync()
    assert again[0].id == synced[0].id
    bot.tree.copy_global_to(guild=guild)
    await bot.tree.sync(guild=guild)
    assert [c["name"] for c in fake.commands[fake.guild_id]] == ["animate"]
    assert [s["scope"] for s in fake.sync_calls] == ["global", "global", fake.guild_id]

    # Discord's own validation of command payloads comes back as 400 / 50035
    with pytest.raises(discord.HTTPException) as info:
        await bot.http.bulk_upsert_global_commands(bot.application_id, [{"name": "Bad Name", "description": "x"}])
    assert info.value.status == 400 and info.value.code == 50035
    assert "Command name is invalid" in info.value.text


async def test_animate_with_attachment_defer_edit_followup(fake: FakeDiscord, start_bot):
    bot = await start_bot()
    await bot.tree.sync()

    async def handler(inter: discord.Interaction, photo: discord.Attachment, prompt: str, frames: int):
        await inter.response.defer(thinking=True)
        data = await photo.read()
        await inter.edit_original_response(content=f"rendering {frames} frames from {len(data)} bytes")
        embed = discord.Embed(title="animate", description=prompt)
        embed.add_field(name="pass1", value="1.50s")
        sent = await inter.followup.send(embed=embed, file=discord.File(io.BytesIO(MP4), "out.mp4"), wait=True)
        return {
            "data": data,
            "size": (photo.width, photo.height),
            "sent": sent,
            "back": await sent.attachments[0].read(),
            "user": inter.user,
            "channel": inter.channel,
            "expired": inter.is_expired(),
            "limit": inter.filesize_limit,
        }

    bot.handler = handler
    photo = fake.add_attachment("cat.png", PNG)
    inter = await fake.send_interaction(
        "animate", {"prompt": "wave", "frames": 12}, attachment=photo, member_roles=["animators"]
    )
    out = await result_of(bot)
    assert not isinstance(out, Exception), out

    assert abs(snowflake_time(inter.id) - discord.utils.snowflake_time(int(inter.id)).timestamp()) < 0.01
    assert out["data"] == PNG and out["size"] == (64, 48)
    assert not out["expired"] and out["limit"] == 10 * MIB
    assert isinstance(out["channel"], discord.TextChannel) and out["channel"].id == int(fake.channel_id)
    assert isinstance(out["user"], discord.Member)
    assert "animators" in [r.name for r in out["user"].roles]

    (callback,) = fake.callbacks
    assert callback["type"] == 5 and not callback["ephemeral"]
    (edit,) = fake.edits
    assert edit["content"] == f"rendering 12 frames from {len(PNG)} bytes"
    (followup,) = fake.followups
    assert followup["token"] == inter.token and not followup["resolved_deferred"]
    (upload,) = followup["files"]
    assert upload["filename"] == "out.mp4" and upload["data"] == MP4
    embed = followup["embeds"][0]
    assert embed["title"] == "animate" and embed["description"] == "wave"
    assert embed["fields"] == [{"name": "pass1", "value": "1.50s", "inline": True}]
    assert followup["payload"]["attachments"] == [{"id": 0, "filename": "out.mp4"}]

    sent: discord.WebhookMessage = out["sent"]
    assert sent.attachments[0].filename == "out.mp4" and sent.attachments[0].size == len(MP4)
    assert out["back"] == MP4  # the upload is served back by the fake CDN

    kinds = [e.kind for e in fake.log if e.kind in ("callback", "cdn", "edit", "followup")]
    assert kinds == ["callback", "cdn", "edit", "followup", "cdn"]


async def test_first_followup_after_defer_replaces_thinking_message(fake: FakeDiscord, start_bot):
    bot = await start_bot()

    async def handler(inter: discord.Interaction, photo, prompt, frames):
        await inter.response.defer(ephemeral=True, thinking=True)
        first = await inter.followup.send("done", wait=True)
        second = await inter.followup.send("and one more", wait=True)
        original = await inter.original_response()
        return first, second, original

    bot.handler = handler
    await fake.send_interaction("animate", {"prompt": "p"}, attachment=fake.add_attachment("a.png", PNG))
    first, second, original = await result_of(bot)
    assert fake.callbacks[0]["flags"] == 64
    assert [f["resolved_deferred"] for f in fake.followups] == [True, False]
    assert first.id == original.id and second.id != original.id
    assert first.flags.ephemeral and not first.flags.loading and original.content == "done"


async def test_expired_token_gives_401(fake: FakeDiscord, start_bot):
    bot = await start_bot()
    go_on = asyncio.Event()

    async def handler(inter: discord.Interaction, photo, prompt, frames):
        await inter.response.defer()
        await go_on.wait()
        try:
            await inter.edit_original_response(content="too late")
        except discord.HTTPException as exc:
            return exc
        return None

    bot.handler = handler
    photo = fake.add_attachment("a.png", PNG)
    inter = await fake.send_interaction("animate", {"prompt": "p"}, attachment=photo)
    await fake.wait_for("callback", token=inter.token)
    fake.expire_token(inter.token)
    go_on.set()
    exc = await result_of(bot)
    assert isinstance(exc, discord.HTTPException) and not isinstance(exc, discord.NotFound)
    assert exc.status == 401 and exc.code == 50027

    # an interaction that is already 16 minutes old: the 3 s window is gone (404 10062)
    # and so is the 15 min token (401 50027)
    async def late(inter: discord.Interaction, photo, prompt, frames):
        outcome: dict[str, Any] = {"expired": inter.is_expired()}
        try:
            await inter.response.defer()
        except discord.HTTPException as exc:
            outcome["defer"] = exc
        try:
            await inter.followup.send("x")
        except discord.HTTPException as exc:
            outcome["followup"] = exc
        return outcome

    bot.handler = late
    await fake.send_interaction("animate", {"prompt": "p"}, attachment=photo, expired=True)
    outcome = await result_of(bot)
    assert outcome["expired"] is True
    assert isinstance(outcome["defer"], discord.NotFound) and outcome["defer"].code == 10062
    assert outcome["followup"].status == 401 and outcome["followup"].code == 50027


async def test_429_on_edit_is_retried_after_retry_after(fake: FakeDiscord, start_bot):
    bot = await start_bot()
    loop = asyncio.get_running_loop()

    async def handler(inter: discord.Interaction, photo, prompt, frames):
        await inter.response.defer()
        started = loop.time()
        await inter.edit_original_response(content="step 1/4")
        return loop.time() - started

    bot.handler = handler
    fake.rate_limit_next("/messages/@original", retry_after=0.3)
    await fake.send_interaction("animate", {"prompt": "p"}, attachment=fake.add_attachment("a.png", PNG))
    elapsed = await result_of(bot)
    assert not isinstance(elapsed, Exception), elapsed
    assert elapsed >= 0.3
    assert len(fake.rate_limited) == 1 and len(fake.edits) == 1
    limited = await fake.wait_for("rate_limited")
    assert fake.edits[0]["at"] - limited.at >= 0.29
    assert fake.edits[0]["content"] == "step 1/4"

    # the bot-token HTTP client (channel routes) honours it as well
    fake.rate_limit_next("POST /channels/", retry_after=0.2)
    channel = bot.get_channel(int(fake.channel_id))
    assert isinstance(channel, discord.TextChannel)
    await channel.send("hello")
    assert len(fake.rate_limited) == 2 and fake.channel_messages[0]["content"] == "hello"


async def test_gateway_drop_resume_reconnect_and_invalid_session(fake: FakeDiscord, start_bot):
    bot = await start_bot()
    bot.handler = lambda inter, *a: inter.response.send_message("ok")

    mark = fake.mark()
    assert await fake.drop_gateway(4000)
    queued = await fake.send_message_create(content="sent while disconnected")  # replayed on resume
    resume = await fake.wait_for("resume", since=mark)
    assert resume["accepted"] and resume["path"] == "/gateway-resume"
    assert "MESSAGE_CREATE" in resume["replayed"]
    got = await next_message(bot)
    assert got.id == int(queued["id"])
    await fake.send_interaction("animate", {"prompt": "after resume"}, attachment=fake.add_attachment("a.png", PNG))
    await result_of(bot)
    assert fake.callbacks[-1]["type"] == 4 and fake.callbacks[-1]["message"]["content"] == "ok"

    # op 7 RECONNECT and an abrupt TCP cut are resumed the same way
    mark = fake.mark()
    assert await fake.send_reconnect()
    assert (await fake.wait_for("resume", since=mark))["accepted"]
    mark = fake.mark()
    assert await fake.drop_gateway(abrupt=True)
    assert (await fake.wait_for("resume", since=mark, timeout=10))["accepted"]
    assert len(fake.identifies) == 1
    await until(lambda: bot.resumed_count == 3)

    # a non-resumable INVALID_SESSION makes the client identify again
    mark = fake.mark()
    assert await fake.invalidate_session(resumable=False)
    await fake.wait_for("identify", since=mark)
    await fake.send_interaction("animate", {"prompt": "after identify"}, attachment=fake.add_attachment("b.png", PNG))
    await result_of(bot)
    assert len(fake.identifies) == 2 and len(fake.callbacks) == 2


async def test_message_create_reaches_on_message(fake: FakeDiscord, start_bot):
    intents = discord.Intents.default()
    intents.message_content = True
    bot = await start_bot(intents)
    alice = int(fake.user["id"])

    att = fake.add_attachment("dog.png", PNG, channel_id=fake.channel_id)
    sent = await fake.send_message_create(fake.channel_id, fake.user, "please animate", attachments=[att])
    message = await next_message(bot, from_user=alice)
    assert message.id == int(sent["id"]) and message.content == "please animate"
    assert isinstance(message.author, discord.Member) and message.channel.id == int(fake.channel_id)
    assert message.attachments[0].filename == "dog.png" and await message.attachments[0].read() == PNG

    reply = await message.reply("queued, position 1")
    await message.add_reaction("\N{WHITE HEAVY CHECK MARK}")
    record = fake.channel_messages[0]
    assert record["message_reference"]["message_id"] == sent["id"]
    assert reply.reference is not None and reply.reference.message_id == message.id
    assert fake.reactions[0]["emoji"] == "\N{WHITE HEAVY CHECK MARK}"
    # like Discord, the bot sees its own message come back over the gateway
    echo = await next_message(bot, from_user=bot.user.id)
    assert echo.id == reply.id and echo.content == "queued, position 1"

    edited = await reply.edit(content="done")
    assert edited.edited_at is not None and fake.channel_edits[0]["content"] == "done"


async def test_message_content_intent_is_enforced(fake: FakeDiscord, start_bot):
    bot = await start_bot()  # Intents.default() lacks message_content
    alice = int(fake.user["id"])
    att = fake.add_attachment("dog.png", PNG, channel_id=fake.channel_id)
    await fake.send_message_create(content="hidden", attachments=[att])
    plain = await next_message(bot, from_user=alice)
    assert plain.content == "" and plain.attachments == []
    await fake.send_message_create(content=f"<@{fake.application_id}> visible", attachments=[att])
    mentioned = await next_message(bot, from_user=alice)
    assert mentioned.content.endswith("visible") and len(mentioned.attachments) == 1
    assert bot.user in mentioned.mentions


async def test_upload_over_attachment_size_limit_gets_413(fake: FakeDiscord, start_bot):
    bot = await start_bot()

    async def handler(inter: discord.Interaction, photo, prompt, frames):
        await inter.response.defer()
        try:
            await inter.followup.send(file=discord.File(io.BytesIO(b"\0" * 2048), "big.mp4"))
        except discord.HTTPException as exc:
            return inter.filesize_limit, exc
        return inter.filesize_limit, None

    bot.handler = handler
    await fake.send_interaction(
        "animate", {"prompt": "p"}, attachment=fake.add_attachment("a.png", PNG), attachment_size_limit=1024
    )
    limit, exc = await result_of(bot)
    assert limit == 1024
    assert exc is not None and exc.status == 413 and exc.code == 40005
    assert fake.followups == []


async def test_dm_interaction_and_late_callback(fake: FakeDiscord, start_bot):
    bot = await start_bot()

    async def handler(inter: discord.Interaction, photo, prompt, frames):
        await inter.response.send_message(f"hi {inter.user.name}")
        return inter

    bot.handler = handler
    await fake.send_interaction("animate", {"prompt": "p"}, attachment=fake.add_attachment("a.png", PNG), guild_id=None)
    inter = await result_of(bot)
    assert inter.guild is None and isinstance(inter.channel, discord.DMChannel)
    assert isinstance(inter.user, discord.User) and not isinstance(inter.user, discord.Member)
    assert fake.callbacks[0]["type"] == 4 and fake.callbacks[0]["message"]["content"] == "hi alice"

    # answering after Discord's 3 s window: 404 Unknown interaction
    fake.callback_deadline = 0.2

    async def slow(inter: discord.Interaction, photo, prompt, frames):
        await asyncio.sleep(0.3)
        try:
            await inter.response.defer()
        except discord.NotFound as exc:
            return exc

    bot.handler = slow
    await fake.send_interaction("animate", {"prompt": "p"}, attachment=fake.add_attachment("b.png", PNG))
    exc = await result_of(bot)
    assert isinstance(exc, discord.NotFound) and exc.code == 10062


async def test_unknown_route_is_recorded(fake: FakeDiscord, start_bot):
    bot = await start_bot()
    route = discord.http.Route("GET", "/guilds/{guild_id}/audit-logs", guild_id=int(fake.guild_id))
    with pytest.raises(discord.NotFound):
        await bot.http.request(route)
    assert fake.unknown_requests[-1]["path"].endswith(f"/guilds/{fake.guild_id}/audit-logs")
    with pytest.raises(AssertionError):
        fake.assert_no_unknown_requests()
    fake.unknown_requests.clear()
