"""FP8 (e4m3) weight storage and FP8 matmuls for the experts' linear layers.

Weights are quantised once, per output row (scale = row amax / 448), after the LoRA is fused.
On a GPU with FP8 tensor cores (compute capability >= 8.9) each forward quantises the activation
per token the same way and runs `torch._scaled_mm` with row-wise scales, accumulating in fp32 and
writing bf16: about 1.6x the bf16 matmul rate on Hopper (docs/PERFORMANCE.md). Elsewhere (CPU,
older GPUs) the fp8 weight is dequantised per call: the memory saving stays, the speed-up does not.
Only the 40 transformer blocks are converted; embeddings, the time projection and the output head
stay bf16 (they are a rounding error of the FLOPs and the most sensitive to precision).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

E4M3_MAX = 448.0


def fp8_matmul_supported(device: torch.device) -> bool:
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    major, minor = torch.cuda.get_device_capability(device)
    return (major, minor) >= (8, 9)


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row e4m3 quantisation: returns (w_fp8 (N, K), scale (N, 1) fp32) with w ~ w_fp8 * scale."""
    amax = w.detach().abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / E4M3_MAX
    q = (w.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale


class FP8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, use_scaled_mm: bool | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_rows(linear.weight.data)
        self.register_buffer("weight_fp8", q)
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, N) as _scaled_mm wants
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.data.clone(), requires_grad=False)
        dev = linear.weight.device
        self.use_scaled_mm = fp8_matmul_supported(dev) if use_scaled_mm is None else use_scaled_mm
        self.compute_dtype = linear.weight.dtype

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.weight_fp8.float() * self.weight_scale.t()).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_scaled_mm:
            return F.linear(x, self.dequantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        amax = x2.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12)
        sa = amax / E4M3_MAX
        xq = (x2.float() / sa).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        out = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=sa, scale_b=self.weight_scale,
                               bias=None if self.bias is None else self.bias.to(x.dtype), out_dtype=x.dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, scaled_mm={self.use_scaled_mm}"


def convert_to_fp8(model: nn.Module, use_scaled_mm: bool | None = None) -> int:
    """Replace every nn.Linear inside `model.blocks` with an FP8Linear (frees the bf16 weights)."""
    n = 0
    for block in model.blocks:
        for name, mod in list(block.named_modules()):
            for child_name, child in list(mod.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(mod, child_name, FP8Linear(child, use_scaled_mm))
                    n += 1
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return n
