"""Wan's transformer block with its fp8 matmul inputs made by engine/block_kernels.py
(`[model] block_kernels`).

`fused_forward` mirrors diffusers' `WanTransformerBlock.forward` (with the FeedForward, GELU and
FP32LayerNorm forwards it calls) line for line, except where a LayerNorm or the GELU feeds an fp8
matmul: there one kernel makes the e4m3 input straight from the residual stream, and the matmul
takes it as is (`FP8Linear.forward_quantized`). q, k and v share one e4m3 copy of their input.
`MIRRORED` pins the sha256 of the mirrored source; another diffusers release that changes any of
it keeps diffusers' block until the mirror is checked against it.

The kernels need FP8Linear's static scales, so a block runs diffusers' own forward while any of
its layers is not calibrated yet (the first call after a load or a LoRA change, which calibrates
them), and under `fp8_scaling = "rowwise"` or `"delayed"`. torch.compile guards on those flags:
one graph for the calibrating call, one for the rest, as before.
"""

from __future__ import annotations

import types

import torch
from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from .mirrored_source import digest_or_empty, source_digest

# diffusers' own forward, called as a plain function: torch.compile cannot trace
# `type(self).forward` on this class (diffusers marks it allow_in_graph)
_stock_forward = WanTransformerBlock.forward

# diffusers 0.42.1: WanTransformerBlock.forward, WanAttention.forward (which the fused forward
# skips, calling the processor's `attend`), FeedForward.forward, GELU.forward and .gelu,
# FP32LayerNorm.forward
MIRRORED = "c89df9c455b00ecd3f08d15df7298419fbd05b70b8a0107df73f7b0093d05be3"


def installed_digest() -> str:
    def compute():
        from diffusers.models.activations import GELU
        from diffusers.models.attention import FeedForward
        from diffusers.models.normalization import FP32LayerNorm
        from diffusers.models.transformers.transformer_wan import WanAttention

        return source_digest((WanTransformerBlock.forward, WanAttention.forward, FeedForward.forward, GELU.forward,
                              GELU.gelu, FP32LayerNorm.forward))

    return digest_or_empty(compute)


def _ffn_layers(block):
    net = block.ffn.net
    return net[0].proj, net[2]


def unfit(block: torch.nn.Module) -> str | None:
    """None when `block` has the layout the fused forward mirrors, else what differs."""
    from diffusers.models.activations import GELU
    from diffusers.models.normalization import FP32LayerNorm

    from .fp8_linear import FP8Linear

    if "forward" in vars(block) and getattr(vars(block)["forward"], "__func__", None) is not fused_forward:
        return "its forward is wrapped by a hook (group offload, say)"
    net = block.ffn.net
    if not (len(net) == 3 and isinstance(net[0], GELU) and net[0].approximate == "tanh"
            and isinstance(net[1], torch.nn.Dropout) and isinstance(net[2], FP8Linear)):
        return "its feed-forward is not fp8 Linear -> tanh GELU -> Dropout -> fp8 Linear"
    if not (isinstance(block.norm2, FP32LayerNorm) and block.norm2.weight is not None
            and block.norm2.bias is not None):
        return "its cross-attention norm is not an affine LayerNorm"
    for attn in (block.attn1, block.attn2):
        if attn.add_k_proj is not None or getattr(attn, "fused_projections", False):
            return "an attention block has an image branch or fused projections"
    for lin in (block.attn1.to_q, block.attn1.to_k, block.attn1.to_v, block.attn2.to_q, *_ffn_layers(block)):
        if not isinstance(lin, FP8Linear):
            return "its linear layers are not fp8"
    return None


def _static(*layers) -> bool:
    return all(lin.static_input_scale_ready() for lin in layers)


def ready(block, hidden_states: torch.Tensor, temb: torch.Tensor) -> bool:
    """Whether this call can take the fused path: Python-level facts, which torch.compile guards on."""
    a1, a2 = block.attn1, block.attn2
    return (temb.ndim == 3 and hidden_states.dim() == 3 and hidden_states.dtype == torch.bfloat16
            and hasattr(a1.processor, "attend") and hasattr(a2.processor, "attend")
            and _static(a1.to_q, a1.to_k, a1.to_v, a2.to_q, *_ffn_layers(block)))


