"""`sage-fused` against SageAttention's own path on one Hopper GPU: same kernel, our quantisation.

For each token count, on random (1, S, 40, 128) bf16 Q/K/V (K with a per-channel offset, Q with
channel outliers, as normalised projections have them):
- the quantised tensors against SageAttention's own quantisers (per-warp Q, smoothed per-block K,
  per-channel fp8 V): the share of equal elements, the largest difference, the scales' error;
- the attention output of `sage-fused` (per-thread scales; eager, and compiled with torch.compile),
  of its per-warp variant (compiled) and of `sage-warp`
  against fp32 attention, and the two against each other;
- the time per call of each (quantisation included).

Run: python -m wan22bot.bench.sage_fused --tokens 27664 82992 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F


def _inputs(s: int, device, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    d = 128
    q = torch.randn(1, s, 40, d, generator=g, device=device) * (1 + 4 * torch.rand(d, generator=g, device=device))
    k = torch.randn(1, s, 40, d, generator=g, device=device) + 3 * torch.randn(d, generator=g, device=device)
    v = torch.randn(1, s, 40, d, generator=g, device=device)
    return tuple(t.to(torch.bfloat16) for t in (q, k, v))


def _ms(fn, warmup=2, iters=5) -> float:
    from .cuda_timer import median_seconds

    return median_seconds(fn, iters, warmup)[0] * 1e3


def _rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _reference(q, k, v, chunk: int = 8192):
    """fp32 attention, in query chunks (the full fp32 score matrix would not fit)."""
    qt, kt, vt = (t.float().transpose(1, 2) for t in (q, k, v))
    return torch.cat([F.scaled_dot_product_attention(qt[:, :, i:i + chunk], kt, vt)
                      for i in range(0, qt.shape[2], chunk)], dim=2).transpose(1, 2)


def compare_quant(q, k, v, per_thread: bool) -> dict:
    from sageattention.quant import per_channel_fp8, per_warp_int8  # type: ignore[import-not-found]
    from sageattention.triton.quant_per_thread import per_thread_int8  # type: ignore[import-not-found]

    from ..engine.sage_prequant import quantize_k, quantize_q, quantize_v

    s = q.shape[1]
    km = k.mean(dim=1, keepdim=True)
    if per_thread:  # Sage's rule differs slightly: scale = amax / 127 + 1e-7, ties away from zero
        sq8, sqs, sk8, sks = per_thread_int8(q, k, km, tensor_layout="NHD", BLKQ=64, WARPQ=16, BLKK=128, WARPK=128)
    else:
        sq8, sqs, sk8, sks = per_warp_int8(q, k, km, tensor_layout="NHD", BLKQ=64, WARPQ=16, BLKK=128)
    pad = (-s) % 128
    vp = torch.cat([v, v.new_zeros(1, pad, *v.shape[2:])], 1) if pad else v
    sv8, svs, _ = per_channel_fp8(vp, tensor_layout="NHD", smooth_v=False)  # (B, D, H, S')
    q8, qs = quantize_q(q, per_thread)
    k8, ks, _ = quantize_k(k, per_thread)
    v8, vs = quantize_v(v)
    sv8 = sv8.permute(0, 2, 1, 3)  # -> (B, H, D, S') as ours

    def cmp(ours, theirs):
        a, b = ours.float(), theirs.float()
        return {"equal_share": float((a == b).float().mean()), "max_abs_diff": float((a - b).abs().max())}

    return {
        "q_int8": cmp(q8[:, :s], sq8), "q_scale_rel_err": _rel(qs[..., :sqs.shape[-1]], sqs),
        "k_int8": cmp(k8[:, :s], sk8), "k_scale_rel_err": _rel(ks, sks),
        "v_fp8": cmp(v8, sv8), "v_scale_rel_err": _rel(vs, svs),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[27664, 82992])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from ..engine.attention import core_for
    from ..engine.sage_prequant import sage_fused_warp_core

    dev = torch.device("cuda")
    fused = core_for("sage-fused")
    warp = core_for("sage-warp")
    compiled = torch.compile(fused, fullgraph=True)
    compiled_warp = torch.compile(sage_fused_warp_core, fullgraph=True)
    out = {"card": torch.cuda.get_device_name(dev), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
           "rows": []}
    for s in args.tokens:
        q, k, v = _inputs(s, dev)
        row = {"tokens": s, "quant_vs_sage": {"per_warp": compare_quant(q, k, v, False),
                                              "per_thread": compare_quant(q, k, v, True)}}
        ref = _reference(q, k, v)
        o_warp, o_fused = warp(q, k, v), fused(q, k, v)
        t0 = time.perf_counter()
        o_comp = compiled(q, k, v)
        torch.cuda.synchronize()
        row["compile_s"] = time.perf_counter() - t0
        o_cwarp = compiled_warp(q, k, v)
        row["err_vs_fp32"] = {"sage-warp": _rel(o_warp, ref), "sage-fused": _rel(o_fused, ref),
                              "sage-fused compiled": _rel(o_comp, ref),
                              "sage-fused per-warp compiled": _rel(o_cwarp, ref)}
        row["fused_vs_warp"] = _rel(o_fused, o_warp)
        row["compiled_vs_eager"] = _rel(o_comp, o_fused)
        del ref
        row["ms"] = {"sage-warp": _ms(lambda: warp(q, k, v)), "sage-fused eager": _ms(lambda: fused(q, k, v)),
                     "sage-fused compiled": _ms(lambda: compiled(q, k, v)),
                     "sage-fused per-warp compiled": _ms(lambda: compiled_warp(q, k, v))}
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
        del q, k, v, o_warp, o_fused, o_comp, o_cwarp
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
