"""A loopback stand-in for Discord: gateway websocket, REST API v10 and CDN.

It is written against the behaviour of the real service as documented in the
Discord API reference, and it is meant to drive an *unmodified* ``discord.py``
client.  Only the parts a photo-to-video bot touches are implemented; every
other route answers 404 and is recorded in ``FakeDiscord.unknown_requests`` so
that a test relying on it fails loudly instead of silently passing.

Protocol details that matter to ``discord.py`` 2.7.x:

* JSON bodies are sent with the exact header ``Content-Type: application/json``
  (no ``charset``); ``discord.py`` only parses a body when the header matches
  exactly.
* Gateway frames are plain JSON text even when the client asks for
  ``compress=zlib-stream``/``zstd-stream``: text frames are never decompressed.
* A 429 only counts as a rate limit for ``discord.py`` when it carries a
  ``Via`` header and a JSON ``retry_after``; otherwise it is treated as a
  Cloudflare ban and raised.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import mimetypes
import re
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Union

from aiohttp import WSMsgType, web

__all__ = [
    "FakeDiscord",
    "FakeEvent",
    "FakeInteraction",
    "DISCORD_EPOCH_MS",
    "snowflake_at",
    "snowflake_time",
]

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1420070400000

# Gateway intents (bit positions from the API reference).
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT

# Message flags.
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7

# Permissions the bot and ordinary members get everywhere.
_PERMS = (
    (1 << 6)  # add reactions
    | (1 << 10)  # view channel
    | (1 << 11)  # send messages
    | (1 << 14)  # embed links
    | (1 << 15)  # attach files
    | (1 << 16)  # read message history
    | (1 << 18)  # use external emojis
    | (1 << 31)  # use application commands
)
DEFAULT_PERMISSIONS = str(_PERMS)

_TRUTHY = {"1", "true", "True", "yes"}
_NAME_RE = re.compile(r"^[-_\w]{1,32}$")
_MENTION_RE = re.compile(r"<@!?(\d+)>")

# ---------------------------------------------------------------------------
# snowflakes
# ---------------------------------------------------------------------------

_increment = 0


def snowflake_at(unix_seconds: float) -> int:
    """A snowflake whose timestamp is ``unix_seconds`` (unique within this process)."""
    global _increment
    _increment = (_increment + 1) & 0xFFF
    millis = int(unix_seconds * 1000) - DISCORD_EPOCH_MS
    return (millis << 22) | (1 << 17) | _increment


def snowflake_time(snowflake: Union[int, str]) -> float:
    """Unix time (seconds) encoded in a snowflake."""
    return ((int(snowflake) >> 22) + DISCORD_EPOCH_MS) / 1000.0


def _new_id(at: Optional[float] = None) -> str:
    return str(snowflake_at(time.time() if at is None else at))


def _iso(unix_seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix_seconds)) + (
        ".%06d+00:00" % int((unix_seconds % 1) * 1_000_000)
    )


# ---------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------


@dataclass
class FakeEvent:
    """One thing that happened on the fake (a request handled, a frame sent...)."""

    kind: str
    data: dict
    at: float  # event-loop clock (``loop.time()``)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


@dataclass
class FakeInteraction:
    """An interaction the fake sent, and what the client has done with it so far."""

    id: str
    token: str
    payload: dict
    created: float  # unix seconds (from the snowflake)
    attachment_size_limit: int
    acknowledged: Optional[int] = None  # callback type once answered
    ack_flags: int = 0
    original: Optional[dict] = None  # the @original message, once there is one
    original_deleted: bool = False
    followups: dict = field(default_factory=dict)

    @property
    def channel_id(self) -> str:
        return self.payload["channel_id"]

    @property
    def guild_id(self) -> Optional[str]:
        return self.payload.get("guild_id")

    @property
    def user(self) -> dict:
        member = self.payload.get("member")
        return member["user"] if member else self.payload["user"]

    @property
    def name(self) -> str:
        return self.payload["data"]["name"]


class _ApiError(Exception):
    def __init__(self, status: int, code: int, message: str, errors: Optional[dict] = None):
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.body: dict = {"message": message, "code": code}
        if errors:
            self.body["errors"] = errors


def _form_error(errors: dict) -> _ApiError:
    return _ApiError(400, 50035, "Invalid Form Body", errors)


def _err(code: str, message: str) -> dict:
    return {"_errors": [{"code": code, "message": message}]}


def _put_error(tree: dict, path: Iterable[Any], leaf: dict) -> None:
    keys = [str(p) for p in path]
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node.setdefault(keys[-1], {}).setdefault("_errors", []).extend(leaf["_errors"])


class _Session:
    def __init__(self, session_id: str, intents: int, identify: dict):
        self.id = session_id
        self.intents = intents
        self.identify = identify
        self.seq = 0
        self.log: list[dict] = []
        self.conn: Optional[_Connection] = None
        self.valid = True
        self.lock = asyncio.Lock()


class _Connection:
    def __init__(self, ws: web.WebSocketResponse, request: web.Request, number: int):
        self.ws = ws
        self.request = request
        self.number = number
        self.session: Optional[_Session] = None
        self.server_closed = False


# ---------------------------------------------------------------------------
# the fake
# ---------------------------------------------------------------------------


class FakeDiscord:
    """A local Discord (gateway + REST + CDN) on ``127.0.0.1`` and a free port.

    Use as ``async with FakeDiscord() as fake:`` or call :meth:`start` and
    :meth:`stop`.  See the package docstring for a walk-through.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: Optional[str] = None,
        bot_name: str = "animbot",
        guild_name: str = "Test Guild",
        channel_names: Iterable[str] = ("general", "renders"),
        role_names: Iterable[str] = ("animators",),
        heartbeat_interval: int = 41250,
        callback_deadline: Optional[float] = 3.0,
        token_lifetime: float = 15 * 60.0,
        upload_limit: int = 10 * 2**20,
        allowed_intents: int = -1,
        echo_own_messages: bool = True,
        enforce_message_content_intent: bool = True,
    ):
        self.host = host
        self._requested_port = port
        self.port: Optional[int] = None
        self.token = token
        self.heartbeat_interval = heartbeat_interval
        self.callback_deadline = callback_deadline
        self.token_lifetime = token_lifetime
        self.upload_limit = upload_limit
        self.allowed_intents = allowed_intents
        self.echo_own_messages = echo_own_messages
        self.enforce_message_content_intent = enforce_message_content_intent

        self._cdn_secret = secrets.token_bytes(16)
        started = time.time()
        self.application_id = _new_id(started - 86400 * 400)
        self.bot_user = self._user_dict(self.application_id, bot_name, bot=True)
        self.owner = self._user_dict(_new_id(started - 86400 * 900), "owner")
        self.user = self._user_dict(_new_id(started - 86400 * 800), "alice")
        self.users: dict[str, dict] = {u["id"]: u for u in (self.bot_user, self.owner, self.user)}

        self.guilds: dict[str, dict] = {}
        self.channels: dict[str, dict] = {}
        self.members: dict[str, dict[str, dict]] = {}
        self.messages: dict[str, dict] = {}
        self._dm_channels: dict[str, str] = {}
        self._cdn: dict[str, dict] = {}
        self._interactions: dict[str, FakeInteraction] = {}
        self._faults: list[dict] = []
        self._expired_tokens: set[str] = set()
        self.forbidden_channels: set[str] = set()
        self._waiters: list[asyncio.Future] = []
        self._session: Optional[_Session] = None
        self._sessions: dict[str, _Session] = {}
        self._connections: list[_Connection] = []
        self._identified: Optional[asyncio.Event] = None
        self._background: set[asyncio.Task] = set()
        self._runner: Optional[web.AppRunner] = None

        guild = self.add_guild(guild_name, channels=channel_names, roles=role_names)
        self.guild_id: str = guild["id"]
        self.channel_id: str = next(c for c in guild["channels"] if c["type"] == 0)["id"]
        self.role_ids: dict[str, str] = {r["name"]: r["id"] for r in guild["roles"]}
        self.add_member(self.guild_id, self.user)

        # what the client did
        self.log: list[FakeEvent] = []
        self.events: "asyncio.Queue[FakeEvent]" = asyncio.Queue()
        self.requests: list[dict] = []
        self.unknown_requests: list[dict] = []
        self.rejected: list[dict] = []
        self.gateway_connections: list[dict] = []
        self.identifies: list[dict] = []
        self.resumes: list[dict] = []
        self.presences: list[dict] = []
        self.heartbeats = 0
        self.dispatches: list[dict] = []
        self.sync_calls: list[dict] = []
        self.commands: dict[str, list[dict]] = {}
        self.callbacks: list[dict] = []
        self.edits: list[dict] = []
        self.followups: list[dict] = []
        self.followup_edits: list[dict] = []
        self.channel_messages: list[dict] = []
        self.channel_edits: list[dict] = []
        self.deletions: list[dict] = []
        self.reactions: list[dict] = []
        self.typing: list[dict] = []
        self.cdn_downloads: list[dict] = []
        self.rate_limited: list[dict] = []


    # ------------------------------------------------------------------ urls

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeDiscord is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        """Value for ``discord.http.Route.BASE``."""
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        """Value for ``DiscordWebSocket.DEFAULT_GATEWAY`` (wrap in ``yarl.URL``)."""
        return f"ws://{self.host}:{self.port}/gateway"

    @property
    def resume_gateway_url(self) -> str:
        """Sent in READY; a resuming client connects here (a distinct path, so tests can tell)."""
        return f"ws://{self.host}:{self.port}/gateway-resume"

    @property
    def cdn_base(self) -> str:
        return self.base_url + "/cdn"

    def cdn_url(self, path: str = "") -> str:
        """URL of ``path`` on the fake CDN (``cdn_url("attachments/1/2/a.png")``)."""
        return f"{self.cdn_base}/{path.lstrip('/')}" if path else self.cdn_base

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> "FakeDiscord":
        app = web.Application(client_max_size=1 << 30, middlewares=[self._middleware])
        r = app.router
        r.add_get("/gateway", self._gateway)
        r.add_get("/gateway-resume", self._gateway)
        a = API_PREFIX
        r.add_get(a + "/gateway", self._get_gateway)
        r.add_get(a + "/gateway/bot", self._get_gateway_bot)
        r.add_get(a + "/users/@me", self._get_me)
        r.add_post(a + "/users/@me/channels", self._create_dm)
        r.add_get(a + "/users/{user_id}", self._get_user)
        r.add_get(a + "/oauth2/applications/@me", self._get_app)
        r.add_get(a + "/applications/{app}/commands", self._get_commands)
        r.add_put(a + "/applications/{app}/commands", self._put_commands)
        r.add_get(a + "/applications/{app}/guilds/{guild}/commands", self._get_commands)
        r.add_put(a + "/applications/{app}/guilds/{guild}/commands", self._put_commands)
        r.add_post(a + "/interactions/{iid}/{token}/callback", self._interaction_callback)
        r.add_post(a + "/webhooks/{app}/{token}", self._followup)
        r.add_get(a + "/webhooks/{app}/{token}/messages/{mid}", self._webhook_get)
        r.add_patch(a + "/webhooks/{app}/{token}/messages/{mid}", self._webhook_edit)
        r.add_delete(a + "/webhooks/{app}/{token}/messages/{mid}", self._webhook_delete)
        r.add_get(a + "/channels/{cid}", self._get_channel)
        r.add_post(a + "/channels/{cid}/messages", self._channel_post)
        r.add_get(a + "/channels/{cid}/messages/{mid}", self._channel_get_message)
        r.add_patch(a + "/channels/{cid}/messages/{mid}", self._channel_edit)
        r.add_delete(a + "/channels/{cid}/messages/{mid}", self._channel_delete)
        r.add_post(a + "/channels/{cid}/typing", self._typing)
        r.add_put(a + "/channels/{cid}/messages/{mid}/reactions/{emoji}/@me", self._reaction)
        r.add_delete(a + "/channels/{cid}/messages/{mid}/reactions/{emoji}/@me", self._reaction)
        r.add_get("/cdn/{path:.+}", self._cdn_get)
        r.add_get("/media/{path:.+}", self._cdn_get)
        r.add_route("*", "/{tail:.*}", self._unknown)

        self._identified = asyncio.Event()
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def stop(self) -> None:
        for conn in list(self._connections):
            conn.server_closed = True
            if not conn.ws.closed:
                try:
                    await asyncio.wait_for(conn.ws.close(code=1001, message=b"shutting down"), 2.0)
                except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                    pass
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "FakeDiscord":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # ------------------------------------------------------ world building

    @staticmethod
    def _user_dict(user_id: str, username: str, *, bot: bool = False) -> dict:
        user = {
            "id": user_id,
            "username": username,
            "discriminator": "0",
            "global_name": None if bot else username.capitalize(),
            "avatar": None,
            "public_flags": 0,
            "flags": 0,
        }
        if bot:
            user["bot"] = True
        return user

    def make_user(self, username: str, *, bot: bool = False, user_id: Optional[str] = None) -> dict:
        """Create (and remember) a user object."""
        user = self._user_dict(user_id or _new_id(time.time() - 86400 * 300), username, bot=bot)
        self.users[user["id"]] = user
        return user

    def add_guild(
        self,
        name: str,
        *,
        channels: Iterable[str] = ("general",),
        roles: Iterable[str] = (),
        premium_tier: int = 0,
    ) -> dict:
        """Create a guild the bot is in.  Announced with GUILD_CREATE if a session is live."""
        gid = _new_id(time.time() - 86400 * 200)
        everyone = self._role(gid, "@everyone", 0, DEFAULT_PERMISSIONS)
        role_list = [everyone] + [self._role(_new_id(), r, i + 1, DEFAULT_PERMISSIONS) for i, r in enumerate(roles)]
        guild = {
            "id": gid,
            "name": name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": self.owner["id"],
            "region": "deprecated",
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": premium_tier,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "features": [],
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "vanity_url_code": None,
            "application_id": None,
            "roles": role_list,
            "emojis": [],
            "stickers": [],
            "channels": [],
        }
        self.guilds[gid] = guild
        self.members[gid] = {}
        self.add_member(gid, self.bot_user)
        for channel_name in channels:
            self.add_channel(gid, channel_name)
        if self._live_session() is not None:
            self._spawn(self._emit("GUILD_CREATE", self._guild_create_payload(guild), INTENT_GUILDS))
        return guild

    @staticmethod
    def _role(role_id: str, name: str, position: int, permissions: str) -> dict:
        return {
            "id": role_id,
            "name": name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": position,
            "permissions": permissions,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }

    def add_channel(self, guild_id: str, name: str, *, type: int = 0) -> dict:
        """Add a channel (0 text, 2 voice, 4 category, 5 announcement) to a guild."""
        guild = self.guilds[str(guild_id)]
        channel = {
            "id": _new_id(),
            "type": type,
            "guild_id": guild["id"],
            "name": name,
            "position": len(guild["channels"]),
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "flags": 0,
        }
        if type in (0, 5):
            channel.update(topic=None, rate_limit_per_user=0, last_message_id=None)
        elif type == 2:
            channel.update(bitrate=64000, user_limit=0, rtc_region=None, last_message_id=None)
        guild["channels"].append(channel)
        self.channels[channel["id"]] = channel
        return channel

    def add_member(self, guild_id: str, user: dict, roles: Iterable[str] = ()) -> dict:
        """Make ``user`` a member of a guild with the given role ids (or role names)."""
        gid = str(guild_id)
        self.users.setdefault(user["id"], user)
        by_name = {r["name"]: r["id"] for r in self.guilds[gid]["roles"]}
        role_ids = [by_name.get(r, str(r)) for r in roles]
        member = {
            "user": user,
            "nick": None,
            "avatar": None,
            "banner": None,
            "roles": role_ids,
            "joined_at": _iso(time.time() - 86400 * 30),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        self.members[gid][user["id"]] = member
        return member

    def dm_channel(self, user: dict) -> dict:
        """The DM channel between the bot and ``user`` (created on first use)."""
        self.users.setdefault(user["id"], user)
        cid = self._dm_channels.get(user["id"])
        if cid is None:
            cid = _new_id()
            self._dm_channels[user["id"]] = cid
            self.channels[cid] = {
                "id": cid,
                "type": 1,
                "recipients": [user],
                "last_message_id": None,
                "flags": 0,
            }
        return self.channels[cid]

    # ----------------------------------------------------------- CDN files

    def _sign(self, path: str, expires: int, issued: int) -> str:
        mac = hmac.new(self._cdn_secret, f"{path}|{expires:x}|{issued:x}".encode(), hashlib.sha256)
        return mac.hexdigest()

    def _cdn_store(
        self,
        folder: str,
        filename: str,
        data: bytes,
        content_type: Optional[str],
        *,
        width: Optional[int] = None,
        height: Optional[int] = None,
        ephemeral: bool = False,
        description: Optional[str] = None,
    ) -> dict:
        data = bytes(data)
        aid = _new_id()
        path = f"/cdn/{folder}/{aid}/{filename}"
        ctype = content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if ctype.startswith("image/png") and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
            w, h = struct.unpack(">II", data[16:24])
            width = width or w
            height = height or h
        issued = int(time.time())
        expires = issued + 86400
        query = f"ex={expires:x}&is={issued:x}&hm={self._sign(path, expires, issued)}&"
        self._cdn[path] = {"data": data, "content_type": ctype, "expired": False}
        attachment = {
            "id": aid,
            "filename": filename,
            "size": len(data),
            "url": f"{self.base_url}{path}?{query}",
            "proxy_url": f"{self.base_url}/media{path[len('/cdn'):]}?{query}",
            "content_type": ctype,
        }
        if width is not None and height is not None:
            attachment.update(width=width, height=height)
        if ephemeral:
            attachment["ephemeral"] = True
        if description:
            attachment["description"] = description
        return attachment

    def add_attachment(
        self,
        filename: str,
        data: bytes,
        content_type: Optional[str] = None,
        *,
        channel_id: Optional[str] = None,
        width: Optional[int] = None,
        height: Optional[int] = None,
    ) -> dict:
        """Put ``data`` on the fake CDN; returns an attachment object pointing at it.

        Without ``channel_id`` it is an ephemeral attachment as used by slash
        command options; with it, a regular message attachment in that channel.
        PNG sizes are read from the header when not given.
        """
        folder = f"attachments/{channel_id}" if channel_id else f"ephemeral-attachments/{self.application_id}"
        return self._cdn_store(
            folder, filename, data, content_type, width=width, height=height, ephemeral=channel_id is None
        )

    def expire_attachment(self, attachment: Union[dict, str]) -> None:
        """Make the CDN answer 404 for this attachment (as it does once a signed URL has lapsed)."""
        url = attachment["url"] if isinstance(attachment, dict) else attachment
        path = "/cdn" + url.split("?", 1)[0].split("/cdn", 1)[1]
        self._cdn[path]["expired"] = True

    def cdn_bytes(self, url: str) -> bytes:
        """Bytes stored behind a fake CDN URL (uploads by the client land here too)."""
        path = url.split("?", 1)[0]
        path = path[path.index("/cdn/") :] if "/cdn/" in path else "/cdn" + path[path.index("/media/") + 6 :]
        return self._cdn[path]["data"]

    # ------------------------------------------------------ fault knobs

    def expire_token(self, token: Union[str, FakeInteraction]) -> None:
        """From now on, callback and webhook calls with this token get 401 / 50027."""
        self._expired_tokens.add(token.token if isinstance(token, FakeInteraction) else token)

    def rate_limit_next(
        self,
        route_substring: str,
        retry_after: float = 0.3,
        count: int = 1,
        *,
        is_global: bool = False,
        scope: str = "user",
    ) -> None:
        """Answer the next ``count`` REST calls whose ``"METHOD /path"`` contains
        ``route_substring`` with a 429 that ``discord.py`` honours."""
        self._faults.append(
            {
                "match": route_substring,
                "count": count,
                "kind": "429",
                "retry_after": retry_after,
                "global": is_global,
                "scope": scope,
            }
        )

    def fail_next(
        self,
        route_substring: str,
        status: int = 500,
        *,
        code: int = 0,
        message: str = "Internal Server Error",
        count: int = 1,
    ) -> None:
        """Answer the next ``count`` matching REST calls with an error status."""
        self._faults.append(
            {"match": route_substring, "count": count, "kind": "error", "status": status, "code": code, "message": message}
        )

    def forbid_channel(self, channel_id: str) -> None:
        """Posting to this channel returns 403 / 50013 Missing Permissions."""
        self.forbidden_channels.add(str(channel_id))

    def interaction(self, token_or_id: str) -> FakeInteraction:
        """Look up an interaction the fake sent, by token or id."""
        found = self._interactions.get(token_or_id)
        if found is None:
            found = next(i for i in self._interactions.values() if i.id == str(token_or_id))
        return found

    # ------------------------------------------------------ event log

    def _record(self, kind: str, data: dict) -> FakeEvent:
        event = FakeEvent(kind, data, asyncio.get_running_loop().time())
        self.log.append(event)
        self.events.put_nowait(event)
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        return event

    def mark(self) -> int:
        """Position in :attr:`log`; pass as ``since=`` to :meth:`wait_for` to see only later events."""
        return len(self.log)

    async def wait_for(
        self,
        predicate: Union[str, Callable[[FakeEvent], bool]],
        timeout: float = 5.0,
        *,
        since: int = 0,
        **fields: Any,
    ) -> FakeEvent:
        """First event in :attr:`log` (from ``since``) matching ``predicate``.

        ``predicate`` is an event kind (``"followup"``) or a callable taking a
        :class:`FakeEvent`.  Keyword arguments must equal ``event.data[key]``.
        Past events count, so there is no race with what already happened.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def matches(ev: FakeEvent) -> bool:
            if isinstance(predicate, str):
                if ev.kind != predicate:
                    return False
            elif not predicate(ev):
                return False
            return all(ev.data.get(k) == v for k, v in fields.items())

        index = since
        while True:
            while index < len(self.log):
                event = self.log[index]
                index += 1
                if matches(event):
                    return event
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = ", ".join(e.kind for e in self.log[-15:])
                raise TimeoutError(f"no matching event within {timeout}s; recent events: {recent}")
            fut = loop.create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except asyncio.TimeoutError:
                pass

    def assert_no_unknown_requests(self) -> None:
        if self.unknown_requests:
            lines = "\n".join(f"  {r['method']} {r['path']}" for r in self.unknown_requests)
            raise AssertionError(f"client called routes the fake does not implement:\n{lines}")

    # ------------------------------------------------------ HTTP plumbing

    @staticmethod
    def _json(body: Any, status: int = 200, headers: Optional[dict] = None) -> web.Response:
        # Exactly "application/json": discord.py will not parse it with a charset suffix.
        return web.Response(
            body=json.dumps(body).encode(), status=status, content_type="application/json", headers=headers
        )

    def _take_fault(self, method: str, rel: str) -> Optional[dict]:
        key = f"{method} {rel}"
        for fault in self._faults:
            if fault["match"] in key:
                fault["count"] -= 1
                if fault["count"] <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        path = request.path
        entry = {"method": request.method, "path": path, "query": dict(request.query), "at": time.monotonic()}
        self.requests.append(entry)
        if path.startswith(API_PREFIX + "/"):
            rel = path[len(API_PREFIX) :]
            fault = self._take_fault(request.method, rel)
            if fault is not None:
                response = self._fault_response(fault, request.method, rel)
                entry["status"] = response.status
                return response
            needs_bot_auth = not rel.startswith(("/webhooks/", "/interactions/"))
            if needs_bot_auth and self.token is not None:
                if request.headers.get("Authorization") != f"Bot {self.token}":
                    return self._reject(entry, _ApiError(401, 0, "401: Unauthorized"))
        try:
            response = await handler(request)
        except _ApiError as exc:
            return self._reject(entry, exc)
        entry["status"] = response.status
        return response

    def _reject(self, entry: dict, exc: _ApiError) -> web.Response:
        entry["status"] = exc.status
        record = {"method": entry["method"], "path": entry["path"], "status": exc.status, **exc.body}
        self.rejected.append(record)
        self._record("rejected", record)
        return self._json(exc.body, exc.status)

    def _fault_response(self, fault: dict, method: str, rel: str) -> web.Response:
        if fault["kind"] == "error":
            body = {"message": fault["message"], "code": fault["code"]}
            record = {"method": method, "path": rel, "status": fault["status"], **body}
            self.rejected.append(record)
            self._record("rejected", record)
            return self._json(body, fault["status"])
        retry_after = float(fault["retry_after"])
        body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": fault["global"]}
        headers = {
            "Via": "1.1 google",
            "Retry-After": str(max(1, math.ceil(retry_after))),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Bucket": hashlib.md5(rel.encode()).hexdigest()[:16],
            "X-RateLimit-Scope": fault["scope"],
        }
        if fault["global"]:
            headers["X-RateLimit-Global"] = "true"
        record = {"method": method, "path": rel, "retry_after": retry_after}
        self.rate_limited.append(record)
        self._record("rate_limited", record)
        return self._json(body, 429, headers)

    async def _read_body(self, request: web.Request, size_limit: Optional[int] = None) -> tuple[Any, list[dict]]:
        """JSON body, or ``payload_json`` plus ``files[n]`` parts of a multipart body."""
        ctype = request.headers.get("Content-Type", "")
        if ctype.startswith("multipart/"):
            payload: Any = {}
            files: list[dict] = []
            limit = self.upload_limit if size_limit is None else size_limit
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if part.name == "payload_json":
                    payload = json.loads(await part.text())
                    continue
                data = bytes(await part.read(decode=False))
                if len(data) > limit:
                    raise _ApiError(413, 40005, "Request entity too large")
                files.append(
                    {
                        "field": part.name,
                        "filename": part.filename,
                        "content_type": part.headers.get("Content-Type"),
                        "data": data,
                        "size": len(data),
                    }
                )
            return payload, files
        raw = await request.read()
        if not raw:
            return {}, []
        try:
            return json.loads(raw), []
        except ValueError:
            raise _ApiError(400, 50109, "The request body contains invalid JSON.") from None

    # ------------------------------------------------------ message helpers

    def _live_session(self) -> Optional[_Session]:
        s = self._session
        return s if s is not None and s.valid else None

    def _mentions_in(self, content: str, guild_id: Optional[str]) -> list[dict]:
        found = []
        for uid in dict.fromkeys(_MENTION_RE.findall(content or "")):
            user = self.users.get(uid)
            if user is None:
                continue
            entry = dict(user)
            if guild_id and uid in self.members.get(guild_id, {}):
                entry["member"] = self._partial_member(guild_id, uid)
            found.append(entry)
        return found

    def _partial_member(self, guild_id: str, user_id: str) -> dict:
        member = dict(self.members[guild_id][user_id])
        member.pop("user", None)
        return member

    def _validate_message(self, payload: dict, files: list[dict], *, creating: bool) -> None:
        errors: dict = {}
        content = payload.get("content")
        if content is not None and len(str(content)) > 2000:
            _put_error(errors, ["content"], _err("BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length."))
        embeds = payload.get("embeds") or []
        if len(embeds) > 10:
            _put_error(errors, ["embeds"], _err("BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length."))
        total = 0
        limits = {"title": 256, "description": 4096}
        for i, embed in enumerate(embeds):
            for key, limit in limits.items():
                text = embed.get(key) or ""
                total += len(text)
                if len(text) > limit:
                    _put_error(errors, ["embeds", i, key], _err("BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length."))
            fields_ = embed.get("fields") or []
            if len(fields_) > 25:
                _put_error(errors, ["embeds", i, "fields"], _err("BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."))
            for j, fld in enumerate(fields_):
                for key, limit in (("name", 256), ("value", 1024)):
                    text = str(fld.get(key) or "")
                    total += len(text)
                    if not text:
                        _put_error(errors, ["embeds", i, "fields", j, key], _err("BASE_TYPE_REQUIRED", "This field is required"))
                    elif len(text) > limit:
                        _put_error(
                            errors, ["embeds", i, "fields", j, key], _err("BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")
                        )
            for path, limit in ((("footer", "text"), 2048), (("author", "name"), 256)):
                text = (embed.get(path[0]) or {}).get(path[1]) or ""
                total += len(text)
                if len(text) > limit:
                    _put_error(errors, ["embeds", i, *path], _err("BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length."))
        if total > 6000:
            _put_error(errors, ["embeds"], _err("MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000"))
        if errors:
            raise _form_error(errors)
        if creating and not (
            content or embeds or files or payload.get("components") or payload.get("sticker_ids") or payload.get("poll")
        ):
            raise _ApiError(400, 50006, "Cannot send an empty message")

    def _attachments_from_upload(self, folder: str, payload: dict, files: list[dict], existing: list[dict]) -> list[dict]:
        def index_of(file: dict, position: int) -> int:
            m = re.fullmatch(r"files\[(\d+)\]", file.get("field") or "")
            return int(m.group(1)) if m else position

        uploads = {index_of(f, n): f for n, f in enumerate(files)}
        meta_list = payload.get("attachments")
        if meta_list is None:
            result = list(existing)
            for _, f in sorted(uploads.items()):
                result.append(self._cdn_store(folder, f["filename"] or "file", f["data"], None))
            return result
        keep = {a["id"]: a for a in existing}
        result = []
        for meta in meta_list:
            key = str(meta.get("id"))
            if key.isdigit() and int(key) in uploads:
                f = uploads.pop(int(key))
                name = meta.get("filename") or f["filename"] or "file"
                result.append(self._cdn_store(folder, name, f["data"], None, description=meta.get("description")))
            elif key in keep:
                result.append(keep[key])
        for _, f in sorted(uploads.items()):
            result.append(self._cdn_store(folder, f["filename"] or "file", f["data"], None))
        return result

    @staticmethod
    def _resolve_embeds(embeds: list[dict], attachments: list[dict]) -> list[dict]:
        by_name = {a["filename"]: a for a in attachments}
        out = []
        for embed in embeds:
            embed = json.loads(json.dumps(embed))
            embed.setdefault("type", "rich")
            for key in ("image", "thumbnail"):
                media = embed.get(key)
                if isinstance(media, dict) and str(media.get("url", "")).startswith("attachment://"):
                    att = by_name.get(media["url"][len("attachment://") :])
                    if att is not None:
                        media.update(url=att["url"], proxy_url=att["proxy_url"])
                        if "width" in att:
                            media.update(width=att["width"], height=att["height"])
            out.append(embed)
        return out

    def _new_message(
        self,
        channel_id: str,
        author: dict,
        *,
        content: str = "",
        embeds: Iterable[dict] = (),
        attachments: Iterable[dict] = (),
        type: int = 0,
        flags: int = 0,
        components: Iterable[dict] = (),
        tts: bool = False,
        extra: Optional[dict] = None,
    ) -> dict:
        channel = self.channels.get(channel_id, {})
        guild_id = channel.get("guild_id")
        now = time.time()
        message = {
            "id": _new_id(now),
            "type": type,
            "channel_id": channel_id,
            "author": author,
            "content": content or "",
            "timestamp": _iso(now),
            "edited_timestamp": None,
            "tts": tts,
            "mention_everyone": "@everyone" in (content or ""),
            "mentions": self._mentions_in(content or "", guild_id),
            "mention_roles": [],
            "attachments": list(attachments),
            "embeds": list(embeds),
            "pinned": False,
            "flags": flags,
            "components": list(components),
        }
        if guild_id:
            message["guild_id"] = guild_id
        if extra:
            message.update(extra)
        self.messages[message["id"]] = message
        if channel and "last_message_id" in channel:
            channel["last_message_id"] = message["id"]
        return message

    def _apply_edit(self, message: dict, payload: dict, files: list[dict], folder: str) -> None:
        if "content" in payload:
            message["content"] = payload["content"] or ""
            message["mentions"] = self._mentions_in(message["content"], message.get("guild_id"))
        if "attachments" in payload or files:
            message["attachments"] = self._attachments_from_upload(folder, payload, files, message["attachments"])
        if "embeds" in payload:
            message["embeds"] = self._resolve_embeds(payload["embeds"] or [], message["attachments"])
        if "components" in payload:
            message["components"] = payload["components"] or []
        if "flags" in payload and payload["flags"] is not None:
            # only SUPPRESS_EMBEDS may be changed by an edit; ephemeral/loading stay as they are
            keep = message["flags"] & ~(1 << 2)
            message["flags"] = keep | (int(payload["flags"]) & (1 << 2))

    def _gateway_copy(self, message: dict) -> dict:
        payload = dict(message)
        gid = message.get("guild_id")
        uid = message["author"]["id"]
        if gid and uid in self.members.get(gid, {}):
            payload["member"] = self._partial_member(gid, uid)
        return payload

    async def _echo(self, event: str, message: dict) -> None:
        """Gateway echo of the bot's own message, as Discord does."""
        if not self.echo_own_messages or message["flags"] & FLAG_EPHEMERAL:
            return
        if self._live_session() is None:
            return
        intent = INTENT_GUILD_MESSAGES if message.get("guild_id") else INTENT_DIRECT_MESSAGES
        await self._emit(event, self._gateway_copy(message), intent)

    # ------------------------------------------------------ REST: identity

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return self._json({"url": f"ws://{self.host}:{self.port}/gateway"})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        return self._json(
            {
                "url": f"ws://{self.host}:{self.port}/gateway",
                "shards": 1,
                "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1},
            }
        )

    async def _get_me(self, request: web.Request) -> web.Response:
        me = dict(self.bot_user)
        me.update(verified=True, mfa_enabled=False, locale="en-US", email=None)
        return self._json(me)

    async def _get_user(self, request: web.Request) -> web.Response:
        user = self.users.get(request.match_info["user_id"])
        if user is None:
            raise _ApiError(404, 10013, "Unknown User")
        return self._json(user)

    async def _create_dm(self, request: web.Request) -> web.Response:
        body, _ = await self._read_body(request)
        user = self.users.get(str(body.get("recipient_id")))
        if user is None:
            raise _ApiError(404, 10013, "Unknown User")
        return self._json(self.dm_channel(user))

    async def _get_app(self, request: web.Request) -> web.Response:
        return self._json(
            {
                "id": self.application_id,
                "name": self.bot_user["username"],
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.owner,
                "team": None,
                "verify_key": hashlib.sha256(self.application_id.encode()).hexdigest(),
                "flags": 0,
                "hook": True,
                "bot": self.bot_user,
                "rpc_origins": [],
                "tags": [],
                "redirect_uris": [],
                "interactions_endpoint_url": None,
                "approximate_guild_count": len(self.guilds),
                "integration_types_config": {"0": {}},
            }
        )

    # ------------------------------------------------------ REST: commands

    def _check_app(self, app: str) -> None:
        if app != self.application_id:
            raise _ApiError(403, 50001, "Missing Access")

    async def _get_commands(self, request: web.Request) -> web.Response:
        self._check_app(request.match_info["app"])
        scope = request.match_info.get("guild", "global")
        return self._json(self.commands.get(scope, []))

    @staticmethod
    def _validate_options(options: list[dict], path: list[Any], errors: dict) -> None:
        if len(options) > 25:
            _put_error(errors, path, _err("BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."))
        seen_optional = False
        names: set[str] = set()
        for i, opt in enumerate(options):
            here = path + [i]
            name = opt.get("name", "")
            if not _NAME_RE.match(name) or name != name.lower():
                _put_error(errors, here + ["name"], _err("APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"))
            if name in names:
                _put_error(errors, here + ["name"], _err("APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS", "Option name already exists"))
            names.add(name)
            if not 1 <= len(opt.get("description", "")) <= 100:
                _put_error(errors, here + ["description"], _err("BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."))
            if len(opt.get("choices") or []) > 25:
                _put_error(errors, here + ["choices"], _err("BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."))
            if opt.get("type") in (1, 2):
                FakeDiscord._validate_options(opt.get("options") or [], here + ["options"], errors)
                continue
            if opt.get("required"):
                if seen_optional:
                    _put_error(
                        errors,
                        here + ["required"],
                        _err("APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID", "Required options must be placed before non-required options"),
                    )
            else:
                seen_optional = True

    def _validate_commands(self, body: Any) -> None:
        if not isinstance(body, list):
            raise _form_error({"_errors": [{"code": "BASE_TYPE_ARRAY", "message": "Must be an array."}]})
        errors: dict = {}
        seen: set[tuple[int, str]] = set()
        counts = {1: 0, 2: 0, 3: 0}
        for i, cmd in enumerate(body):
            ctype = cmd.get("type", 1)
            counts[ctype] = counts.get(ctype, 0) + 1
            name = cmd.get("name", "")
            if ctype == 1:
                if not _NAME_RE.match(name) or name != name.lower():
                    _put_error(errors, [i, "name"], _err("APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"))
                if not 1 <= len(cmd.get("description", "")) <= 100:
                    _put_error(errors, [i, "description"], _err("BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."))
                self._validate_options(cmd.get("options") or [], [i, "options"], errors)
            elif not 1 <= len(name) <= 32:
                _put_error(errors, [i, "name"], _err("BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length."))
            if (ctype, name) in seen:
                _put_error(errors, [i, "name"], _err("APPLICATION_COMMANDS_DUPLICATE_NAME", "Application command names must be unique"))
            seen.add((ctype, name))
        if counts.get(1, 0) > 100 or counts.get(2, 0) > 15 or counts.get(3, 0) > 15:
            _put_error(errors, ["_root"], _err("APPLICATION_COMMAND_TOO_MANY", "Too many application commands"))
        if errors:
            raise _form_error(errors)

    async def _put_commands(self, request: web.Request) -> web.Response:
        self._check_app(request.match_info["app"])
        gid = request.match_info.get("guild")
        if gid is not None and gid not in self.guilds:
            raise _ApiError(403, 50001, "Missing Access")
        body, _ = await self._read_body(request)
        self._validate_commands(body)
        scope = gid or "global"
        previous = {(c["type"], c["name"]): c for c in self.commands.get(scope, [])}
        result = []
        for cmd in body:
            cmd = dict(cmd)
            cmd.setdefault("type", 1)
            cmd.setdefault("description", "")
            old = previous.get((cmd["type"], cmd["name"]))
            cmd["id"] = old["id"] if old else _new_id()
            cmd["application_id"] = self.application_id
            cmd["version"] = _new_id()
            cmd.setdefault("default_member_permissions", None)
            cmd.setdefault("nsfw", False)
            cmd.setdefault("integration_types", [0])
            cmd.setdefault("contexts", None)
            if gid:
                cmd["guild_id"] = gid
            result.append(cmd)
        self.commands[scope] = result
        record = {"scope": scope, "guild_id": gid, "commands": result, "names": [c["name"] for c in result]}
        self.sync_calls.append(record)
        self._record("sync", record)
        return self._json(result)

    def _find_command(self, name: str, guild_id: Optional[str]) -> Optional[dict]:
        for scope in ([guild_id] if guild_id else []) + ["global"]:
            for cmd in self.commands.get(scope, []):
                if cmd["name"] == name and cmd.get("type", 1) == 1:
                    return cmd
        return None

    # ------------------------------------------------------ REST: interactions

    def _interaction_for_callback(self, iid: str, token: str) -> FakeInteraction:
        if token in self._expired_tokens:
            raise _ApiError(401, 50027, "Invalid Webhook Token")
        inter = self._interactions.get(token)
        if inter is None or inter.id != iid:
            raise _ApiError(404, 10062, "Unknown interaction")
        if inter.acknowledged is not None:
            raise _ApiError(400, 40060, "Interaction has already been acknowledged.")
        if self.callback_deadline is not None and time.time() - inter.created > self.callback_deadline:
            raise _ApiError(404, 10062, "Unknown interaction")
        return inter

    def _interaction_for_webhook(self, app: str, token: str, *, need_ack: bool = True) -> FakeInteraction:
        if app != self.application_id:
            raise _ApiError(404, 10015, "Unknown Webhook")
        inter = self._interactions.get(token)
        if token in self._expired_tokens or inter is None:
            raise _ApiError(401, 50027, "Invalid Webhook Token")
        if time.time() - inter.created > self.token_lifetime:
            raise _ApiError(401, 50027, "Invalid Webhook Token")
        if need_ack and inter.acknowledged is None:
            raise _ApiError(404, 10015, "Unknown Webhook")
        return inter

    def _interaction_message_extra(self, inter: FakeInteraction) -> dict:
        user = inter.user
        owners = {"0": inter.guild_id} if inter.guild_id else {"0": "0"}
        return {
            "webhook_id": self.application_id,
            "application_id": self.application_id,
            "interaction_metadata": {
                "id": inter.id,
                "type": 2,
                "user": user,
                "authorizing_integration_owners": owners,
                "name": inter.name,
                "command_type": 1,
            },
        }

    def _folder_for(self, channel_id: str) -> str:
        return f"attachments/{channel_id}"

    async def _interaction_callback(self, request: web.Request) -> web.StreamResponse:
        iid, token = request.match_info["iid"], request.match_info["token"]
        inter = self._interaction_for_callback(iid, token)
        inter.acknowledged = -1  # reserve: a concurrent second callback sees "already acknowledged"
        try:
            payload, files = await self._read_body(request, inter.attachment_size_limit)
            cb_type = payload.get("type")
            data = payload.get("data") or {}
            flags = int(data.get("flags") or 0)
            message: Optional[dict] = None
            if cb_type == 4:
                self._validate_message(data, files, creating=True)
                attachments = self._attachments_from_upload(self._folder_for(inter.channel_id), data, files, [])
                message = self._new_message(
                    inter.channel_id,
                    self.bot_user,
                    content=data.get("content") or "",
                    embeds=self._resolve_embeds(data.get("embeds") or [], attachments),
                    attachments=attachments,
                    components=data.get("components") or [],
                    tts=bool(data.get("tts")),
                    type=20,
                    flags=flags & FLAG_EPHEMERAL,
                    extra=self._interaction_message_extra(inter),
                )
            elif cb_type == 5:
                message = self._new_message(
                    inter.channel_id,
                    self.bot_user,
                    type=20,
                    flags=FLAG_LOADING | (flags & FLAG_EPHEMERAL),
                    extra=self._interaction_message_extra(inter),
                )
            elif cb_type == 9:
                if not (data.get("custom_id") and data.get("title") and data.get("components")):
                    raise _form_error({"data": _err("BASE_TYPE_REQUIRED", "This field is required")})
            else:
                raise _form_error({"type": _err("BASE_TYPE_CHOICES", f"Value must be one of {{4, 5, 9}}.")})
        except BaseException:
            inter.acknowledged = None
            raise
        inter.acknowledged = cb_type
        inter.ack_flags = flags
        inter.original = message
        record = {
            "interaction_id": iid,
            "token": token,
            "type": cb_type,
            "flags": flags,
            "ephemeral": bool(flags & FLAG_EPHEMERAL),
            "data": data,
            "files": files,
            "message": message,
            "at": asyncio.get_running_loop().time(),
        }
        self.callbacks.append(record)
        self._record("callback", record)
        if message is not None:
            await self._echo("MESSAGE_CREATE", message)
        if request.query.get("with_response") not in _TRUTHY:
            return web.Response(status=204)
        body: dict = {
            "interaction": {
                "id": iid,
                "type": inter.payload["type"],
                "response_message_id": message["id"] if message else None,
                "response_message_loading": cb_type == 5,
                "response_message_ephemeral": bool(flags & FLAG_EPHEMERAL),
            }
        }
        if message is not None:
            body["resource"] = {"type": cb_type, "message": message}
        return self._json(body)

    def _webhook_message(self, inter: FakeInteraction, mid: str) -> tuple[dict, bool]:
        if inter.original_deleted and mid == "@original":
            raise _ApiError(404, 10008, "Unknown Message")
        if mid == "@original":
            if inter.original is None:
                raise _ApiError(404, 10008, "Unknown Message")
            return inter.original, True
        if inter.original is not None and inter.original["id"] == mid:
            return inter.original, True
        if mid in inter.followups:
            return inter.followups[mid], False
        raise _ApiError(404, 10008, "Unknown Message")

    async def _followup(self, request: web.Request) -> web.StreamResponse:
        app, token = request.match_info["app"], request.match_info["token"]
        inter = self._interaction_for_webhook(app, token)
        if inter.original_deleted:
            raise _ApiError(404, 10008, "Unknown Message")
        payload, files = await self._read_body(request, inter.attachment_size_limit)
        self._validate_message(payload, files, creating=True)
        folder = self._folder_for(inter.channel_id)
        flags = int(payload.get("flags") or 0)
        original = inter.original
        resolves_defer = original is not None and bool(original["flags"] & FLAG_LOADING)
        if resolves_defer:
            # The first followup after a deferred (type 5) response replaces the
            # "thinking" message; its visibility is the one chosen when deferring.
            assert original is not None
            original["flags"] &= ~FLAG_LOADING
            self._apply_edit(original, {k: v for k, v in payload.items() if k != "flags"}, files, folder)
            original.setdefault("content", "")
            message = original
        else:
            attachments = self._attachments_from_upload(folder, payload, files, [])
            message = self._new_message(
                inter.channel_id,
                self.bot_user,
                content=payload.get("content") or "",
                embeds=self._resolve_embeds(payload.get("embeds") or [], attachments),
                attachments=attachments,
                components=payload.get("components") or [],
                tts=bool(payload.get("tts")),
                flags=flags & FLAG_EPHEMERAL,
                extra=self._interaction_message_extra(inter),
            )
            inter.followups[message["id"]] = message
        record = {
            "interaction_id": inter.id,
            "token": token,
            "payload": payload,
            "content": message["content"],
            "embeds": message["embeds"],
            "files": files,
            "flags": message["flags"],
            "ephemeral": bool(message["flags"] & FLAG_EPHEMERAL),
            "resolved_deferred": resolves_defer,
            "message": message,
            "at": asyncio.get_running_loop().time(),
        }
        self.followups.append(record)
        self._record("followup", record)
        await self._echo("MESSAGE_UPDATE" if resolves_defer else "MESSAGE_CREATE", message)
        if request.query.get("wait") not in _TRUTHY:
            return web.Response(status=204)
        return self._json(message)

    async def _webhook_get(self, request: web.Request) -> web.Response:
        inter = self._interaction_for_webhook(request.match_info["app"], request.match_info["token"])
        message, _ = self._webhook_message(inter, request.match_info["mid"])
        return self._json(message)

    async def _webhook_edit(self, request: web.Request) -> web.Response:
        token, mid = request.match_info["token"], request.match_info["mid"]
        inter = self._interaction_for_webhook(request.match_info["app"], token)
        message, is_original = self._webhook_message(inter, mid)
        payload, files = await self._read_body(request, inter.attachment_size_limit)
        self._validate_message(payload, files, creating=False)
        was_loading = bool(message["flags"] & FLAG_LOADING)
        message["flags"] &= ~FLAG_LOADING
        self._apply_edit(message, payload, files, self._folder_for(inter.channel_id))
        if not was_loading:
            message["edited_timestamp"] = _iso(time.time())
        record = {
            "interaction_id": inter.id,
            "token": token,
            "message_id": message["id"],
            "payload": payload,
            "content": message["content"],
            "embeds": message["embeds"],
            "attachments": message["attachments"],
            "files": files,
            "message": json.loads(json.dumps(message)),
            "at": asyncio.get_running_loop().time(),
            "wall": time.time(),
        }
        if is_original:
            self.edits.append(record)
            self._record("edit", record)
        else:
            self.followup_edits.append(record)
            self._record("followup_edit", record)
        await self._echo("MESSAGE_UPDATE", message)
        return self._json(message)

    async def _webhook_delete(self, request: web.Request) -> web.Response:
        token, mid = request.match_info["token"], request.match_info["mid"]
        inter = self._interaction_for_webhook(request.match_info["app"], token)
        message, is_original = self._webhook_message(inter, mid)
        if is_original:
            inter.original_deleted = True
        else:
            inter.followups.pop(message["id"], None)
        self.messages.pop(message["id"], None)
        record = {"channel_id": message["channel_id"], "message_id": message["id"], "token": token}
        self.deletions.append(record)
        self._record("delete", record)
        if self.echo_own_messages and not message["flags"] & FLAG_EPHEMERAL and self._live_session():
            await self._emit_delete(message)
        return web.Response(status=204)

    async def _emit_delete(self, message: dict) -> None:
        d = {"id": message["id"], "channel_id": message["channel_id"]}
        if message.get("guild_id"):
            d["guild_id"] = message["guild_id"]
        intent = INTENT_GUILD_MESSAGES if message.get("guild_id") else INTENT_DIRECT_MESSAGES
        await self._emit("MESSAGE_DELETE", d, intent)

    # ------------------------------------------------------ REST: channels

    def _channel(self, cid: str) -> dict:
        channel = self.channels.get(cid)
        if channel is None:
            raise _ApiError(404, 10003, "Unknown Channel")
        return channel

    async def _get_channel(self, request: web.Request) -> web.Response:
        return self._json(self._channel(request.match_info["cid"]))

    async def _channel_post(self, request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        channel = self._channel(cid)
        if cid in self.forbidden_channels:
            raise _ApiError(403, 50013, "Missing Permissions")
        if channel["type"] not in (0, 1, 3, 5, 10, 11, 12):
            raise _ApiError(400, 50008, "Cannot send messages in a non-text channel")
        payload, files = await self._read_body(request)
        self._validate_message(payload, files, creating=True)
        extra: dict = {}
        msg_type = 0
        ref = payload.get("message_reference")
        if ref:
            target = self.messages.get(str(ref.get("message_id")))
            if target is None:
                if ref.get("fail_if_not_exists", True):
                    raise _form_error(
                        {"message_reference": _err("MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message")}
                    )
            else:
                msg_type = 19 if ref.get("type", 0) == 0 else 0
                extra["message_reference"] = {
                    "type": ref.get("type", 0),
                    "message_id": target["id"],
                    "channel_id": target["channel_id"],
                    **({"guild_id": target["guild_id"]} if target.get("guild_id") else {}),
                }
                referenced = dict(target)
                referenced.pop("referenced_message", None)
                extra["referenced_message"] = referenced
        attachments = self._attachments_from_upload(self._folder_for(cid), payload, files, [])
        message = self._new_message(
            cid,
            self.bot_user,
            content=payload.get("content") or "",
            embeds=self._resolve_embeds(payload.get("embeds") or [], attachments),
            attachments=attachments,
            components=payload.get("components") or [],
            tts=bool(payload.get("tts")),
            type=msg_type,
            flags=int(payload.get("flags") or 0) & (1 << 2 | 1 << 12),
            extra=extra,
        )
        if payload.get("nonce") is not None:
            message["nonce"] = payload["nonce"]
        record = {
            "channel_id": cid,
            "payload": payload,
            "content": message["content"],
            "embeds": message["embeds"],
            "files": files,
            "message_reference": extra.get("message_reference"),
            "message": message,
            "at": asyncio.get_running_loop().time(),
        }
        self.channel_messages.append(record)
        self._record("channel_message", record)
        await self._echo("MESSAGE_CREATE", message)
        return self._json(message)

    def _message_in(self, cid: str, mid: str) -> dict:
        self._channel(cid)
        message = self.messages.get(mid)
        if message is None or message["channel_id"] != cid:
            raise _ApiError(404, 10008, "Unknown Message")
        return message

    async def _channel_get_message(self, request: web.Request) -> web.Response:
        return self._json(self._message_in(request.match_info["cid"], request.match_info["mid"]))

    async def _channel_edit(self, request: web.Request) -> web.Response:
        cid, mid = request.match_info["cid"], request.match_info["mid"]
        message = self._message_in(cid, mid)
        if message["author"]["id"] != self.bot_user["id"]:
            raise _ApiError(403, 50005, "Cannot edit a message authored by another user")
        payload, files = await self._read_body(request)
        self._validate_message(payload, files, creating=False)
        self._apply_edit(message, payload, files, self._folder_for(cid))
        message["edited_timestamp"] = _iso(time.time())
        record = {
            "channel_id": cid,
            "message_id": mid,
            "payload": payload,
            "content": message["content"],
            "embeds": message["embeds"],
            "files": files,
            "message": json.loads(json.dumps(message)),
            "at": asyncio.get_running_loop().time(),
        }
        self.channel_edits.append(record)
        self._record("channel_edit", record)
        await self._echo("MESSAGE_UPDATE", message)
        return self._json(message)

    async def _channel_delete(self, request: web.Request) -> web.Response:
        cid, mid = request.match_info["cid"], request.match_info["mid"]
        message = self._message_in(cid, mid)
        self.messages.pop(mid, None)
        record = {"channel_id": cid, "message_id": mid}
        self.deletions.append(record)
        self._record("delete", record)
        if self._live_session():
            await self._emit_delete(message)
        return web.Response(status=204)

    async def _typing(self, request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        self._channel(cid)
        record = {"channel_id": cid}
        self.typing.append(record)
        self._record("typing", record)
        return web.Response(status=204)

    async def _reaction(self, request: web.Request) -> web.Response:
        cid, mid = request.match_info["cid"], request.match_info["mid"]
        self._message_in(cid, mid)
        record = {
            "channel_id": cid,
            "message_id": mid,
            "emoji": request.match_info["emoji"],
            "added": request.method == "PUT",
        }
        self.reactions.append(record)
        self._record("reaction", record)
        return web.Response(status=204)

    # ------------------------------------------------------ CDN

    async def _cdn_get(self, request: web.Request) -> web.Response:
        rest = request.match_info["path"]
        path = "/cdn/" + rest
        entry = self._cdn.get(path)
        if entry is None:
            return web.Response(status=404, text="Not Found")
        q = request.query
        try:
            expires, issued = int(q["ex"], 16), int(q["is"], 16)
            good = hmac.compare_digest(q["hm"], self._sign(path, expires, issued))
        except (KeyError, ValueError):
            good = False
        if not good or entry["expired"] or time.time() > expires:
            return web.Response(status=404, text="This content is no longer available.")
        record = {"path": path, "size": len(entry["data"])}
        self.cdn_downloads.append(record)
        self._record("cdn", record)
        return web.Response(body=entry["data"], content_type=entry["content_type"])

    async def _unknown(self, request: web.Request) -> web.Response:
        body = await request.read()
        record = {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "body": body[:2000].decode("utf-8", "replace"),
        }
        self.unknown_requests.append(record)
        self._record("unknown", record)
        return self._json({"message": "404: Not Found", "code": 0}, 404)

    # ------------------------------------------------------ gateway

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _send_frame(conn: _Connection, frame: dict) -> bool:
        if conn.ws.closed:
            return False
        try:
            await conn.ws.send_str(json.dumps(frame))
            return True
        except (ConnectionError, RuntimeError):
            return False

    async def _emit(self, event: str, data: dict, intent: Optional[int] = None) -> Optional[int]:
        """Add a dispatch to the live session (sent now, or replayed on RESUME)."""
        session = self._live_session()
        if session is None:
            raise RuntimeError("no gateway session: the client has not identified (or has closed)")
        if intent is not None and not session.intents & intent:
            return None
        async with session.lock:
            session.seq += 1
            frame = {"op": 0, "s": session.seq, "t": event, "d": data}
            session.log.append(frame)
            self.dispatches.append(frame)
            if session.conn is not None:
                await self._send_frame(session.conn, frame)
            return session.seq

    async def dispatch(self, event: str, data: dict, *, intent: Optional[int] = None) -> Optional[int]:
        """Send an arbitrary dispatch event; returns its sequence number (None if filtered by intents)."""
        await self.wait_identified()
        return await self._emit(event, data, intent)

    async def wait_identified(self, timeout: float = 10.0) -> None:
        """Wait until a client has identified on the gateway."""
        assert self._identified is not None, "FakeDiscord is not started"
        if not self._identified.is_set():
            await asyncio.wait_for(self._identified.wait(), timeout)

    def _guild_create_payload(self, guild: dict) -> dict:
        payload = json.loads(json.dumps(guild))
        for channel in payload["channels"]:
            channel.pop("guild_id", None)
        members = list(self.members[guild["id"]].values())
        payload.update(
            unavailable=False,
            joined_at=_iso(time.time() - 86400),
            large=False,
            member_count=len(members),
            members=members,
            presences=[],
            voice_states=[],
            threads=[],
            stage_instances=[],
            guild_scheduled_events=[],
            soundboard_sounds=[],
        )
        return payload

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conn = _Connection(ws, request, len(self.gateway_connections) + 1)
        self._connections.append(conn)
        info = {"number": conn.number, "path": request.path, "query": dict(request.query)}
        self.gateway_connections.append(info)
        self._record("gateway_connect", info)
        await self._send_frame(conn, {"op": 10, "s": None, "t": None, "d": {"heartbeat_interval": self.heartbeat_interval}})
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        frame = json.loads(msg.data)
                    except ValueError:
                        await ws.close(code=4002, message=b"Error while decoding payload.")
                        break
                    await self._on_frame(conn, frame)
                elif msg.type == WSMsgType.BINARY:
                    await ws.close(code=4002, message=b"Error while decoding payload.")
                    break
                else:
                    break
        finally:
            self._connections.remove(conn)
            session = conn.session
            if session is not None and session.conn is conn:
                session.conn = None
            code = ws.close_code
            if session is not None and not conn.server_closed and code in (1000, 1001):
                session.valid = False  # a clean client-side close ends the session
            record = {"number": conn.number, "code": code, "by_server": conn.server_closed}
            self._record("gateway_disconnect", record)
        return ws

    async def _close(self, conn: _Connection, code: int, reason: str) -> None:
        conn.server_closed = True
        if conn.session is not None and conn.session.conn is conn:
            conn.session.conn = None
        await conn.ws.close(code=code, message=reason.encode())

    async def _on_frame(self, conn: _Connection, frame: dict) -> None:
        op = frame.get("op")
        d = frame.get("d")
        if op == 1:
            self.heartbeats += 1
            await self._send_frame(conn, {"op": 11, "s": None, "t": None, "d": None})
            return
        if op == 2:
            await self._on_identify(conn, d or {})
            return
        if op == 6:
            await self._on_resume(conn, d or {})
            return
        if conn.session is None:
            await self._close(conn, 4003, "Not authenticated.")
            return
        if op == 3:
            self.presences.append(d)
            self._record("presence", {"presence": d})
        elif op == 8:
            await self._on_request_members(conn, d or {})
        elif op == 4:
            self._record("voice_state", {"voice_state": d})
        else:
            await self._close(conn, 4001, "Unknown opcode.")

    async def _on_identify(self, conn: _Connection, d: dict) -> None:
        if conn.session is not None:
            await self._close(conn, 4005, "Already authenticated.")
            return
        record = {k: v for k, v in d.items() if k != "token"}
        record["token_ok"] = self.token is None or d.get("token") == self.token
        self.identifies.append(record)
        self._record("identify", record)
        if not record["token_ok"]:
            await self._close(conn, 4004, "Authentication failed.")
            return
        intents = int(d.get("intents") or 0)
        if intents & PRIVILEGED_INTENTS & ~self.allowed_intents:
            await self._close(conn, 4014, "Disallowed intent(s).")
            return
        if self._session is not None:
            self._session.valid = False
        session = _Session(secrets.token_hex(16), intents, record)
        self._sessions[session.id] = session
        self._session = session
        conn.session = session
        session.conn = conn
        ready = {
            "v": 10,
            "user": dict(self.bot_user, verified=True, mfa_enabled=False),
            "guilds": [{"id": gid, "unavailable": True} for gid in self.guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.resume_gateway_url,
            "application": {"id": self.application_id, "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "geo_ordered_rtc_regions": [],
            "guild_join_requests": [],
            "user_settings": {},
            "_trace": ["fakediscord"],
        }
        if d.get("shard"):
            ready["shard"] = d["shard"]
        await self._emit("READY", ready)
        for guild in list(self.guilds.values()):
            await self._emit("GUILD_CREATE", self._guild_create_payload(guild))
        assert self._identified is not None
        self._identified.set()

    async def _on_resume(self, conn: _Connection, d: dict) -> None:
        record = {"session_id": d.get("session_id"), "seq": d.get("seq"), "path": conn.request.path}
        session = self._sessions.get(str(d.get("session_id")))
        ok = session is not None and session.valid and (self.token is None or d.get("token") == self.token)
        record["accepted"] = ok
        if not ok or session is None:
            self.resumes.append(record)
            self._record("resume", record)
            await self._send_frame(conn, {"op": 9, "s": None, "t": None, "d": False})
            return
        last = d.get("seq") or 0
        async with session.lock:
            if session.conn is not None and session.conn is not conn:
                stale = session.conn
                session.conn = None
                stale.server_closed = True
                self._spawn(stale.ws.close(code=4000, message=b"Session resumed elsewhere."))
            replayed = [f for f in session.log if f["s"] > last]
            for frame in replayed:
                await self._send_frame(conn, frame)
            session.seq += 1
            resumed = {"op": 0, "s": session.seq, "t": "RESUMED", "d": {"_trace": ["fakediscord"]}}
            session.log.append(resumed)
            self.dispatches.append(resumed)
            await self._send_frame(conn, resumed)
            conn.session = session
            session.conn = conn
        record["replayed"] = [f["t"] for f in replayed]
        self.resumes.append(record)
        self._record("resume", record)

    async def _on_request_members(self, conn: _Connection, d: dict) -> None:
        gids = d.get("guild_id")
        gids = gids if isinstance(gids, list) else [gids]
        for gid in gids:
            members = list(self.members.get(str(gid), {}).values())
            wanted = d.get("user_ids")
            if wanted:
                wanted = {str(u) for u in (wanted if isinstance(wanted, list) else [wanted])}
                members = [m for m in members if m["user"]["id"] in wanted]
            query = d.get("query")
            if query:
                members = [m for m in members if m["user"]["username"].lower().startswith(query.lower())]
            if d.get("limit"):
                members = members[: int(d["limit"])]
            chunk = {"guild_id": str(gid), "members": members, "chunk_index": 0, "chunk_count": 1, "not_found": []}
            if d.get("nonce") is not None:
                chunk["nonce"] = d["nonce"]
            self._record("request_members", {"guild_id": str(gid), "nonce": d.get("nonce")})
            await self._emit("GUILD_MEMBERS_CHUNK", chunk)

    # gateway controls for tests

    async def drop_gateway(self, code: int = 4000, *, abrupt: bool = False) -> bool:
        """Close the client's gateway socket (resumable codes: 4000, 1000 from the server...).

        ``abrupt=True`` cuts the TCP connection without a close frame.  Events
        dispatched until the client resumes are queued and replayed.
        """
        session = self._session
        conn = session.conn if session is not None else None
        if conn is None:
            return False
        conn.server_closed = True
        session.conn = None  # type: ignore[union-attr]
        self._record("gateway_drop", {"number": conn.number, "code": None if abrupt else code})
        if abrupt:
            transport = conn.request.transport
            if transport is not None:
                transport.abort()
        else:
            await conn.ws.close(code=code, message=b"dropped by test")
        return True

    async def send_reconnect(self) -> bool:
        """Send op 7 RECONNECT; the client should close and RESUME."""
        session = self._session
        conn = session.conn if session is not None else None
        if conn is None:
            return False
        async with session.lock:  # type: ignore[union-attr]
            session.conn = None  # type: ignore[union-attr]
            await self._send_frame(conn, {"op": 7, "s": None, "t": None, "d": None})
        self._record("gateway_reconnect_request", {"number": conn.number})
        return True

    async def invalidate_session(self, resumable: bool = False) -> bool:
        """Send op 9 INVALID_SESSION.  Not resumable: the client must IDENTIFY again."""
        session = self._session
        conn = session.conn if session is not None else None
        if conn is None:
            return False
        if not resumable:
            session.valid = False  # type: ignore[union-attr]
        await self._send_frame(conn, {"op": 9, "s": None, "t": None, "d": resumable})
        self._record("gateway_invalidate", {"number": conn.number, "resumable": resumable})
        return True

    # ------------------------------------------------------ scenario helpers

    def _option_list(
        self, options: Any, command: Optional[dict], attachments: list[dict]
    ) -> tuple[list[dict], dict[str, dict]]:
        declared = {o["name"]: o for o in (command or {}).get("options", []) or []}
        if options is None:
            items: list[Any] = []
        elif isinstance(options, dict):
            items = list(options.items())
        else:
            items = list(options)
        if attachments:
            names = [n for n, o in declared.items() if o.get("type") == 11]
            given = {i[0] for i in items if isinstance(i, tuple)} | {
                i.get("name") for i in items if isinstance(i, dict)
            }
            free = [n for n in names if n not in given] or ["photo"]
            for k, att in enumerate(attachments):
                name = free[k] if k < len(free) else f"{free[-1]}{k + 1}"
                items.insert(k, (name, att))
        out: list[dict] = []
        resolved: dict[str, dict] = {}
        for item in items:
            if isinstance(item, dict):
                out.append(item)
                continue
            name, value = item
            if isinstance(value, dict) and "filename" in value and "url" in value:
                resolved[value["id"]] = value
                out.append({"name": name, "type": 11, "value": value["id"]})
                continue
            opt_type = declared.get(name, {}).get("type")
            if opt_type is None:
                if isinstance(value, bool):
                    opt_type = 5
                elif isinstance(value, int):
                    opt_type = 4
                elif isinstance(value, float):
                    opt_type = 10
                else:
                    opt_type = 3
            out.append({"name": name, "type": opt_type, "value": value})
        return out, resolved

    async def send_interaction(
        self,
        name: str = "animate",
        options: Any = None,
        *,
        attachment: Optional[dict] = None,
        attachments: Iterable[dict] = (),
        user: Optional[dict] = None,
        guild_id: Any = "default",
        channel_id: Optional[str] = None,
        member_roles: Iterable[str] = (),
        attachment_size_limit: int = 10 * 2**20,
        expired: bool = False,
        age: float = 0.0,
        locale: str = "en-US",
        permissions: Optional[str] = None,
        app_permissions: Optional[str] = None,
    ) -> FakeInteraction:
        """Dispatch an INTERACTION_CREATE for slash command ``name``.

        ``options`` is a dict ``{name: value}`` (types come from the synced
        command, else from the Python type; attachment dicts become type 11),
        or a list of raw option objects.  ``attachment`` fills the command's
        attachment option (named ``photo`` if the command was never synced).
        ``guild_id=None`` makes it a DM interaction.  ``expired=True`` dates
        the interaction 16 minutes back (``age`` sets any other age, seconds).
        """
        await self.wait_identified()
        user = user or self.user
        self.users.setdefault(user["id"], user)
        gid = self.guild_id if guild_id == "default" else (str(guild_id) if guild_id is not None else None)
        created = time.time() - (16 * 60.0 if expired else age)
        iid = str(snowflake_at(created))
        token = base64.urlsafe_b64encode(f"interaction:{iid}:{secrets.token_hex(48)}".encode()).decode().rstrip("=")
        command = self._find_command(name, gid)
        all_attachments = ([attachment] if attachment else []) + list(attachments)
        opts, resolved = self._option_list(options, command, all_attachments)
        data: dict = {"id": command["id"] if command else _new_id(), "name": name, "type": 1}
        if opts:
            data["options"] = opts
        if resolved:
            data["resolved"] = {"attachments": resolved}
        if command and command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        payload: dict = {
            "id": iid,
            "application_id": self.application_id,
            "type": 2,
            "data": data,
            "token": token,
            "version": 1,
            "locale": locale,
            "entitlements": [],
            "attachment_size_limit": attachment_size_limit,
            "app_permissions": app_permissions or DEFAULT_PERMISSIONS,
        }
        if gid is not None:
            if gid not in self.guilds:
                raise ValueError(f"unknown guild {gid}; add it with add_guild() first")
            guild = self.guilds[gid]
            cid = str(channel_id) if channel_id else next(c["id"] for c in guild["channels"] if c["type"] == 0)
            channel = self.channels.get(cid)
            if channel is None or channel.get("guild_id") != gid:
                raise ValueError(f"channel {cid} is not in guild {gid}")
            member = self.members[gid].get(user["id"])
            if member is None or member_roles:
                member = self.add_member(gid, user, member_roles or (member or {}).get("roles", ()))
            member_payload = dict(member, permissions=permissions or DEFAULT_PERMISSIONS)
            payload.update(
                guild_id=gid,
                guild={"id": gid, "locale": guild["preferred_locale"], "features": guild["features"]},
                guild_locale=guild["preferred_locale"],
                channel_id=cid,
                channel=dict(channel),
                member=member_payload,
                context=0,
                authorizing_integration_owners={"0": gid},
            )
        else:
            channel = self.dm_channel(user)
            payload.update(
                channel_id=channel["id"],
                channel=dict(channel),
                user=user,
                context=1,
                authorizing_integration_owners={"0": "0"},
            )
        inter = FakeInteraction(
            id=iid,
            token=token,
            payload=payload,
            created=snowflake_time(iid),
            attachment_size_limit=attachment_size_limit,
        )
        self._interactions[token] = inter
        self._record("interaction_create", {"interaction_id": iid, "token": token, "name": name, "payload": payload})
        await self._emit("INTERACTION_CREATE", payload)
        return inter

    async def send_message_create(
        self,
        channel_id: Optional[str] = None,
        author: Optional[dict] = None,
        content: str = "",
        *,
        attachments: Iterable[dict] = (),
        mentions: Iterable[dict] = (),
        embeds: Iterable[dict] = (),
        reply_to: Optional[Union[str, dict]] = None,
    ) -> dict:
        """A user posts a message; dispatches MESSAGE_CREATE (subject to intents).

        Attachments come from :meth:`add_attachment`.  As on Discord, without
        the MESSAGE_CONTENT intent a guild message that does not mention the bot
        arrives with empty content, embeds and attachments.  Returns the full
        message as stored (what the fake's REST API would return).
        """
        await self.wait_identified()
        cid = str(channel_id or self.channel_id)
        channel = self._channel(cid)
        author = author or self.user
        self.users.setdefault(author["id"], author)
        gid = channel.get("guild_id")
        if gid and author["id"] not in self.members[gid]:
            self.add_member(gid, author)
        extra: dict = {}
        msg_type = 0
        if reply_to is not None:
            target = self.messages[reply_to if isinstance(reply_to, str) else reply_to["id"]]
            msg_type = 19
            extra["message_reference"] = {"type": 0, "message_id": target["id"], "channel_id": target["channel_id"]}
            if target.get("guild_id"):
                extra["message_reference"]["guild_id"] = target["guild_id"]
            extra["referenced_message"] = {k: v for k, v in target.items() if k != "referenced_message"}
        message = self._new_message(
            cid,
            author,
            content=content,
            embeds=list(embeds),
            attachments=list(attachments),
            type=msg_type,
            extra=extra,
        )
        known = {m["id"] for m in message["mentions"]}
        for user in mentions:
            if user["id"] not in known:
                entry = dict(user)
                if gid and user["id"] in self.members.get(gid, {}):
                    entry["member"] = self._partial_member(gid, user["id"])
                message["mentions"].append(entry)
        payload = self._gateway_copy(message)
        session = self._live_session()
        mentioned = any(m["id"] == self.bot_user["id"] for m in message["mentions"])
        if (
            self.enforce_message_content_intent
            and session is not None
            and gid
            and not session.intents & INTENT_MESSAGE_CONTENT
            and not mentioned
            and author["id"] != self.bot_user["id"]
        ):
            payload.update(content="", embeds=[], attachments=[], components=[])
        self._record("message_create", {"channel_id": cid, "message": message, "delivered": payload})
        await self._emit("MESSAGE_CREATE", payload, INTENT_GUILD_MESSAGES if gid else INTENT_DIRECT_MESSAGES)
        return message
