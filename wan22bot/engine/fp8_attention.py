"""FP8 attention on Hopper (placeholder until the kernel lands; reports itself unavailable)."""

from __future__ import annotations

import torch

from ..errors import ModelError


def availability(device: torch.device) -> str:
    return "not built in this version"


def install(model: torch.nn.Module, device: torch.device) -> None:
    raise ModelError("attention backend 'fp8' is not available in this version; use 'auto'")
