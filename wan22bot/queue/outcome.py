"""Settling a job that ran on another box: the one idempotent way the front stores a remote result.

A worker reports each job it took once it ends (done, failed, cancelled, or handed back for a
restart) as a `ResultOutcome`, plus the MP4 and its sidecar for a done job. The same outcome may
arrive twice (a retried upload whose first answer was lost, or two workers that both ran the job
after a takeover): the first one settles the job, any later one finds it final and changes
nothing, so a job is stored and delivered once.

The files handed in are the caller's to lose: whatever happens here (stored, refused, a
duplicate, a full disk) they are gone when `accept_result` returns, moved into the output folder
or removed, so no temp file is ever left behind.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import DiskFull, Wan22Error
from ..fsutil import NO_SPACE, atomic_write, fsync_dir, remove_files
from ..jobs import JobResult, JobState
from .jobqueue import JobQueue
from .models import Job

log = logging.getLogger(__name__)

ERROR_MAX = 20000  # characters of an outcome's error: a reason, not a log
SIDECAR_MAX_BYTES = 4 * 2**20  # a real sidecar is a few kilobytes of settings and timings
COPY_CHUNK = 1024 * 1024


class ResultOutcome(BaseModel):
    """What a worker reports for one job (JSON on the wire)."""

    model_config = ConfigDict(extra="forbid")

    job: str = Field(min_length=1, max_length=64)
    state: Literal["done", "failed", "cancelled", "requeue"]
    error: str | None = Field(None, max_length=ERROR_MAX)
    result: JobResult | None = None  # for "done": timings/frames/fps/... (output/sidecar = worker paths)
    worker: str = Field(min_length=1, max_length=200)
    attempt: int = Field(0, ge=0)


@dataclass
class Accepted:
    stored: bool  # False: the job was already final, nothing changed (a duplicate)
    state: str  # the job's state after this call


class UnknownJob(Wan22Error):
    """No job with this id in the front's journal (pruned, or sent to the wrong front)."""


class BadResult(ValueError):
    """The outcome or its files cannot be stored as they are (an HTTP 400 for the sender)."""


# One settle at a time per job id: two uploads of the same job arriving together must not both
# find it running and both store it. The count of callers using a lock says when it can go.
_locks: dict[str, tuple[asyncio.Lock, int]] = {}


async def accept_result(queue: JobQueue, outcome: ResultOutcome, video: Path | None,
                        sidecar: Path | None) -> Accepted:
    """Settle `outcome.job` in the journal; see the module docstring.

    Raises UnknownJob (no such job), BadResult (a ValueError: done without a video or its
    result, a video that is not an MP4, a sidecar that is not a JSON object) or DiskFull (the
    output folder has no room); in each case the job is left as it was.
    """
    lock, users = _locks.get(outcome.job, (asyncio.Lock(), 0))
    _locks[outcome.job] = (lock, users + 1)
    try:
        async with lock:
            return await _settle(queue, outcome, video, sidecar)
    finally:
        lock, users = _locks[outcome.job]
        if users > 1:
            _locks[outcome.job] = (lock, users - 1)
        else:
            del _locks[outcome.job]
        await asyncio.to_thread(remove_files, video, sidecar)  # no-op for files already moved into place


async def _settle(queue: JobQueue, outcome: ResultOutcome, video: Path | None, sidecar: Path | None) -> Accepted:
    job = await queue.get(outcome.job)
    if job is None:
        raise UnknownJob(f"there is no job {outcome.job} on this front (finished long ago and pruned, or the "
                         "worker is pointed at another front: check [queue] front_url)")
    if job.state.final:
        log.info("job %s: a second %s result from %s ignored; the job is already %s", job.id, outcome.state,
                 outcome.worker, job.state.value)
        return Accepted(False, job.state.value)
    if outcome.state == "requeue":
        if job.state == JobState.queued:  # handed back already (or never left): nothing to undo
            return Accepted(True, JobState.queued.value)
        if queue.cancel_flag(job.id).is_set():
            # cancelled here while its worker was stopping: the person asked for it to end, and a
            # requeue would run it again on the next free worker
            await queue.finish(job, JobState.cancelled, error="cancelled")
            log.info("job %s: handed back by %s after a cancel was requested; cancelled", job.id, outcome.worker)
            return Accepted(True, JobState.cancelled.value)
        await queue.requeue(job, count_attempt=False)
        log.info("job %s: handed back by %s; queued again", job.id, outcome.worker)
        return Accepted(True, JobState.queued.value)
    if outcome.state in ("failed", "cancelled"):
        state = JobState(outcome.state)
        error = outcome.error or ("cancelled" if state == JobState.cancelled else f"failed on {outcome.worker}")
        await queue.finish(job, state, error=error)
        log.info("job %s: %s on %s: %s", job.id, state.value, outcome.worker, error)
        return Accepted(True, state.value)
    return await _store_done(queue, job, outcome, video, sidecar)


