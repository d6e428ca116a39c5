"""The front's side of the Redis queue: moves jobs from the journal onto the stream, one at a time.

The front's journal stays the record of every job (positions, fairness lanes, listing, delivery).
The dispatcher stands where the worker stands on a single box (the daemon, the sources and the
housekeeper talk to it as to `Worker`), and does four things:

- journal -> stream: when no entry is waiting for a worker, it claims the next job in fairness
  order (`claim_next(owner="redis")`, so the journal knows the job is out on the stream) and adds
  an entry carrying the spec and the photo: the bytes up to `[queue] photo_max_mb`, else a copy in
  `[queue] shared_folder`, else the job fails saying which setting to change. Handing out one
  entry at a time keeps queue positions and fairness exact at the front: a job is only decided
  on when a worker is about to take it.
- events: workers say `claimed` (the job's "started" event goes out, progress reads "claimed by
  NAME") and `progress` on `P:events`; both reach the queue as if the worker ran here.
- cancels: a running job's cancel flag is forwarded as `P:cancel:{id}` (a worker's heartbeat
  reads it); an entry no worker has taken yet is withdrawn and the job cancelled here.
- reconcile at start: a job the journal has out on the stream (running, claimed by "redis") whose
  entry is gone (a Redis that lost its data) is queued again and dispatched again in its turn.
  Consumers of workers gone for good (renamed, replaced, retired) are forgotten then, and hourly
  while the front runs: see `_forget_idle_consumers`.

Results never pass through here: workers PUT them to the front (`accept_result` settles the job,
whose final event this dispatcher also hears).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError
from ..fsutil import NO_SPACE, fsync_dir
from ..health import Health
from ..jobs import FINAL_STATES, JobState
from .jobqueue import JobQueue
from .models import Job, JobEvent
from .redis_conn import (BLOCK_MS, connect, ensure_group, is_nogroup, is_transient, keys, shown_url, text)

log = logging.getLogger(__name__)

OWNER = "redis"  # the journal's claimed_by for jobs out on the stream
CANCEL_TTL = 7 * 24 * 3600  # a cancel request outlives any job that could still read it
CANCEL_POLL = 0.5
WAIT_POLL = 0.25  # while an entry waits for a worker: how often the group's progress is looked at

# Delete entry ARGV[2] if the group ARGV[1] has not delivered it to any worker yet (atomic, so a
# worker can never have read it). 1 = withdrawn, 0 = a worker has it (or it is gone).
WITHDRAW_LUA = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local last = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, lid
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then lid = g[i + 1] end
  end
  if name == ARGV[1] then last = lid end
end
if last == nil then return 0 end
local lm, ls = parse(last)
local em, es = parse(ARGV[2])
if em > lm or (em == lm and es > ls) then
  return redis.call('XDEL', KEYS[1], ARGV[2])
end
return 0
"""

# [entry id, job id, ...] of every entry in the stream, without their photos.
ENTRIES_LUA = """
local out = {}
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 'job' then
      table.insert(out, e[1])
      table.insert(out, f[i + 1])
    end
  end
end
return out
"""

# 1 if entry ARGV[1] is in the stream (its fields stay on the server).
EXISTS_LUA = "return #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])"
LOST_CHECK_POLLS = 20  # while an entry waits: every this many polls (~5 s), check it is still there

# Delete consumer ARGV[2] of group ARGV[1] on stream KEYS[1] only if, at this instant, it holds no
# pending entry, has been idle at least ARGV[3] ms, and its worker hash KEYS[2] does not exist.
# Checked again here, atomically, because the listing the candidates come from is already old: an
# entry read in between would otherwise be dropped from the pending list with its consumer, and
# nobody could take it over. 1 = deleted, 0 = kept.
FORGET_CONSUMER_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1] end
    if c[i] == 'pending' then pending = c[i + 1] end
    if c[i] == 'idle' then idle = c[i + 1] end
  end
  if name == ARGV[2] then
    if pending == 0 and idle ~= nil and idle >= tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return 0