def fused_forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                  rotary_emb: torch.Tensor) -> torch.Tensor:
    if not ready(self, hidden_states, temb):
        return _stock_forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb)
    from .block_kernels import gelu_fp8, norm_fp8, residual_norm_fp8

    dtype = hidden_states.dtype
    shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
        self.scale_shift_table + temb.float()
    ).chunk(6, dim=1)

    # 1. Self-attention: one e4m3 input for q, k and v (their static scales are calibrated on this
    # same input, so they agree; the largest keeps every value in range if they ever do not)
    a1 = self.attn1
    s_qkv = torch.maximum(torch.maximum(a1.to_q.input_scale(), a1.to_k.input_scale()), a1.to_v.input_scale())
    xq = norm_fp8(hidden_states, 1 + scale_msa, shift_msa, 1.0 / s_qkv, self.norm1.eps)
    q, k, v = [lin.forward_quantized(xq, s_qkv, dtype) for lin in (a1.to_q, a1.to_k, a1.to_v)]
    attn_output = a1.processor.attend(a1, q, k, v, rotary_emb)

    # 2. Cross-attention: the residual add and norm2 (affine) feed the q projection
    a2 = self.attn2
    s_q2 = a2.to_q.input_scale()
    hidden_states, xq = residual_norm_fp8(hidden_states, attn_output, gate_msa, self.norm2.weight, self.norm2.bias,
                                          1.0 / s_q2, self.norm2.eps)
    q = a2.to_q.forward_quantized(xq, s_q2, dtype)
    attn_output = a2.processor.attend(a2, q, a2.to_k(encoder_hidden_states), a2.to_v(encoder_hidden_states),
                                      None, None, True)

    # 3. Feed-forward: the residual add and norm3 feed the first projection, the GELU the second
    up, down = _ffn_layers(self)
    s_up, s_down = up.input_scale(), down.input_scale()
    hidden_states, xq = residual_norm_fp8(hidden_states, attn_output, None, 1 + c_scale_msa, c_shift_msa,
                                          1.0 / s_up, self.norm3.eps)
    ff_output = down.forward_quantized(gelu_fp8(up.forward_quantized(xq, s_up, dtype), 1.0 / s_down), s_down, dtype)
    return (hidden_states.float() + ff_output.float() * c_gate_msa).type_as(hidden_states)


def install(model: torch.nn.Module) -> int:
    """Give every block of `model` the fused forward; returns how many took it."""
    n = 0
    for block in model.blocks:
        if unfit(block) is None:
            block.forward = types.MethodType(fused_forward, block)
            n += 1
    return n


def uninstall(model: torch.nn.Module) -> int:
    """Take the fused forward out of every block that has it; returns how many had it."""
    n = 0
    for block in model.blocks:
        if getattr(vars(block).get("forward"), "__func__", None) is fused_forward:
            del block.forward
            n += 1
    return n


def wanted(setting: str, model: torch.nn.Module, device: torch.device, fp8_scaling: str, weights: str,
           dtype: torch.dtype = torch.bfloat16, checker=None) -> tuple[bool, str]:
    """`[model] block_kernels` for one expert: (install the fused forward?, why).

    "compiled": never. "auto": where the expert's linear layers are fp8 with static scales and
    fp8 matmuls, it computes in bf16 on a CUDA device, the installed diffusers' block is the one
    mirrored, Triton imports and the kernels pass a one-call self-check at load (once per process
    and device). "triton": the same, but anything missing is an error.
    """
    if setting == "compiled":
        return False, "block_kernels = compiled"
    from . import block_kernels
    from .fp8_linear import fp8_matmul_supported

    why = None
    if weights != "fp8" or fp8_scaling != "static":
        why = f"they make the inputs of fp8 matmuls with static scales (weights {weights}, fp8_scaling {fp8_scaling})"
    elif device.type != "cuda" or not fp8_matmul_supported(device):
        why = "they need a CUDA device with fp8 matmuls (compute capability 8.9 or newer)"
    elif dtype != torch.bfloat16:
        why = f"they take a bf16 residual stream and the model computes in {str(dtype).removeprefix('torch.')}"
    elif installed_digest() != MIRRORED:
        why = "the installed diffusers' Wan block differs from the one the fused forward mirrors"
    else:
        why = next((f"block {i}: {w}" for i, b in enumerate(model.blocks) if (w := unfit(b)) is not None), None)
        if why is None:
            why = block_kernels.checked(device, checker or block_kernels.self_check)
    if why is None:
        err = block_kernels.check_error(device)
        return True, ("Triton kernels for residual + LayerNorm + fp8 and GELU + fp8"
                      + ("" if err is None else f", self-check error {err:.4f}"))
    if setting == "triton":
        from ..errors import ModelError

        raise ModelError(f"block_kernels = \"triton\" cannot run here: {why}; use \"auto\" or \"compiled\"")
    return False, why
