"""The first compiled call, cold and with a warm compile cache (one process per measurement).

Builds one full-size A14B expert with random weights (timing only), applies the default GPU path
(fp8 linear layers, `auto` attention, regional torch.compile) and times the first forward (which
compiles) and the second. Run it twice with the same `--cache`: the first run fills the cache
(and keeps the static fp8 scales it calibrated there, as the generator does), the second shows what
a daemon restart pays. The calibrating call runs uncompiled, as in the generator
(`--compiled-calibration`: compiled, as before round 7).
Run: python -m wan22bot.bench.coldstart --cache DIR --frames 25 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, type=Path, help="compile cache folder (kept between runs)")
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--fp8-scaling", default=None, help="default: the default path's ([model] fp8_scaling)")
    ap.add_argument("--no-kept-scales", action="store_true",
                    help="neither take back nor keep static fp8 scales in the cache (calibrate every run)")
    ap.add_argument("--compiled-calibration", action="store_true",
                    help="compile the calibrating call too (before round 7 the generator did; it now runs it eagerly)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from ..engine.compile_cache import use_compile_cache

    cache = use_compile_cache(args.cache)
    before = sum(1 for p in cache.rglob("*") if p.is_file())

    import torch

    from ..engine.random_weights import random_expert
    from .default_path import apply_default_path
    from .levers import forward, make_inputs

    dev = torch.device("cuda")
    torch._dynamo.config.cache_size_limit = 64
    model = random_expert(dev, torch.bfloat16, seed=1)
    path = apply_default_path(model, dev, args.fp8_scaling)
    inputs = make_inputs(args.frames, dev)
    calibration = None
    # static scales kept by an earlier process on this cache (`[model] keep_fp8_scales`), as the
    # generator takes them back at load
    from ..engine import fp8_scales

    scales_dir = cache / "fp8-scales"
    skey = fp8_scales.fingerprint(model, f"bench.coldstart {path}")
    restored = fp8_scales.restore(model, scales_dir, skey) if skey and not args.no_kept_scales else 0
    if path["fp8_scaling"] != "rowwise" and not restored:
        # static/delayed scales: the first call calibrates (and compiles its own graph), as a render's
        # first pass does; timed on its own so the cold start of the default path is complete
        from ..engine.fp8_linear import eager_while_calibrating

        t0 = time.perf_counter()
        with eager_while_calibrating(model, compiled=not args.compiled_calibration):
            forward(model, make_inputs(args.frames, dev, seed=99, timestep=1000.0))
        torch.cuda.synchronize()
        calibration = time.perf_counter() - t0
        if skey and not args.no_kept_scales:
            fp8_scales.save(model, scales_dir, skey)
    t0 = time.perf_counter()
    forward(model, inputs)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    forward(model, inputs)
    torch.cuda.synchronize()
    second = time.perf_counter() - t0
    result = {"card": torch.cuda.get_device_name(dev), "frames": args.frames, **path,
              "cache_files_before": before,
              "cache_files_after": sum(1 for p in cache.rglob("*") if p.is_file()),
              "fp8_scales_taken_back": restored,
              "calibration": None if calibration is None else
              ("compiled" if args.compiled_calibration else "eager"),
              "calibration_call_s": calibration, "first_call_s": first, "second_call_s": second,
              "cold_total_s": first + (calibration or 0.0),
              "note": "random weights, timing only; first_call_s leaves out the calibration call (static/delayed), "
                      "cold_total_s counts both"}
    print(json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
