"""SageAttention 2's Hopper kernel fed by our own quantisation, inside the compiled graph
(`attention = "sage-fused"`).

`sage` and `sage-warp` hand bf16 Q, K, V to SageAttention, which then quantises them in separate
passes over memory (the K mean, Q/K to int8, V padded with `torch.cat`, V transposed and permuted,
V to fp8). In an 81-frame forward on an H200 (9.23 s, docs/perf/2026-11-29-h200-profile81.json)
those kernels took 0.302 s, besides the RMSNorm + RoPE kernel before them (0.138 s). Here the same
quantisation is written as torch operations in the attention processor, so `torch.compile` fuses it
with the RMSNorm, the RoPE and the projections' epilogues, and only the attention kernel itself is
called as an opaque op.

The formats are the sm90 kernel's (`qk_int8_sv_f8_accum_f32_fuse_v_scale_attn_inst_buf`, NHD layout,
per-warp granularity by default, per-thread as an option), read from SageAttention's quantisers and the kernel's shape
checks:

- Q: int8, scale = max(amax, 1e-7) / 127, q8 = round-half-even(q * (127 / max(amax, 1e-7))) over
  each group of rows of a head. Per thread: within each 16 rows, rows t and t + 8
  (t < 8) share a scale, ceil(S / 64) * 32 scales per head; per warp: the 16 rows share one,
  ceil(S / 64) * 4 per head. Rows past S count as zeros.
- K: the mean over the sequence (per head and channel, rounded to the input dtype) is subtracted
  first ("smooth K": the same shift for every key, so softmax is unchanged and int8 loses less), then
  int8 by the same rule. Per thread: within each 128 rows, those with row % 8 in {2t, 2t + 1}
  (t < 4) share a scale; per warp (per block): the 128 rows share one.
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


def _int8(x: torch.Tensor, groups: tuple[int, ...], reduce: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (B, S', H, D) -> int8 (B, S', H, D) and scales (B, H, n).

    The sequence axis is split into `groups` (S' = prod(groups) * blocks); one scale covers the
    rows that share every index of the split except those in `reduce` (positions within `groups`),
    and the scales are numbered in row order of what is left.
    """
    b, s, h, d = x.shape
    g = x.view(b, -1, *groups, h, d)
    dims = tuple(2 + i for i in reduce) + (g.dim() - 1,)
    amax = g.abs().amax(dim=dims, keepdim=True).clamp_min(AMAX_FLOOR)
    q = torch.round(g * (INT8_MAX / amax)).clamp(-128.0, 127.0).to(torch.int8).view(b, s, h, d)
    scale = (amax / INT8_MAX).squeeze(-1)  # B, blocks, (groups with 1 where reduced), H
    scale = scale.movedim(-1, 1).reshape(b, h, -1).contiguous()
    return q, scale


