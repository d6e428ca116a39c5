"""The worker's side of the Redis queue: what `Worker` calls on its queue, on a box with no journal.

`Worker` (worker.py) asks its queue for `next_job()`, `cancel_flag(id)`, `progress(...)`,
`finish(...)` and `requeue(...)`. Here those read the front's stream (`P:jobs`, group `P:workers`)
and send each job's end back through `deliver` (the HTTP uploader, or `accept_result` on the
front itself), so the same Worker runs unchanged on a GPU box.

Where the next job comes from, in order:
1. this worker's own pending entries (after a restart under the same name, or a reply lost to a
   dropped connection): XREADGROUP with id 0;
2. entries of a worker that stopped heartbeating for `claim_timeout_seconds`: XAUTOCLAIM;
3. new entries: XREADGROUP ">" (blocking a second at a time).

An entry stays pending, and so owned by this worker, until its outcome is delivered; only then is
it acknowledged and deleted. Meanwhile a heartbeat re-claims it every `heartbeat_seconds` (resets
its idle time), but only while Redis still lists this worker as its owner: an entry taken over by
another worker (this one stalled past the timeout) is dropped here (cancel flag set; nothing is
delivered or acknowledged), and the other worker's result is the one that counts. A job can still
run twice (a stall, then a takeover); `accept_result` stores the first result and ignores the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import DiskFull
from ..fsutil import atomic_write, remove_files
from ..jobs import JobResult, JobSpec, JobState
from .models import Job
from .outcome import ERROR_MAX, ResultOutcome, UnknownJob
from .redis_conn import (BLOCK_MS, EVENTS_MAXLEN, Outage, connect, ensure_group, is_nogroup, is_transient, keys,
                         text, worker_name)

log = logging.getLogger(__name__)

Deliver = Callable[[ResultOutcome, Path | None, Path | None], Awaitable[Any]]

# One beat, atomically: re-claim the entry (resets its idle time; JUSTID leaves the delivery count
# alone) only while XPENDING lists this consumer as its owner, and read the cancel key.
# Returns {owner, cancel}: owner 1 = ours (re-claimed), -1 = another worker has it, 0 = not pending
# any more (acknowledged elsewhere, or a Redis that lost its data).
HEARTBEAT_LUA = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
local owner = 0
if #p > 0 then
  if p[1][2] == ARGV[3] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
    owner = 1
  else
    owner = -1
  end
end
return {owner, redis.call('EXISTS', KEYS[2])}
"""

# what the front's JobQueue hands out, checked again here: the id and extension name a file in the
# spool folder, and the spec's name the render's files, so an entry must not point them elsewhere
JOB_ID = re.compile(r"[0-9a-f]{12}")
PHOTO_EXT = re.compile(r"\.[a-z0-9]{1,8}")

PROGRESS_INTERVAL = 0.25  # at most this often per job: a sampler step is never held up by Redis
REQUEUE_WAIT = 10.0  # a checkpoint at shutdown waits this long for the front, then leaves the entry


@dataclass
class _Claim:
    """A stream entry this worker holds, and the job it carries."""

    job_id: str
    entry: str
    attempt: int  # the job's attempt counting this delivery (journal attempts + takeovers)
    photo: Path
    own_photo: bool  # a copy written here (removed after the ack), not a file of the shared folder
    lost: bool = False  # another worker took the entry over
    gone_logged: bool = False
    beat_failing: bool = False
    beat: asyncio.Task | None = field(default=None, repr=False)


