"""sage-fused's Q/K preparation on its own: torch.compile's kernels against engine/qk_prep.py's.

At Wan's full size (40 heads x 128, 832x1216, `--frames` frames) on random data with channel
outliers, times (CUDA events, median of `--repeat`):
  compiled   torch.compile of RMSNorm -> interleaved RoPE -> quantize_q, and of the same for K
             with the smoothing mean and quantize_k (the work `qk_prep = "compiled"` leaves to
             torch.compile inside the blocks), with `sage-fused`'s scale granularity
             (sage_prequant.DEFAULT_PER_THREAD; `--per-thread` for the other)
  triton     q_int8 and k_roped + the compiled quantize_k, for each rows/warps choice
and reports, per choice, how many int8 values differ from the compiled path and by how much.
Run: python -m wan22bot.bench.qk_prep --frames 81 --json out.json
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
    ap.add_argument("--q-choices", default="16x4,32x4,32x8,64x8", help="rows x warps for the Q kernel")
    ap.add_argument("--k-choices", default="32x4,64x8,128x8", help="rows x warps for the K kernel")
    ap.add_argument("--per-thread", action="store_true", help="per-thread Q/K scales (default: sage-fused's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    from ..engine import qk_prep
    from ..engine.custom_attention import rotary
    from ..engine.sage_prequant import DEFAULT_PER_THREAD, quantize_k, quantize_q
    from .cuda_timer import HBM_BYTES_PER_S, median_seconds

    dev = torch.device("cuda")
    per_thread = args.per_thread or DEFAULT_PER_THREAD
    heads, d = 40, 128
    c = heads * d
    lat_f = (args.frames - 1) // 4 + 1
    cos, sin = WanRotaryPosEmbed(d, (1, 2, 2), 1024)(torch.zeros(1, 16, lat_f, 1216 // 8, 832 // 8))
    cos, sin = cos.to(dev), sin.to(dev)
    s = cos.shape[1]
    g = torch.Generator(device=dev).manual_seed(0)
    spread = 1 + 3 * torch.rand(c, generator=g, device=dev)
    xq = (torch.randn(1, s, c, generator=g, device=dev) * spread).to(torch.bfloat16)
    xk = (torch.randn(1, s, c, generator=g, device=dev) * spread + 0.5).to(torch.bfloat16)
    norm_q = torch.nn.RMSNorm(c, eps=1e-6).to(dev, torch.bfloat16)
    norm_k = torch.nn.RMSNorm(c, eps=1e-6).to(dev, torch.bfloat16)
    with torch.no_grad():
        norm_q.weight.copy_(1 + 0.3 * torch.randn(c, generator=g, device=dev))
        norm_k.weight.copy_(1 + 0.3 * torch.randn(c, generator=g, device=dev))

    @torch.compile(fullgraph=True)
    def compiled_q(x):
        return quantize_q(rotary(norm_q(x).unflatten(2, (heads, -1)), cos, sin), per_thread)

    @torch.compile(fullgraph=True)
    def compiled_k(x):
        return quantize_k(rotary(norm_k(x).unflatten(2, (heads, -1)), cos, sin), per_thread)

    @torch.compile(fullgraph=True)
    def k_tail(kr, km):
        return quantize_k(kr, per_thread, mean=km)

    def timed(fn):  # milliseconds
        return median_seconds(fn, args.repeat)[0] * 1e3

    result = {"card": torch.cuda.get_device_name(dev), "torch": torch.__version__, "frames": args.frames,
              "per_thread": per_thread,
              "tokens": s, "date": time.strftime("%Y-%m-%d"), "unit": "ms per call", "rows": []}
    try:
        import triton

        result["triton"] = triton.__version__
    except Exception:
        pass
    with torch.no_grad():
        ref_q8, ref_qs = compiled_q(xq)
        ref_k8, ref_ks, _ = compiled_k(xk)
    result["compiled_q_ms"] = timed(lambda: compiled_q(xq))
    result["compiled_k_ms"] = timed(lambda: compiled_k(xk))
    print(f"compiled: Q {result['compiled_q_ms']:.3f} ms, K {result['compiled_k_ms']:.3f} ms", flush=True)
    ideal = {"q": (2 * s * c * 2 + s * c) / HBM_BYTES_PER_S * 1e3, "k": (3 * s * c * 2 + s * c * 3) / HBM_BYTES_PER_S * 1e3}
    result["bytes_note"] = ("ideal_ms: the kernels' own traffic at 4.8 TB/s (the H200's peak): Q reads the "
                            "projection twice and writes int8; K reads twice, writes bf16, then the int8 step "
                            "reads it and writes int8")
    result["ideal_ms"] = ideal

    def diff(a8, b8):
        dd = (a8.int() - b8.int()).abs()
        return {"max": int(dd.max()), "fraction": float((dd > 0).float().mean())}

    for choice in args.q_choices.split(","):
        rows, warps = (int(v) for v in choice.split("x"))
        row = {"kernel": "q", "rows": rows, "warps": warps}
        try:
            with torch.no_grad():
                q8, qs = qk_prep.launch_q(xq, norm_q.weight, 1e-6, cos, sin, heads, per_thread, rows,
                                                 warps)
            row["int8_diff"] = diff(q8, ref_q8)
            row["scale_max_rel_diff"] = float(((qs - ref_qs).abs() / ref_qs).max())
            row["ms"] = timed(lambda r=rows, w=warps: qk_prep.launch_q(xq, norm_q.weight, 1e-6, cos, sin, heads,
                                                                         per_thread, r, w))
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    for choice in args.k_choices.split(","):
        rows, warps = (int(v) for v in choice.split("x"))
        row = {"kernel": "k", "rows": rows, "warps": warps}
        try:
            def run(r=rows, w=warps):
                kr, km = qk_prep.launch_k(xk, norm_k.weight, 1e-6, cos, sin, heads, r, w)
                return k_tail(kr, km)

            with torch.no_grad():
                k8, ks, _ = run()
            row["int8_diff"] = diff(k8, ref_k8)
            row["scale_max_rel_diff"] = float(((ks - ref_ks).abs() / ref_ks).max())
            row["ms"] = timed(run)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
