"""The int8 step of K and the fp8 step of V for `sage-fused`, each in hand-written Triton kernels.

With the Triton Q/K prep (engine/qk_prep.py), Q arrives at the attention kernel straight from its
Triton kernel, but K's int8 step (subtract the smoothing mean, one scale per 128 rows of a head)
and all of V's fp8 step (one scale per head and channel over the whole sequence, stored transposed
and token-permuted) were left to torch.compile. In an 81-frame forward on an H200 those compiled
kernels took about 0.063 s of 40 blocks (docs/perf/2026-11-29-h200-round8-profile81.json, the four
`..._sage_sm90_prequant_...` and `..._abs_amax_constant_pad_nd_...` rows), over twice what their
memory traffic needs (0.028 s at 4.8 TB/s). Here (H200, 81 frames, docs/PERFORMANCE.md round 7):
K 0.406-0.412 ms per block against 0.717-0.776 compiled, V 0.579-0.606 ms against 0.773-0.775;
the forward 0.0226 s and 0.0299 s faster on two machines (alternated runs).

- `k_int8`: one program per 128 rows of a head: the bf16 rotated K minus its mean, in fp32, then
  int8 by `sage_prequant.quantize_k`'s per-block rule. Rows past S are zeros.
- `v_fp8`: a first kernel takes each program's per-channel maxima over its rows (partial maxima,
  reduced by torch: a max is exact in any order), a second scales, casts to e4m3 and writes each
  128 tokens of a head transposed, in the fp8 MMA's order within every 16 tokens
  (`sage_prequant.PERM16`), loading the tokens in that order.

Both compute what `sage_prequant.quantize_k` / `quantize_v` compute, bit for bit: the same fp32
operations, ties to even, IEEE division (`div_rn`: Triton's `/` on the GPU is the approximate one,
which left 1 value in about 10^5 one step off); under Triton's interpreter (whose casts truncate) the e4m3 rounding is
written out, as in engine/block_kernels.py. The tests compare them on the CPU that way.
Offsets are computed in 64 bits, so long videos need no fallback.
"""

from __future__ import annotations

import math

import torch

from .block_kernels import _hw, _on
from .sage_prequant import AMAX_FLOOR, CTA_K, FP8_MAX, INT8_MAX

try:  # CUDA builds of torch ship Triton
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None