def _entries(reply: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """XREADGROUP's reply as [(entry id, fields)]."""
    if not reply:
        return []
    streams = reply.items() if isinstance(reply, dict) else reply  # RESP3 answers a map
    out = []
    for _name, entries in streams:
        for entry_id, fields in entries:
            out.append((text(entry_id), dict(fields or {})))
    return out


class RemoteQueue:
    # pauses between tries to hand an outcome back, when `deliver` itself raised
    DELIVER_RETRY = (1.0, 30.0)

    def __init__(self, cfg: Config, deliver: Deliver, *, spool_dir: Path):
        self.cfg = cfg
        self.deliver = deliver
        self.spool_dir = Path(spool_dir).absolute()
        self.keys = keys(cfg)
        self.name = worker_name(cfg)
        self.heartbeat = cfg.queue.heartbeat_seconds
        self.claim_timeout = cfg.queue.claim_timeout_seconds
        self.requeue_wait = REQUEUE_WAIT
        self.redis = None
        self._beat_script = None
        self._claims: dict[str, _Claim] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._progress: dict[str, dict[str, Any]] = {}  # latest progress per job, not yet sent
        self._progress_wake = asyncio.Event()
        self._flusher: asyncio.Task | None = None
        # read our own pending entries before new ones: at start, and after anything that may have
        # left one there (a reply lost with its connection, a checkpoint the front did not get)
        self._check_own = True
        self._reads = Outage(log, f"worker {self.name}: reading the stream")

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        # photos of entries held when this worker last stopped (a crash skips their removal) are
        # nobody's now: an entry resumed here writes its photo again
        await asyncio.to_thread(_clear_files, self.spool_dir)
        self.redis = await connect(self.cfg)
        await ensure_group(self.redis, self.keys)
        self._beat_script = self.redis.register_script(HEARTBEAT_LUA)
        self._flusher = asyncio.create_task(self._flush_progress(), name="remote-progress")
        log.info("worker %s: reading %s (group %s)", self.name, self.keys.stream, self.keys.group)

    async def close(self) -> None:
        """Stop heartbeating (entries still held stay pending: resumed at the next start under this
        name, or taken over by another worker after the claim timeout)."""
        tasks = [c.beat for c in self._claims.values() if c.beat is not None]
        if self._flusher is not None:
            tasks.append(self._flusher)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._claims.clear()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
            self.redis = None

    # ------------------------------------------------------------------ taking a job
    async def next_job(self) -> Job:
        assert self.redis is not None, "start() first"
        pause = 0.5
        while True:
            if asyncio.current_task().cancelling():
                # a stop's cancellation that an await below lost (the front's dispatcher hung its
                # stop that way): this loop must not go on reading entries for a stopped worker
                raise asyncio.CancelledError()
            try:
                taken = await self._take()
                self._reads.answered()
                pause = 0.5
            except Exception as exc:
                if is_nogroup(exc):
                    log.warning("worker %s: the stream's group is gone (Redis lost its data?); creating it again",
                                self.name)
                    await self._retry_quietly(ensure_group(self.redis, self.keys))
                    continue
                if not is_transient(exc):
                    raise
                self._check_own = True  # a read's reply may have gone with the connection
                self._reads.failed(exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)
                continue
            if taken is None:
                continue
            entry, fields, how = taken
            try:
                job = await self._open(entry, fields, how)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # the entry stays pending to us: read again from our own list
                self._check_own = True
                self._reads.failed(exc)
                await asyncio.sleep(pause)
                continue
            if job is not None:
                return job

    async def _take(self) -> tuple[str, dict[bytes, bytes], str] | None:
        r, k = self.redis, self.keys
        if self._check_own:
            # one at a time: each entry read back counts as a delivery (an attempt) of its job
            held, after = {c.entry for c in self._claims.values()}, "0"
            while got := _entries(await r.xreadgroup(k.group, self.name, {k.stream: after}, count=1)):
                entry, fields = got[0]
                if entry not in held:
                    return entry, fields, "resumed"
                after = entry
            self._check_own = False
        start = "0-0"
        for _ in range(8):  # XAUTOCLAIM looks at a bounded slice of the pending list per call
            res = await r.xautoclaim(k.stream, k.group, self.name, int(self.claim_timeout * 1000), start_id=start,
                                     count=1)
            nxt, claimed, deleted = res[0], res[1], (res[2] if len(res) > 2 else [])
            if deleted:
                log.info("worker %s: %d pending entries had been deleted; dropped", self.name, len(deleted))
            if claimed:
                entry, fields = claimed[0]
                return text(entry), dict(fields or {}), "taken over"
            start = text(nxt)
            if start in ("0-0", "0"):
                break
        got = _entries(await r.xreadgroup(k.group, self.name, {k.stream: ">"}, count=1, block=BLOCK_MS))
        if got:
            entry, fields = got[0]
            return entry, fields, "claimed"
        return None

    async def _open(self, entry: str, fields: dict[bytes, bytes], how: str) -> Job | None:
        """The job an entry carries, with its photo on this box; None when the entry needs nothing
        more (already deleted, cancelled, out of attempts, unreadable: settled here)."""
        r, k = self.redis, self.keys
        if not fields:  # deleted while pending: nothing to run
            await self._ack(entry)
            return None
        job_id = text(fields.get(b"job"))
        if not JOB_ID.fullmatch(job_id):
            log.error("worker %s: entry %s carries %r where a job id belongs; dropped", self.name, entry, job_id[:40])
            await self._ack(entry)
            return None
        try:
            spec = JobSpec.model_validate_json(fields[b"spec"])
            first = int(text(fields.get(b"attempt")) or 1)
            max_attempts = int(text(fields.get(b"max_attempts")) or self.cfg.queue.max_attempts)
            ext = text(fields.get(b"ext")) or ".img"
            sent = float(text(fields.get(b"sent")) or time.time())
            if not PHOTO_EXT.fullmatch(ext):
                raise ValueError(f"the photo extension {ext[:20]!r} is not one the front writes")
            if not spec.name or spec.name.startswith(".") or Path(spec.name).name != spec.name or "\\" in spec.name:
                raise ValueError(f"the output name {spec.name[:60]!r} is not a plain file name")
        except (KeyError, ValueError) as exc:
            log.error("worker %s: entry %s (job %s) is unreadable (%s); dropped", self.name, entry, job_id or "?",
                      exc)
            if job_id:
                await self._settle(job_id, entry, ResultOutcome(
                    job=job_id, state="failed", worker=self.name,
                    error=f"the queue entry could not be read by worker {self.name}: {exc}"))
            else:
                await self._ack(entry)
            return None
        pending = await r.xpending_range(k.stream, k.group, min=entry, max=entry, count=1)
        deliveries = int(pending[0]["times_delivered"]) if pending else 1
        attempt = max(first, 1) - 1 + deliveries
        if attempt > max_attempts:
            ran = attempt - 1
            log.error("job %s: failed: %d attempts, each ending without a result", job_id, ran)
            await self._settle(job_id, entry, ResultOutcome(
                job=job_id, state="failed", worker=self.name, attempt=ran,
                error=(f"gave up after {ran} attempts: the worker running it stopped each time (no heartbeat for "
                       f"{self.claim_timeout:g} s; see those workers' logs for a crash or an out-of-memory kill)")))
            return None
        if await r.exists(k.cancel(job_id)):
            log.info("job %s: cancelled before it started; not run", job_id)
            await self._settle(job_id, entry, ResultOutcome(job=job_id, state="cancelled", error="cancelled",
                                                            worker=self.name, attempt=attempt))
            return None
        try:
            photo, own = await self._photo(job_id, fields, ext)
        except _NoPhoto as exc:
            log.error("job %s: failed: %s", job_id, exc)
            await self._settle(job_id, entry, ResultOutcome(job=job_id, state="failed", error=str(exc),
                                                            worker=self.name, attempt=attempt))
            return None
        claim = _Claim(job_id, entry, attempt, photo, own)
        self._claims[job_id] = claim
        self._cancel[job_id] = threading.Event()
        claim.beat = asyncio.create_task(self._heartbeat(claim), name=f"heartbeat-{job_id}")
        try:
            await self._event("claimed", job_id)
        except Exception as exc:  # the job is ours either way; the front learns it from the progress
            log.warning("job %s: could not tell the front it was claimed (Redis: %s)", job_id, exc)
        now = time.time()
        log.info("job %s: %s by %s (entry %s, attempt %d)", job_id, how, self.name, entry, attempt)
        return Job(id=job_id, seq=0, state=JobState.running, spec=spec.model_copy(update={"input_path": str(photo)}),
                   created=sent, started=now, attempts=attempt)

    async def _photo(self, job_id: str, fields: dict[bytes, bytes], ext: str) -> tuple[Path, bool]:
        if b"photo" in fields:
            path = self.spool_dir / f"{job_id}{ext}"
            try:
                await asyncio.to_thread(atomic_write, path, fields[b"photo"],
                                        disk_full=f"no space left in {self.spool_dir} on worker {self.name} for the "
                                                  "photo; free some space there")
            except (DiskFull, OSError) as exc:
                raise _NoPhoto(str(exc) if isinstance(exc, DiskFull) else
                               f"the photo could not be written to {path} on worker {self.name}: {exc}") from None
            return path, True
        rel = text(fields.get(b"photo_path"))
        if not rel:
            raise _NoPhoto("the queue entry carries no photo (neither the bytes nor a shared_folder path)")
        shared = self.cfg.queue.shared_folder
        if shared is None:
            raise _NoPhoto(f"the photo was sent through the front's [queue] shared_folder ({rel}), and worker "
                           f"{self.name} has no [queue] shared_folder: set it to where that folder is mounted on "
                           "this box")
        path = Path(shared) / Path(rel).name
        if not await asyncio.to_thread(path.is_file):
            raise _NoPhoto(f"the photo {path} is not there on worker {self.name}: [queue] shared_folder must be "
                           "the same folder (mounted) on the front and every worker")
        return path, False

    # ------------------------------------------------------------------ while a job runs
    def cancel_flag(self, job_id: str) -> threading.Event:
        return self._cancel.setdefault(job_id, threading.Event())

    def progress(self, job: Job, stage: str, step: int = 0, steps: int = 0, **extra: Any) -> None:
        """Called on the loop; the latest progress of each job goes out from a task, coalesced."""
        if job.id not in self._claims:
            return
        info = {"stage": stage, "step": step, "steps": steps}
        job.progress = {**info, **extra}
        self._progress[job.id] = info
        self._progress_wake.set()

    async def _flush_progress(self) -> None:
        while True:
            await self._progress_wake.wait()
            self._progress_wake.clear()
            batch, self._progress = self._progress, {}
            for job_id, info in batch.items():
                if job_id not in self._claims:
                    continue
                try:
                    await self._event("progress", job_id, **info)
                except Exception as exc:
                    if not is_transient(exc):
                        log.exception("job %s: progress could not be sent", job_id)
                        continue
                    # Redis is away: sent when it is back, unless a newer one comes first
                    self._progress.setdefault(job_id, info)
                    await asyncio.sleep(1.0)
                    self._progress_wake.set()
            await asyncio.sleep(PROGRESS_INTERVAL)

    async def _event(self, kind: str, job_id: str, *, stage: str = "", step: int = 0, steps: int = 0) -> None:
        await self.redis.xadd(self.keys.events, {"kind": kind, "job": job_id, "worker": self.name, "stage": stage,
                                                 "step": str(step), "steps": str(steps), "time": f"{time.time():.3f}"},
                              maxlen=EVENTS_MAXLEN, approximate=True)

    async def _beat(self, claim: _Claim) -> tuple[int, bool]:
        owner, cancel = await self._beat_script(keys=[self.keys.stream, self.keys.cancel(claim.job_id)],
                                                args=[self.keys.group, claim.entry, self.name])
        return int(owner), bool(cancel)

    async def _check(self, claim: _Claim) -> None:
        """One heartbeat; marks the claim lost (and sets its cancel flag) when another worker has it."""
        try:
            owner, cancel = await self._beat(claim)
        except Exception as exc:
            if is_nogroup(exc):
                owner, cancel = 0, False
            elif is_transient(exc):
                if not claim.beat_failing:  # once per outage, not at every beat
                    log.warning("job %s: heartbeat: Redis: %s; trying again at each beat", claim.job_id, exc)
                claim.beat_failing = True
                return
            else:
                raise
        if claim.beat_failing:
            claim.beat_failing = False
            log.info("job %s: heartbeat: Redis answers again", claim.job_id)
        if cancel:
            flag = self.cancel_flag(claim.job_id)
            if not flag.is_set():
                log.info("job %s: cancel requested by the front", claim.job_id)
                flag.set()
        if owner == -1 and not claim.lost:
            claim.lost = True
            log.warning("job %s: entry %s was taken over by another worker (this one was silent for over %g s); "
                        "stopping it here, the other worker's result counts", claim.job_id, claim.entry,
                        self.claim_timeout)
            self.cancel_flag(claim.job_id).set()
        elif owner == 0 and not claim.gone_logged:
            claim.gone_logged = True
            # nothing to re-claim (a Redis that lost its data): the result is still delivered; the
            # front stores it once whoever else may run the job
            log.warning("job %s: entry %s is no longer pending in Redis; the job goes on and its result is "
                        "delivered", claim.job_id, claim.entry)

    async def _heartbeat(self, claim: _Claim) -> None:
        while not claim.lost:
            await asyncio.sleep(self.heartbeat)
            try:
                await self._check(claim)
            except Exception:
                log.exception("job %s: heartbeat failed", claim.job_id)

    # ------------------------------------------------------------------ ending a job
    async def finish(self, job: Job, state: JobState, *, error: str | None = None,
                     result: JobResult | None = None) -> Job:
        claim = self._claims.get(job.id)
        if claim is None:
            log.warning("job %s: finished, but this worker holds no entry for it; nothing sent", job.id)
            return job
        await self._check(claim)  # one fresh look: a job lost to a takeover is not delivered
        video = Path(result.output) if result is not None and state == JobState.done else None
        sidecar = Path(result.sidecar) if result is not None and state == JobState.done else None
        if not claim.lost:
            outcome = ResultOutcome(job=job.id, state=state.value, error=_bounded(error), result=result,
                                    worker=self.name, attempt=claim.attempt)
            if await self._deliver(claim, outcome, video, sidecar):
                await self._ack_claim(claim)
        lost = claim.lost
        await self._drop(claim)
        if lost:
            # the other worker's result is the one that counts: this render is nobody's
            await asyncio.to_thread(remove_files, video, sidecar)
            return job
        job.state = state
        return job

    async def requeue(self, job: Job, *, count_attempt: bool = False) -> None:
        """Hand the job back to the front (a checkpoint at shutdown). A front that does not answer
        within `requeue_wait` does not hold the stop: the entry stays pending for a takeover."""
        claim = self._claims.get(job.id)
        if claim is None:
            return
        step = "the front did not take it back"
        try:
            # one deadline for the whole hand-back: neither the front nor Redis holds the stop
            async with asyncio.timeout(self.requeue_wait):
                # one fresh look first: a worker whose entry was taken over while it was silent
                # must not hand back a job another worker is running (the front would queue it
                # and send it out a third time)
                await self._check(claim)
                if not claim.lost:
                    outcome = ResultOutcome(job=job.id, state="requeue", worker=self.name, attempt=claim.attempt)
                    if await self._deliver(claim, outcome, None, None):
                        step = "Redis did not take the acknowledgement"
                        await self._ack_claim(claim)
        except TimeoutError:
            self._check_own = True
            log.warning("job %s: %s within %.0f s; its entry stays pending and is resumed by this worker's next "
                        "start, or taken over by another worker after %g s", job.id, step, self.requeue_wait,
                        self.claim_timeout)
        await self._drop(claim)  # a pending entry still carries the photo: whoever resumes it writes it again

    async def _deliver(self, claim: _Claim, outcome: ResultOutcome, video: Path | None,
                       sidecar: Path | None) -> bool:
        """Hand the outcome over until `deliver` returns; heartbeats go on meanwhile. False when the
        entry was taken over in between (then the other worker's outcome counts)."""
        pause = self.DELIVER_RETRY[0]
        while True:
            if claim.lost:
                return False
            try:
                await self.deliver(outcome, video, sidecar)
                return True
            except UnknownJob as exc:
                log.warning("job %s: the front does not know this job (%s); the entry is dropped", outcome.job, exc)
                return True
            except ValueError as exc:
                if outcome.state != "done":
                    log.error("job %s: the front refused the %s outcome: %s; the entry is dropped", outcome.job,
                              outcome.state, exc)
                    return True
                # the render cannot be stored as it is: the job fails with the reason, not silently
                log.error("job %s: the front refused the result: %s; reporting the job failed", outcome.job, exc)
                outcome = outcome.model_copy(update={"state": "failed", "result": None,
                                                     "error": _bounded(f"the result could not be stored: {exc}")})
                video = sidecar = None
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("job %s: handing the %s outcome to the front failed (%s: %s); trying again in %.0f s",
                            outcome.job, outcome.state, type(exc).__name__, exc, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.DELIVER_RETRY[1])

    async def _settle(self, job_id: str, entry: str, outcome: ResultOutcome) -> None:
        """Deliver an outcome decided without running the job (cancelled, out of attempts), then ack."""
        claim = _Claim(job_id, entry, outcome.attempt, self.spool_dir / job_id, own_photo=False)
        self._claims[job_id] = claim
        claim.beat = asyncio.create_task(self._heartbeat(claim), name=f"heartbeat-{job_id}")
        try:
            if await self._deliver(claim, outcome, None, None):
                await self._ack(entry)
        finally:
            await self._drop(claim)

    async def _ack_claim(self, claim: _Claim) -> None:
        await self._ack(claim.entry, claim)

    async def _ack(self, entry: str, claim: _Claim | None = None) -> None:
        """XACK + XDEL, retried while Redis is away (the outcome is delivered; only the entry is left)."""
        pause = 0.5
        outage = Outage(log, f"worker {self.name}: acknowledging entry {entry}")
        while claim is None or not claim.lost:
            try:
                async with self.redis.pipeline(transaction=True) as p:
                    p.xack(self.keys.stream, self.keys.group, entry)
                    p.xdel(self.keys.stream, entry)
                    await p.execute()
                outage.answered()
                return
            except Exception as exc:
                if is_nogroup(exc):
                    return  # the stream is gone, and the entry with it
                if not is_transient(exc):
                    raise
                outage.failed(exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)

    async def _drop(self, claim: _Claim) -> None:
        if self._claims.get(claim.job_id) is claim:
            del self._claims[claim.job_id]
        if claim.beat is not None and claim.beat is not asyncio.current_task():
            claim.beat.cancel()
        self._cancel.pop(claim.job_id, None)
        self._progress.pop(claim.job_id, None)
        if claim.own_photo:
            await asyncio.to_thread(remove_files, claim.photo)  # off the loop, as every file operation here

    async def _retry_quietly(self, coro) -> None:
        try:
            await coro
        except Exception as exc:
            if not is_transient(exc):
                raise
            await asyncio.sleep(0.5)


def _bounded(error: str | None) -> str | None:
    """An error message as long as an outcome may carry: a longer one (a library's message with a
    tensor in it) would fail the outcome itself, and the job would never be reported."""
    if error is None or len(error) <= ERROR_MAX:
        return error
    return error[:ERROR_MAX - 40] + f" ... ({len(error) - ERROR_MAX + 40} characters cut)"


def _clear_files(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file() or p.is_symlink():
            remove_files(p)


class _NoPhoto(Exception):
    """The entry's photo cannot be had on this box: the job fails with this sentence."""
