"""Choosing the attention kernel per expert.

Diffusers routes Wan's attention through `dispatch_attention_fn`; `set_attention_backend` picks the
kernel. Our config names map onto diffusers' backend names; `auto` keeps PyTorch SDPA, which on
Hopper picks cuDNN (the fastest bf16 path measured there, see docs/PERFORMANCE.md).
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from ..errors import ModelError

log = logging.getLogger(__name__)

DIFFUSERS_NAMES = {
    "sdpa": "native",
    "cudnn": "_native_cudnn",
    "flash": "_native_flash",
    "efficient": "_native_efficient",
    "math": "_native_math",
}


def sage_version() -> str | None:
    if importlib.util.find_spec("sageattention") is None:
        return None
    try:
        from importlib.metadata import version

        return version("sageattention")
    except Exception:
        return "unknown"


def available_backends(device: torch.device) -> dict[str, str]:
    """Backend name -> why it is (or is not) usable here. Used by `wan22bot check`."""
    out = {"auto": "ok", "sdpa": "ok", "math": "ok"}
    cuda = device.type == "cuda"
    for name in ("cudnn", "flash", "efficient"):
        out[name] = "ok" if cuda else "needs a CUDA device"
    sv = sage_version()
    out["sage"] = (f"ok (sageattention {sv})" if cuda else "needs a CUDA device") if sv else "sageattention is not installed"
    from . import fp8_attention

    out["fp8"] = fp8_attention.availability(device)
    return out


def apply_attention_backend(model: torch.nn.Module, name: str, device: torch.device) -> str:
    """Set `name` on one expert; returns the backend actually used. Raises ModelError if unusable."""
    if name == "auto":
        return "sdpa"
    if name in DIFFUSERS_NAMES:
        if name != "sdpa" and name != "math" and device.type != "cuda":
            raise ModelError(f"attention backend '{name}' needs a CUDA device; use 'auto' or 'sdpa' on {device.type}")
        model.set_attention_backend(DIFFUSERS_NAMES[name])
        return name
    if name == "sage":
        from . import sage_attention

        sage_attention.install(model, device)
        return name
    if name == "fp8":
        from . import fp8_attention

        fp8_attention.install(model, device)
        return name
    raise ModelError(f"unknown attention backend '{name}'")
