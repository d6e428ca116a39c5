"""Per-forward speed levers on one full-size A14B expert (random weights, timing only).

Builds one Wan 2.2 I2V expert at full size on the GPU, then for each frame count times one expert
forward (= one sampling step at CFG 1) for each variant, and checks each variant's output against
the stock diffusers bf16 forward on the same inputs (relative error ||out - ref|| / ||ref||).

Variants (each kept only if it runs here):
  stock           diffusers as shipped: default processor, SDPA (PyTorch picks the kernel)
  cudnn           SDPA forced to cuDNN
  flash           SDPA forced to flash
  sage            SageAttention (2.x when installed) as the self-attention core
  sagewarp        SageAttention 2's sm90 kernel with Q/K quantised per warp (`attention = "sage-warp"`;
                  sageattn itself on other GPUs)
  sagefused       the same kernel fed by our own quantisation inside the compiled blocks
                  (`attention = "sage-fused"`, Hopper only; Q/K scales as its default)
  sagefusedwarp   sagefused with per-warp Q/K scales
  sagefusedthread sagefused with per-thread Q/K scales
  fa3, fa3fp8     FlashAttention-3 bf16 / fp8 (per-head scales) as the core (Hopper)
  fp8attn         cuDNN FP8 attention as the core (Hopper)
  auto            whatever `attention = "auto"` picks here (self-check at load)
  compile         regional torch.compile of the 40 blocks
  fp8lin          fp8 linear layers, row-wise dynamic scales (torch._scaled_mm)
  fp8static       fp8 linear layers, per-tensor scales, input scale calibrated once (first call)
  fp8delayed      fp8 linear layers, per-tensor scales from the amax of earlier calls
  fastacc         with an fp8 variant: cuBLAS fast accumulation in the fp8 matmuls
  qkprep          with sagefused: Q/K norm, RoPE and int8 in our Triton kernels (`qk_prep = "triton"`)
  fusedblock      with fp8static: the blocks' fp8 matmul inputs made by our Triton kernels (residual
                  add + LayerNorm + modulation + fp8, GELU + fp8; `block_kernels = "triton"`)
  cdt             with compile: inductor's coordinate-descent tuning of the kernels it writes
                  (`compile_tuning = "coordinate-descent"`)
Variants combine with "+", e.g. fp8static+sage+compile. The static/delayed calibration call uses
other latents and another timestep than the timed inputs, so their error is not flattered.
Run: python -m wan22bot.bench.levers --frames 25,81 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import traceback

import torch

H, W = 1216, 832
# variant part -> fp8 linear scaling / attention backend (engine/attention.py's names)
FP8 = {"fp8lin": "rowwise", "fp8static": "static", "fp8delayed": "delayed"}
CORES = {"sage": "sage", "sagewarp": "sage-warp", "sagefused": "sage-fused", "fa3": "fa3", "fa3fp8": "fa3-fp8",
         "fp8attn": "fp8"}


def tokens(frames: int, h: int = H, w: int = W) -> int:
    return ((frames - 1) // 4 + 1) * (h // 16) * (w // 16)


def flops(frames: int) -> dict[str, float]:
    n = tokens(frames)
    d, layers, ffn, text = 5120, 40, 13824, 512
    linear = 2 * n * layers * (4 * d * d + 2 * d * ffn) + 2 * layers * (n * d * d * 2 + text * d * d * 2)
    attn = 4 * n * n * d * layers + 4 * n * text * d * layers
    return {"tokens": n, "linear_pflop": linear / 1e15, "attention_pflop": attn / 1e15}


def make_inputs(frames: int, device, seed: int = 0, timestep: float = 937.5):
    g = torch.Generator(device=device).manual_seed(seed)
    lat = torch.randn(1, 36, (frames - 1) // 4 + 1, H // 8, W // 8, generator=g, device=device).to(torch.bfloat16)
    ctx = (torch.randn(1, 512, 4096, generator=g, device=device) * 0.1).to(torch.bfloat16)
    t = torch.tensor([timestep], device=device)
    return lat, ctx, t


def forward(model, inputs):
    lat, ctx, t = inputs
    with torch.no_grad():
        return model(hidden_states=lat, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]


def time_forward(model, inputs, warmup: int, repeat: int) -> tuple[list[float], float, torch.Tensor]:
    first = None
    out = None
    for i in range(warmup):
        t0 = time.perf_counter()
        out = forward(model, inputs)
        torch.cuda.synchronize()
        if i == 0:
            first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        out = forward(model, inputs)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1000)
    return times, first or 0.0, out


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref.float()).norm() / ref.float().norm())


def set_stock(model) -> None:
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    from ..engine import fused_block

    model.reset_attention_backend() if hasattr(model, "reset_attention_backend") else None
    fused_block.uninstall(model)
    for blk in model.blocks:
        blk.attn1.set_processor(WanAttnProcessor())
        blk.attn2.set_processor(WanAttnProcessor())


def uncompile(model) -> None:
    for blk in model.blocks:
        blk._compiled_call_impl = None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="25,81")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--repeat-large", type=int, default=2, help="timed runs for frame counts >= 49")
    ap.add_argument("--variants", default="stock,auto,compile,auto+compile,fp8lin+compile,fp8lin+auto+compile,"
                                          "fp8static+auto+compile,fp8delayed+auto+compile,fp8static+fa3+compile,"
                                          "fp8lin+fa3fp8+compile,fp8lin+fp8attn+compile")
    ap.add_argument("--large-variants", default="stock,fp8lin+auto+compile,fp8static+auto+compile,"
                                                "fp8delayed+auto+compile,fp8static+fa3+compile",
                    help="variants also timed at frame counts >= 49 (the rest only at the smaller counts)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch._dynamo

    torch._dynamo.config.cache_size_limit = 64
    from ..engine.custom_attention import install_core
    from ..engine.fp8_linear import convert_to_fp8, restore_linears
    from ..engine.random_weights import random_expert

    dev = torch.device("cuda")
    frames_list = [int(f) for f in args.frames.split(",")]
    wanted = args.variants.split(",")
    large = set(args.large_variants.split(","))
    results = {
        "card": torch.cuda.get_device_name(dev),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "size": f"{W}x{H}",
        "note": "random weights, timing only; one expert forward = one sampling step at CFG 1",
        "flops": {f: flops(f) for f in frames_list},
        "rows": [],
    }
    try:
        import diffusers

        results["diffusers"] = diffusers.__version__
    except Exception:
        pass

    def save():
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)

    t0 = time.perf_counter()
    model = random_expert(dev, torch.bfloat16, seed=1)
    results["build_seconds"] = time.perf_counter() - t0
    print(f"built expert in {results['build_seconds']:.1f}s; {torch.cuda.memory_allocated() / 2**30:.1f} GiB", flush=True)
    refs: dict[int, torch.Tensor] = {}
    inputs = {f: make_inputs(f, dev) for f in frames_list}

    from ..engine.attention import choose_auto, core_for

    auto_choice = None
    bf16_state = None
    fp8_kind = None  # which fp8 conversion the model currently holds

    def to_fp8(kind: str | None) -> None:
        """Bring the model to bf16 (kind None) or to one fp8 scaling, from a saved bf16 copy."""
        nonlocal bf16_state, fp8_kind
        if kind == fp8_kind:
            return
        if bf16_state is None:
            bf16_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if fp8_kind is not None:
            restore_linears(model)
            model.load_state_dict(bf16_state, strict=True)
        if kind is not None:
            convert_to_fp8(model, scaling=kind)
        fp8_kind = kind
        gc.collect()
        torch.cuda.empty_cache()

    def configure(variant: str, frames: int) -> None:
        nonlocal auto_choice
        set_stock(model)
        uncompile(model)
        parts = variant.split("+")
        to_fp8(next((FP8[p] for p in parts if p in FP8), None))
        if "cudnn" in parts:
            model.set_attention_backend("_native_cudnn")
        if "flash" in parts:
            model.set_attention_backend("_native_flash")
        for p in parts:
            if p in CORES:
                install_core(model, core_for(CORES[p]))
        for m in model.modules():
            if hasattr(m, "fast_accum"):
                m.fast_accum = "fastacc" in parts
        if "sagefusedwarp" in parts or "sagefusedthread" in parts:
            from ..engine.sage_prequant import sage_fused_thread_core, sage_fused_warp_core

            install_core(model, sage_fused_warp_core if "sagefusedwarp" in parts else sage_fused_thread_core)
        if "qkprep" in parts:
            from ..engine import qk_prep

            qk_prep.install(model, per_thread=(False if "sagefusedwarp" in parts else
                                               True if "sagefusedthread" in parts else None))
        if "fusedblock" in parts:
            from ..engine import block_kernels, fused_block

            n = fused_block.install(model)
            results.setdefault("block_kernels_self_check", block_kernels.self_check(dev))
            print(f"fused block forward in {n} blocks; kernels' self-check error "
                  f"{results['block_kernels_self_check']:.4f}", flush=True)
        if "sagewarp" in parts and "sage_warp" not in results:
            import sageattention  # type: ignore[import-not-found]

            from ..engine.sage_attention import pick_sage_warp

            results["sage_warp"] = pick_sage_warp(torch.cuda.get_device_capability(dev), sageattention)[1]
            print(f"sagewarp runs: {results['sage_warp']}", flush=True)
        if "auto" in parts:
            auto_choice = auto_choice or choose_auto(dev)
            results["auto_choice"] = {"backend": auto_choice.backend, "self_check_error": auto_choice.self_check_error,
                                      "skipped": list(auto_choice.skipped)}
            print(f"auto picked {auto_choice.describe()}; skipped: {list(auto_choice.skipped)}", flush=True)
            if auto_choice.backend != "sdpa":
                install_core(model, core_for(auto_choice.backend))
        if "compile" in parts:
            from ..engine.compile_tuning import apply_compile_tuning

            apply_compile_tuning("coordinate-descent" if "cdt" in parts else "default")
            model.compile_repeated_blocks(fullgraph=True)
        if fp8_kind in ("static", "delayed"):
            for m in model.modules():
                if hasattr(m, "reset_calibration"):
                    m.reset_calibration()
            forward(model, make_inputs(frames, dev, seed=99, timestep=1000.0))  # calibrates every layer
            torch.cuda.synchronize()

    def run(variant: str) -> None:
        for f in frames_list:
            if f >= 49 and variant not in large:
                continue
            rep = args.repeat_large if f >= 49 else args.repeat
            try:
                configure(variant, f)
                times, first, out = time_forward(model, inputs[f], args.warmup, rep)
                if variant == "stock":
                    refs[f] = out.detach().clone()
                row = {"variant": variant, "frames": f, "tokens": tokens(f), "median_s": statistics.median(times),
                       "times_s": times, "first_call_s": first,
                       "rel_err_vs_stock_bf16": rel_err(out, refs[f]) if f in refs else None,
                       "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
                fl = results["flops"][f]
                row["pflop_per_s"] = (fl["linear_pflop"] + fl["attention_pflop"]) / row["median_s"]
                results["rows"].append(row)
                stock = next((r for r in results["rows"] if r["variant"] == "stock" and r["frames"] == f), None)
                ratio = stock["median_s"] / row["median_s"] if stock else float("nan")
                print(f"{variant:28s} {f:4d} frames  {row['median_s']:7.3f} s  x{ratio:5.2f} vs stock  "
                      f"err {row['rel_err_vs_stock_bf16']}  first {first:.1f}s", flush=True)
            except Exception as exc:
                results["rows"].append({"variant": variant, "frames": f, "error": f"{type(exc).__name__}: {exc}"})
                print(f"{variant:28s} {f:4d} frames  FAILED: {type(exc).__name__}: {exc}", flush=True)
                traceback.print_exc(limit=3)
            finally:
                del_out = None  # noqa: F841
                gc.collect()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            save()

    # bf16 variants first, then each fp8 scaling in turn (each conversion starts from the bf16 copy)
    order = sorted(wanted, key=lambda v: next((i + 1 for i, k in enumerate(FP8) if k in v.split("+")), 0))
    for v in order:
        run(v)
    save()
    print("\nvariant                      frames  median_s  x_vs_stock  rel_err")
    for r in results["rows"]:
        if "error" in r:
            print(f"{r['variant']:28s} {r['frames']:5d}  ERROR {r['error'][:60]}")
            continue
        stock = next((x for x in results["rows"] if x["variant"] == "stock" and x["frames"] == r["frames"]
                      and "error" not in x), None)
        ratio = stock["median_s"] / r["median_s"] if stock else float("nan")
        err = r["rel_err_vs_stock_bf16"]
        print(f"{r['variant']:28s} {r['frames']:5d}  {r['median_s']:8.3f}  {ratio:9.2f}  "
              f"{err if err is None else round(err, 4)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
