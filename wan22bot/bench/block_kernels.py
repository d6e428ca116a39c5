"""The fp8 matmul inputs of one transformer block on their own: torch.compile's kernels against
engine/block_kernels.py's.

At Wan's full size (5120 channels, FFN 13824, 832x1216, `--frames` frames) on random data, times
(CUDA events, median of `--repeat`):
  norm1   LayerNorm -> adaLN modulation -> bf16 -> fp8 for q, k and v. compiled: three fp8
          copies, one per layer's own scale, as the stock graph writes them; triton: one copy
  norm2   x + a * gate -> LayerNorm (affine) -> bf16 -> fp8, and the new residual stream
  norm3   x + a -> LayerNorm -> modulation -> bf16 -> fp8, and the new residual stream
  gelu    tanh GELU -> bf16 -> fp8
for each choice of the norm kernel's rows per step x steps per program x warps (and prefetching)
and the GELU kernel's elements x warps per program (and division), with the default choices
(engine/block_kernels.py NORM_CHOICE, GELU_CHOICE) marked, and with the share of fp8 values that differ from eager
PyTorch and by how many e4m3 steps, and "ideal": the kernel's own memory traffic at 4.8 TB/s.
Run: python -m wan22bot.bench.block_kernels --frames 81 --json out.json
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
    ap.add_argument("--norm-choices", default="1x8x4,1x8x4p,1x16x4p,1x8x8,1x16x8,1x16x8p,1x8x2,1x8x2p,1x32x4p",
                    help="rows per step x steps per program x warps for the norm kernel, 'p': prefetching")
    ap.add_argument("--gelu-choices", default="1024x4,1024x4f,2048x8f,512x2f,4096x8f",
                    help="elements x warps for GELU, 'f': the approximate division")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from ..engine import block_kernels as bk
    from .cuda_timer import HBM_BYTES_PER_S, median_seconds
    from .levers import tokens

    dev = torch.device("cuda")
    c, ffn = 5120, 13824
    s = tokens(args.frames)
    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, device=dev) * scale

    x = (rnd(1, s, c) * (1 + 3 * torch.rand(c, generator=g, device=dev))).to(torch.bfloat16)
    a = rnd(1, s, c).to(torch.bfloat16)
    gate, m, sh = rnd(1, 1, c), 1 + rnd(1, 1, c, scale=0.2), rnd(1, 1, c, scale=0.2)
    w, bias = 1 + rnd(c, scale=0.2), rnd(c, scale=0.1)
    h = rnd(1, s, ffn, scale=2.0).to(torch.bfloat16)
    invs = [torch.tensor(448.0 / v, device=dev) for v in (5.0, 5.0, 5.0)]
    inv = invs[0]
    eps = 1e-6

    def ln(t):
        return torch.nn.functional.layer_norm(t.float(), (c,), eps=eps)

    @torch.compile(fullgraph=True)
    def c_norm1(x):
        y = (ln(x) * m + sh).to(torch.bfloat16)
        return [bk.quantize_static(y, i) for i in invs]

    @torch.compile(fullgraph=True)
    def c_norm2(x, a):
        new = (x.float() + a * gate).to(torch.bfloat16)
        y = torch.nn.functional.layer_norm(new.float(), (c,), w, bias, eps).to(torch.bfloat16)
        return new, bk.quantize_static(y, inv)

    @torch.compile(fullgraph=True)
    def c_norm3(x, a):
        new = x + a
        return new, bk.quantize_static((ln(new) * m + sh).to(torch.bfloat16), inv)

    @torch.compile(fullgraph=True)
    def c_gelu(h):
        return bk.eager_gelu(h, inv)

    def timed(fn):
        return median_seconds(fn, args.repeat)

    def steps_apart(got, want):
        def ordinal(t):
            b = t.view(torch.uint8).int()
            mag = b & 0x7F
            return torch.where(b & 0x80 != 0, -mag, mag)

        d = (ordinal(got) - ordinal(want)).abs()
        return {"differ_share": float((d > 0).float().mean()), "max_steps": int(d.max())}

    with torch.no_grad():
        want = {
            "norm1": bk.eager_residual_norm(x, None, None, m, sh, inv, eps)[1],
            "norm2": bk.quantize_static(torch.nn.functional.layer_norm(
                (x.float() + a * gate).to(torch.bfloat16).float(), (c,), w, bias, eps).to(torch.bfloat16), inv),
            "norm3": bk.eager_residual_norm(x, a, None, m, sh, inv, eps)[1],
            "gelu": bk.eager_gelu(h, inv),
        }
    row_bytes = {"norm1": s * c * (2 + 1), "norm2": s * c * (2 + 2 + 2 + 1), "norm3": s * c * (2 + 2 + 2 + 1),
                 "gelu": s * ffn * (2 + 1)}
    results = {"card": torch.cuda.get_device_name(dev), "torch": torch.__version__, "triton": bk.triton.__version__,
               "date": time.strftime("%Y-%m-%d"), "frames": args.frames, "tokens": s, "channels": c, "ffn": ffn,
               "ideal_ms": {k: v / HBM_BYTES_PER_S * 1e3 for k, v in row_bytes.items()}, "rows": []}

    def record(kernel, variant, seconds, got=None):
        row = {"kernel": kernel, "variant": variant, "ms": seconds * 1e3}
        if got is not None:
            row.update(steps_apart(got, want[kernel]))
        results["rows"].append(row)
        print(f"{kernel:6s} {variant:22s} {row['ms']:7.3f} ms  (ideal {results['ideal_ms'][kernel]:.3f})"
              + (f"  differ {row['differ_share']:.5f}, max {row['max_steps']} step" if got is not None else ""),
              flush=True)

    t, out = timed(lambda: c_norm1(x))
    record("norm1", "compiled (3 copies)", t, out[0])
    t, out = timed(lambda: c_norm2(x, a))
    record("norm2", "compiled", t, out[1])
    t, out = timed(lambda: c_norm3(x, a))
    record("norm3", "compiled", t, out[1])
    t, out = timed(lambda: c_gelu(h))
    record("gelu", "compiled", t, out)
    for choice in args.norm_choices.split(","):
        try:
            t, out = timed(lambda: bk.launch_norm(x, None, None, m, sh, inv, eps, choice))
            record("norm1", f"triton {choice}", t, out[1])
            t, out = timed(lambda: bk.launch_norm(x, a, gate, w, bias, inv, eps, choice))
            record("norm2", f"triton {choice}", t, out[1])
            t, out = timed(lambda: bk.launch_norm(x, a, None, m, sh, inv, eps, choice))
            record("norm3", f"triton {choice}", t, out[1])
        except Exception as exc:  # a choice that does not fit the registers, say
            results["rows"].append({"kernel": "norm", "variant": f"triton {choice}", "error": repr(exc)})
            print(f"norm   triton {choice}: {exc!r}", flush=True)
    for choice in args.gelu_choices.split(","):
        t, out = timed(lambda: bk.launch_gelu(h, inv, choice))
        record("gelu", f"triton {choice}", t, out)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
