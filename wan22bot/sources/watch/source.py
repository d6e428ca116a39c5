"""The folder source: discovery, checking and queueing watched photos, and sorting them away after.

See the package docstring for the whole journey; the settle rules are in settle.py, the moves in
delivery.py and the observer thread in observer.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from ...config import Config
from ...errors import ConfigError, InputError, Wan22Error
from ...images import check_photo
from ...jobs import FINAL_STATES, JobOptions, JobSpec, JobState
from ...queue import Job, JobEvent, JobQueue, QueueFull
from .. import sidecars
from .delivery import Outside, Replaced, destination, move_if_there, short
from .observer import reports_close, start_observer, stop_observer
from .settle import Settler

log = logging.getLogger(__name__)

# A photo refused by the check and then changed inside the failed folder (its writer had not
# finished) goes back to the queue; after this long unchanged it is no longer watched.
REVIVE_WINDOW_SECONDS = 3600.0


@dataclass
class _Judged:
    """A photo the check refused, now in the failed folder."""

    sig: tuple | None  # (size, mtime) when it was moved there
    note: Path | None  # its .error.txt
    at: float  # monotonic time it was judged


class FolderSource:
    name = "watch"

    def __init__(self, cfg: Config, queue: JobQueue, *, rescan_seconds: float = 5.0, observe: bool = True):
        self.queue = queue
        self.rescan_seconds = rescan_seconds
        self.observe = observe
        self._pending = Settler(cfg.watch.settle_seconds)
        self._judged: dict[str, _Judged] = {}  # failed-folder path -> why it is watched there
        self._revive = Settler(cfg.watch.settle_seconds)
        self._submitted: dict[str, str] = {}  # photo path -> job id (pending here, or its move failed)
        self._delivered: set[str] = set()
        self._logged: set[tuple] = set()  # (path, reason) already logged, so rescans do not repeat it
        self._full_logged = False
        self._wake: asyncio.Event | None = None
        self._rescan_now = True
        self._task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._deliver_lock: asyncio.Lock | None = None
        self._observer = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._known_inputs: set[Path] = set()
        self.scans = 0  # completed scans of the input folder (tests wait on it)
        self._apply(cfg)

    # ------------------------------------------------------------------ config
    def _apply(self, cfg: Config) -> None:
        self.cfg = cfg
        self.input_dir = Path(cfg.paths.input).absolute()
        self.processed_dir = Path(cfg.paths.processed_dir).absolute()
        self.failed_dir = Path(cfg.paths.failed_dir).absolute()
        self.extensions = sidecars.normalise_extensions(cfg.watch.extensions)
        self.settle_seconds = cfg.watch.settle_seconds
        self._pending.settle_seconds = self.settle_seconds
        self._revive.settle_seconds = self.settle_seconds
        self.poll_seconds = cfg.watch.poll_seconds
        self.max_megapixels = cfg.generation.max_megapixels
        self.max_bytes = int(cfg.generation.max_file_mb * 2**20)

    def _resolve_dirs(self) -> None:
        """Blocking: create the folders and pin their real paths (the safety checks compare these)."""
        self.input_dir.mkdir(parents=True, exist_ok=True)
        self._input_real = self.input_dir.resolve()
        self._processed_real = self.processed_dir.resolve()
        self._failed_real = self.failed_dir.resolve()
        for what, d in (("paths.processed", self._processed_real), ("paths.failed", self._failed_real)):
            if d == self._input_real:
                raise ConfigError(f"{what} is the watched folder itself ({d}); point it at another folder")
        self._known_inputs.add(self._input_real)

    def reload(self, cfg: Config) -> None:
        old_input = self.input_dir
        self._apply(cfg)
        log.info("watch: settings reloaded (settle %.1f s, extensions %s)", self.settle_seconds,
                 " ".join(sorted(self.extensions)))
        if self._loop is None:
            return
        self._rescan_now = True
        if self.input_dir != old_input:
            self._pending.clear()
            self._spawn(self._restart_observer())
        if self._wake is not None:
            self._wake.set()

    async def _restart_observer(self) -> None:
        await asyncio.to_thread(self._stop_observer)
        await asyncio.to_thread(self._resolve_dirs)
        await asyncio.to_thread(self._start_observer)
        log.info("watch: now watching %s", self.input_dir)
        self._rescan_now = True
        if self._wake is not None:
            self._wake.set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._deliver_lock = asyncio.Lock()
        await asyncio.to_thread(self._resolve_dirs)
        self.queue.add_listener(self._on_event)
        for job in await self.queue.undelivered(self.name):
            await self._deliver(job)
        await self._resume_pending()
        await asyncio.to_thread(self._start_observer)  # before the first scan: nothing falls between
        self._rescan_now = True
        self._task = asyncio.create_task(self._run(), name="watch")
        log.info("watch: watching %s (settle %.1f s)", self.input_dir, self.settle_seconds)

    async def _resume_pending(self) -> None:
        """Photos still waiting for a job queued before a restart are that job, not new ones; only the
        same file counts (same path and identity), never equal bytes under another name."""
        jobs = await self.queue.list(states=[JobState.queued, JobState.running], source=self.name, limit=1_000_000)
        matched = await asyncio.to_thread(lambda: [j for j in jobs if self._still_there(j)])
        for job in matched:
            self._submitted[job.spec.reply["path"]] = job.id

    def _still_there(self, job: Job) -> bool:
        """Blocking: the job's photo is still in the input folder, as the same file."""
        path = job.spec.reply.get("path")
        if not isinstance(path, str) or not path or Path(path).parent != self.input_dir:
            return False
        seen = job.spec.reply.get("identity")
        if seen:
            return file_identity(Path(path)) == tuple(seen)
        # Jobs journaled before identities were kept: the same path with the same bytes.
        try:
            with open(path, "rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest() == job.content_hash
        except OSError:
            return False

    async def stop(self) -> None:
        self.queue.remove_listener(self._on_event)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await asyncio.to_thread(self._stop_observer)
        if self._tasks:  # deliveries in flight are short file moves: let them finish
            await asyncio.wait(list(self._tasks), timeout=30)
        self._loop = None

    def _start_observer(self) -> None:
        if not self.observe:
            return
        try:
            obs = start_observer(self.input_dir, self._fs_event, self._loop)
        except OSError as exc:
            self._pending.track_writers = False
            log.warning("watch: cannot observe %s (%s); relying on a rescan every %.0f s", self.input_dir,
                        exc, self.rescan_seconds)
            return
        self._observer = obs
        self._pending.track_writers = reports_close(obs)

    def _stop_observer(self) -> None:
        obs, self._observer = self._observer, None
        self._pending.track_writers = False
        stop_observer(obs)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("watch: background task failed", exc_info=task.exception())

    def rescan(self) -> None:
        """Scan the input folder again now (a safety net; the observer normally finds everything)."""
        self._rescan_now = True
        if self._wake is not None:
            self._wake.set()

    def busy(self) -> bool:
        """Photos are waiting to settle, for room in the queue, or to go back from the failed folder."""
        return bool(self._pending) or bool(self._revive)

    # ------------------------------------------------------------------ discovery
    def _fs_event(self, path: str, kind: str = "modified") -> None:
        """On the loop: the observer saw `path` change (`kind`: created, modified, moved, closed)."""
        p = Path(path)
        if p.parent != self.input_dir:
            return  # an event about a sub-folder's contents or another folder
        self._consider(p)
        if kind == "modified":
            self._pending.wrote(str(p))
        elif kind in ("closed", "moved"):  # closed after writing, or renamed into place whole
            self._pending.closed(str(p))

    def _consider(self, p: Path) -> None:
        key = str(p)
        if key in self._submitted or key in self._pending:
            return
        if sidecars.ignored_reason(p.name, self.extensions) is not None:
            return
        self._pending.add(key)
        if self._wake is not None:
            self._wake.set()

    def _scan(self) -> list[Path]:
        """Blocking: the top-level photo candidates of the input folder."""
        out = []
        try:
            entries = list(os.scandir(self.input_dir))
        except FileNotFoundError:
            self.input_dir.mkdir(parents=True, exist_ok=True)
            return out
        for e in entries:
            reason = sidecars.ignored_reason(e.name, self.extensions)
            if reason is not None:
                if reason in ("a hidden file", "a partial download"):
                    self._log_once(e.path, reason, logging.DEBUG, "watch: ignoring %s: %s", e.name, reason)
                continue
            try:
                if e.is_dir():  # follows links: a link to a folder is no photo either
                    continue
            except OSError:
                continue
            out.append(Path(e.path))
        return out

    def _inside(self, real: Path) -> bool:
        roots = (self._input_real, self._processed_real, self._failed_real)
        return any(real == r or real.is_relative_to(r) for r in roots)

    def _observe_file(self, p: Path) -> tuple | str | None:
        """Blocking: the settle signature of a candidate, None when gone, or why it is refused."""
        try:
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                real = Path(os.path.realpath(p))
                if not self._inside(real):
                    return "outside"
                st = os.stat(p)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return "notfile"
        return (st.st_size, st.st_mtime_ns, sidecars.companion_signature(p))

    def _log_once(self, path: str, reason: str, level: int, msg: str, *args) -> None:
        if (path, reason) not in self._logged:
            self._logged.add((path, reason))
            log.log(level, msg, *args)

    # ------------------------------------------------------------------ the loop
    async def _run(self) -> None:
        next_scan = 0.0
        while True:
            try:
                now = time.monotonic()
                if self._rescan_now or now >= next_scan:
                    self._rescan_now = False
                    for p in await asyncio.to_thread(self._scan):
                        self._consider(p)
                    next_scan = time.monotonic() + self.rescan_seconds
                    self.scans += 1
                if self._pending:
                    await self._check_pending()
                if self._judged:
                    await self._check_judged()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("watch: scanning %s failed; trying again", self.input_dir)
            assert self._wake is not None
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)
            except asyncio.TimeoutError:
                pass

    async def _check_pending(self) -> None:
        paths = self._pending.keys()
        sigs = await asyncio.to_thread(lambda: {k: self._observe_file(Path(k)) for k in paths})
        now = time.monotonic()
        usable: dict[str, tuple] = {}
        for key, sig in sigs.items():
            if key not in self._pending:
                continue
            p = Path(key)
            if sig is None or sig == "notfile" or p.parent != self.input_dir \
                    or sidecars.ignored_reason(p.name, self.extensions) is not None:
                self._pending.discard(key)
                continue
            if sig == "outside":
                self._pending.discard(key)
                self._log_once(key, "outside", logging.WARNING,
                               "watch: ignoring %s: it is a link to a file outside the watched folders", p.name)
                continue
            usable[key] = sig
        ready = self._pending.ready(usable, now)
        for i, key in enumerate(ready):
            if key in self._pending and not await self._take(Path(key)):
                # The queue is full: the others wait too, without being read again now.
                until = self._pending.get(key).not_before
                for rest in ready[i + 1:]:
                    self._pending.defer(rest, until)
                break

    # ------------------------------------------------------------------ submit
    def _prepare(self, p: Path, sig: tuple) -> tuple[JobSpec, bytes] | None:
        """Blocking: check the photo and its companions, read it. None when it changed meanwhile."""
        check_photo(p, p.name, max_megapixels=self.max_megapixels, max_bytes=self.max_bytes)
        options: JobOptions = sidecars.read_options(p)
        data = p.read_bytes()
        if self._observe_file(p) != sig:
            return None
        identity = file_identity(p)
        stem = Path(p.name).stem
        spec = JobSpec(
            source="watch",
            input_path="",
            original_name=p.name,
            # The queue's safe_stem drops one extension; hand it the full name when the stem has a
            # dot of its own, so "my.holiday.jpg" becomes my.holiday.mp4.
            name=p.name if "." in stem else stem,
            options=options,
            user=None,
            # Path and identity together say "the same file seen again" after a restart; equal bytes
            # under another name are another photo and get their own video.
            reply={"path": str(p), "identity": list(identity) if identity else None},
        )
        return spec, data

    async def _take(self, p: Path) -> bool:
        """Check and queue one settled photo. False only when the queue is full."""
        key = str(p)
        pend = self._pending.get(key)
        try:
            prepared = await asyncio.to_thread(self._prepare, p, pend.sig)
        except InputError as exc:
            self._pending.discard(key)
            await self._fail_photo(p, str(exc))
            return True
        except FileNotFoundError:
            self._pending.discard(key)
            return True
        except OSError as exc:
            pend.not_before = time.monotonic() + self.rescan_seconds
            self._log_once(key, "unreadable", logging.WARNING, "watch: cannot read %s yet (%s); trying again",
                           p.name, exc.strerror or exc)
            return True
        if prepared is None:  # changed while being read: settle again
            self._pending.unsettle(key)
            return True
        spec, data = prepared
        try:
            job, _created = await self.queue.submit(spec, data)
        except QueueFull as exc:
            pend.not_before = time.monotonic() + max(self.rescan_seconds, self.poll_seconds)
            if not self._full_logged:
                self._full_logged = True
                log.warning("watch: %s waits in the folder: %s", p.name, exc)
            return False
        except Wan22Error as exc:
            pend.not_before = time.monotonic() + self.rescan_seconds
            self._log_once(key, "submit", logging.ERROR, "watch: %s not queued (%s); trying again", p.name, exc)
            return True
        self._full_logged = False
        self._pending.discard(key)
        self._submitted[key] = job.id
        log.info("job %s: %s queued from the watched folder", job.id, p.name)
        return True

    async def _fail_photo(self, p: Path, reason: str) -> None:
        try:
            moved, note = await asyncio.to_thread(sidecars.move_group_noted, p, self.failed_dir, self.extensions,
                                                  reason)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("watch: %s could not be processed (%s) and could not be moved to %s: %s", p.name, reason,
                      self.failed_dir, exc)
            self._submitted[str(p)] = ""  # do not try it again in this run
            return
        log.warning("watch: %s -> %s: %s", p.name, short(moved, self.failed_dir), sidecars.sentence(reason))
        # Its writer may not have finished (a copy that stalled longer than settle_seconds, where
        # close events are not reported): if it changes in the failed folder, it is taken again.
        sig = await asyncio.to_thread(_plain_sig, moved)
        if sig is not None:
            self._judged[str(moved)] = _Judged(sig, note, time.monotonic())

    async def _check_judged(self) -> None:
        """Refused photos that changed in the failed folder, once settled, go back to the input."""
        keys = list(self._judged)
        sigs = await asyncio.to_thread(lambda: {k: _plain_sig(Path(k)) for k in keys})
        now = time.monotonic()
        changed: dict[str, tuple] = {}
        for key, sig in sigs.items():
            judged = self._judged.get(key)
            if judged is None:
                continue
            if sig is None or (sig == judged.sig and now - judged.at > REVIVE_WINDOW_SECONDS):
                self._judged.pop(key, None)
                self._revive.discard(key)
            elif sig != judged.sig:
                self._revive.add(key)
                changed[key] = sig
        for key in self._revive.ready(changed, now):
            judged = self._judged.pop(key)
            self._revive.discard(key)
            try:
                back = await asyncio.to_thread(self._bring_back, Path(key), judged.note)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.error("watch: %s changed after it was refused, but cannot go back to %s: %s", key,
                          self.input_dir, exc)
                continue
            log.info("watch: %s changed after it was refused; it goes back to the queue as %s",
                     short(Path(key), self.failed_dir), back.name)
            self._consider(back)

    def _bring_back(self, p: Path, note: Path | None) -> Path:
        """Blocking: move a refused photo (and companions) back into the input; drop its error note."""
        back = sidecars.move_group(p, self.input_dir, self.extensions, None)
        if note is not None:
            note.unlink(missing_ok=True)
        return back

    # ------------------------------------------------------------------ delivery
    def _on_event(self, event: JobEvent) -> None:
        job = event.job
        if job.spec.source != self.name:
            return
        if event.kind in FINAL_STATES:
            self._spawn(self._deliver(job))
        if event.kind in ("started", "cancelled", "done", "failed") and self._pending:
            self._pending.retry_all()  # room in the queue: retry photos that waited
            if self._wake is not None:
                self._wake.set()

    async def _deliver(self, job: Job) -> None:
        assert self._deliver_lock is not None
        async with self._deliver_lock:
            if job.id in self._delivered:
                return
            state = job.state.value
            if state not in FINAL_STATES:
                return
            reply = job.spec.reply.get("path")
            photos = [reply] if isinstance(reply, str) and reply else []
            dest, error = destination(state, job.error, self.processed_dir, self.failed_dir)
            ok = True
            for key in photos:
                p = Path(key)
                try:
                    moved = await asyncio.to_thread(move_if_there, p, dest, error, job.content_hash,
                                                    self._known_inputs, self.extensions)
                except Replaced:
                    log.info("job %s: %s was replaced by another photo meanwhile; that one is taken as new",
                             job.id, p.name)
                    self._release(key, job.id)
                    if p.parent == self.input_dir:
                        self._consider(p)
                    continue
                except Outside:
                    log.warning("job %s: %s is not in a watched folder; leaving it where it is", job.id, key)
                    self._release(key, job.id)
                    continue
                except OSError as exc:
                    ok = False
                    log.error("job %s: %s could not be moved to %s: %s (it stays; the move is retried at the "
                              "next start)", job.id, p.name, dest, exc)
                    continue  # stays in _submitted so it is not queued again in this run
                self._release(key, job.id)
                if moved is None:
                    log.info("job %s: %s, photo %s is no longer in the folder", job.id, state, p.name)
                elif error is None:
                    log.info("job %s: done -> %s; photo moved to %s", job.id,
                             job.result.output if job.result else "?", short(moved, dest))
                else:
                    log.warning("job %s: %s -> %s: %s", job.id, state, short(moved, dest), sidecars.sentence(error))
            if ok:
                await self.queue.mark_delivered(job.id)
                self._delivered.add(job.id)

    def _release(self, key: str, job_id: str) -> None:
        if self._submitted.get(key) == job_id:
            del self._submitted[key]


def file_identity(p: Path) -> tuple[int, int, int, int] | None:
    """Blocking: (device, inode, size, mtime) of the file `p` names (links followed); None when gone."""
    try:
        st = os.stat(p)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _plain_sig(p: Path) -> tuple[int, int] | None:
    """Blocking: (size, mtime) of a regular file at `p` (links not followed); None otherwise."""
    try:
        st = os.lstat(p)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None
