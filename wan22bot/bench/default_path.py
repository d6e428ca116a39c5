"""The default GPU path applied to a bare expert, as `engine/generator.py` applies it at load.

For the benchmarks that build one expert with random weights instead of loading a pipeline
(`bench.coldstart`, `bench.profile`): fp8 linear layers with `[model] fp8_scaling` and
`fp8_fast_accum`, `auto` attention (or the one asked for), the `qk_prep` and `block_kernels` of ModelConfig's
defaults, and regional torch.compile of the blocks.
"""

from __future__ import annotations

import torch


def apply_default_path(model: torch.nn.Module, device: torch.device, fp8_scaling: str | None = None,
                       attention: str = "auto") -> dict[str, str]:
    """Convert, choose attention and compile `model` in place; returns what was chosen."""
    from ..config import ModelConfig
    from ..engine import fused_block, qk_prep
    from ..engine.attention import apply_attention_backend
    from ..engine.fp8_linear import convert_to_fp8

    cfg = ModelConfig()
    scaling = fp8_scaling or cfg.fp8_scaling
    convert_to_fp8(model, scaling=scaling, fast_accum=cfg.fp8_fast_accum)
    choice = apply_attention_backend(model, attention, device, compiled=True)
    prep, why = qk_prep.wanted(cfg.qk_prep, choice.backend, device)
    if prep:
        qk_prep.install(model, device=device)
    fused, fused_why = fused_block.wanted(cfg.block_kernels, model, device, scaling, "fp8")
    if fused:
        fused_block.install(model)
    model.compile_repeated_blocks(fullgraph=True)
    return {"attention": choice.describe(), "fp8_scaling": scaling, "fp8_fast_accum": str(cfg.fp8_fast_accum),
            "qk_prep": f"triton ({why})" if prep else f"compiled ({why})",
            "block_kernels": f"triton ({fused_why})" if fused else f"compiled ({fused_why})"}
