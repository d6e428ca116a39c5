"""DiscordSource: the bot inside the daemon. Requests in (slash commands, watched channels), queue
events out (status edits, the video). It never calls the engine, only the queue.

Lifecycle: ``start()`` reads the token (env var, token file or systemd credential), points
discord.py at ``[discord] api_base`` / ``gateway_url``, logs in over REST, syncs the commands
(to ``guilds``, or globally), delivers results that finished while the bot was away, and runs the
gateway in a background task (discord.py resumes dropped connections by itself). ``stop()``
closes the client and puts the URLs back.

The URLs are class attributes of discord.py (``discord.http.Route.BASE`` and
``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY``), so they are process-wide: one bot per
process, which is what the daemon runs.

Answering a slash command: access rules that need no I/O are checked first and refused with an
ephemeral reply; everything else starts with an ephemeral defer (well inside Discord's 3 s), then
limits, the download (attachment URLs expire), the photo checks, and the queue. Every refusal is
an ephemeral message and queues nothing. The status message is ephemeral; the finished video is
a public followup (or, once the 15-minute token is spent, a channel message mentioning the user).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import discord
import yarl
from pydantic import ValidationError

from ...config import Config, check_model_frames
from ...errors import ConfigError, DiskFull, InputError
from ... import images
from ...images import PhotoInfo
from ...jobs import FINAL_STATES, JobOptions, JobSpec, JobState
from ...queue import Job, JobEvent, JobQueue, QueueFull
from ...validation import first_problem
from . import access
from . import format as fmt
from .client import BotClient, intents_for
from .delivery import Deliverer
from .outbox import Outbox
from .target import DEFAULT_SIZE_LIMIT, ReplyTarget
from .token import read_token
from .tracker import TRANSIENT, Tracker

log = logging.getLogger(__name__)

ACTIVE = [JobState.queued, JobState.running]
FINAL = FINAL_STATES
RETRY_DELAYS = (5.0, 15.0, 60.0, 300.0)  # then every 15 minutes
STOP_GRACE = 10.0  # seconds deliveries in flight get at stop()


def check_photo(data: bytes, name: str, cfg: Config) -> PhotoInfo:
    """The photo check every source shares (images.check_photo), with this config's limits."""
    g = cfg.generation
    return images.check_photo(data, name, max_megapixels=g.max_megapixels, max_bytes=int(g.max_file_mb * 2**20))


def member_role_ids(user: Any) -> frozenset[int]:
    # Member._roles holds the role ids straight from the payload, so this works even when the guild
    # is not (yet) in the cache; Member.roles would silently drop unknown roles.
    raw = getattr(user, "_roles", None)
    if raw is not None:
        return frozenset(int(r) for r in raw)
    return frozenset(r.id for r in getattr(user, "roles", ()) or ())


def requester(user: Any, guild_id: int | None, channel: Any, channel_id: int | None) -> access.Requester:
    return access.Requester(
        user_id=user.id,
        guild_id=guild_id,
        channel_id=channel_id,
        parent_id=getattr(channel, "parent_id", None),
        role_ids=member_role_ids(user) if guild_id is not None else frozenset(),
    )


@dataclass
class Request:
    """A photo someone asked to animate, before it is queued."""

    who: access.Requester
    target: ReplyTarget
    filename: str
    read: Callable[[], Awaitable[bytes]]
    prompt: str | None = None
    frames: int | None = None
    seed: int | None = None
    interpolate: bool | None = None


