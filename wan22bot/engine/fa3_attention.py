"""FlashAttention-3 (Hopper) as the experts' self-attention core, from the forward-only FA3 build.

`pip install 'wan22bot[hopper]'` installs it (module `fa3_fwd_interface`). bf16 FA3 is exact to
bf16 rounding; the fp8 variant quantises q, k and v per head to e4m3 and is opt-in: its error is
outside the accuracy guard (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import torch

E4M3_MAX = 448.0


def _call(q, k, v, **kw) -> torch.Tensor:
    from fa3_fwd_interface import flash_attn_func  # type: ignore[import-not-found]

    out = flash_attn_func(q, k, v, causal=False, **kw)
    return out[0] if isinstance(out, tuple) else out


def fa3_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _call(q, k, v)


def quantize_per_head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, H, D) -> e4m3 values and (B, H) fp32 descales, one scale per batch entry and head."""
    amax = x.abs().amax(dim=(1, 3)).float().clamp(min=1e-6)
    scale = amax / E4M3_MAX
    q8 = (x.float() / scale[:, None, :, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q8, scale


def fa3_fp8_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Subtracting K's mean over the sequence leaves softmax unchanged (a per-query constant) and
    # shrinks K's range, which is what fp8's 3 mantissa bits need most.
    k = k - k.mean(dim=1, keepdim=True)
    q8, qs = quantize_per_head(q)
    k8, ks = quantize_per_head(k)
    v8, vs = quantize_per_head(v)
    return _call(q8, k8, v8, q_descale=qs, k_descale=ks, v_descale=vs).to(q.dtype)
