"""An attention processor for Wan 2.2's experts with a pluggable core kernel.

Wan 2.2 A14B has no image branch, so each attention block is: q/k/v projections, RMS norm on q and
k across heads, interleaved rotary embedding (self-attention only), the attention core, and the
output projection. This processor does exactly that and hands the core (B, S, H, D) tensors to a
callable, which is how SageAttention 1.x and our fp8 kernel get in. Cross-attention (512 text
tokens) stays on PyTorch SDPA: it is a few percent of the work.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Core = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved RoPE: pairs (x[2i], x[2i+1]) rotate by the angle whose cos/sin sit at 2i / 2i+1."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2).type_as(x)


def sdpa_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_mask=mask).transpose(1, 2)


class CoreAttnProcessor:
    def __init__(self, core: Core):
        self.core = core

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if attn.add_k_proj is not None:
            raise RuntimeError("CoreAttnProcessor supports Wan 2.2 experts only (no image branch)")
        cross = encoder_hidden_states is not None
        ctx = encoder_hidden_states if cross else hidden_states
        if getattr(attn, "fused_projections", False) and not cross:
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(ctx), attn.to_v(ctx)
        return self.attend(attn, q, k, v, rotary_emb, attention_mask, cross)

    def attend(self, attn, q, k, v, rotary_emb=None, attention_mask=None, cross=False):
        """Everything after the q/k/v projections (B, S, H*D), through the output projection: what
        engine/fused_block.py calls with projections it computed from its own fp8 inputs."""
        q = attn.norm_q(q).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(k).unflatten(2, (attn.heads, -1))
        v = v.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            q = rotary(q, *rotary_emb)
            k = rotary(k, *rotary_emb)
        out = sdpa_core(q, k, v, attention_mask) if cross or attention_mask is not None else self.core(q, k, v)
        out = out.flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


def install_processors(model: torch.nn.Module, make: Callable[[], object]) -> int:
    """Give every attention block (self and cross) of `model` a processor from `make()`; returns how
    many were set."""
    n = 0
    for block in model.blocks:
        for attn in (block.attn1, block.attn2):
            attn.set_processor(make())
            n += 1
    return n


def install_core(model: torch.nn.Module, core: Core) -> int:
    """Give every attention block of `model` a CoreAttnProcessor; returns how many were set."""
    return install_processors(model, lambda: CoreAttnProcessor(core))


_OPAQUE: dict[str, Core] = {}


def opaque_core(name: str, fn: Core) -> Core:
    """Register `fn` as a torch custom op so torch.compile treats the kernel call as one opaque node.

    Kernels launched from Python (cuDNN frontend graphs, Triton launchers of other packages) would
    otherwise break a `fullgraph=True` compile of the blocks.
    """
    if name in _OPAQUE:
        return _OPAQUE[name]

    @torch.library.custom_op(f"wan22bot::{name}", mutates_args=())
    def op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return fn(q, k, v).contiguous()

    @op.register_fake
    def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(q)

    _OPAQUE[name] = op
    return op
