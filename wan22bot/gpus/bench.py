"""Several devices, measured: `python -m wan22bot.gpus.bench` (benchmarks/multigpu.sh runs it).

per-device: throughput in videos per hour over `--jobs` jobs queued at once, after one warm-up job
per worker process (loads, compiles and caches are not what is compared). split: the same, plus
each pass's median seconds, to set beside a one-device run of the same settings.

Everything goes through the real path: the journal, the worker processes, the renderer, the MP4.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ..config import load_config
from ..jobs import FINAL_STATES, JobOptions, JobSpec, JobState
from ..queue import JobQueue
from .supervisor import WorkerPool

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "photo.jpg"


async def _run_batch(queue: JobQueue, photo: bytes, n: int, tag: str, opts: JobOptions, timeout: float) -> list:
    done: dict[str, object] = {}
    finished = asyncio.Event()

    def on_event(ev) -> None:
        if ev.kind in FINAL_STATES and ev.job.id in ids:
            done[ev.job.id] = ev.job
            if len(done) == n:
                finished.set()

    ids: set[str] = set()
    queue.add_listener(on_event)
    try:
        for i in range(n):
            job, _ = await queue.submit(JobSpec(source="cli", input_path="", original_name=f"{tag}{i}.jpg",
                                                name=f"{tag}{i}", options=opts), photo)
            ids.add(job.id)
        await asyncio.wait_for(finished.wait(), timeout)
    finally:
        queue.remove_listener(on_event)
    bad = [j for j in done.values() if j.state != JobState.done]  # type: ignore[attr-defined]
    if bad:
        raise SystemExit(f"{len(bad)} jobs did not finish: {bad[0].error}")  # type: ignore[attr-defined]
    return list(done.values())


async def bench(args: argparse.Namespace) -> dict:
    cfg = load_config(args.config) if args.config else load_config(None)
    if args.split_engine:
        cfg.gpus.split_engine = args.split_engine
    devices = args.devices.split(",")
    photo = Path(args.image or SAMPLE).read_bytes()
    opts = JobOptions(frames=args.frames, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg.paths.state = Path(tmp) / "state"
        cfg.paths.output = Path(tmp) / "out"
        if args.width:
            cfg.generation.width = args.width
        if args.height:
            cfg.generation.height = args.height
        queue = JobQueue(cfg.paths.state, cfg.paths.output, max_length=max(100, args.jobs * 2))
        await queue.start()
        pool = WorkerPool(cfg, queue, devices=devices, mode=args.mode, random_weights=args.random_weights)
        try:
            load = await pool.load()
            warm = len(pool.leaders)
            t0 = time.perf_counter()
            await _run_batch(queue, photo, warm, "warm", opts, args.timeout)
            warm_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            jobs = await _run_batch(queue, photo, args.jobs, "run", opts, args.timeout)
            wall = time.perf_counter() - t0
            if args.keep:  # the same seed's video, to compare split against one device
                shutil.copyfile(min(jobs, key=lambda j: j.seq).result.output, args.keep)  # type: ignore[attr-defined]
        finally:
            await pool.stop()
            await queue.close()
    timings = [j.result.timings for j in jobs]  # type: ignore[attr-defined]
    med = {k: round(statistics.median(t.get(k, 0.0) for t in timings), 3) for k in ("pass1", "pass2", "total")}
    steps = cfg.generation.steps or 4
    return {
        "mode": args.mode, "devices": devices,
        "split_engine": cfg.gpus.split_engine if args.mode == "split" else None, "jobs": args.jobs, "frames": args.frames,
        "width": cfg.generation.width, "height": cfg.generation.height,
        "weights": "random (timing only)" if args.random_weights else cfg.model.kind,
        "load_seconds": round(load, 1), "warmup_seconds": round(warm_s, 1), "wall_seconds": round(wall, 2),
        "videos_per_hour": round(args.jobs / wall * 3600, 2), "median": med,
        "per_pass_average": round((med["pass1"] + med["pass2"]) / steps, 3),
        "jobs_per_worker_incl_warmup": {s["name"]: s["jobs_done"] for s in pool.states()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wan22bot.gpus.bench", description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", help="config file (benchmarks/default.toml for the fast GPU path)")
    ap.add_argument("--devices", required=True, help="comma-separated: cuda:0,cuda:1 (or cpu,cpu)")
    ap.add_argument("--mode", choices=("per-device", "split"), default="per-device")
    ap.add_argument("--split-engine", choices=("ulysses", "diffusers"), help="split's exchange (default: the config's)")
    ap.add_argument("--jobs", type=int, default=8, help="timed jobs, queued at once (default 8)")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--width", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--image", help="photo (default: examples/photo.jpg)")
    ap.add_argument("--random-weights", action="store_true", help="the A14B architecture with random weights")
    ap.add_argument("--timeout", type=float, default=7200.0, help="seconds allowed for each batch")
    ap.add_argument("--out", help="write the result JSON here too")
    ap.add_argument("--keep", help="copy the first timed job's MP4 here (every job uses seed 1)")
    args = ap.parse_args(argv)
    result = asyncio.run(bench(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