class DiscordSource:
    name = "discord"

    def __init__(self, cfg: Config, queue: JobQueue, worker: Any = None, *, guild_ready_timeout: float = 2.0):
        self.cfg = cfg
        self.queue = queue
        self.worker = worker
        self.guild_ready_timeout = guild_ready_timeout
        self.client: BotClient | None = None
        self.outbox: Outbox | None = None  # type: ignore[assignment]
        self.deliverer = Deliverer(self)
        self.work_dir = Path(cfg.paths.state) / "discord"
        self._token: str | None = None
        self._runner: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._retries: set[asyncio.Task] = set()
        self._trackers: dict[str, Tracker] = {}
        self._delivering: set[str] = set()
        self._delivered: set[str] = set()
        self._attempts: dict[str, int] = {}
        self._user_locks: dict[int, asyncio.Lock] = {}
        self._positions_task: asyncio.Task | None = None
        self._positions_dirty = False
        self._saved_urls: tuple[str, yarl.URL] | None = None
        self._logged_in = asyncio.Event()
        self._ready = asyncio.Event()
        self._rife = False

    # ------------------------------------------------------------------ settings
    @property
    def edit_interval(self) -> float:
        return self.cfg.discord.edit_interval_seconds

    @property
    def max_bytes(self) -> int:
        return int(self.cfg.generation.max_file_mb * 2**20)

    def reload(self, cfg: Config) -> None:
        old = self.cfg.discord
        new = cfg.discord
        later = [k for k in ("token_env", "token_file", "api_base", "gateway_url", "guilds")
                 if getattr(old, k) != getattr(new, k)]
        if intents_for(old).value != intents_for(new).value:
            later.append("watch_channels/respond_to_mentions/allow_dms (gateway intents)")
        if later:
            log.warning("discord: %s changed; that applies at the next restart", ", ".join(later))
        self.cfg = cfg
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # not started: start() looks for the weights
            pass
        else:
            self._spawn(self._check_rife())
        log.info("discord: access lists and limits reloaded")

    async def _check_rife(self) -> None:
        self._rife = await asyncio.to_thread(Path(self.cfg.interpolation.weights).is_file)

    # ------------------------------------------------------------------ lifecycle
    def _point_urls(self) -> None:
        route, gw = discord.http.Route, discord.gateway.DiscordWebSocket
        if self._saved_urls is None:
            self._saved_urls = (route.BASE, gw.DEFAULT_GATEWAY)
        route.BASE = self.cfg.discord.api_base.rstrip("/")  # type: ignore[misc]
        gw.DEFAULT_GATEWAY = yarl.URL(self.cfg.discord.gateway_url)

    def _restore_urls(self) -> None:
        if self._saved_urls is not None:
            base, gateway = self._saved_urls
            discord.http.Route.BASE = base  # type: ignore[misc]
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway
            self._saved_urls = None

    def _new_client(self) -> BotClient:
        client = BotClient(self, intents=intents_for(self.cfg.discord), fps=self.cfg.generation.fps,
                           guild_ready_timeout=self.guild_ready_timeout)
        self.client = client
        self.outbox = Outbox(client)
        return client

    async def start(self) -> None:
        self._token = read_token(self.cfg.discord)
        await asyncio.to_thread(self.work_dir.mkdir, parents=True, exist_ok=True)
        await self._check_rife()
        self._point_urls()
        client = self._new_client()
        try:
            await asyncio.wait_for(client.login(self._token), 60)
        except discord.LoginFailure:
            await client.close()
            self._restore_urls()
            raise ConfigError("Discord refused the bot token (401 on login); check the token in the Developer "
                              "Portal and where it is stored (discord.token_env / token_file)") from None
        except (*TRANSIENT, discord.HTTPException) as exc:
            log.warning("discord: cannot reach %s yet (%s); the bot keeps trying in the background",
                        self.cfg.discord.api_base, type(exc).__name__)
            await client.close()
        else:
            self._logged_in.set()
        self.queue.add_listener(self._on_event)
        self._runner = asyncio.create_task(self._run(), name="discord")

    async def _run(self) -> None:
        delay = 5.0
        while not self._logged_in.is_set():
            await asyncio.sleep(delay)
            delay = min(delay * 2, 300.0)
            client = self._new_client()
            try:
                await asyncio.wait_for(client.login(self._token or ""), 60)
            except discord.LoginFailure:
                log.error("discord: the bot token was refused; the bot stays offline until it is fixed")
                await client.close()
                return
            except (*TRANSIENT, discord.HTTPException) as exc:
                log.warning("discord: login failed (%s); retrying in %.0f s", type(exc).__name__, delay)
                await client.close()
                continue
            self._logged_in.set()
        client = self.client
        assert client is not None
        log.info("discord: logged in as %s (application %s)", client.user, client.application_id)
        await self._sync_commands()
        await self._resume_jobs()
        try:
            await client.connect(reconnect=True)
        except discord.PrivilegedIntentsRequired:
            log.error("discord: the gateway refused the Message Content intent, which watch_channels needs; "
                      "turn it on for the bot in the Developer Portal (Bot > Privileged Gateway Intents) or "
                      "clear discord.watch_channels")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("discord: the gateway connection ended")

    async def _sync_commands(self) -> None:
        client = self.client
        assert client is not None
        guilds = self.cfg.discord.guilds
        try:
            if guilds:
                for gid in guilds:
                    g = discord.Object(gid)
                    client.tree.copy_global_to(guild=g)
                    synced = await client.tree.sync(guild=g)
                    log.info("discord: %d commands synced to guild %s", len(synced), gid)
            else:
                synced = await client.tree.sync()
                log.info("discord: %d commands synced globally (new commands can take a while to show up)",
                         len(synced))
        except discord.Forbidden as exc:
            log.error("discord: syncing the slash commands was refused (%s); is the bot in every guild in "
                      "discord.guilds, invited with the applications.commands scope?", exc.text)
        except (discord.HTTPException, *TRANSIENT) as exc:
            log.error("discord: syncing the slash commands failed (%s); the old commands stay", exc)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the gateway is up (for tests and tools; the daemon does not wait)."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def stop(self) -> None:
        self.queue.remove_listener(self._on_event)
        for t in list(self._retries):
            t.cancel()
        for tr in list(self._trackers.values()):
            if tr.task is not None and tr.final is None:
                tr.task.cancel()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=STOP_GRACE)
            for t in late:
                t.cancel()
            if late:
                await asyncio.wait(late, timeout=2)
        if self.client is not None:
            await self.client.close()
        if self._runner is not None:
            self._runner.cancel()
            try:
                await asyncio.wait_for(self._runner, 10)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                pass
            except Exception:
                log.exception("discord: the gateway task failed while stopping")
            self._runner = None
        self._restore_urls()
        self._ready.clear()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("discord: background task failed", exc_info=task.exception())

    async def gateway_up(self, how: str) -> None:
        if how == "ready":
            log.info("discord: gateway ready")
        else:
            log.info("discord: gateway resumed")
        self._ready.set()
        await self._sweep()

    # ------------------------------------------------------------------ results that are owed
    async def _resume_jobs(self) -> None:
        """At start: deliver what finished while the bot was away; follow jobs still in the queue
        whose interaction token still works (their earlier status messages are not re-created)."""
        try:
            active = await self.queue.list(states=ACTIVE, source=self.name, limit=10000)
        except Exception:
            log.exception("discord: listing queued jobs failed")
            active = []
        for job in active:
            try:
                t = ReplyTarget.from_dict(job.spec.reply)
            except (KeyError, ValueError, TypeError):
                continue
            if job.id not in self._trackers and t.token_usable(time.time()):
                self._track(job, t).open(None)
        self._positions_changed()
        await self._sweep()

    async def _sweep(self) -> None:
        try:
            owed = await self.queue.undelivered(self.name)
        except Exception:
            log.exception("discord: listing undelivered jobs failed")
            return
        for job in owed:
            if job.id not in self._trackers:
                self._start_delivery(job, None)

    def _start_delivery(self, job: Job, tr: Tracker | None) -> None:
        if job.id in self._delivering or job.id in self._delivered:
            return
        self._delivering.add(job.id)
        self._spawn(self._deliver(job, tr))

    async def deliver_tracked(self, job: Job, tr: Tracker) -> None:
        """Called by a tracker when its job ended (it already holds the last status state)."""
        if job.id in self._delivering or job.id in self._delivered:
            return
        self._delivering.add(job.id)
        await self._deliver(job, tr)

    async def _deliver(self, job: Job, tr: Tracker | None) -> None:
        ok = False
        try:
            ok = await self.deliverer.deliver(job, tr)
            if ok:
                await self.queue.mark_delivered(job.id)
                self._delivered.add(job.id)
                self._attempts.pop(job.id, None)
                log.info("job %s: result delivered to Discord", job.id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job %s: delivering the result to Discord failed", job.id)
            self.deliverer.last_failure[job.id] = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            self._delivering.discard(job.id)
        if not ok:
            if await self.deliverer.gave_up(job):  # bounded: undeliverable after MAX_DELIVERY_ATTEMPTS
                self._attempts.pop(job.id, None)
                return
            n = self._attempts.get(job.id, 0)
            self._attempts[job.id] = n + 1
            delay = RETRY_DELAYS[n] if n < len(RETRY_DELAYS) else 900.0
            log.info("job %s: delivery retried in %.0f s", job.id, delay)
            task = asyncio.ensure_future(self._retry(job.id, delay))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)

    async def _retry(self, job_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        job = await self.queue.get(job_id)
        if job is not None and not job.delivered and job.state.final:
            self._start_delivery(job, None)

    # ------------------------------------------------------------------ queue events
    def _track(self, job: Job, target: ReplyTarget) -> Tracker:
        tr = Tracker(self, job.id, fmt.name_of(job), target, waiting=job.state == JobState.queued)
        self._trackers[job.id] = tr
        tr.task = self._spawn(tr.run())
        return tr

    def forget(self, tr: Tracker) -> None:
        if self._trackers.get(tr.job_id) is tr:
            del self._trackers[tr.job_id]

    def _on_event(self, ev: JobEvent) -> None:
        job = ev.job
        if ev.kind in ("queued", "started", "requeued", *FINAL):
            self._positions_changed()
        if job.spec.source != self.name:
            return
        tr = self._trackers.get(job.id)
        if ev.kind in FINAL:
            if tr is not None:
                tr.finish(job)
            else:
                self._start_delivery(job, None)
        elif tr is None:
            return
        elif ev.kind == "started":
            tr.waiting = False
            tr.show(fmt.started_text(tr.name))
        elif ev.kind == "progress":
            tr.waiting = False
            tr.show(fmt.progress_text(tr.name, ev.stage, ev.step, ev.steps))
        elif ev.kind == "requeued":
            tr.waiting = True

    def _positions_changed(self) -> None:
        if not any(t.waiting for t in self._trackers.values()):
            return
        if self._positions_task is not None and not self._positions_task.done():
            self._positions_dirty = True
            return
        self._positions_task = self._spawn(self._refresh_positions())

    async def _refresh_positions(self) -> None:
        while True:
            self._positions_dirty = False
            positions = await self.queue.positions()
            for tr in list(self._trackers.values()):
                p = positions.get(tr.job_id)
                if tr.waiting and p is not None:
                    tr.show(fmt.queued_text(tr.name, tr.job_id, p, len(positions)))
            if not self._positions_dirty:
                return

    # ------------------------------------------------------------------ taking requests
    def _user_lock(self, user_id: int) -> asyncio.Lock:
        if len(self._user_locks) > 1000:
            self._user_locks = {k: v for k, v in self._user_locks.items() if v.locked()}
        return self._user_locks.setdefault(user_id, asyncio.Lock())

    async def _limits(self, who: access.Requester) -> str | None:
        dc = self.cfg.discord
        user = str(who.user_id)
        active = await self.queue.list(states=ACTIVE, source=self.name, user=user, limit=dc.max_queued_per_user + 1)
        no = access.queued_limit_refusal(len(active), dc.max_queued_per_user)
        if no:
            return no
        recent = await self.queue.list(source=self.name, user=user, limit=dc.rate_limit_per_hour)
        return access.rate_limit_refusal([j.created for j in recent], dc.rate_limit_per_hour, time.time())

    async def _accept(self, req: Request) -> tuple[Job | None, str | None]:
        """Limits, download, checks, queue. Returns (job, None) or (None, why not)."""
        name = req.filename
        async with self._user_lock(req.who.user_id):
            no = await self._limits(req.who)
            if no:
                return None, no
            try:
                options = JobOptions(prompt=req.prompt or None, frames=req.frames, seed=req.seed,
                                     interpolate=req.interpolate)
                check_model_frames(options.frames, self.cfg.model.kind)
            except ValidationError as exc:
                return None, f"Those options don't work: {first_problem(exc).explain()}."
            except ValueError as exc:  # more frames than this model makes
                return None, f"Those options don't work: {exc}."
            try:
                data = await asyncio.wait_for(req.read(), 120)
            except (discord.HTTPException, *TRANSIENT) as exc:
                log.info("discord: downloading %s failed: %s", name, exc)
                return None, f"I couldn't download {name} from Discord; please send it again."
            try:
                photo = await asyncio.to_thread(check_photo, data, name, self.cfg)
            except InputError as exc:
                text = str(exc)
                return None, text if text.endswith(".") else text + "."
            stem = PurePath(name).stem or "photo"
            spec = JobSpec(source="discord", input_path="", original_name=name, name=stem, options=options,
                           user=str(req.who.user_id), reply=req.target.to_dict())
            try:
                job, _ = await self.queue.submit(spec, data, suffix=photo.suffix)
            except QueueFull:
                return None, f"The queue is full ({self.queue.max_length} waiting); please try again later."
            except DiskFull:
                return None, "The server is out of disk space for new photos; please try again later."
            # No await between submit() and here: every later event of this job finds its tracker.
            tr = self._track(job, req.target)
        log.info("job %s: queued from Discord user %s (%s)", job.id, req.who.user_id, name)
        positions = await self.queue.positions()
        position = positions.get(job.id, 1)  # absent: the worker took it meanwhile, it was next in line
        tr.open(fmt.queued_text(tr.name, job.id, position, len(positions)))
        return job, None

    async def on_animate(self, inter: discord.Interaction, image: discord.Attachment, *, prompt: str | None = None,
                         frames: int | None = None, seed: int | None = None, interpolate: bool | None = None) -> None:
        who = requester(inter.user, inter.guild_id, inter.channel, inter.channel_id)
        dc = self.cfg.discord
        no = access.refusal(dc, who) or access.attachment_refusal(
            image.filename, image.content_type, image.size, self.max_bytes)
        if no is None and interpolate and not self._rife:
            no = "Frame interpolation isn't available on this server (no RIFE weights); leave interpolate off."
        if no is not None:
            await self._refuse_now(inter, no)
            return
        await inter.response.defer(ephemeral=True, thinking=True)
        target = ReplyTarget(
            kind="interaction", channel_id=inter.channel_id or 0, user_id=inter.user.id, guild_id=inter.guild_id,
            application_id=inter.application_id, interaction_id=inter.id, token=inter.token,
            expires_at=inter.expires_at.timestamp(), size_limit=inter.filesize_limit or DEFAULT_SIZE_LIMIT,
        )
        req = Request(who, target, image.filename, image.read, prompt, frames, seed, interpolate)
        job, no = await self._accept(req)
        if no is not None:
            log.info("discord: /animate from %s refused: %s", who.user_id, no)
            await self._say(inter, no)

    async def on_message(self, message: discord.Message) -> None:
        client = self.client
        me = client.user if client is not None else None
        if me is None or message.author.bot or message.author.id == me.id or message.webhook_id is not None:
            return
        dc = self.cfg.discord
        in_dm = message.guild is None
        channel = message.channel
        parent = getattr(channel, "parent_id", None)
        watched = not in_dm and bool({channel.id, parent} & set(dc.watch_channels))
        mentioned = dc.respond_to_mentions and (in_dm or any(u.id == me.id for u in message.mentions))
        if not (watched or mentioned):
            return
        image = next((a for a in message.attachments if access.looks_like_image(a.filename, a.content_type)), None)
        if image is None:
            if mentioned:
                await self._reply(message, "Attach a photo to a message that mentions me and I'll animate it "
                                           "(the rest of the message is the prompt).")
            return
        who = requester(message.author, message.guild.id if message.guild else None, channel, channel.id)
        no = access.refusal(dc, who, watched=watched) or access.attachment_refusal(
            image.filename, image.content_type, image.size, self.max_bytes)
        if no is not None:
            await self._reply(message, no)
            return
        prompt = re.sub(rf"<@!?{me.id}>", " ", message.content or "")
        prompt = " ".join(prompt.split())[:2000] or None
        limit = message.guild.filesize_limit if message.guild else DEFAULT_SIZE_LIMIT
        target = ReplyTarget(kind="message", channel_id=channel.id, user_id=message.author.id,
                             guild_id=message.guild.id if message.guild else None, message_id=message.id,
                             size_limit=limit)
        job, no = await self._accept(Request(who, target, image.filename, image.read, prompt))
        if no is not None:
            await self._reply(message, no)

    async def _admit(self, inter: discord.Interaction):
        """Access check, then a private defer: the requester, or None when refused (already answered)."""
        who = requester(inter.user, inter.guild_id, inter.channel, inter.channel_id)
        no = access.refusal(self.cfg.discord, who)
        if no is not None:
            await self._refuse_now(inter, no)
            return None
        await inter.response.defer(ephemeral=True, thinking=True)
        return who

    async def on_queue(self, inter: discord.Interaction) -> None:
        who = await self._admit(inter)
        if who is None:
            return
        jobs = await self.queue.list(states=ACTIVE, source=self.name, user=str(who.user_id), limit=50)
        positions = await self.queue.positions()
        counts = await self.queue.counts()
        entries = [(j, positions.get(j.id)) for j in reversed(jobs)]
        await self._say(inter, fmt.queue_text(entries, counts))

    async def on_cancel(self, inter: discord.Interaction, job_id: str | None) -> None:
        dc = self.cfg.discord
        who = await self._admit(inter)
        if who is None:
            return
        if job_id:
            job_id = job_id.strip().strip("`")
            job = await self.queue.get(job_id)
        else:
            mine = await self.queue.list(states=ACTIVE, source=self.name, user=str(who.user_id), limit=1)
            if not mine:
                await self._say(inter, "You have no videos waiting or rendering.")
                return
            job = mine[0]
            job_id = job.id
        if job is None:
            await self._say(inter, fmt.cancel_text("unknown", None, job_id))
            return
        own = job.spec.source == self.name and job.spec.user == str(who.user_id)
        if not own and not access.is_admin(dc, who):
            log.info("discord: user %s may not cancel job %s", who.user_id, job.id)
            await self._say(inter, f"Job `{job.id}` belongs to someone else; only members with an admin role "
                                   "can cancel other people's videos.")
            return
        outcome = await self.queue.cancel(job.id)
        log.info("discord: user %s cancelled job %s (%s)", who.user_id, job.id, outcome)
        await self._say(inter, fmt.cancel_text(outcome, job, job.id))

    async def on_status(self, inter: discord.Interaction) -> None:
        who = await self._admit(inter)
        if who is None:
            return
        await self._say(inter, fmt.status_text(await self._status_info()))

    async def _status_info(self) -> dict[str, Any]:
        from ...metrics import gpu_memory

        w = self.worker
        renderer = getattr(w, "renderer", None)
        gen = getattr(renderer, "generator", None)
        loaded = bool(renderer is not None and renderer.loaded)
        running = None
        job = getattr(w, "current", None)
        if job is not None:
            p = self.queue.live.get(job.id) or {}
            stage = fmt.STAGE_LABELS.get(p.get("stage", ""), p.get("stage") or "starting")
            step = f" step {p['step']}/{p['steps']}" if p.get("steps") else ""
            running = f"{fmt.clip(job.spec.original_name, 80)} ({stage}{step})"
        return {
            "model_kind": self.cfg.model.kind,
            "loaded": loaded,
            "device": str(gen.device) if gen is not None and getattr(gen, "device", None) is not None else None,
            "memory_mode": getattr(gen, "memory_mode", None) if loaded else None,
            "gpu": await asyncio.to_thread(gpu_memory),
            "counts": await self.queue.counts(),
            "running": running,
            "last_timings": getattr(w, "last_timings", None),
            "workers": w.states() if hasattr(w, "states") else None,
        }

    # ------------------------------------------------------------------ small answers
    @staticmethod
    async def _refuse_now(inter: discord.Interaction, text: str) -> None:
        try:
            await inter.response.send_message(text, ephemeral=True)
        except discord.HTTPException as exc:
            log.warning("discord: could not answer an interaction (%s %s)", exc.status, exc.code)

    @staticmethod
    async def _say(inter: discord.Interaction, text: str) -> None:
        try:
            await inter.edit_original_response(content=text)
        except discord.HTTPException as exc:
            log.warning("discord: could not answer an interaction (%s %s)", exc.status, exc.code)

    @staticmethod
    async def _reply(message: discord.Message, text: str) -> None:
        try:
            await message.reply(text, mention_author=True)
        except discord.HTTPException as exc:
            log.warning("discord: could not reply in channel %s (%s %s)", message.channel.id, exc.status, exc.code)
