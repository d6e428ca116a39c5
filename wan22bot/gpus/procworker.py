"""A worker process: one device (per-device mode) or one rank of a split group.

Started by the supervisor as `python -m wan22bot.gpus.procworker` with CUDA_VISIBLE_DEVICES and
the NCCL/NVSHMEM variables already in its environment: a fresh interpreter, so nothing can have
initialised CUDA before they are read. The first stdin line is an Init; after that stdin carries
commands and stdout events (protocol.py).

Per-device, and rank 0 of a split group: open the job journal (the same SQLite file the daemon
uses), claim the next job atomically under this worker's name, render it, report the outcome; the
daemon settles the job and delivers it. Ranks > 0 only run the expert calls rank 0 announces.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from . import protocol as P

log = logging.getLogger("wan22bot.gpus.procworker")
BEAT_SECONDS = 2.0  # memory and liveness report while idle or busy
POLL_SECONDS = 5.0  # re-check the journal this often even without a wake (a job requeued elsewhere)


class Channel:
    """Events to the daemon (thread-safe) and the commands it sends."""

    def __init__(self, out: IO[bytes]):
        self._out = out
        self._lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.cancelled: set[str] = set()
        self.gone = False  # the daemon closed our stdin (it died or is stopping hard)

    def send(self, ev: P.Event) -> None:
        with self._lock:
            try:
                self._out.write(P.encode(ev))
                self._out.flush()
            except (BrokenPipeError, ValueError, OSError):
                self.gone = True
                self.stopping.set()

    def read_commands(self, stream: IO[str]) -> None:
        for line in stream:
            if not line.strip():
                continue
            cmd = P.decode_command(line)
            if cmd.t == "wake":
                self.wake.set()
            elif cmd.t == "cancel" and cmd.job:
                self.cancelled.add(cmd.job)
            elif cmd.t == "stop":
                self.stopping.set()
                self.wake.set()
        self.gone = True
        self.stopping.set()
        self.wake.set()


def memory(device: Any) -> dict[str, int]:
    """Bytes in use: the card's allocator on CUDA, the process's resident set on the CPU."""
    import torch

    if getattr(device, "type", "cpu") == "cuda" and torch.cuda.is_initialized():
        free, total = torch.cuda.mem_get_info(device)
        return {"allocated": int(torch.cuda.memory_allocated(device)),
                "reserved": int(torch.cuda.memory_reserved(device)), "total": int(total)}
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return {"rss": pages * os.sysconf("SC_PAGE_SIZE")}
    except (OSError, ValueError, IndexError):
        return {}


def _beat(ch: Channel, status: dict[str, Any], device_ref: list) -> None:
    while not ch.stopping.wait(BEAT_SECONDS):
        ch.send(P.Event("state", state=status["state"], job=status.get("job"),
                        memory=memory(device_ref[0]) if device_ref else {}))


class GroupOutOfStep(RuntimeError):
    """A split job failed inside an expert call: the other ranks are mid-collective."""


def _render_job(cfg, renderer, journal_job, ch: Channel, status: dict[str, Any], leader=None) -> P.Event:
    from ..errors import Cancelled, DiskFull, Wan22Error

    job = journal_job
    output_dir = Path(cfg.paths.output).absolute()

    def progress(p) -> None:
        ch.send(P.Event("progress", job=job.id, stage=p.stage, step=p.step, steps=p.steps))

    def should_cancel() -> bool:
        return job.id in ch.cancelled or ch.stopping.is_set()

    try:
        try:
            result = _render(cfg, renderer, job, output_dir, progress, should_cancel, status)
        except Exception as exc:
            if leader is not None and leader.in_call:
                # the process leaves without settling: the daemon re-queues the job (attempt
                # counted) and restarts the whole group
                raise GroupOutOfStep(f"job {job.id} failed inside a split expert call: {exc}") from exc
            raise
    except Cancelled as exc:
        if job.id in ch.cancelled:
            return P.Event("settled", job=job.id, outcome="cancelled", error="cancelled")
        log.info("job %s: checkpointed (%s)", job.id, exc)
        return P.Event("settled", job=job.id, outcome="checkpoint")
    except GroupOutOfStep:
        raise
    except (DiskFull, Wan22Error) as exc:
        return P.Event("settled", job=job.id, outcome="failed", error=str(exc))
    except Exception as exc:  # a bug: this job fails, the process goes on
        log.exception("job %s: internal error", job.id)
        return P.Event("settled", job=job.id, outcome="failed", error=f"internal error: {type(exc).__name__}: {exc}")
    return P.Event("settled", job=job.id, outcome="done", result=result.model_dump(mode="json"))


def _render(cfg, renderer, job, output_dir: Path, progress, should_cancel, status: dict[str, Any]):
    from ..fsutil import fsync_dir

    spec = job.spec
    result = renderer.render(Path(spec.input_path), spec.name, output_dir, spec.options, progress=progress,
                             should_cancel=should_cancel,
                             meta={"job_id": job.id, "source": spec.source, "user": spec.user,
                                   "worker": status["name"]},
                             photo_name=spec.original_name)
    fsync_dir(output_dir)  # the MP4 and sidecar renames are durable only once their folder is flushed
    return result


def _init_group(init: P.Init, device) -> None:
    import datetime

    import torch.distributed as dist

    # Followers wait in a broadcast between jobs, for as long as the queue stays empty.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=init.rank,
                            world_size=init.world_size, timeout=datetime.timedelta(days=365))


def serve(init: P.Init, ch: Channel) -> int:
    from ..config import config_from_dict
    from ..queue.journal import Journal
    from ..render import Renderer

    data = dict(init.config)
    split = init.world_size > 1
    local = "cpu" if init.device == "cpu" else (f"cuda:{init.rank}" if split else "cuda:0")
    data["model"] = {**data.get("model", {}), "device": local}
    # this process is one device: the list and mode were the daemon's business (Init carries them)
    data["gpus"] = {"split_engine": data.get("gpus", {}).get("split_engine", "ulysses")}
    if split:
        # collectives inside compiled blocks are not measured yet: split runs eager
        data["model"]["compile"] = False
    cfg = config_from_dict(data, f"worker {init.name}")
    status: dict[str, Any] = {"name": init.name, "state": "loading", "job": None}
    device_ref: list = []
    threading.Thread(target=_beat, args=(ch, status, device_ref), name="beat", daemon=True).start()
    from .supervisor import DEVICE_ENV

    ch.send(P.Event("state", state="loading", env={k: os.environ.get(k, "") for k in DEVICE_ENV}))
    factory = None
    if init.random_weights:
        from ..engine.random_weights import random_components as factory
    from ..engine.generator import TwoPassGenerator

    if local.startswith("cuda"):
        import torch

        if torch.cuda.device_count() <= (init.rank if split else 0):
            from ..errors import ModelError

            raise ModelError(f"{init.device} is not usable: its process sees no such CUDA device "
                             f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}, "
                             f"{torch.cuda.device_count()} visible); check nvidia-smi -L and [gpus] devices")
    renderer = Renderer(cfg, TwoPassGenerator(cfg.model, components_factory=factory))
    if split:
        import torch

        if local.startswith("cuda"):
            torch.cuda.set_device(torch.device(local))
        _init_group(init, torch.device(local))
    load_seconds = renderer.load()
    gen = renderer.generator
    device_ref.append(gen.device)
    leader = None
    if split:
        from ..errors import ModelError
        from .split import HIGH, LOW, Leader, follow, make_sequence_parallel, use_diffusers_context_parallel

        if gen.swaps or gen.memory_mode != "resident":
            raise ModelError(f"split mode needs both experts resident on every device, but memory mode "
                             f"'{gen.memory_mode}' was chosen; set [model] memory = \"resident\" or use per-device")
        experts = {HIGH: gen.components.transformer, LOW: gen.components.transformer_2}
        for model in experts.values():
            if cfg.gpus.split_engine == "diffusers":
                use_diffusers_context_parallel(model, init.world_size)
            else:
                make_sequence_parallel(model, init.rank, init.world_size)
        if init.rank > 0:
            # only rank 0 encodes the prompt and the photo and decodes: the others' cards keep
            # just the experts
            if gen.device.type == "cuda":
                import torch

                for key in ("text_encoder", "vae"):
                    mod = getattr(gen.components, key, None)
                    if isinstance(mod, torch.nn.Module):
                        mod.to("cpu")
                torch.cuda.empty_cache()
            status["state"] = "following"
            ch.send(P.Event("state", state="following", memory=memory(gen.device), load_seconds=load_seconds))
            calls = [0]

            def followed() -> None:  # the count shows in the status: proof the rank takes part
                calls[0] += 1
                ch.send(P.Event("state", state="following", step=calls[0]))

            follow(experts, gen.device, followed)
            return 0
        leader = Leader(experts, gen.device, init.world_size)

    journal = Journal(Path(cfg.paths.state).absolute() / "jobs.sqlite")
    status["state"] = "idle"
    ch.send(P.Event("state", state="idle", memory=memory(gen.device), load_seconds=load_seconds))
    try:
        while not ch.stopping.is_set():
            ch.wake.clear()
            try:
                job = journal.claim_next(owner=init.name)
            except sqlite3.OperationalError as exc:  # locked past the busy timeout (a long VACUUM)
                log.warning("could not claim from the journal (%s); trying again", exc)
                ch.wake.wait(POLL_SECONDS)
                continue
            if job is None:
                ch.wake.wait(POLL_SECONDS)
                continue
            status.update(state="busy", job=job.id)
            ch.send(P.Event("claimed", job=job.id, memory=memory(gen.device)))
            t0 = time.perf_counter()
            outcome = _render_job(cfg, renderer, job, ch, status, leader)
            log.info("job %s: %s in %.1f s", job.id, outcome.outcome, time.perf_counter() - t0)
            ch.cancelled.discard(job.id)
            status.update(state="idle", job=None)
            outcome.memory = memory(gen.device)
            ch.send(outcome)
    finally:
        if leader is not None:
            leader.stop()
        journal.close()
    return 0


def _setup_logging(name: str) -> None:
    """The daemon's format (cli.setup_logging), with the worker's name in each line."""
    from .. import logsafe

    under_systemd = "INVOCATION_ID" in os.environ or "JOURNAL_STREAM" in os.environ
    fmt = f"%(levelname)s [{name}] %(name)s: %(message)s"
    fmt = fmt if under_systemd else "%(asctime)s " + fmt
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=fmt, datefmt="%H:%M:%S")
    logsafe.install()
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logsafe.SafeFormatter(fmt, datefmt="%H:%M:%S"))
    for noisy in ("diffusers", "transformers", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main() -> int:
    from ..errors import Wan22Error

    # Ctrl-C in a terminal reaches the whole process group: the daemon handles it and checkpoints
    # this process's job through "stop"; the process itself must not die of it first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol owns the original stdout; anything else printing to fd 1 lands on stderr.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    init = P.decode_command(sys.stdin.readline())
    assert isinstance(init, P.Init), "the first line must be an init message"
    _setup_logging(init.name)
    ch = Channel(out)
    threading.Thread(target=ch.read_commands, args=(sys.stdin,), name="commands", daemon=True).start()
    try:
        return serve(init, ch)
    except Wan22Error as exc:  # a stated reason (a model that will not load, a device that is not there)
        log.error("worker %s cannot go on: %s", init.name, exc)
        ch.send(P.Event("fatal", error=str(exc)))
        return 3
    except Exception as exc:
        log.exception("worker %s cannot go on", init.name)
        ch.send(P.Event("fatal", error=f"{type(exc).__name__}: {exc}"))
        return 3


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)  # a render's stray non-daemon threads (encoder) must not hold the exit
