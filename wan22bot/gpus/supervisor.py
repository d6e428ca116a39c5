"""The daemon's side of the worker processes: launch, listen, settle, restart, report.

Each process is an asyncio subprocess speaking JSON lines on its stdin/stdout (protocol.py). That,
rather than multiprocessing with a queue read by a thread, because: the child is a fresh
interpreter started with an explicit environment (CUDA_VISIBLE_DEVICES and the NCCL variables are
in place before anything imports torch; multiprocessing's spawn would re-import the daemon's main
module in the child first), the daemon's event loop reads the pipes itself (no thread, no
call_soon_threadsafe hop), and a child killed with SIGKILL is an end of file plus an exit code.

Jobs are claimed by the children straight from the journal (BEGIN IMMEDIATE, under the worker's
name); everything else about a job (its events, settling it, delivery) stays here. A child that
dies has its running jobs put back in the queue (the attempt counts) and is started again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..jobs import JobResult, JobState
from ..queue import Job, JobQueue
from ..queue.models import JobEvent
from ..health import Health
from . import protocol as P

log = logging.getLogger(__name__)

# NVLink multicast stays off in every process we launch (see the README's "Several GPUs").
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
RESTART_BACKOFF = (1.0, 2.0, 5.0, 15.0, 60.0)
# what a worker process reports back of its environment (shown in the status)
DEVICE_ENV = ("CUDA_VISIBLE_DEVICES", *MULTICAST_OFF)
CRASH_LOOP = 3  # ends in a row without loading: the process counts as down
STOP_GRACE_SECONDS = 60.0  # a checkpoint waits for the running step to end


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(devices: list[str], index: int, *, split: bool, port: int | None = None,
              base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of worker process `index`.

    per-device: the process sees only its card (as cuda:0). split: every rank sees all the group's
    cards and uses cuda:<rank>, because NCCL's peer-to-peer paths need the peers visible. cpu: no
    card is visible at all.
    """
    env = dict(os.environ if base is None else base)
    cards = [d.split(":", 1)[1] for d in devices if d.startswith("cuda:")]
    outer = [c.strip() for c in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if c.strip()]
    if cards and outer:
        # the daemon itself was given a subset of cards: cuda:N means the N-th of those, as in torch
        if any(int(c) >= len(outer) for c in cards):
            from ..errors import ConfigError

            raise ConfigError(f"[gpus] devices lists {', '.join(devices)}, but CUDA_VISIBLE_DEVICES={','.join(outer)} "
                              f"leaves {len(outer)} cards visible: list cuda:0 to cuda:{len(outer) - 1}")
        cards = [outer[int(c)] for c in cards]
    if not cards:
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif split:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(cards)
    else:
        env["CUDA_VISIBLE_DEVICES"] = cards[index]
    env.update(MULTICAST_OFF)
    if split:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(index), WORLD_SIZE=str(len(devices)))
    # a checkout that is not installed still finds its own package
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class WorkerProc:
    """One worker process and what it last said."""

    name: str
    device: str
    index: int
    state: str = "starting"  # starting/loading/idle/busy/following/restarting/dead/stopped
    pid: int | None = None
    job: Job | None = None
    memory: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    failures: int = 0  # ends since it last had its models resident (sets the restart delay)
    jobs_done: int = 0
    env: dict[str, str] = field(default_factory=dict)  # DEVICE_ENV as the process saw it
    calls: int = 0  # split mode, ranks > 0: expert calls run for rank 0
    load_seconds: float | None = None
    last_error: str | None = None
    last_progress: float = field(default_factory=time.monotonic)
    cancel_sent: bool = False
    proc: asyncio.subprocess.Process | None = field(default=None, repr=False)
    reader: asyncio.Task | None = field(default=None, repr=False)
    ready: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def to_api(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device, "state": self.state, "pid": self.pid,
                "busy": self.job is not None, "job": self.job.id if self.job else None,
                "memory": self.memory, "restarts": self.restarts, "jobs_done": self.jobs_done,
                "expert_calls": self.calls, "env": self.env,
                "load_seconds": self.load_seconds, "error": self.last_error}

    def send(self, cmd: P.Command) -> None:
        if self.proc is not None and self.proc.stdin is not None and not self.proc.stdin.is_closing():
            try:
                self.proc.stdin.write(P.encode(cmd))
            except (BrokenPipeError, ConnectionResetError):
                pass


