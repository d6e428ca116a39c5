"""SageAttention (int8 QK) for the experts, from the `sageattention` package when installed.

Diffusers accepts only sageattention >= 2.1.1 through its dispatcher; the release on the package
registry is 1.0.6 (Triton kernels), which the seed's users run. For 1.x we swap the attention
processor's core call for `sageattn` ourselves.
"""

from __future__ import annotations

import torch

from ..errors import ModelError
from .attention import sage_version


def install(model: torch.nn.Module, device: torch.device) -> None:
    v = sage_version()
    if v is None:
        raise ModelError("attention backend 'sage' needs the sageattention package (pip install sageattention)")
    if device.type != "cuda":
        raise ModelError("attention backend 'sage' needs a CUDA device")
    major = int(v.split(".")[0]) if v[0].isdigit() else 0
    if major >= 2:
        model.set_attention_backend("sage")
        return
    from .custom_attention import install_core, opaque_core

    from sageattention import sageattn  # type: ignore[import-not-found]

    def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q, k, v: (B, S, H, D) as diffusers' Wan processor hands them over.
        return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)

    install_core(model, opaque_core("sage_sdpa", core))
