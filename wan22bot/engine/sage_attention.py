"""SageAttention as the experts' self-attention core.

`sageattn` dispatches by GPU: on Hopper (sm90) SageAttention 2.x runs its int8-QK / fp8-PV kernel
with fp32 accumulation, on RTX 50xx (sm120) the sm120 one; 1.x (the registry release) is Triton
only. Only 2.x is used by `auto`; 1.x still runs when asked for by name.
"""

from __future__ import annotations

import torch


def sage_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # q, k, v: (B, S, H, D) as the Wan processor hands them over ("NHD" in Sage's terms)
    from sageattention import sageattn  # type: ignore[import-not-found]

    return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)
