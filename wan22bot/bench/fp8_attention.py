"""Accuracy and speed self-check of the cuDNN FP8 attention (wan22bot.engine.fp8_attention), for a
Hopper GPU: error against bf16 SDPA, fp32 and the pure-torch emulation at one size, then the time of
the whole FP8 path, of the kernel alone and of bf16 cuDNN SDPA at each token count.

Run: python -m wan22bot.bench.fp8_attention --tokens 27664 82992   (JSON on stdout)
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from ..engine.fp8_attention import (
    _O_HEADROOM,
    E4M3_MAX,
    FP8,
    _amax,
    _graph_for,
    _graphs,
    _run_graph,
    _triton_scaled_cast,
    _triton_state,
    availability,
    descale_from_amax,
    emulated_fp8_sdpa,
    fp8_sdpa,
    quantize_with_descale,
    reference_sdpa,
    rel_error,
)

def _median_ms(fn, warmup: int, iters: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _cudnn_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def self_check(
    device: torch.device | str = "cuda",
    tokens: list[int] | tuple[int, ...] = (),
    heads: int = 40,
    head_dim: int = 128,
    accuracy_tokens: int = 4096,
    warmup: int = 3,
    iters: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy at `accuracy_tokens` and speed at each of `tokens`; returns a JSON-ready dict."""
    device = torch.device(device)
    result: dict[str, Any] = {"availability": availability(device)}
    if not result["availability"].startswith("ok"):
        return result
    result["device"] = torch.cuda.get_device_name(device)
    result["fused_casts"] = _triton_scaled_cast() is not None
    result["torch"] = torch.__version__
    gen = torch.Generator(device=device).manual_seed(seed)

    def rand(s: int) -> torch.Tensor:
        return torch.randn((1, s, heads, head_dim), generator=gen, device=device, dtype=torch.bfloat16)

    q, k, v = rand(accuracy_tokens), rand(accuracy_tokens), rand(accuracy_tokens)
    key = (device.index if device.index is not None else torch.cuda.current_device(), 1, accuracy_tokens, accuracy_tokens, heads, head_dim)
    out = fp8_sdpa(q, k, v)
    o8, descale_o, amax_o = fp8_sdpa(q, k, v, return_fp8=True)
    ref32 = reference_sdpa(q, k, v)
    ref_bf16 = _cudnn_sdpa(q, k, v)
    emu = emulated_fp8_sdpa(q, k, v)
    emu_no_o = emulated_fp8_sdpa(q, k, v, quantize_output=False)
    amax_v = float(_amax(v))
    o8f = o8.float()
    acc = {
        "shape": [1, accuracy_tokens, heads, head_dim],
        "rel_err_vs_bf16_sdpa": rel_error(out, ref_bf16),
        "rel_err_vs_fp32": rel_error(out, ref32),
        "rel_err_vs_emulation": rel_error(out, emu),
        "bf16_sdpa_rel_err_vs_fp32": rel_error(ref_bf16, ref32),
        "emulation_rel_err_vs_fp32": rel_error(emu, ref32),
        "emulation_without_output_rounding_rel_err_vs_fp32": rel_error(emu_no_o, ref32),
        "finite": bool(torch.isfinite(out).all()),
        "max_abs_out": float(out.abs().max()),
        "amax_v": amax_v,
        "cudnn_amax_o": float(amax_o),
        "true_amax_o": float(ref32.abs().max()),
        "max_abs_o_fp8_code": float(o8f.abs().max()),
        "o_fp8_codes_at_448": int((o8f.abs() >= E4M3_MAX).sum()),
        "o_fp8_nan": int(torch.isnan(o8f).sum()),
        "descale_o": float(descale_o),
        "graph_build_seconds": _graphs[key].build_seconds,
    }
    result["accuracy"] = acc
    del q, k, v, out, o8, o8f, ref32, ref_bf16, emu, emu_no_o
    torch.cuda.empty_cache()

    speed = []
    for s in tokens:
        q, k, v = rand(s), rand(s), rand(s)
        flops = 4.0 * s * s * head_dim * heads
        entry_key = (key[0], 1, s, s, heads, head_dim)
        t_build = time.perf_counter()
        fp8_sdpa(q, k, v)
        torch.cuda.synchronize(device)
        first_call_s = time.perf_counter() - t_build
        ms_fp8 = _median_ms(lambda: fp8_sdpa(q, k, v), warmup, iters, device)
        ms_fp8_eager = None
        if _triton_scaled_cast() is not None:  # the same with the eager (unfused) casts
            fused = _triton_state["kernel"]
            _triton_state["kernel"] = None
            try:
                ms_fp8_eager = _median_ms(lambda: fp8_sdpa(q, k, v), warmup, iters, device)
            finally:
                _triton_state["kernel"] = fused
        # The graph alone (inputs already quantised): the kernel's own speed.
        entry, state = _graph_for(1, s, s, heads, head_dim, device)
        dq = descale_from_amax(_amax(q)).reshape(1, 1, 1, 1)
        dk = descale_from_amax(_amax(k)).reshape(1, 1, 1, 1)
        dv = descale_from_amax(_amax(v)).reshape(1, 1, 1, 1)
        q8, k8, v8 = quantize_with_descale(q, dq), quantize_with_descale(k, dk), quantize_with_descale(v, dv)
        so = (dv * _O_HEADROOM).reciprocal()
        o8 = torch.empty((1, s, heads, head_dim), dtype=FP8, device=device)
        am = torch.empty((1, 1, 1, 1), dtype=torch.float32, device=device)
        ms_kernel = _median_ms(lambda: _run_graph(entry, state, q8, k8, v8, dq, dk, dv, so, o8, am), warmup, iters, device)
        ms_bf16 = _median_ms(lambda: _cudnn_sdpa(q, k, v), warmup, iters, device)
        speed.append(
            {
                "tokens": s,
                "graph_build_and_first_call_seconds": first_call_s,
                "graph_build_seconds": _graphs[entry_key].build_seconds,
                "fp8_sdpa_ms": ms_fp8,
                "fp8_sdpa_tflops": flops / ms_fp8 / 1e9,
                "fp8_sdpa_eager_casts_ms": ms_fp8_eager,
                "fp8_kernel_only_ms": ms_kernel,
                "fp8_kernel_only_tflops": flops / ms_kernel / 1e9,
                "bf16_cudnn_sdpa_ms": ms_bf16,
                "bf16_cudnn_sdpa_tflops": flops / ms_bf16 / 1e9,
                "speedup_fp8_sdpa_vs_bf16": ms_bf16 / ms_fp8,
            }
        )
        del q, k, v, q8, k8, v8, o8
        torch.cuda.empty_cache()
    result["speed"] = speed
    return result


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="FP8 attention self-check: accuracy and speed (needs a Hopper GPU).")
    parser.add_argument("--tokens", type=int, nargs="*", default=[], help="token counts to time (e.g. 27664 82992)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--heads", type=int, default=40)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--accuracy-tokens", type=int, default=4096)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args(argv)
    result = self_check(
        args.device, args.tokens, heads=args.heads, head_dim=args.head_dim, accuracy_tokens=args.accuracy_tokens, iters=args.iters
    )
    print(json.dumps(result, indent=2))
    return 0 if result["availability"].startswith("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
