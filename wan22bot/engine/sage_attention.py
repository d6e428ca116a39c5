"""SageAttention as the experts' self-attention core.

`sageattn` dispatches by GPU: on Hopper (sm90) SageAttention 2.x runs its int8-QK / fp8-PV kernel
with fp32 accumulation, on RTX 50xx (sm120) the sm120 one; 1.x (the registry release) is Triton
only. Only 2.x is used by `auto`; 1.x still runs when asked for by name.

`sage-warp` (opt-in, not measured yet) is the same sm90 kernel with Q and K quantised per warp
(`qk_quant_gran="per_warp"`, one scale per 16 query rows, made by Sage's fused CUDA quantiser)
instead of `sageattn`'s per-thread choice (the Triton quantiser). On other GPUs it is `sageattn`
itself, with a log line saying so: sm120 already quantises per warp there, and sm80/sm89 have
their own kernels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


def sage_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # q, k, v: (B, S, H, D) as the Wan processor hands them over ("NHD" in Sage's terms)
    from sageattention import sageattn  # type: ignore[import-not-found]

    return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)


def pick_sage_warp(capability: tuple[int, int], sage) -> tuple[Callable, str]:
    """The call `sage-warp` makes on a GPU of `capability`, given the `sageattention` module:
    (fn(q, k, v) -> out, what it is)."""
    if capability == (9, 0):
        sm90 = getattr(sage, "sageattn_qk_int8_pv_fp8_cuda_sm90", None)
        if sm90 is None:  # older 2.x releases keep it out of the package namespace
            from importlib import import_module

            sm90 = getattr(import_module(f"{sage.__name__}.core"), "sageattn_qk_int8_pv_fp8_cuda_sm90")

        def warp(q, k, v):
            return sm90(q, k, v, tensor_layout="NHD", is_causal=False, qk_quant_gran="per_warp",
                        pv_accum_dtype="fp32+fp32")

        return warp, "sm90 kernel, Q/K quantised per warp"

    def plain(q, k, v):
        return sage.sageattn(q, k, v, tensor_layout="NHD", is_causal=False)

    return plain, f"sageattn (sm{capability[0]}{capability[1]} is not sm90, where per-warp is the choice made here)"


_WARP: dict[tuple[int, int], Callable] = {}


def sage_warp_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    cap = torch.cuda.get_device_capability(q.device)
    fn = _WARP.get(cap)
    if fn is None:
        import sageattention  # type: ignore[import-not-found]

        fn, what = pick_sage_warp(cap, sageattention)
        log.info("attention sage-warp: %s", what)
        _WARP[cap] = fn
    return fn(q, k, v)