"""
# A consumer is forgotten once idle this many claim timeouts, and never sooner than the minimum: a
# live worker reads (and so resets its idle time) every second, and one that is merely down for a
# while (a reboot, a driver update) keeps its name; nothing is lost either way, as a consumer with
# an entry is never deleted and a worker that comes back is a consumer again at its first read.
CONSUMER_IDLE_CLAIM_TIMEOUTS = 10.0
CONSUMER_IDLE_MIN_SECONDS = 3600.0
CONSUMER_SWEEP_SECONDS = 3600.0  # how often a running front looks, besides at each reconcile


def consumer_idle_bound(cfg: Config) -> float:
    """Seconds a consumer must have been idle before the dispatcher may forget it."""
    return max(CONSUMER_IDLE_CLAIM_TIMEOUTS * cfg.queue.claim_timeout_seconds, CONSUMER_IDLE_MIN_SECONDS)


def _sid(entry: str) -> tuple[int, int]:
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class _Out:
    """A job out on the stream."""

    job: Job
    entry: str
    worker: str | None = None  # who claimed it (None: waiting for a worker)
    claimed_at: float = 0.0
    cancel_sent: bool = False
    shared_copy: Path | None = None


class Dispatcher:
    def __init__(self, cfg: Config, queue: JobQueue):
        self.cfg = cfg
        self.queue = queue
        self.keys = keys(cfg)
        self.redis = None
        self.renderer = None  # no models here
        self.last_timings: dict[str, float] | None = None
        self.last_load_seconds: float | None = None
        self.last_job_finished = time.time()
        self.gpu_busy = False
        self.ready = asyncio.Event()  # connected and reconciled: dispatching
        self._out: dict[str, _Out] = {}  # job id -> its entry, for every job out on the stream
        self._wakeup = asyncio.Event()  # a job was queued (or handed back)
        self._moved = asyncio.Event()  # a waiting entry may have been taken
        self._main: asyncio.Task | None = None
        self._loops: list[asyncio.Task] = []
        self._stopping = False
        self._death: str | None = None
        self._trouble: str | None = None  # the Redis problem being waited out, for health()
        self._away: dict[str, float] = {}  # loop name -> when it first found Redis away (logged once)
        self._events_after: str | None = None  # the last P:events entry read
        self._workers: list[dict[str, Any]] = []
        self._withdraw = None
        self._entries = None
        self._exists_script = None
        self._forget_consumer = None
        self._consumers_swept = 0.0  # monotonic time of the last look for consumers to forget

    # ------------------------------------------------------------------ what the daemon asks
    @property
    def running(self) -> list[Job]:
        return [o.job for o in self._out.values()]

    @property
    def current(self) -> Job | None:
        claimed = [o for o in self._out.values() if o.worker is not None]
        return max(claimed, key=lambda o: o.claimed_at).job if claimed else None

    def states(self) -> list[dict[str, Any]]:
        """The live workers (their `P:worker:{name}` hashes), as last read."""
        return list(self._workers)

    def health(self) -> Health:
        if self._death is not None:
            return Health(False, "dead", self._death)
        if self._stopping:
            return Health(True, "stopped")
        if self._trouble is not None:
            return Health(True, "waiting", self._trouble)
        if self._out:
            return Health(True, "running", ", ".join(self._out))
        return Health(True, "idle")

    async def load(self) -> float:
        return 0.0  # no models on the dispatcher: the workers load their own

    async def unload_if_idle(self, idle_minutes: float) -> bool:
        return False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.queue.add_listener(self._on_queue_event)
        self._main = asyncio.create_task(self._run(), name="dispatcher")

    async def stop(self, *, wait_for_gpu: bool = True) -> None:
        """Stop handing out jobs; jobs already out stay with their workers (their results still
        arrive over HTTP while the front is up, or are retried until it is back)."""
        self._stopping = True
        self.queue.remove_listener(self._on_queue_event)
        tasks = [*self._loops, *([self._main] if self._main is not None else [])]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
            self.redis = None

    async def _run(self) -> None:
        self._trouble = f"connecting to Redis at {shown_url(self.cfg.queue.url)}"
        try:
            self.redis = await connect(self.cfg)
        except ConfigError as exc:
            self._death = str(exc)
            log.error("dispatcher: %s; no job leaves this box until it is fixed and the daemon restarted", exc)
            return
        self._trouble = None
        self._withdraw = self.redis.register_script(WITHDRAW_LUA)
        self._entries = self.redis.register_script(ENTRIES_LUA)
        self._exists_script = self.redis.register_script(EXISTS_LUA)
        self._forget_consumer = self.redis.register_script(FORGET_CONSUMER_LUA)
        await self._forever("reconcile", self._reconcile, once=True)
        log.info("dispatcher: jobs go to the workers on %s (%s)", shown_url(self.cfg.queue.url), self.keys.stream)
        self.ready.set()
        for name, fn in (("dispatch", self._dispatch_loop), ("events", self._events_loop),
                         ("cancels", self._cancel_loop), ("workers", self._workers_loop)):
            self._loops.append(asyncio.create_task(self._forever(name, fn), name=f"dispatcher-{name}"))

    def _check_stop(self) -> None:
        """Each pass of a loop that never ends by itself: once stop() has been called, it ends here
        even if the cancellation got lost inside an await (stop() hung for good when one did,
        with the dispatch loop still polling the stream)."""
        if self._stopping:
            raise asyncio.CancelledError()

    async def _forever(self, name: str, fn, *, once: bool = False) -> None:
        """Run `fn` (again after a Redis outage, with a growing pause); a bug is logged, not fatal."""
        pause = 0.5
        while not self._stopping:
            try:
                await fn()
                self._answered()
                if once:
                    return
                pause = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_nogroup(exc):
                    log.warning("dispatcher: the stream's group is gone (Redis lost its data?); creating it again "
                                "and looking for jobs whose entry went with it")
                    with contextlib.suppress(Exception):
                        await self._reconcile()
                    continue
                if is_transient(exc):
                    self._away_now(name, exc)
                else:
                    log.exception("dispatcher (%s) failed; trying again in %.1f s", name, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)

    def _away_now(self, name: str, exc: BaseException) -> None:
        """Redis failed one of the loops: said once per loop and outage, not at each retry."""
        self._trouble = f"Redis at {shown_url(self.cfg.queue.url)}: {exc}"
        if name not in self._away:
            self._away[name] = time.monotonic()
            log.warning("dispatcher (%s): Redis: %s; trying again until it answers", name, exc)
        else:
            log.debug("dispatcher (%s): Redis still away: %s", name, exc)

    def _answered(self) -> None:
        """Redis answered (the events loop reads every second): the outage, if any, is over."""
        self._trouble = None
        if self._away:
            log.info("dispatcher: Redis at %s answers again (away %.1f s)", shown_url(self.cfg.queue.url),
                     time.monotonic() - min(self._away.values()))
            self._away.clear()

    # ------------------------------------------------------------------ reconcile
    async def _reconcile(self) -> None:
        """What the journal has out on the stream against what the stream holds."""
        r, k = self.redis, self.keys
        await ensure_group(r, k)
        flat = [text(v) for v in await self._entries(keys=[k.stream])]
        entry_of = dict(zip(flat[1::2], flat[0::2]))  # job id -> entry id (the newest, if twice)
        last = await self._last_delivered() or "0-0"
        owners = {text(p["message_id"]): text(p["consumer"])
                  for p in await r.xpending_range(k.stream, k.group, min="-", max="+", count=100000)}
        out = await self.queue.run_db(self.queue.journal.running_owned, OWNER)
        known = {j.id for j in out}
        for job in out:
            entry = entry_of.get(job.id)
            if entry is None and self._out.get(job.id, _Out(job, "-")).entry == "":
                continue  # being added right now (a reconcile while the dispatch loop sends it)
            if entry is None:
                self._out.pop(job.id, None)
                if await self.queue.requeue(job, count_attempt=False):
                    log.warning("job %s: out to the workers, but its stream entry is gone (Redis lost it?); "
                                "queued again", job.id)
                else:  # its result came in since `out` was read
                    log.info("job %s: its stream entry is gone, but the job has settled meanwhile", job.id)
                continue
            worker = owners.get(entry)
            prev = self._out.get(job.id)
            # the shared copy's name follows from the job: known again after a front restart, so it
            # is still removed once the job settles
            o = _Out(job, entry, worker, time.time() if worker else 0.0, shared_copy=self._shared_path(job))
            if prev is not None:
                o.cancel_sent, o.claimed_at = prev.cancel_sent, prev.claimed_at
            self._out[job.id] = o
            if worker is None and _sid(entry) <= _sid(last):
                o.worker = "?"  # delivered, then acknowledged by nobody yet: some worker has it
        for job_id, entry in entry_of.items():
            if job_id in known:
                continue
            job = await self.queue.get(job_id)
            if job is None or job.state.final:
                # an entry for a job that is settled (or pruned): whoever takes it skips it, and a
                # worker already on it stops. A queued job's old entry is left alone: the cancel key
                # is per job, and would stop its next run too; a duplicate run is stored once.
                await r.set(k.cancel(job_id), "1", ex=CANCEL_TTL)
                log.info("job %s: its stale stream entry %s is marked cancelled", job_id, entry)
        if out:
            log.info("dispatcher: %d jobs out on the stream (%d with a worker), as Redis and the journal agree",
                     len(self._out), sum(1 for o in self._out.values() if o.worker))
        await self._forget_idle_consumers()

    async def _forget_idle_consumers(self) -> None:
        """XGROUP DELCONSUMER for consumers of workers gone for good, which would otherwise stay in
        XINFO CONSUMERS for ever (every name a worker ever had: renamed, replaced, moved to another
        state folder). Only one with no pending entry (deleting it would drop its claim, and with it
        the takeover that reruns the job), idle longer than `consumer_idle_bound`, and no live
        `P:worker:{name}` hash. Tidying only: a failure other than Redis being away is logged and
        dispatching goes on."""
        import redis.exceptions as rex

        self._consumers_swept = time.monotonic()
        r, k = self.redis, self.keys
        bound_ms = int(consumer_idle_bound(self.cfg) * 1000)
        try:
            listed = await r.xinfo_consumers(k.stream, k.group)
            for c in listed:
                name = text(c.get("name"))
                if not name or int(c.get("pending") or 0) or int(c.get("idle") or 0) < bound_ms:
                    continue
                if await self._forget_consumer(keys=[k.stream, k.worker(name)], args=[k.group, name, bound_ms]):
                    log.info("dispatcher: consumer %s forgotten (no entry pending, idle %.1f h, no live worker of "
                             "that name)", name, int(c.get("idle") or 0) / 3.6e6)
        except rex.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return  # the stream is gone (a Redis that lost its data): the next reconcile makes it again
            if is_nogroup(exc):
                raise  # as for every loop: the group is made again and the jobs that were out looked for
            log.exception("dispatcher: looking for consumers to forget failed; they stay until the next look")
        except Exception as exc:
            if is_transient(exc):
                raise
            log.exception("dispatcher: looking for consumers to forget failed; they stay until the next look")

    async def _last_delivered(self) -> str | None:
        """The id of the last entry the group handed to a worker; None when the stream or the group
        is gone (a Redis that lost its data)."""
        import redis.exceptions as rex

        try:
            groups = await self.redis.xinfo_groups(self.keys.stream)
        except rex.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return None
            raise
        for g in groups:
            if text(g.get("name")) == self.keys.group:
                return text(g.get("last-delivered-id")) or "0-0"
        return None

    # ------------------------------------------------------------------ journal -> stream
    async def _exists(self, entry: str) -> bool:
        return bool(await self._exists_script(keys=[self.keys.stream], args=[entry]))

    async def _dispatch_loop(self) -> None:
        while not self._stopping:
            await self._until_taken()
            job = await self._claim()
            await self._send(job)

    async def _until_taken(self) -> None:
        """Wait while an entry waits for a worker: the next job is only decided on when it can go."""
        polls = 0
        while True:
            self._check_stop()
            waiting = [o for o in self._out.values() if o.worker is None and o.entry]
            if not waiting:
                return
            polls += 1
            delivered = await self._last_delivered()
            if delivered is None or (polls % LOST_CHECK_POLLS == 0 and not await self._exists(waiting[0].entry)):
                # Redis lost the stream (restarted without its data): what was out goes back to the queue
                log.warning("dispatcher: the entry waiting for a worker is gone from Redis; looking for every job "
                            "whose entry went with it")
                await self._reconcile()
                continue
            last = _sid(delivered)
            for o in waiting:
                if _sid(o.entry) <= last:
                    o.worker = o.worker or "?"  # taken; the claimed event names the worker
            if all(o.worker is not None for o in waiting):
                return
            self._moved.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAIT_POLL):
                    await self._moved.wait()

    async def _claim(self) -> Job:
        """The next job in fairness order, marked running under OWNER; waits for one."""
        journal = self.queue.journal
        while True:
            self._check_stop()  # never claim a job once stopping: it would be out with nobody to send it
            self._wakeup.clear()
            fut = asyncio.ensure_future(self.queue.run_db(journal.claim_next, OWNER))
            try:
                job = await asyncio.shield(fut)
            except asyncio.CancelledError:
                # the claim ends in the journal thread anyway: put it back as if it never happened
                with contextlib.suppress(BaseException):
                    claimed = await fut
                    if claimed is not None:
                        await self.queue.run_db(journal.unclaim, claimed)
                raise
            if job is not None:
                return job
            with contextlib.suppress(TimeoutError):
                # the wakeup comes with every submit; the timeout covers a journal written by others
                async with asyncio.timeout(5.0):
                    await self._wakeup.wait()

    async def _send(self, job: Job) -> None:
        """The job's entry, with its photo inline or in the shared folder; or the job fails saying why."""
        q = self.cfg.queue
        photo = Path(job.spec.input_path)
        ext = photo.suffix or ".img"
        try:
            size = (await asyncio.to_thread(photo.stat)).st_size
        except OSError as exc:
            await self._fail(job, f"the spooled photo {photo} cannot be read ({exc.strerror}); submit it again")
            return
        fields: dict[str, Any] = {"job": job.id, "spec": job.spec.model_dump_json(), "ext": ext,
                                  "attempt": str(job.attempts), "max_attempts": str(self.queue.max_attempts)}
        shared: Path | None = None
        if size <= q.photo_max_mb * 2**20:
            fields["photo"] = await asyncio.to_thread(photo.read_bytes)
        elif q.shared_folder is not None:
            shared = self._shared_path(job)
            try:
                await asyncio.to_thread(_copy_durably, photo, shared)
            except OSError as exc:
                why = "it is full" if exc.errno in NO_SPACE else exc.strerror
                await self._fail(job, f"the photo could not be copied into [queue] shared_folder {q.shared_folder} "
                                      f"({why}); fix the folder, then submit the photo again")
                return
            fields["photo_path"] = shared.name
        else:
            await self._fail(job, f"the photo is {size / 2**20:.1f} MB, more than [queue] photo_max_mb = "
                                  f"{q.photo_max_mb:g} that travels inside the queue, and no [queue] shared_folder is "
                                  "set: raise photo_max_mb, or set shared_folder to a folder every box mounts")
            return
        # known before the entry exists: a worker's "claimed" may come back before xadd returns
        o = self._out[job.id] = _Out(job, "", shared_copy=shared)
        try:
            entry = await self._add(job, fields)
        except BaseException:  # a stop, or a Redis that refuses: the job goes back to its place
            self._out.pop(job.id, None)
            await self._unclaim(job)
            raise
        o.entry = entry
        fresh = await self.queue.get(job.id)
        if fresh is None or fresh.state.final:
            # settled while being sent: a result from a run thought lost (its entry lost with a
            # Redis restart) came in just as the job was claimed again. Its final event may have
            # found no entry to withdraw yet; this one goes now (or its taker is stopped)
            log.info("job %s: settled (%s) while being sent; its entry %s is withdrawn", job.id,
                     fresh.state.value if fresh else "pruned", entry)
            self._out.pop(job.id, None)
            await self._tidy(o, final=True)
            return
        log.info("job %s: sent to the workers (entry %s, %s)", job.id, entry,
                 "photo in the entry" if shared is None else f"photo in {shared}")
        self.queue.progress(job, "waiting for a worker")

    def _shared_path(self, job: Job) -> Path | None:
        """Where the job's photo goes in [queue] shared_folder (None: no shared folder)."""
        folder = self.cfg.queue.shared_folder
        return None if folder is None else Path(folder) / f"{job.id}{Path(job.spec.input_path).suffix or '.img'}"

    async def _add(self, job: Job, fields: dict[str, Any]) -> str:
        """XADD the entry; a Redis outage is waited out (the job stays claimed meanwhile)."""
        pause = 0.5
        while True:
            self._check_stop()
            fields["sent"] = f"{time.time():.3f}"
            try:
                async with self.redis.pipeline(transaction=True) as p:
                    # a cancel left from an earlier run of this job (cancelled, then handed back at a
                    # worker's shutdown) is not for this one: the journal says it is to run
                    p.delete(self.keys.cancel(job.id))
                    p.xadd(self.keys.stream, fields)
                    return text((await p.execute())[1])
            except Exception as exc:
                if is_nogroup(exc) or not is_transient(exc):
                    raise
                self._away_now("dispatch", exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 10.0)

    async def _unclaim(self, job: Job) -> None:
        with contextlib.suppress(Exception):
            await self.queue.run_db(self.queue.journal.unclaim, job)

    async def _fail(self, job: Job, error: str) -> None:
        log.error("job %s: failed: %s", job.id, error)
        await self.queue.finish(job, JobState.failed, error=error)

    # ------------------------------------------------------------------ stream -> queue
    async def _events_loop(self) -> None:
        if self._events_after is None:
            # where the stream ends now (what workers said while the front was away is in the
            # reconcile's XPENDING), as a real id: a read retried after a lost connection goes on
            # from the last event seen, where "$" would skip what was said in between
            newest = await self.redis.xrevrange(self.keys.events, "+", "-", count=1)
            self._events_after = text(newest[0][0]) if newest else "0-0"
        while not self._stopping:
            reply = await self.redis.xread({self.keys.events: self._events_after}, count=100, block=BLOCK_MS)
            self._answered()
            for _stream, entries in (reply.items() if isinstance(reply, dict) else reply or []):
                for entry_id, fields in entries:
                    last = self._events_after = text(entry_id)
                    try:
                        self._on_worker_event({text(a): text(b) for a, b in (fields or {}).items()})
                    except Exception:
                        log.exception("dispatcher: event %s could not be handled", last)

    def _on_worker_event(self, ev: dict[str, str]) -> None:
        o = self._out.get(ev.get("job", ""))
        if o is None:
            return  # not out from here (settled meanwhile, or another install's job)
        kind, worker = ev.get("kind"), ev.get("worker") or "?"
        if kind == "claimed":
            first = o.worker in (None, "?") and not o.claimed_at
            if o.worker not in (None, "?") and o.worker != worker:
                log.warning("job %s: taken over by worker %s (%s stopped answering)", o.job.id, worker, o.worker)
            o.worker, o.claimed_at = worker, time.time()
            self._moved.set()
            if first:
                log.info("job %s: started on worker %s (attempt %d) %s", o.job.id, worker, o.job.attempts,
                         o.job.spec.original_name)
                self.queue.publish(JobEvent(o.job, "started"))
            self.queue.progress(o.job, f"claimed by {worker}")
        elif kind == "progress":
            self.queue.progress(o.job, ev.get("stage") or "", _int(ev.get("step")), _int(ev.get("steps")))

    def _on_queue_event(self, event: JobEvent):
        kind = event.kind
        if kind in ("queued", "requeued"):
            self._wakeup.set()
        if kind not in (*FINAL_STATES, "requeued"):
            return None
        o = self._out.pop(event.job.id, None)
        if o is None:
            return None
        self._moved.set()
        if kind == "done" and event.job.result is not None:
            self.last_timings = event.job.result.timings
        self.last_job_finished = time.time()
        return self._tidy(o, final=kind in FINAL_STATES)

    async def _tidy(self, o: _Out, *, final: bool) -> None:
        if final and o.worker is None and o.entry and self.redis is not None:
            # settled while an entry for it still waited (a result from a run that was thought
            # lost): the entry goes, or, if a worker took it meanwhile, that worker is stopped
            with contextlib.suppress(Exception):
                if not await self._withdraw(keys=[self.keys.stream], args=[self.keys.group, o.entry]):
                    await self.redis.set(self.keys.cancel(o.job.id), "1", ex=CANCEL_TTL)
                    o.cancel_sent = False  # the key stays: it is what stops that worker
        elif final and o.cancel_sent and self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.delete(self.keys.cancel(o.job.id))
        if o.shared_copy is not None:
            await asyncio.to_thread(o.shared_copy.unlink, missing_ok=True)

    # ------------------------------------------------------------------ cancels
    async def _cancel_loop(self) -> None:
        while not self._stopping:
            for job_id, o in list(self._out.items()):
                if o.cancel_sent or not o.entry or not self.queue.cancel_flag(job_id).is_set():
                    continue
                if o.worker is None and await self._withdraw(keys=[self.keys.stream],
                                                             args=[self.keys.group, o.entry]):
                    log.info("job %s: cancelled before any worker took it", job_id)
                    await self.queue.finish(o.job, JobState.cancelled, error="cancelled")
                    continue
                await self.redis.set(self.keys.cancel(job_id), "1", ex=CANCEL_TTL)
                o.cancel_sent = True
                log.info("job %s: cancel sent to worker %s", job_id, o.worker or "(the one taking it)")
            await asyncio.sleep(CANCEL_POLL)

    # ------------------------------------------------------------------ who is alive
    async def _workers_loop(self) -> None:
        while not self._stopping:
            found = []
            async for key in self.redis.scan_iter(match=self.keys.worker_pattern, count=100):
                h = {text(a): text(b) for a, b in (await self.redis.hgetall(key)).items()}
                if h:
                    found.append(_worker_state(text(key).rsplit(":", 1)[-1], h))
            self._workers = sorted(found, key=lambda s: s["name"])
            if time.monotonic() - self._consumers_swept >= CONSUMER_SWEEP_SECONDS:
                await self._forget_idle_consumers()  # a front runs for months between restarts
            await asyncio.sleep(self.cfg.queue.heartbeat_seconds)


def _int(v: str | None) -> int:
    try:
        return int(v or 0)
    except ValueError:
        return 0


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v else None
    except ValueError:
        return None


def _worker_state(name: str, h: dict[str, str]) -> dict[str, Any]:
    """A worker's hash in the shape the status page and the metrics read (as WorkerPool.states)."""
    state = h.get("state") or "unknown"
    return {"name": name, "device": h.get("device") or "", "host": h.get("host") or "",
            "pid": _int(h.get("pid")) or None,
            # "busy" as the worker processes of one box say it, so the metrics count it up
            "state": "busy" if state == "running" else state, "busy": bool(h.get("job")), "job": h.get("job") or None,
            "loaded": h.get("loaded") == "1", "started": _float(h.get("started")), "seen": _float(h.get("seen")),
            "restarts": 0, "memory": {}, "remote": True}


def _copy_durably(src: Path, dest: Path) -> None:
    """Copy beside `dest`, fsync, rename, fsync the folder: a worker never sees half a photo."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1024 * 1024)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)