async def _store_done(queue: JobQueue, job: Job, outcome: ResultOutcome, video: Path | None,
                      sidecar: Path | None) -> Accepted:
    if video is None:
        raise BadResult(f"job {job.id}: a done result needs its video: send the MP4 in the part 'video'")
    if outcome.result is None:
        raise BadResult(f"job {job.id}: a done result needs 'result' (frames, fps, timings...) in the outcome")
    await asyncio.to_thread(check_mp4, video)
    if sidecar is not None:
        await asyncio.to_thread(read_sidecar, sidecar)
    out_dir = queue.output_dir
    mp4 = out_dir / f"{job.spec.name}.mp4"
    side = out_dir / f"{job.spec.name}.json"
    size = await asyncio.to_thread(_place, video, sidecar, mp4, side, job, outcome)
    result = outcome.result.model_copy(update={"output": str(mp4), "sidecar": str(side), "bytes": size})
    await queue.finish(job, JobState.done, result=result)
    log.info("job %s: done on %s; %s (%d bytes) stored", job.id, outcome.worker, mp4.name, size)
    return Accepted(True, JobState.done.value)


def check_mp4(path: Path) -> None:
    """An MP4 (ISO base media file) starts with a box of type 'ftyp': [size:4][b'ftyp']."""
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != b"ftyp" or int.from_bytes(head[:4], "big") < 8:
        raise BadResult("the video part is not an MP4 (it does not start with an 'ftyp' box); send the .mp4 "
                        "file the render wrote")


def read_sidecar(path: Path) -> dict:
    size = path.stat().st_size
    if size > SIDECAR_MAX_BYTES:
        raise BadResult(f"the sidecar is {size} bytes, more than the {SIDECAR_MAX_BYTES} a sidecar may have; "
                        "send the .json file the render wrote")
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadResult(f"the sidecar is not valid JSON ({exc}); send the .json file the render wrote") from None
    if not isinstance(data, dict):
        raise BadResult(f"the sidecar must be a JSON object, got a JSON {type(data).__name__}; send the .json "
                        "file the render wrote")
    return data


def _place(video: Path, sidecar: Path | None, mp4: Path, side: Path, job: Job, outcome: ResultOutcome) -> int:
    """Move the files under the job's names in the output folder; returns the video's size.

    The sidecar goes first: a crash between the two leaves at most a stray .json, never a video
    the journal does not know about being taken for a finished one.
    """
    out_dir = mp4.parent
    full = f"no space left in the output folder {out_dir} to store the video of job {job.id}; free some space"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if sidecar is not None:
            _move_into(sidecar, side)
        else:  # nothing sent: the front writes what it knows, so the video never lacks its sidecar
            known = {"name": job.spec.name, "photo": job.spec.original_name, "job_id": job.id,
                     "worker": outcome.worker, **(outcome.result.model_dump(exclude={"output", "sidecar"})
                                                  if outcome.result else {})}
            atomic_write(side, json.dumps(known, indent=2, ensure_ascii=False) + "\n", disk_full=full)
        _move_into(video, mp4)
        fsync_dir(out_dir)
    except DiskFull:
        side.unlink(missing_ok=True)
        raise DiskFull(full) from None
    except OSError as exc:
        side.unlink(missing_ok=True)
        if exc.errno in NO_SPACE:
            raise DiskFull(full) from None
        raise
    return mp4.stat().st_size


def _move_into(src: Path, dest: Path) -> None:
    """Rename `src` to `dest`; from another file system, copy it beside `dest` (fsynced) first so
    the name only ever appears complete."""
    _fsync_file(src)  # the journal will call it done: its bytes must be on disk before its name is
    try:
        os.replace(src, dest)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, COPY_CHUNK)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    src.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
