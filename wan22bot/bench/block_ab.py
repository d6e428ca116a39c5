"""The default path with and without one lever, alternated in one process, against stock.

A lever worth a percent or two of an 81-frame forward is as large as the drift of a GPU that
warms up over a run, so timing one variant after the other can hide it or invent it. Here one
full-size A14B expert (random weights, timing only) is first timed stock (diffusers' bf16 forward,
the reference of the error), then converted to the default path (bench/default_path.py:
`block_kernels` as ModelConfig's default), and for each frame count the forward with the lever
and without it are timed in turn, ABBA, `--rounds` times each; both graphs are compiled before the
timing. Levers (`--lever`):
  block_kernels  the fused block (engine/fused_block.py) against diffusers' block, left to
                 torch.compile
  kv_quant       K's int8 and V's fp8 steps by engine/kv_quant.py's kernels against torch code,
                 compiled
Run: python -m wan22bot.bench.block_ab --lever kv_quant --frames 81,25 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lever", choices=("block_kernels", "kv_quant"), default="block_kernels")
    ap.add_argument("--frames", default="81,25")
    ap.add_argument("--stock-repeat", default="81:2,25:3", help="timed stock forwards per frame count")
    ap.add_argument("--rounds", default="81:4,25:6", help="timed forwards of each variant per frame count")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from ..engine import fused_block
    from ..engine.random_weights import random_expert
    from .default_path import apply_default_path
    from .levers import forward, make_inputs, rel_err, set_stock, time_forward

    dev = torch.device("cuda")
    torch._dynamo.config.cache_size_limit = 64
    frames_list = [int(f) for f in args.frames.split(",")]
    stock_rep = {int(k): int(v) for k, v in (p.split(":") for p in args.stock_repeat.split(","))}
    rounds = {int(k): int(v) for k, v in (p.split(":") for p in args.rounds.split(","))}
    results = {"card": torch.cuda.get_device_name(dev), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "note": "random weights, timing only; one expert forward = one sampling step at CFG 1", "rows": []}

    def save():
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)

    model = random_expert(dev, torch.bfloat16, seed=1)
    set_stock(model)
    inputs = {f: make_inputs(f, dev) for f in frames_list}
    refs, stock = {}, {}
    for f in frames_list:
        times, _, out = time_forward(model, inputs[f], 1, stock_rep.get(f, 2))
        refs[f], stock[f] = out.detach().clone(), statistics.median(times)
        results["rows"].append({"variant": "stock", "frames": f, "times_s": times, "median_s": stock[f]})
        print(f"stock           {f:3d} frames {stock[f]:7.3f} s", flush=True)
        save()
    path = apply_default_path(model, dev)
    results["default_path"] = path
    print(f"default path: {path}", flush=True)
    results["lever"] = args.lever
    needed = "block_kernels" if args.lever == "block_kernels" else "qk_prep"
    if not path[needed].startswith("triton"):
        print(f"{needed} is not triton here; nothing to alternate", flush=True)
        save()
        return 1

    def use(on: bool) -> None:
        if args.lever == "block_kernels":
            (fused_block.install if on else fused_block.uninstall)(model)
            return
        from ..engine.qk_prep import TritonPrepSageProcessor

        procs = [m.processor for m in model.modules() if isinstance(getattr(m, "processor", None),
                                                                     TritonPrepSageProcessor)]
        assert procs, "no Triton-prepared sage-fused processor to switch"
        for p in procs:
            p.kv_kernels = on

    for f in frames_list:
        for m in model.modules():
            if hasattr(m, "reset_calibration"):
                m.reset_calibration()
        forward(model, make_inputs(f, dev, seed=99, timestep=1000.0))  # calibrates, as levers does
        times = {True: [], False: []}
        outs = {}
        for fused in (True, False):  # compile both graphs before timing
            use(fused)
            outs[fused] = forward(model, inputs[f])
        torch.cuda.synchronize()
        for r in range(rounds.get(f, 4)):
            for fused in ((True, False) if r % 2 == 0 else (False, True)):
                use(fused)
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                outs[fused] = forward(model, inputs[f])
                b.record()
                torch.cuda.synchronize()
                times[fused].append(a.elapsed_time(b) / 1000)
        for fused in (True, False):
            med = statistics.median(times[fused])
            row = {"variant": "default" if fused else f"default without {args.lever}", "frames": f,
                   "times_s": times[fused], "median_s": med, "x_vs_stock": stock[f] / med,
                   "rel_err_vs_stock_bf16": rel_err(outs[fused], refs[f])}
            results["rows"].append(row)
            print(f"{row['variant']:31s} {f:3d} frames {med:7.3f} s  x{row['x_vs_stock']:.4f}  "
                  f"err {row['rel_err_vs_stock_bf16']:.4f}  times {[round(t, 4) for t in times[fused]]}", flush=True)
        save()
    use(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