if triton is not None:
    from .block_kernels import as_e4m3
    from .qk_prep import rne

    AMAX_FLOOR_C = tl.constexpr(AMAX_FLOOR)

    @triton.jit
    def k_int8_kernel(k_ptr, m_ptr, q_ptr, a_ptr, S, S_pad, stride_kb, stride_ks, stride_mb,
                      HEADS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr):
        blk = tl.program_id(0)
        h = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        rows = (blk * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
        live = (rows < S)[:, None]
        cols = h * D + tl.arange(0, D)
        k = tl.load(k_ptr + b * stride_kb + rows[:, None] * stride_ks + cols[None, :], mask=live, other=0.0)
        m = tl.load(m_ptr + b * stride_mb + cols).to(tl.float32)
        x = tl.where(live, k.to(tl.float32) - m[None, :], 0.0)  # padding rows are zeros after the shift
        amax = tl.maximum(tl.max(tl.max(tl.abs(x), axis=1), axis=0), AMAX_FLOOR_C)
        q = rne(x * (tl.math.div_rn(1.0, amax) * 127.0))  # torch's 127 / amax: a reciprocal, then a product
        q = tl.minimum(tl.maximum(q, -128.0), 127.0).to(tl.int8)
        tl.store(q_ptr + (b * S_pad + rows[:, None]) * (HEADS * D) + cols[None, :], q)
        tl.store(a_ptr + (b * HEADS + h) * (S_pad // BLOCK) + blk, amax)  # the scale is amax / 127, by torch

    @triton.jit
    def v_amax_kernel(v_ptr, part_ptr, S, stride_vb, stride_vs, C: tl.constexpr,
                      ROWS: tl.constexpr, STEP: tl.constexpr, CHUNK: tl.constexpr):
        blk = tl.program_id(0)
        cc = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        cols = cc * CHUNK + tl.arange(0, CHUNK)
        acc = tl.zeros([CHUNK], dtype=tl.float32)
        for r0 in range(0, ROWS, STEP):
            rows = (blk * ROWS + r0 + tl.arange(0, STEP)).to(tl.int64)
            v = tl.load(v_ptr + b * stride_vb + rows[:, None] * stride_vs + cols[None, :],
                        mask=(rows < S)[:, None], other=0.0)
            acc = tl.maximum(acc, tl.max(tl.abs(v.to(tl.float32)), axis=0))
        tl.store(part_ptr + (b * tl.num_programs(0) + blk) * C + cols, acc)

    @triton.jit
    def v_fp8_kernel(v_ptr, amax_ptr, out_ptr, S, S_pad, stride_vb, stride_vs,
                     HEADS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, HW: tl.constexpr):
        blk = tl.program_id(0)
        h = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        p = tl.arange(0, BLOCK)
        # output position p of a 16-token group holds token 8*hi + 2*mid + lo, p = 4*mid + 2*hi + lo
        q = p % 16
        tok = (blk * BLOCK + (p - q) + 8 * ((q // 2) % 2) + 2 * (q // 4) + q % 2).to(tl.int64)
        d = tl.arange(0, D)
        cols = h * D + d
        x = tl.load(v_ptr + b * stride_vb + tok[:, None] * stride_vs + cols[None, :],
                    mask=(tok < S)[:, None], other=0.0).to(tl.float32)
        amax = tl.load(amax_ptr + b * HEADS * D + cols)
        inv = tl.math.div_rn(1.0, tl.maximum(amax, 1e-30)) * 448.0  # as torch's 448 / amax
        y = tl.trans(as_e4m3(x, inv[None, :], HW).to(tl.float32))  # (D, BLOCK), e4m3-exact values
        dst = out_ptr + ((b * HEADS + h) * D + d[:, None].to(tl.int64)) * S_pad + blk * BLOCK + p[None, :]
        tl.store(dst, y.to(tl.float8e4nv))


def available() -> str | None:
    return None if triton is not None else "triton is not installed (it comes with CUDA builds of PyTorch)"


# V's maxima: rows per program and per step, channels per program
V_ROWS, V_STEP, V_CHUNK, V_AMAX_WARPS = 128, 8, 1024, 4  # H200, 81 frames: 0.598 ms (256x16x512: 0.671)
K_WARPS, V_WARPS = 4, 4  # K: 0.420 ms (8 warps 0.441, 2 warps 0.581); compiled K 0.671, V 0.716


@torch.library.custom_op("wan22bot::k_int8", mutates_args=())
def k_int8(k: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated K (B, S, H, D) bf16 and its mean (B, 1, H, D) -> int8 (B, ceil(S/128)*128, H, D) and
    fp32 scales (B, H, ceil(S/128)): `quantize_k(k, per_thread=False, mean=mean)[:2]`."""
    return launch_k(k, mean, K_WARPS)


def launch_k(k, mean, warps):
    b, s, h, d = k.shape
    if k.stride(-1) != 1 or k.stride(-2) != d:
        k = k.contiguous()
    mean = mean.reshape(b, h * d).contiguous()
    s_pad = math.ceil(s / CTA_K) * CTA_K
    q8 = torch.empty(b, s_pad, h, d, dtype=torch.int8, device=k.device)
    amax = torch.empty(b, h, s_pad // CTA_K, dtype=torch.float32, device=k.device)
    with _on(k.device):
        k_int8_kernel[(s_pad // CTA_K, h, b)](k, mean, q8, amax, s, s_pad, k.stride(0), k.stride(1), mean.stride(0),
                                              HEADS=h, D=d, BLOCK=CTA_K, enable_fp_fusion=False, num_warps=warps)
    # torch's own division, as quantize_k's: on a GPU torch divides by a scalar as a product with its
    # reciprocal, which an IEEE division in the kernel missed by an ulp in 5% of the scales
    return q8, amax / INT8_MAX


@k_int8.register_fake
def _(k, mean):
    b, s, h, d = k.shape
    s_pad = math.ceil(s / CTA_K) * CTA_K
    return k.new_empty((b, s_pad, h, d), dtype=torch.int8), k.new_empty((b, h, s_pad // CTA_K), dtype=torch.float32)


@torch.library.custom_op("wan22bot::v_fp8", mutates_args=())
def v_fp8(v: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """V projection (B, S, H*D) bf16 -> e4m3 (B, H, D, ceil(S/128)*128), token-permuted, and fp32
    scales (B, H, D): `quantize_v(v.unflatten(2, (heads, -1)))`."""
    return launch_v(v, heads, V_ROWS, V_STEP, V_CHUNK, V_AMAX_WARPS, V_WARPS)


def launch_v(v, heads, rows, step, chunk, amax_warps, warps):
    b, s, c = v.shape
    d = c // heads
    if v.stride(-1) != 1:
        v = v.contiguous()
    while c % chunk:  # channels are whole heads of 128
        chunk //= 2
    s_pad = math.ceil(s / CTA_K) * CTA_K
    blocks = math.ceil(s / rows)
    part = torch.empty(b, blocks, c, dtype=torch.float32, device=v.device)
    out = torch.empty(b, heads, d, s_pad, dtype=torch.float8_e4m3fn, device=v.device)
    with _on(v.device):
        v_amax_kernel[(blocks, c // chunk, b)](v, part, s, v.stride(0), v.stride(1), C=c, ROWS=rows, STEP=step,
                                               CHUNK=chunk, num_warps=amax_warps)
        amax = part.amax(dim=1)  # B, C
        v_fp8_kernel[(s_pad // CTA_K, heads, b)](v, amax, out, s, s_pad, v.stride(0), v.stride(1),
                                                 HEADS=heads, D=d, BLOCK=CTA_K, HW=_hw(v.device),
                                                 enable_fp_fusion=False, num_warps=warps)
    return out, (amax / FP8_MAX).view(b, heads, d)


@v_fp8.register_fake
def _(v, heads):
    b, s, c = v.shape
    s_pad = math.ceil(s / CTA_K) * CTA_K
    return (v.new_empty((b, heads, c // heads, s_pad), dtype=torch.float8_e4m3fn),
            v.new_empty((b, heads, c // heads), dtype=torch.float32))


def mismatch(device: torch.device, heads: int = 3, tokens: int = 300, seed: int = 0) -> float:
    """Both kernels once on random inputs against sage_prequant's torch quantisers: the fraction of
    output values and scales that differ (0.0 for a correct kernel). Raises what the kernels raise."""
    from .sage_prequant import quantize_k, quantize_v

    g = torch.Generator(device="cpu").manual_seed(seed)
    c = heads * 128
    spread = 1 + 3 * torch.rand(c, generator=g)
    k = (torch.randn(1, tokens, c, generator=g) * spread + 0.5).to(device, torch.bfloat16).unflatten(2, (heads, -1))
    v = (torch.randn(1, tokens, c, generator=g) * spread).to(device, torch.bfloat16)
    mean = k.mean(dim=1, keepdim=True)
    k8, ks = k_int8(k, mean)
    wk8, wks, _ = quantize_k(k, False, mean=mean)
    v8, vs = v_fp8(v, heads)
    wv8, wvs = quantize_v(v.unflatten(2, (heads, -1)))
    pairs = [(k8, wk8), (ks, wks), (v8.view(torch.uint8), wv8.view(torch.uint8)), (vs, wvs)]
    wrong = sum(int((a != w).sum()) for a, w in pairs)
    return wrong / sum(w.numel() for _, w in pairs)


_CHECKS: dict[str, float | str] = {}  # device -> share of values that differ, or why the check raised


def checked(device: torch.device) -> str | None:
    """None when the kernels run here and compute every value the torch quantisers do (checked
    once per process and device), else why not; the processor then keeps the torch code."""
    from .kernel_checks import checked_once

    return available() or checked_once(_CHECKS, device, mismatch, 0.0)

