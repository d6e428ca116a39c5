"""Where one expert forward's time goes, kernel by kernel (the default GPU path, random weights).

Builds one full-size A14B expert (random weights: timing only), applies the default path
(bench/default_path.py: fp8 linear layers, `auto` attention, the Triton Q/K prep where it applies,
regional torch.compile), calibrates and
warms it up, then records one forward under torch.profiler. Prints the kernels that took the most
GPU time and the total per kind of kernel (attention core, its input quantisation, matmuls, fused
elementwise, copies), so the gap between the measured step and the FLOP floor has names.
Run: python -m wan22bot.bench.profile --frames 81 --json out.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

# Kernel name patterns -> kind, tried in order (first match wins).
KINDS = (
    ("attention core (int8/fp8)", re.compile(r"qk_int8|sv_f8|attn_inst_buf|sageattn", re.I)),
    ("attention input quant", re.compile(r"quant|per_thread|per_warp|per_channel|transpose_pad|mean_scale|qkprep",
                                         re.I)),
    ("attention (cuDNN/flash/FA3)", re.compile(r"cudnn|flash|fmha|sdpa|attention", re.I)),
    ("fp8/bf16 matmul", re.compile(r"gemm|cutlass|xmma|scaled_mm|sm90_|nvjet|matmul", re.I)),
    ("fused elementwise (compiled)", re.compile(r"^triton_|triton", re.I)),
    ("copies and casts", re.compile(r"copy|cast|memcpy|memset|fill", re.I)),
)


CUPTI_MARKERS = {"Command Buffer Full", "Activity Buffer Request"}


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return "other"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--fp8-scaling", default=None, choices=("rowwise", "static", "delayed"),
                    help="default: the default path's ([model] fp8_scaling)")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from ..engine.random_weights import random_expert
    from .default_path import apply_default_path
    from .levers import flops, forward, make_inputs

    dev = torch.device("cuda")
    torch._dynamo.config.cache_size_limit = 64
    model = random_expert(dev, torch.bfloat16, seed=1)
    path = apply_default_path(model, dev, args.fp8_scaling, args.attention)
    inputs = make_inputs(args.frames, dev)
    if path["fp8_scaling"] != "rowwise":
        forward(model, make_inputs(args.frames, dev, seed=99, timestep=1000.0))  # calibration call
    forward(model, inputs)  # compiles
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    forward(model, inputs)
    torch.cuda.synchronize()
    plain = time.perf_counter() - t0

    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        forward(model, inputs)
        torch.cuda.synchronize()

    rows = []
    for ev in prof.key_averages():
        # kernels only: the CPU-side ops that launched them carry the same device time again, and
        # CUPTI's own markers ("Command Buffer Full") are waiting, not work
        if getattr(ev, "device_type", None) != torch.autograd.DeviceType.CUDA or ev.key in CUPTI_MARKERS:
            continue
        gpu_us = getattr(ev, "self_device_time_total", None)
        if gpu_us is None:
            gpu_us = getattr(ev, "self_cuda_time_total", 0)
        if gpu_us <= 0:
            continue
        rows.append({"name": ev.key, "gpu_s": gpu_us / 1e6, "calls": ev.count, "kind": kind_of(ev.key)})
    rows.sort(key=lambda r: r["gpu_s"], reverse=True)
    total = sum(r["gpu_s"] for r in rows)
    by_kind: dict[str, float] = {}
    for r in rows:
        by_kind[r["kind"]] = by_kind.get(r["kind"], 0.0) + r["gpu_s"]
    fl = flops(args.frames)

    print(f"{torch.cuda.get_device_name(dev)}; {args.frames} frames ({fl['tokens']} tokens); {path}")
    print(f"forward without the profiler: {plain:.3f} s; GPU kernel time under it: {total:.3f} s")
    print("\nper kind of kernel:")
    for kind, secs in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:32s} {secs:7.3f} s  {100 * secs / total:5.1f}%")
    print(f"\ntop {args.top} kernels:")
    for r in rows[:args.top]:
        print(f"  {r['gpu_s']:7.3f} s  {r['calls']:5d} calls  [{r['kind']}]  {r['name'][:110]}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"card": torch.cuda.get_device_name(dev), "torch": torch.__version__,
                       "date": time.strftime("%Y-%m-%d"), "frames": args.frames, "tokens": fl["tokens"],
                       **path,
                       "forward_s": plain, "kernel_total_s": total, "by_kind_s": by_kind,
                       "rows": rows[:200], "note": "random weights, timing only"}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
