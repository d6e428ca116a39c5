"""SageAttention 2's Hopper kernel fed by our own quantisation, inside the compiled graph
(`attention = "sage-fused"`).

`sage-warp` hands bf16 Q, K, V to SageAttention, which then quantises them in five separate passes
over memory (the K mean, Q/K to int8, V padded with `torch.cat`, V transposed and permuted, V to
fp8). At 81 frames those passes and the RMSNorm + RoPE kernel before them came to about 0.37 s of
a 9.1 s forward on an H200. Here the same quantisation is written as torch operations in the
attention processor, so `torch.compile` fuses it with the RMSNorm, the RoPE and the projections'
epilogues, and only the attention kernel itself is called as an opaque op.

The formats are the sm90 kernel's (`qk_int8_sv_f8_accum_f32_fuse_v_scale_attn_inst_buf`, NHD layout,
per-warp granularity), read from SageAttention's quantisers and the kernel's shape checks:

- Q: int8, one scale per 16 consecutive tokens per head (a warp's rows of the 64-row tile):
  scale = max(amax, 1e-7) / 127, q8 = round-half-even(q * (127 / max(amax, 1e-7))). There are
  ceil(S / 64) * 4 scales per head; tokens past S count as zeros.
- K: the mean over the sequence (per head and channel, rounded to the input dtype) is subtracted
  first ("smooth K": the same shift for every key, so softmax is unchanged and int8 loses less), then
  int8 with one scale per 128 tokens per head, the same rule.
- V: fp8 e4m3, one scale per head and channel over the whole sequence (scale = amax / 448), stored
  transposed as (B, H, D, S') with S' = S rounded up to 128 (zero padding), and within every 16
  tokens in the order 0 1 8 9 2 3 10 11 4 5 12 13 6 7 14 15 (the fp8 MMA's operand layout).
- sm_scale = 1/sqrt(D), applied by the kernel.

`dequantize` inverts all three; the tests run attention on its output on the CPU, so a wrong scale
layout or token order shows up as a wrong attention result, not only as a wrong tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CTA_Q = 64  # query rows per kernel tile
WARP_Q = 16  # query rows per warp (one Q scale each)
CTA_K = 128  # key rows per kernel tile (one K scale each); V is padded to this
INT8_MAX = 127.0
FP8_MAX = 448.0  # e4m3
AMAX_FLOOR = 1e-7  # SageAttention's guard against an all-zero block

# position p of a 16-token group holds token PERM16[p]
PERM16 = (0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15)


def _pad_seq(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """(B, S, H, D) -> (B, S', H, D) with S' a multiple of `multiple`, zero rows appended."""
    extra = (-x.shape[1]) % multiple
    return F.pad(x, (0, 0, 0, 0, 0, extra)) if extra else x


def _int8_groups(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (B, S', H, D), S' a multiple of `group` -> int8 (B, S', H, D), scales (B, H, S'/group)."""
    g = x.unflatten(1, (-1, group))  # B, G, group, H, D
    amax = g.abs().amax(dim=(2, 4), keepdim=True).clamp_min(AMAX_FLOOR)
    q = torch.round(g * (INT8_MAX / amax)).clamp(-128.0, 127.0).to(torch.int8).flatten(1, 2)
    scale = (amax / INT8_MAX)[:, :, 0, :, 0].transpose(1, 2).contiguous()
    return q, scale


def quantize_q(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 (B, S, H, D) -> int8 (B, ceil(S/64)*64, H, D), scales (B, H, ceil(S/64)*4)."""
    return _int8_groups(_pad_seq(q.float(), CTA_Q), WARP_Q)


def quantize_k(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bf16 (B, S, H, D) -> int8 (B, ceil(S/128)*128, H, D), scales (B, H, ceil(S/128)), and the
    subtracted mean (B, 1, H, D) in k's dtype. Padding rows are zeros after the subtraction."""
    km = k.mean(dim=1, keepdim=True)
    q, scale = _int8_groups(_pad_seq(k.float() - km.float(), CTA_K), CTA_K)
    return q, scale, km


def quantize_v(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 (B, S, H, D) -> fp8 e4m3 (B, H, D, ceil(S/128)*128), token-permuted; scales (B, H, D)."""
    x = _pad_seq(v, CTA_K).float()
    b, s, h, d = x.shape
    amax = x.abs().amax(dim=1)  # B, H, D; the zero padding cannot raise it
    # an all-zero channel would divide by zero (SageAttention's own quantiser gives NaN there)
    inv = FP8_MAX / amax.clamp_min(1e-30)
    y = (x * inv.unsqueeze(1)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    # token t = 8*hi + 2*mid + lo sits at position 4*mid + 2*hi + lo of its group of 16
    y = y.view(b, s // 16, 2, 4, 2, h, d).permute(0, 5, 6, 1, 3, 2, 4)
    return y.reshape(b, h, d, s), amax / FP8_MAX


def dequantize(q8, q_scale, k8, k_scale, v8, v_scale, seq_len: int):
    """The fp32 (B, S, H, D) tensors the kernel computes with: for checking the formats.
    (K comes back without its mean, which attention does not see.)"""
    qf = q8.float().unflatten(1, (-1, WARP_Q)) * q_scale.transpose(1, 2)[:, :, None, :, None]
    kf = k8.float().unflatten(1, (-1, CTA_K)) * k_scale.transpose(1, 2)[:, :, None, :, None]
    b, h, d, s = v8.shape
    inv = torch.argsort(torch.tensor(PERM16))
    vf = v8.float().view(b, h, d, s // 16, 16)[..., inv].reshape(b, h, d, s)
    vf = (vf * v_scale[..., None]).permute(0, 3, 1, 2)
    return qf.flatten(1, 2)[:, :seq_len], kf.flatten(1, 2)[:, :seq_len], vf[:, :seq_len]


@torch.library.custom_op("wan22bot::sage_sm90_prequant", mutates_args=())
def sage_sm90_prequant(q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, q_scale: torch.Tensor,
                       k_scale: torch.Tensor, v_scale: torch.Tensor, seq_len: int, sm_scale: float) -> torch.Tensor:
    from sageattention import _qattn_sm90  # type: ignore[import-not-found]

    # the kernel reads the true lengths from the shapes and the padded rows' stride from the
    # strides, so views over the padded buffers need no copy
    q = q8[:, :seq_len]
    k = k8[:, :seq_len]
    out = torch.empty(q.shape, dtype=torch.bfloat16, device=q.device)
    _qattn_sm90.qk_int8_sv_f8_accum_f32_fuse_v_scale_attn_inst_buf(
        q, k, v8.permute(0, 2, 1, 3), out, q_scale.contiguous(), k_scale.contiguous(), v_scale.contiguous(),
        0, 0, 2, sm_scale, 0)  # NHD layout, not causal, per-warp granularity, no LSE
    return out


@sage_sm90_prequant.register_fake
def _(q8, k8, v8, q_scale, k_scale, v_scale, seq_len, sm_scale):
    b, _, h, d = q8.shape
    return q8.new_empty((b, seq_len, h, d), dtype=torch.bfloat16)


def sage_fused_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, S, H, D) bf16 -> attention output (B, S, H, D) bf16 on SageAttention 2's sm90 kernel."""
    if q.shape[-1] != 128:
        raise ValueError(f"sage-fused is built for head size 128 (Wan's); got {q.shape[-1]}")
    q8, qs = quantize_q(q)
    k8, ks, _ = quantize_k(k)
    v8, vs = quantize_v(v)
    return sage_sm90_prequant(q8, k8, v8, qs, ks, vs, q.shape[1], q.shape[-1] ** -0.5)
