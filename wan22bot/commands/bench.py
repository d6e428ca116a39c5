"""`wan22bot bench`: the seed's benchmark table, through the real photo -> MP4 path.

For each frame count: one warm-up video (compilation, cuDNN autotune), then `--repeat` timed
videos; the median of each stage is reported. `--random-weights` builds the full-size A14B
architecture with random weights on the GPU (every number then says "random weights, timing
only"); `--baseline` first times stock diffusers expert forwards (bf16, stock attention) on the
same latents in the same process, and prints our pass time against two stock forwards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ..config import Config, check_frames
from ..errors import ConfigError
from ..jobs import JobOptions
from ..render import Renderer

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "photo.jpg"


def _frames(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        try:
            n = int(part)
            check_frames(n)
        except ValueError as exc:
            raise ConfigError(f"--frames: {exc}") from None
        out.append(n)
    return out


def stock_pass_seconds(frames: list[int], width: int, height: int, repeat: int) -> dict[int, float]:
    """Two stock diffusers expert forwards (one pass of the fast preset), bf16, default attention."""
    from ..bench.levers import forward
    from ..engine.random_weights import random_expert

    dev = torch.device("cuda")
    model = random_expert(dev, torch.bfloat16, seed=1)
    out: dict[int, float] = {}
    for f in frames:
        g = torch.Generator(device=dev).manual_seed(0)
        lat = torch.randn(1, 36, (f - 1) // 4 + 1, height // 8, width // 8, generator=g, device=dev).to(torch.bfloat16)
        ctx = (torch.randn(1, 512, 4096, generator=g, device=dev) * 0.1).to(torch.bfloat16)
        t = torch.tensor([937.5], device=dev)
        forward(model, (lat, ctx, t))
        torch.cuda.synchronize()
        runs = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            forward(model, (lat, ctx, t))
            forward(model, (lat, ctx, t))
            torch.cuda.synchronize()
            runs.append(time.perf_counter() - t0)
        out[f] = statistics.median(runs)
        print(f"stock diffusers, {f} frames: {out[f]:.2f} s per pass (2 forwards)", flush=True)
    del model
    torch.cuda.empty_cache()
    return out


def chart_png(rows: list[dict], path: Path, title: str) -> None:
    """Stacked horizontal bars of each stage's seconds, one bar per frame count (Pillow only)."""
    from PIL import Image, ImageDraw

    stages = ["text_encode", "image_encode", "swap", "pass1", "pass2", "vae_decode", "interpolate", "encode"]
    colours = ["#8da0cb", "#a6d854", "#bbbbbb", "#e78ac3", "#fc8d62", "#66c2a5", "#ffd92f", "#b3b3b3"]
    W, bar_h, left, top = 900, 44, 110, 60
    Hh = top + len(rows) * (bar_h + 24) + 70
    img = Image.new("RGB", (W, Hh), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), title, fill="black")
    longest = max((sum(r["median"].get(s, 0.0) for s in stages) for r in rows), default=1.0) or 1.0
    scale = (W - left - 40) / longest
    for i, r in enumerate(rows):
        y = top + i * (bar_h + 24)
        d.text((10, y + bar_h // 2 - 6), f"{r['frames']} frames", fill="black")
        x = left
        for s, c in zip(stages, colours):
            w = r["median"].get(s, 0.0) * scale
            if w > 0:
                d.rectangle([x, y, x + w, y + bar_h], fill=c)
                x += w
        d.text((x + 6, y + bar_h // 2 - 6), f"{sum(r['median'].get(s, 0.0) for s in stages):.1f} s", fill="black")
    y = Hh - 50
    x = 10
    for s, c in zip(stages, colours):
        d.rectangle([x, y, x + 14, y + 14], fill=c)
        d.text((x + 18, y + 1), s, fill="black")
        x += 18 + 8 * len(s) + 16
    img.save(path)


def cmd_bench(cfg: Config, args: argparse.Namespace) -> int:
    frames = _frames(args.frames)
    g = cfg.generation
    if args.width:
        g.width = args.width
    if args.height:
        g.height = args.height
    factory = None
    label = ""
    if getattr(args, "random_weights", False):
        if not torch.cuda.is_available():
            raise ConfigError("--random-weights builds the 14B architecture and needs a CUDA GPU")
        from ..engine.random_weights import random_components

        factory = random_components
        label = " (random weights, timing only)"
    if getattr(args, "memory_cap_gib", None):
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(args.memory_cap_gib * 2**30 / total)
    baseline: dict[int, float] = {}
    if getattr(args, "baseline", False):
        if not torch.cuda.is_available():
            raise ConfigError("--baseline times stock diffusers on the GPU; no CUDA device here")
        baseline = stock_pass_seconds(frames, g.width or 832, g.height or 1216, max(1, args.repeat))
    from ..engine.generator import TwoPassGenerator

    renderer = Renderer(cfg, TwoPassGenerator(cfg.model, components_factory=factory))
    load_s = renderer.load()
    image = Path(args.image) if args.image else SAMPLE
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in frames:
            opts = JobOptions(frames=f, seed=1, interpolate=getattr(args, "interpolate", None))
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            warm = renderer.render(image, f"warm{f}", Path(tmp), opts)
            runs = [renderer.render(image, f"run{f}_{i}", Path(tmp), opts).timings for i in range(max(1, args.repeat))]
            med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}
            row = {"frames": f, "video_seconds": warm.frames / warm.fps, "fps": warm.fps, "warmup": warm.timings,
                   "runs": runs, "median": med,
                   "peak_gib": None, "stage_peak_gib": {}}
            encode = renderer.generator.last_encode
            if encode is not None:
                row["image_encode_report"] = encode.as_dict()  # which encoder layers the shortcut skipped
                row["image_encode_shortcut"] = encode.describe()
            timer = renderer.generator.last_timer
            if timer is not None and timer.peak_gib:
                # each stage resets the device's peak counter: the render's peak is the largest
                row["stage_peak_gib"] = dict(timer.peak_gib)
                row["peak_gib"] = max(timer.peak_gib.values())
            if f in baseline:
                row["stock_pass_s"] = baseline[f]
                row["speedup_pass1"] = baseline[f] / med["pass1"] if med["pass1"] else None
                row["speedup_pass2"] = baseline[f] / med["pass2"] if med["pass2"] else None
            rows.append(row)
    gen = renderer.generator
    head = (f"{'Frames':>6} {'Video s':>8} {'Total s':>8} {'Pass 1 s':>9} {'Pass 2 s':>9} {'Per-pass':>9}"
            + (f" {'Stock pass':>10} {'x':>6}" if baseline else ""))
    print(f"\nwan22bot bench{label}: {gen.components.description if gen.components else ''}")
    print(f"device {gen.device}" + (f" ({torch.cuda.get_device_name(gen.device)})" if gen.device.type == "cuda" else "")
          + f", weights {gen.weights} (fp8 scaling {cfg.model.fp8_scaling}), memory {gen.memory_mode}, compile "
          f"{gen.compile}, model load {load_s:.1f} s")
    for which, choice in gen.attention.items():
        print(f"attention, {which}-noise expert: {choice.describe()}"
              + (f"; skipped {', '.join(choice.skipped)}" if choice.skipped else ""))
    print(head)
    for r in rows:
        m = r["median"]
        line = (f"{r['frames']:>6} {r['video_seconds']:>8.2f} {m['total']:>8.2f} {m['pass1']:>9.2f} {m['pass2']:>9.2f} "
                f"{(m['pass1'] + m['pass2']) / 2:>9.2f}")
        if "stock_pass_s" in r:
            line += f" {r['stock_pass_s']:>10.2f} {r['speedup_pass1']:>6.2f}"
        print(line)
        if r.get("image_encode_shortcut"):
            print(f"       image encode {m['image_encode']:.2f} s: {r['image_encode_shortcut']}")
        if r.get("stage_peak_gib"):
            print("       peak GiB by stage: " + ", ".join(f"{k} {v:.2f}" for k, v in r["stage_peak_gib"].items()))
    result = {
        "label": label.strip(" ()") or "model weights",
        "device": str(gen.device),
        "card": torch.cuda.get_device_name(gen.device) if gen.device.type == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "model": gen.components.description if gen.components else cfg.model.kind,
        "settings": {"weights": gen.weights, "fp8_scaling": cfg.model.fp8_scaling,
                     "fp8_fast_accum": cfg.model.fp8_fast_accum, "compile_tuning": cfg.model.compile_tuning,
                     "memory": gen.memory_mode,
                     "attention_high": cfg.model.attention_high, "attention_low": cfg.model.attention_low,
                     "attention_chosen": {k: {"backend": c.backend, "self_check_error": c.self_check_error}
                                          for k, c in gen.attention.items()},
                     "compile": gen.compile, "fast_image_encode": cfg.model.fast_image_encode,
                     "vae_channels_last": cfg.model.vae_channels_last,
                     "vae_cudnn_benchmark": cfg.model.vae_cudnn_benchmark, "vae_compile": cfg.model.vae_compile,
                     "vae_fast_decode": cfg.model.vae_fast_decode,
                     "width": g.width, "height": g.height},
        "model_load_s": load_s,
        "rows": rows,
    }
    out_json = Path(args.json) if args.json else Path("bench.json")
    out_json.write_text(json.dumps(result, indent=1))
    chart = out_json.with_suffix(".png")
    chart_png(rows, chart, f"wan22bot bench{label}: seconds per stage")
    print(f"\nWrote {out_json} and {chart}")
    return 0