class _ModelsView:
    """What sources ask of `worker.renderer`: are models resident (in any worker process)."""

    generator = None

    def __init__(self, pool: "WorkerPool"):
        self._pool = pool

    @property
    def loaded(self) -> bool:
        return any(p.state in ("idle", "busy", "following") for p in self._pool.procs)


class WorkerPool:
    """Stands where worker.Worker stands when [gpus] lists several devices."""

    def __init__(self, cfg: Config, queue: JobQueue, *, devices: list[str] | None = None, mode: str | None = None,
                 random_weights: bool = False):
        self.cfg = cfg
        self.queue = queue
        self.mode = mode or cfg.gpus.mode
        self.devices = devices or cfg.devices
        self.random_weights = random_weights  # benchmarks only (gpus/bench.py)
        self.split = self.mode == "split"
        for i in range(len(self.devices)):  # a device the daemon cannot see stops the start, with its reason
            child_env(self.devices, i, split=self.split, port=0)
        prefix = "rank" if self.split else "gpu"
        self.procs = [WorkerProc(f"{prefix}{i}", d, i) for i, d in enumerate(self.devices)]
        self.renderer = _ModelsView(self)
        self.last_timings: dict[str, float] | None = None
        self.last_job_finished = time.time()
        self.stall_seconds = cfg.queue.stall_minutes * 60
        self._stopping = False
        self._started = False
        self._monitor: asyncio.Task | None = None
        self._restarts: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ what the daemon asks
    @property
    def leaders(self) -> list[WorkerProc]:
        return self.procs[:1] if self.split else self.procs

    @property
    def current(self) -> Job | None:
        return next((p.job for p in self.leaders if p.job is not None), None)

    @property
    def running(self) -> list[Job]:
        return [p.job for p in self.leaders if p.job is not None]

    @property
    def gpu_busy(self) -> bool:
        return self.current is not None

    @property
    def last_load_seconds(self) -> float | None:
        loads = [p.load_seconds for p in self.procs if p.load_seconds is not None]
        return max(loads) if loads else None

    def states(self) -> list[dict[str, Any]]:
        return [p.to_api() for p in self.procs]

    def health(self) -> Health:
        now = time.monotonic()
        if self._stopping:
            return Health(True, "stopped")
        for p in self.procs:
            if p.job is not None and now - p.last_progress > self.stall_seconds:
                return Health(False, "stuck", f"{p.name} ({p.device}): no progress for "
                              f"{now - p.last_progress:.0f} s on job {p.job.id}", now - p.last_progress)
        # unhealthy only with no capacity left: one bad card of four must not get the daemon restarted
        if self.procs and all(p.failures >= CRASH_LOOP for p in self.procs):
            return Health(False, "dead", "every worker process keeps ending: " +
                          "; ".join(f"{p.name}: {p.last_error}" for p in self.procs))
        if any(p.state in ("starting", "loading", "restarting") for p in self.procs) and not self.running:
            return Health(True, "loading")
        if self.running:
            return Health(True, "running", ", ".join(j.id for j in self.running))
        return Health(True, "idle")

    # ------------------------------------------------------------------ lifecycle
    def _launch_all(self) -> None:
        if self._started:
            return
        self._started = True
        log.info("[gpus] %s on %s: %s", self.mode, ", ".join(self.devices),
                 "one job at a time over all of them" if self.split else "a worker process per device")
        self.queue.add_listener(self._on_queue_event)
        port = free_port() if self.split else None
        for p in self.procs:
            self._spawn_soon(p, 0.0, port)
        self._monitor = asyncio.create_task(self._watch(), name="gpus-monitor")

    async def load(self) -> float:
        """Start the processes and wait until each has its models resident."""
        t0 = time.perf_counter()
        self._launch_all()
        while not all(p.ready.is_set() for p in self.procs):
            waits = [asyncio.ensure_future(p.ready.wait()) for p in self.procs if not p.ready.is_set()]
            # a process that failed before its models were ever resident fails the start at once
            dead = [p for p in self.procs if p.last_error and p.load_seconds is None
                    and p.state in ("dead", "restarting")]
            if dead:
                for w in waits:
                    w.cancel()
                from ..errors import ModelError

                raise ModelError("; ".join(f"worker {p.name} on {p.device} could not start: {p.last_error}"
                                           for p in dead))
            await asyncio.wait(waits, timeout=1.0)
            for w in waits:
                w.cancel()
        return time.perf_counter() - t0

    def start(self) -> None:
        self._launch_all()

    async def unload_if_idle(self, idle_minutes: float) -> bool:
        return False  # worker processes keep their models; stopping the daemon frees them

    def _spawn_soon(self, p: WorkerProc, delay: float, port: int | None) -> None:
        task = asyncio.create_task(self._spawn(p, delay, port), name=f"spawn-{p.name}")
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _spawn(self, p: WorkerProc, delay: float, port: int | None) -> None:
        if delay:
            p.state = "restarting"
            await asyncio.sleep(delay)
        if self._stopping:
            return
        env = child_env(self.devices, p.index, split=self.split, port=port)
        data = self.cfg.model_dump(mode="json")
        data["paths"] = {**data["paths"], "state": str(self.queue.state_dir), "output": str(self.queue.output_dir)}
        init = P.Init(name=p.name, device=p.device, config=data, rank=p.index if self.split else 0,
                      world_size=len(self.procs) if self.split else 1, random_weights=self.random_weights)
        p.state, p.job, p.ready = "starting", None, asyncio.Event()
        p.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wan22bot.gpus.procworker", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=env, limit=2**20)
        p.pid = p.proc.pid
        log.info("worker %s: started on %s (pid %d)", p.name, p.device, p.pid)
        p.send(init)  # type: ignore[arg-type]
        p.reader = asyncio.create_task(self._read(p), name=f"read-{p.name}")

    async def stop(self, *, wait_for_gpu: bool = True) -> None:
        """Checkpoint running jobs (re-queued without an attempt spent) and end the processes."""
        self._stopping = True
        for t in list(self._restarts):
            t.cancel()
        if self._monitor is not None:
            self._monitor.cancel()
        self.queue.remove_listener(self._on_queue_event)
        for p in self.procs:
            p.send(P.Command("stop"))
        live = [p for p in self.procs if p.proc is not None and p.proc.returncode is None]
        grace = STOP_GRACE_SECONDS if wait_for_gpu else 0.5
        if live:
            _done, pending = await asyncio.wait([asyncio.ensure_future(p.proc.wait()) for p in live],  # type: ignore[union-attr]
                                                timeout=grace)
            for p in live:
                if p.proc is not None and p.proc.returncode is None:
                    log.warning("worker %s: did not stop within %.0f s; killed", p.name, grace)
                    p.proc.kill()
            for fut in pending:
                await fut
        readers = [p.reader for p in self.procs if p.reader is not None]
        if readers:
            await asyncio.gather(*readers, return_exceptions=True)
        for p in self.procs:
            p.state = "stopped"

    # ------------------------------------------------------------------ events from the processes
    async def _read(self, p: WorkerProc) -> None:
        assert p.proc is not None and p.proc.stdout is not None
        try:
            while line := await p.proc.stdout.readline():
                try:
                    ev = P.decode_event(line)
                except ValueError:
                    log.warning("worker %s: unreadable line %r", p.name, line[:200])
                    continue
                try:
                    await self._on_event(p, ev)
                except Exception:
                    log.exception("worker %s: handling %s failed", p.name, ev.t)
        finally:
            rc = await p.proc.wait()
            await self._on_exit(p, rc)

    async def _on_event(self, p: WorkerProc, ev: P.Event) -> None:
        if ev.memory:
            p.memory = ev.memory
        if ev.t == "state":
            # busy/idle follow the claim and settle lines; a beat written just before one of those
            # must not undo it
            p.state = ("busy" if p.job is not None else "idle") if ev.state in ("busy", "idle") else (ev.state or p.state)
            if ev.env is not None:
                p.env = ev.env
            if ev.state == "following" and ev.step:
                p.calls = ev.step
            if ev.load_seconds is not None:
                p.load_seconds = ev.load_seconds
                log.info("worker %s: models loaded in %.1f s on %s", p.name, ev.load_seconds, p.device)
            if ev.state in ("idle", "following"):
                p.ready.set()
                p.last_error, p.failures = None, 0
        elif ev.t == "claimed" and ev.job:
            job = await self.queue.get(ev.job)
            if job is None:
                return
            p.job, p.state, p.cancel_sent, p.last_progress = job, "busy", False, time.monotonic()
            self.queue.cancel_flag(job.id)
            log.info("job %s: started on %s (%s, attempt %d) %s", job.id, p.name, p.device, job.attempts,
                     job.spec.original_name)
            self.queue.publish(JobEvent(job, "started"))
        elif ev.t == "progress" and p.job is not None and ev.job == p.job.id:
            p.last_progress = time.monotonic()
            self.queue.progress(p.job, ev.stage or "", ev.step, ev.steps)
            self._forward_cancel(p)
        elif ev.t == "settled" and p.job is not None and ev.job == p.job.id:
            job, p.job, p.state = p.job, None, "idle"
            await self._settle(p, job, ev)
        elif ev.t == "fatal":
            p.last_error = ev.error
            log.error("worker %s on %s: %s", p.name, p.device, ev.error)

    async def _settle(self, p: WorkerProc, job: Job, ev: P.Event) -> None:
        self.last_job_finished = time.time()
        if ev.outcome == "done" and ev.result is not None:
            result = JobResult.model_validate(ev.result)
            self.last_timings = result.timings
            p.jobs_done += 1
            t = result.timings
            log.info("job %s: done on %s in %.1f s (pass 1 %.2f s, pass 2 %.2f s) -> %s", job.id, p.name,
                     t.get("total", 0.0), t.get("pass1", 0.0), t.get("pass2", 0.0), result.output)
            await self.queue.finish(job, JobState.done, result=result)
        elif ev.outcome == "checkpoint":
            log.info("job %s: checkpointed on %s; it runs again", job.id, p.name)
            await self.queue.requeue(job, count_attempt=False)
        elif ev.outcome == "cancelled":
            await self.queue.finish(job, JobState.cancelled, error="cancelled")
        else:
            log.warning("job %s: failed on %s: %s", job.id, p.name, ev.error)
            await self.queue.finish(job, JobState.failed, error=ev.error or "failed")

    def _forward_cancel(self, p: WorkerProc) -> None:
        if p.job is not None and not p.cancel_sent and self.queue.cancel_flag(p.job.id).is_set():
            p.cancel_sent = True
            p.send(P.Command("cancel", p.job.id))

    def _on_queue_event(self, event: JobEvent) -> None:
        if event.kind in ("queued", "requeued"):
            for p in self.leaders:
                if p.job is None:
                    p.send(P.Command("wake"))

    async def _watch(self) -> None:
        """Cancels reach a process between progress lines too (a long step, the decode)."""
        while True:
            await asyncio.sleep(0.5)
            for p in self.leaders:
                self._forward_cancel(p)

    async def _on_exit(self, p: WorkerProc, rc: int) -> None:
        owner = self.procs[0] if self.split else p
        p.pid, p.proc = None, None
        if self._stopping:
            p.state = "stopped"
        else:
            how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
            p.last_error = p.last_error or f"the process ended ({how})"
            log.error("worker %s on %s: the process ended (%s)", p.name, p.device, how)
            p.state = "dead"
            p.failures += 1
        await self._release(owner)
        if self._stopping:
            return
        if self.split:
            # one rank gone leaves the others blocked in a collective: the group restarts together
            for q in self.procs:
                if q.proc is not None and q.proc.returncode is None:
                    q.proc.kill()
            if any(q.proc is not None for q in self.procs):
                return  # the last rank to end restarts the group
            delay = RESTART_BACKOFF[min(max(q.failures for q in self.procs) - 1, len(RESTART_BACKOFF) - 1)]
            port = free_port()
            for q in self.procs:
                q.restarts += 1
                self._spawn_soon(q, delay, port)
            return
        # the first end after a good run restarts at once-ish; a process that keeps ending backs off
        delay = RESTART_BACKOFF[min(p.failures - 1, len(RESTART_BACKOFF) - 1)]
        p.restarts += 1
        log.info("worker %s: restarting in %.0f s", p.name, delay)
        self._spawn_soon(p, delay, None)

    async def _release(self, owner: WorkerProc) -> None:
        """Put back what a dead process held: the journal knows which jobs it claimed."""
        job, owner.job = owner.job, None
        requeued, failed = await self.queue.run_db(self.queue.journal.release_owned, owner.name,
                                                   self.queue.max_attempts)
        for jid in requeued + failed:
            self.queue.live.pop(jid, None)
            fresh = await self.queue.get(jid)
            if fresh is None:
                continue
            if jid in failed:
                log.error("job %s: failed: %s", jid, fresh.error)
                self.queue.publish(JobEvent(fresh, "failed"))
            else:
                log.info("job %s: re-queued after worker %s ended (attempt %d spent)", jid, owner.name,
                         fresh.attempts)
                self.queue.publish(JobEvent(fresh, "requeued"))
        if job is not None and job.id not in requeued + failed:
            log.info("job %s: settled before worker %s ended", job.id, owner.name)
