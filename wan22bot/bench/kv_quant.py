"""K's int8 step and V's fp8 step for `sage-fused` on their own: torch.compile's kernels against
engine/kv_quant.py's.

At Wan's full size (40 heads x 128, 832x1216, `--frames` frames) on random data, times (CUDA
events, median of `--repeat`):
  k   rotated bf16 K minus its mean -> int8, one scale per 128 rows of a head (per-warp sage-fused)
  v   V -> per-channel amax -> e4m3, transposed and token-permuted, padded to 128 tokens
for each choice of warps (K) and rows per program x rows per step x channels x warps of the
maxima kernel / warps of the cast kernel (V), with the defaults (kv_quant.K_WARPS, V_*) marked,
how many output values differ from the torch quantisers' (eager), and "ideal": the kernels' own memory
traffic at 4.8 TB/s (V read twice).
Run: python -m wan22bot.bench.kv_quant --frames 81 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--k-warps", default="4,8,2")
    ap.add_argument("--v-choices", default="128x8x1024x4/4,128x8x1024x4/8,256x16x512x4/4,128x16x1024x4/4,64x8x1024x4/4,128x8x512x4/4",
                    help="maxima kernel rows x step x channels x warps / cast kernel warps")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from ..engine import kv_quant as kq
    from ..engine.sage_prequant import quantize_k, quantize_v
    from .cuda_timer import HBM_BYTES_PER_S, median_seconds
    from .levers import tokens

    dev = torch.device("cuda")
    heads, d = 40, 128
    c = heads * d
    s = tokens(args.frames)
    g = torch.Generator(device=dev).manual_seed(0)
    spread = 1 + 3 * torch.rand(c, generator=g, device=dev)
    k = (torch.randn(1, s, c, generator=g, device=dev) * spread + 0.5).to(torch.bfloat16).unflatten(2, (heads, d))
    v = (torch.randn(1, s, c, generator=g, device=dev) * spread).to(torch.bfloat16)
    mean = k.mean(dim=1, keepdim=True)

    @torch.compile(fullgraph=True)
    def c_k(k, mean):
        return quantize_k(k, False, mean=mean)[:2]

    @torch.compile(fullgraph=True)
    def c_v(v):
        return quantize_v(v.unflatten(2, (heads, -1)))

    with torch.no_grad():
        want = {"k": quantize_k(k, False, mean=mean)[:2], "v": quantize_v(v.unflatten(2, (heads, -1)))}
    s_pad = -(-s // 128) * 128
    traffic = {"k": s * c * 2 + s_pad * c, "v": 2 * s * c * 2 + s_pad * c}
    results = {"card": torch.cuda.get_device_name(dev), "torch": torch.__version__, "triton": kq.triton.__version__,
               "date": time.strftime("%Y-%m-%d"), "frames": args.frames, "tokens": s, "channels": c,
               "ideal_ms": {key: b / HBM_BYTES_PER_S * 1e3 for key, b in traffic.items()},
               "defaults": {"k_warps": kq.K_WARPS,
                            "v": f"{kq.V_ROWS}x{kq.V_STEP}x{kq.V_CHUNK}x{kq.V_AMAX_WARPS}/{kq.V_WARPS}"},
               "rows": []}

    def differing(kind, got):
        """values (int8/fp8 outputs and scales together) that differ from eager torch's"""
        def raw(t):
            return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t

        return sum(int((raw(a) != raw(w)).sum()) for a, w in zip(got, want[kind], strict=True))

    def record(kind, variant, seconds, got):
        row = {"kernel": kind, "variant": variant, "ms": seconds * 1e3, "values_differing": differing(kind, got),
               "values": sum(w.numel() for w in want[kind])}
        results["rows"].append(row)
        print(f"{kind} {variant:32s} {row['ms']:7.3f} ms  (ideal {results['ideal_ms'][kind]:.3f})  "
              f"{row['values_differing']} of {row['values']} values differ from eager torch", flush=True)

    t, out = median_seconds(lambda: c_k(k, mean), args.repeat)
    record("k", "compiled", t, out)
    t, out = median_seconds(lambda: c_v(v), args.repeat)
    record("v", "compiled", t, out)
    for w in (int(x) for x in args.k_warps.split(",")):
        t, out = median_seconds(lambda: kq.launch_k(k, mean, w), args.repeat)
        record("k", f"triton {w} warps" + (" (default)" if w == kq.K_WARPS else ""), t, out)
    default_v = results["defaults"]["v"]
    for choice in args.v_choices.split(","):
        amax_part, warps = choice.split("/")
        rows, step, chunk, amax_warps = (int(x) for x in amax_part.split("x"))
        try:
            t, out = median_seconds(lambda: kq.launch_v(v, heads, rows, step, chunk, amax_warps, int(warps)),
                                    args.repeat)
        except Exception as exc:  # a choice that does not fit
            results["rows"].append({"kernel": "v", "variant": choice, "error": repr(exc)})
            print(f"v {choice}: {exc!r}", flush=True)
            continue
        record("v", f"triton {choice}" + (" (default)" if choice == default_v else ""), t, out)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
