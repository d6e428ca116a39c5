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

import contextlib

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


SCALINGS = ("rowwise", "static", "delayed")
# Rows quantised at a time outside torch.compile: the fp32 temporaries of one chunk stay small
# (a whole 81-frame FFN activation in fp32 is 4.6 GB, which a 32 GB card cannot spare).
EAGER_CHUNK_ROWS = 16384
AMAX_HISTORY = 16


def quantize_static(x: torch.Tensor, inv_scale: torch.Tensor) -> torch.Tensor:
    """An activation to e4m3 with a per-tensor scale given as its reciprocal: clamp(x / scale).
    What static and delayed scaling do before each matmul; engine/block_kernels.py's kernels
    compute the same."""
    return (x.float() * inv_scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def quantize_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor e4m3 quantisation: (w_fp8, 0-dim fp32 scale) with w ~ w_fp8 * scale."""
    scale = (w.detach().abs().amax().float().clamp(min=1e-12) / E4M3_MAX)
    q = (w.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale


class FP8Linear(nn.Module):
    """A Linear whose weight is stored in e4m3.

    scaling:
    - "rowwise": weight per output row, activation per token, computed on every call (default;
      the most accurate);
    - "static": weight per tensor, activation per tensor with the scale calibrated once, on the
      layer's first call, then frozen (what ComfyUI's --fast does with a fixed input scale); the
      cheapest: quantising is one fused multiply-and-cast, no reduction over the activation;
    - "delayed": like static, but the scale follows the largest activation of the last
      AMAX_HISTORY calls (the reduction no longer gates the cast, so it fuses into it).
    Values beyond a frozen scale are clamped to e4m3's range.
    """

    def __init__(self, linear: nn.Linear, use_scaled_mm: bool | None = None, scaling: str = "rowwise"):
        super().__init__()
        if scaling not in SCALINGS:
            raise ValueError(f"fp8 scaling must be one of {SCALINGS}, not {scaling!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.scaling = scaling
        if scaling == "rowwise":
            q, scale = quantize_rows(linear.weight.data)
            scale = scale.t().contiguous()  # (1, N) as _scaled_mm wants
        else:
            q, scale = quantize_tensor(linear.weight.data)
        self.register_buffer("weight_fp8", q)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("amax_history", torch.zeros(AMAX_HISTORY, device=q.device))
        self.calibrated = False  # a Python flag: torch.compile specialises on it (one recompile)
        # State written while running: a PinnedSwap copies these back when the layer leaves the GPU.
        self.mutable_buffers = ("amax_history",)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.data.clone(), requires_grad=False)
        dev = linear.weight.device
        self.use_scaled_mm = fp8_matmul_supported(dev) if use_scaled_mm is None else use_scaled_mm
        self.compute_dtype = linear.weight.dtype
        # cuBLAS's fp8 "fast accumulation" (no periodic promotion of the partial sums to full fp32):
        # `[model] fp8_fast_accum`, set by convert_to_fp8
        self.fast_accum = False

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        scale = self.weight_scale.t() if self.scaling == "rowwise" else self.weight_scale
        return (self.weight_fp8.float() * scale).to(dtype)

    def reset_calibration(self) -> None:
        self.amax_history.zero_()
        self.calibrated = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_scaled_mm:
            return F.linear(x, self.dequantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.scaling == "rowwise":
            out = self._rowwise(x2, bias)
        else:
            out = self._per_tensor(x2, bias)
        return out.reshape(*shape[:-1], self.out_features)

    def _rowwise_rows(self, x2: torch.Tensor, bias) -> torch.Tensor:
        amax = x2.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12)
        sa = amax / E4M3_MAX
        xq = (x2.float() / sa).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        return self._mm(xq, sa, bias, x2.dtype)

    def _rowwise(self, x2: torch.Tensor, bias) -> torch.Tensor:
        rows = x2.shape[0]
        if torch.compiler.is_compiling() or rows <= EAGER_CHUNK_ROWS:
            return self._rowwise_rows(x2, bias)
        # Row-wise scales make rows independent, so chunking gives the same numbers.
        out = torch.empty(rows, self.out_features, dtype=x2.dtype, device=x2.device)
        for i in range(0, rows, EAGER_CHUNK_ROWS):
            out[i:i + EAGER_CHUNK_ROWS] = self._rowwise_rows(x2[i:i + EAGER_CHUNK_ROWS], bias)
        return out

    def _per_tensor(self, x2: torch.Tensor, bias) -> torch.Tensor:
        if not self.calibrated:
            amax = x2.abs().amax().float().clamp(min=1e-12)
            self.amax_history.copy_(amax.expand_as(self.amax_history))
            self.calibrated = True
        elif self.scaling == "delayed":
            scale_from = self.amax_history.amax()
            self.amax_history.copy_(torch.roll(self.amax_history, 1))
            self.amax_history[0] = x2.abs().amax().float()
            return self._per_tensor_mm(x2, scale_from / E4M3_MAX, bias)
        return self._per_tensor_mm(x2, self.amax_history[0] / E4M3_MAX, bias)

    def _per_tensor_mm(self, x2: torch.Tensor, sa: torch.Tensor, bias) -> torch.Tensor:
        rows = x2.shape[0]
        step = rows if torch.compiler.is_compiling() else EAGER_CHUNK_ROWS
        out = None
        for i in range(0, rows, step):
            part = self._mm(quantize_static(x2[i:i + step], 1.0 / sa), sa, bias, x2.dtype)
            if step >= rows:
                return part
            if out is None:
                out = torch.empty(rows, self.out_features, dtype=x2.dtype, device=x2.device)
            out[i:i + step] = part
        return out

    def static_input_scale_ready(self) -> bool:
        """Whether the input scale is frozen and the matmul runs in fp8: then a caller may hand
        `forward_quantized` an input it quantised itself with `input_scale()`."""
        return self.use_scaled_mm and self.scaling == "static" and self.calibrated

    def input_scale(self) -> torch.Tensor:
        """The frozen per-tensor input scale (0-dim fp32) of static scaling: x ~ x_e4m3 * scale."""
        return self.amax_history[0] / E4M3_MAX

    def forward_quantized(self, xq: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """The layer on an e4m3 input (..., in) quantised with the per-tensor `scale`, as this layer
        would quantise it: clamp(x / scale) to e4m3 (engine/block_kernels.py)."""
        shape = xq.shape
        bias = None if self.bias is None else self.bias.to(out_dtype)
        return self._mm(xq.reshape(-1, shape[-1]), scale, bias, out_dtype).reshape(*shape[:-1], self.out_features)

    def _mm(self, xq: torch.Tensor, scale_a: torch.Tensor, bias, out_dtype: torch.dtype) -> torch.Tensor:
        """(rows, in) e4m3 with its scale(s) -> (rows, out): the one fp8 matmul every path runs."""
        return torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=scale_a, scale_b=self.weight_scale,
                                bias=bias, out_dtype=out_dtype, use_fast_accum=self.fast_accum)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, scaled_mm={self.use_scaled_mm}, scaling={self.scaling}"


def needs_calibration(model: nn.Module) -> bool:
    """Whether the next forward of `model` is its calibrating one: it has fp8 matmul layers with a
    per-tensor input scale (static, delayed) and none of them has seen an input yet (after a load
    or a LoRA switch every one is reset, and kept scales come back for all of them or none). A
    layer that a forward never reaches stays uncalibrated; it does not make later calls eager."""
    layers = [m for m in model.modules() if isinstance(m, FP8Linear) and m.use_scaled_mm and m.scaling != "rowwise"]
    return bool(layers) and not any(m.calibrated for m in layers)


@contextlib.contextmanager
def eager_while_calibrating(model: nn.Module, compiled: bool = True):
    """Run the compiled blocks of `model` eagerly for a forward that calibrates; yields whether it does.

    The calibrating forward runs once per load (or LoRA switch without kept scales), and its
    graph (the layers' amax reductions, diffusers' block instead of the fused one) is never used
    again. On an H200 at 81 frames with an empty compile cache, compiling it made that call take
    24.14 s against 15.95 s uncompiled; the next call, which compiles the graph every later call
    runs, then took 21.00 s instead of 13.82 s (docs/PERFORMANCE.md, round 7): no call of the first
    job is as long, and the two together are 1.00 s shorter. Eagerly, FP8Linear quantises in row
    chunks, so its fp32 temporaries stay small; an 81-frame job calibrated this way under a
    32 GiB cap.
    """
    if not compiled or not needs_calibration(model) or not hasattr(torch.compiler, "set_stance"):
        yield False  # (set_stance came with torch 2.6; before it the calibrating call compiles)
        return
    with torch.compiler.set_stance("force_eager"):
        yield True


def convert_to_fp8(model: nn.Module, use_scaled_mm: bool | None = None, scaling: str = "rowwise",
                   fast_accum: bool = False) -> int:
    """Replace every nn.Linear inside `model.blocks` with an FP8Linear (frees the bf16 weights)."""
    n = 0
    for block in model.blocks:
        for name, mod in list(block.named_modules()):
            for child_name, child in list(mod.named_children()):
                if isinstance(child, nn.Linear):
                    layer = FP8Linear(child, use_scaled_mm, scaling)
                    layer.fast_accum = fast_accum
                    setattr(mod, child_name, layer)
                    n += 1
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return n


def restore_linears(model: nn.Module) -> int:
    """Put plain nn.Linear layers (dequantised weights) back where convert_to_fp8 put FP8Linear.

    For the benchmark, which then loads the exact bf16 weights it kept; the dequantised values are
    only placeholders of the right shape and dtype.
    """
    n = 0
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, FP8Linear):
                lin = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                device=child.weight_fp8.device, dtype=child.compute_dtype)
                with torch.no_grad():
                    lin.weight.copy_(child.dequantized_weight(child.compute_dtype))
                    if child.bias is not None:
                        lin.bias.copy_(child.bias)
                setattr(mod, child_name, lin)
                n += 1
    return n