def quantize_q(q: torch.Tensor, per_thread: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 (B, S, H, D) -> int8 (B, ceil(S/64)*64, H, D) and fp32 scales.

    per warp: one scale per 16 consecutive rows, (B, H, ceil(S/64)*4).
    per thread: within each 16 rows, one scale per row pair (t, t+8), t < 8 (the rows one thread
    of the MMA holds), (B, H, ceil(S/64)*32).
    """
    x = _pad_seq(q.float(), CTA_Q)
    if per_thread:
        return _int8(x, (2, 8), reduce=(0,))  # row 16j + 8a + t -> scale 8j + t
    return _int8(x, (WARP_Q,), reduce=(0,))


def quantize_k(k: torch.Tensor, per_thread: bool = False,
               mean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bf16 (B, S, H, D) -> int8 (B, ceil(S/128)*128, H, D), fp32 scales, and the subtracted mean
    (B, 1, H, D) in k's dtype (taken here unless `mean` gives it). Padding rows are zeros after the
    subtraction.

    per block: one scale per 128 rows, (B, H, ceil(S/128)).
    per thread: within each 128 rows, one scale per t < 4 over the rows r with r % 8 in {2t, 2t+1},
    (B, H, ceil(S/128)*4).
    """
    km = k.mean(dim=1, keepdim=True) if mean is None else mean
    x = _pad_seq(k.float() - km.float(), CTA_K)
    if per_thread:
        q, scale = _int8(x, (16, 4, 2), reduce=(0, 2))  # row 128j + 8m + 2t + u -> scale 4j + t
    else:
        q, scale = _int8(x, (CTA_K,), reduce=(0,))
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


def scale_index(rows: int, kind: str, per_thread: bool) -> torch.Tensor:
    """For each of `rows` rows of Q (kind "q") or K ("k"), the index of its scale: the kernel's
    reading of the scale tensors, written out row by row."""
    r = torch.arange(rows)
    if kind == "q":
        return (r // 16) * 8 + r % 8 if per_thread else r // WARP_Q
    return (r // CTA_K) * 4 + (r % 8) // 2 if per_thread else r // CTA_K


def dequantize(q8, q_scale, k8, k_scale, v8, v_scale, seq_len: int, per_thread: bool = False):
    """The fp32 (B, S, H, D) tensors the kernel computes with: for checking the formats.
    (K comes back without its mean, which attention does not see.)"""
    def rows(x8, scale, kind):
        s = scale[:, :, scale_index(x8.shape[1], kind, per_thread)]  # B, H, S'
        return x8.float() * s.transpose(1, 2)[..., None]

    b, h, d, s = v8.shape
    inv = torch.argsort(torch.tensor(PERM16))
    vf = v8.float().view(b, h, d, s // 16, 16)[..., inv].reshape(b, h, d, s)
    vf = (vf * v_scale[..., None]).permute(0, 3, 1, 2)
    return rows(q8, q_scale, "q")[:, :seq_len], rows(k8, k_scale, "k")[:, :seq_len], vf[:, :seq_len]


@torch.library.custom_op("wan22bot::sage_sm90_prequant", mutates_args=())
def sage_sm90_prequant(q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, q_scale: torch.Tensor,
                       k_scale: torch.Tensor, v_scale: torch.Tensor, seq_len: int, sm_scale: float,
                       per_thread: bool) -> torch.Tensor:
    from sageattention import _qattn_sm90  # type: ignore[import-not-found]

    # the kernel reads the true lengths from the shapes and the padded rows' stride from the
    # strides, so views over the padded buffers need no copy
    q = q8[:, :seq_len]
    k = k8[:, :seq_len]
    out = torch.empty(q.shape, dtype=torch.bfloat16, device=q.device)
    _qattn_sm90.qk_int8_sv_f8_accum_f32_fuse_v_scale_attn_inst_buf(
        q, k, v8.permute(0, 2, 1, 3), out, q_scale.contiguous(), k_scale.contiguous(), v_scale.contiguous(),
        0, 0, 3 if per_thread else 2, sm_scale, 0)  # NHD layout, not causal, granularity, no LSE
    return out


@sage_sm90_prequant.register_fake
def _(q8, k8, v8, q_scale, k_scale, v_scale, seq_len, sm_scale, per_thread):
    b, _, h, d = q8.shape
    return q8.new_empty((b, seq_len, h, d), dtype=torch.bfloat16)


def fused_core(per_thread: bool = True):
    """The `sage-fused` core: (B, S, H, D) bf16 -> attention output (B, S, H, D) bf16.

    Per-thread Q/K scales are the kernel's finer granularity (and SageAttention's own default);
    per-warp ones are coarser. `DEFAULT_PER_THREAD` says which `sage-fused` uses; both stay for
    comparison (`python -m wan22bot.bench.levers`, variants sagefusedthread and sagefusedwarp).
    """

    def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.shape[-1] != 128:
            raise ValueError(f"sage-fused is built for head size 128 (Wan's); got {q.shape[-1]}")
        q8, qs = quantize_q(q, per_thread)
        k8, ks, _ = quantize_k(k, per_thread)
        v8, vs = quantize_v(v)
        return sage_sm90_prequant(q8, k8, v8, qs, ks, vs, q.shape[1], q.shape[-1] ** -0.5, per_thread)

    core.__name__ = core.__qualname__ = f"sage_fused_{'thread' if per_thread else 'warp'}"
    return core


# Per-warp Q/K scales: in an 81-frame forward on an H200 the kernel ran faster with them than per
# thread (9.090 against 9.121 s in round 4; 8.687 against 8.732 s with the Triton Q/K prep in round 5),
# at the same error against stock bf16 (0.0466); docs/PERFORMANCE.md has both runs.
DEFAULT_PER_THREAD = False
sage_fused_thread_core = fused_core(per_thread=True)
sage_fused_warp_core = fused_core(per_thread=False)
sage_fused_core = sage_fused_thread_core if DEFAULT_PER_THREAD else sage_fused_warp_core
