"""Timing RIFE frame doubling the way the pipeline uses it.

``bench_rife`` starts from a ``uint8`` ``(frames, H, W, 3)`` tensor already on the device (as the
VAE decode leaves it) and stops at the ``uint8`` ``(2*frames-1, H, W, 3)`` tensor the video encoder
takes, synchronising the device around each run. It reports the median of ``runs`` timed runs after
``warmup`` untimed ones, peak device memory, and how far the chosen dtype's middle frames are from
float32's (PSNR on the uint8 frames, over the first ``check_pairs`` pairs).

With ``weights=None`` the network has random (seeded) weights: fine for timing, whose cost does not
depend on the values, but the PSNR check is only meaningful with real weights.

    python -m wan22bot.interpolate.bench --device cuda --frames 81 --height 1216 --width 832 \
        --dtype fp16 --batch 8 [--weights weights/rife/flownet.pkl] [--channels-last]

prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .ifnet import IFNet
from .sequence import Interpolator
from .weights import load_ifnet, resolve_dtype

TARGET_S = 2.0  # 81 -> 161 frames at 832x1216 on one H100


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_clip(frames: int, height: int, width: int, device: torch.device, seed: int = 0, step: int = 3) -> torch.Tensor:
    """A deterministic textured clip panning ``step`` px per frame, uint8 ``(frames, H, W, 3)``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    span = width + step * frames
    canvas = torch.zeros(1, 3, height, span)
    for cells, weight in ((8, 0.5), (32, 0.3), (128, 0.2)):
        coarse = torch.rand(1, 3, max(2, height * cells // 1024 + 2), max(2, span * cells // 1024 + 2), generator=gen)
        canvas += weight * F.interpolate(coarse, size=(height, span), mode="bicubic", align_corners=False)
    canvas = canvas.clamp(0, 1).mul(255).round().to(torch.uint8)[0].permute(1, 2, 0)  # (H, span, 3)
    clip = torch.stack([canvas[:, i * step : i * step + width] for i in range(frames)])
    return clip.contiguous().to(device)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float | None:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return None if mse == 0 else round(10 * math.log10(255.0**2 / mse), 2)


def bench_rife(
    device: str = "cuda",
    frames: int = 81,
    height: int = 1216,
    width: int = 832,
    dtype: str = "fp16",
    batch: int = 8,
    weights: str | Path | None = None,
    *,
    runs: int = 5,
    warmup: int = 2,
    check_pairs: int = 8,
    channels_last: bool = False,
    seed: int = 0,
) -> dict:
    """Time ``frames`` -> ``2*frames-1`` at ``height`` x ``width``; returns a JSON-ready dict."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("bench_rife: CUDA requested but not available")
    torch_dtype = resolve_dtype(dtype, dev)
    if weights is None:
        torch.manual_seed(seed)
        base = IFNet().eval().requires_grad_(False)
    else:
        base = load_ifnet(weights, "cpu", torch.float32)
    reference_state = {k: v.clone() for k, v in base.state_dict().items()}

    t0 = time.perf_counter()
    interp = Interpolator.from_model(base, device=dev, dtype=torch_dtype, batch=batch, channels_last=channels_last)
    _sync(dev)
    load_s = time.perf_counter() - t0

    clip = synthetic_clip(frames, height, width, dev, seed=seed)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(max(0, warmup)):
        interp.double(clip)
    _sync(dev)
    times = []
    out = None
    for _ in range(max(1, runs)):
        _sync(dev)
        t0 = time.perf_counter()
        out = interp.double(clip)
        _sync(dev)
        times.append(time.perf_counter() - t0)
    assert out is not None and out.shape == (2 * frames - 1, height, width, 3) and out.dtype == torch.uint8
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None

    psnr = None
    pairs = min(check_pairs, frames - 1)
    if torch_dtype != torch.float32 and pairs > 0:
        ref_net = IFNet()
        ref_net.load_state_dict(reference_state)
        ref = Interpolator.from_model(ref_net, device=dev, dtype=torch.float32, batch=batch).double(clip[: pairs + 1])
        psnr = _psnr(out[1 : 2 * pairs : 2], ref[1::2])
    passthrough_exact = bool(torch.equal(out[0::2], clip))

    median = statistics.median(times)
    result = {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": str(torch_dtype).removeprefix("torch."),
        "batch": batch,
        "channels_last": channels_last,
        "weights": str(weights) if weights is not None else "random",
        "frames_in": frames,
        "frames_out": 2 * frames - 1,
        "height": height,
        "width": width,
        "load_s": round(load_s, 4),
        "times_s": [round(t, 4) for t in times],
        "median_s": round(median, 4),
        "middle_frames_per_s": round((frames - 1) / median, 1) if median > 0 else None,
        "peak_mem_gib": round(peak, 3) if peak is not None else None,
        "psnr_vs_fp32_db": psnr,  # None: fp32 itself, or bit-identical
        "passthrough_exact": passthrough_exact,
        "target_s": TARGET_S,
        "meets_target": median <= TARGET_S,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wan22bot.interpolate.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--height", type=int, default=1216)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--dtype", default="fp16", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--weights", type=Path, default=None, help="flownet.pkl (default: random weights, timing only)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--check-pairs", type=int, default=8)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--cudnn-benchmark", action="store_true", help="set torch.backends.cudnn.benchmark")
    a = p.parse_args(argv)
    if a.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    res = bench_rife(
        a.device, a.frames, a.height, a.width, a.dtype, a.batch, a.weights,
        runs=a.runs, warmup=a.warmup, check_pairs=a.check_pairs, channels_last=a.channels_last,
    )  # fmt: skip
    res["cudnn_benchmark"] = bool(a.cudnn_benchmark)
    json.dump(res, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
