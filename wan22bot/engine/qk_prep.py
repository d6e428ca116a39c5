"""RMSNorm + RoPE + int8 for `sage-fused`'s Q, and RMSNorm + RoPE + the smoothing mean for its K,
each in one hand-written Triton kernel (`[model] qk_prep = "triton"`).

Under `sage-fused`, torch.compile turns the attention block's norm, RoPE and quantisation into
inductor kernels; in an 81-frame forward on an H200 the RMSNorm + RoPE kernel alone took 3.1 ms per
block (docs/perf/2026-11-29-h200-round4-profile81-sagefused-warp.json), about four times what its
memory traffic needs. Here (H200, 81 frames, per-thread scales: Q 0.793 ms against 1.923 compiled, K
with its int8 step 1.744 against 2.488; 8.894 against 8.975 s per forward, docs/PERFORMANCE.md
round 5):

- Q: each program reads ROWS_Q rows of the q projection twice (the sum of squares over all
  5120 channels, then head by head), normalises, rotates the interleaved pairs, and writes int8 Q
  and its scales straight in the kernel's layout. The bf16 Q of the compiled path is never written.
- K: the same norm and rotation, written as bf16, plus per-program column sums from which the
  smoothing mean is taken; subtracting it and the int8 step are engine/kv_quant.py's kernel (with
  per-warp scales; per-thread ones stay in torch code, compiled), as is V's fp8 step.

Rounding follows eager PyTorch: the norm's output is rounded to bf16 (torch's RMSNorm computes in
fp32 and rounds once), the rotation is computed in fp32 on those values and rounded to bf16 again,
and then quantised by `sage_prequant.quantize_q`'s rule (ties to even, as torch.round). Where
quantize_q multiplies by 127 / amax as eager PyTorch computes it (a reciprocal, then a product),
the kernel divides: a value within an ulp of a tie may land one int8 step apart. The compiled
path skips the intermediate roundings, so on the GPU about 5% of the int8 values differ from it by
1-2 steps; the forward's error against stock bf16 is the same (0.0466).

The kernels need Triton (shipped with CUDA builds of PyTorch). On a machine without a GPU they run
under Triton's interpreter (TRITON_INTERPRET=1), which is how the tests check them.
"""

from __future__ import annotations

import contextlib
import math

import torch

from .sage_prequant import CTA_Q, WARP_Q, quantize_k


try:  # CUDA builds of torch ship Triton; without it `available()` says why and nothing below exists
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None

if triton is not None:

    @triton.jit
    def bf16_round(x):
        """fp32 -> the nearest bf16 value (ties to even), kept in fp32. Written with integer ops so
        that Triton's interpreter, whose casts truncate, rounds as the GPU does."""
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def rne(y):
        """Round half to even for |y| < 2**22, as torch.round does: adding 1.5 * 2**23 leaves no
        fraction bits. The launch turns off FMA contraction, so y is rounded before the add."""
        return (y + 12582912.0) - 12582912.0

    @triton.jit
    def row_rstd(x_ptr, rows, live, stride_xs, eps, C: tl.constexpr, ROWS: tl.constexpr, CHUNK: tl.constexpr):
        acc = tl.zeros([ROWS], dtype=tl.float32)
        for c0 in range(0, C, CHUNK):
            cols = c0 + tl.arange(0, CHUNK)
            x = tl.load(x_ptr + rows[:, None] * stride_xs + cols[None, :], mask=live[:, None], other=0.0)
            x = x.to(tl.float32)
            acc += tl.sum(x * x, axis=1)
        return tl.rsqrt(acc / C + eps)

    @triton.jit
    def head_rope(x_ptr, w_ptr, rows, live, rstd, cos, sin, stride_xs, h,
                  D: tl.constexpr, ROWS: tl.constexpr):
        dcols = tl.arange(0, D)
        x = tl.load(x_ptr + rows[:, None] * stride_xs + h * D + dcols[None, :], mask=live[:, None], other=0.0)
        w = tl.load(w_ptr + h * D + dcols).to(tl.float32)
        n = bf16_round(x.to(tl.float32) * rstd[:, None] * w[None, :])
        x1, x2 = tl.split(tl.reshape(n, (ROWS, D // 2, 2)))
        return bf16_round(tl.interleave(x1 * cos - x2 * sin, x1 * sin + x2 * cos))  # fp32, bf16-exact

    @triton.jit
    def rope_tables(cos_ptr, sin_ptr, rows, live, stride_cs, D: tl.constexpr):
        half = tl.arange(0, D // 2)
        cos = tl.load(cos_ptr + rows[:, None] * stride_cs + 2 * half[None, :], mask=live[:, None], other=0.0)
        sin = tl.load(sin_ptr + rows[:, None] * stride_cs + 2 * half[None, :] + 1, mask=live[:, None], other=0.0)
        return cos.to(tl.float32), sin.to(tl.float32)

    @triton.jit
    def program_rows(x_ptr, cos_ptr, sin_ptr, S, stride_xb, stride_xs, stride_cb, stride_cs, eps,
                     HEADS: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr, CHUNK: tl.constexpr):
        """What both kernels start with (inlined, as every jit helper): this program's rows of
        batch b, which of them exist, the batch's projection, their RMS norm factors and the
        rotary tables for them."""
        blk = tl.program_id(0)
        b = tl.program_id(1)
        rows = blk * ROWS + tl.arange(0, ROWS)
        live = rows < S
        xb = x_ptr + b * stride_xb
        rstd = row_rstd(xb, rows, live, stride_xs, eps, HEADS * D, ROWS, CHUNK)
        cos, sin = rope_tables(cos_ptr + b * stride_cb, sin_ptr + b * stride_cb, rows, live, stride_cs, D)
        return blk, b, rows, live, xb, rstd, cos, sin

    @triton.jit
    def qkprep_q_kernel(x_ptr, w_ptr, cos_ptr, sin_ptr, q8_ptr, qs_ptr, S, stride_xb, stride_xs, stride_cb, stride_cs,
                 stride_ob, stride_os, n_scales, eps,
                 HEADS: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr, CHUNK: tl.constexpr,
                 PER_THREAD: tl.constexpr):
        blk, b, rows, live, xb, rstd, cos, sin = program_rows(x_ptr, cos_ptr, sin_ptr, S, stride_xb, stride_xs,
                                                             stride_cb, stride_cs, eps, HEADS, D, ROWS, CHUNK)
        dcols = tl.arange(0, D)
        G: tl.constexpr = ROWS // 16
        for h in range(HEADS):
            r = head_rope(xb, w_ptr, rows, live, rstd, cos, sin, stride_xs, h, D, ROWS)
            amax = tl.max(tl.abs(r), axis=1)  # (ROWS,)
            if PER_THREAD:  # rows t and t + 8 of every 16 share a scale
                g = tl.max(tl.reshape(amax, (G, 2, 8)), axis=1)  # (G, 8)
                g = tl.maximum(g, 1e-7)
                row_amax = tl.reshape(tl.broadcast_to(tl.reshape(g, (G, 1, 8)), (G, 2, 8)), (ROWS,))
                sc = tl.reshape(g, (G * 8,)) / 127.0
                idx = blk * G * 8 + tl.arange(0, G * 8)
            else:  # the 16 rows of a warp share one
                g = tl.maximum(tl.max(tl.reshape(amax, (G, 16)), axis=1), 1e-7)  # (G,)
                row_amax = tl.reshape(tl.broadcast_to(tl.reshape(g, (G, 1)), (G, 16)), (ROWS,))
                sc = g / 127.0
                idx = blk * G + tl.arange(0, G)
            q = rne(r * (127.0 / row_amax[:, None]))
            q = tl.minimum(tl.maximum(q, -128.0), 127.0).to(tl.int8)
            # rows past S (up to the 64-row padding) are written as zeros: their loads were masked
            tl.store(q8_ptr + b * stride_ob + rows[:, None] * stride_os + h * D + dcols[None, :], q)
            tl.store(qs_ptr + (b * HEADS + h) * n_scales + idx, sc)

    @triton.jit
    def qkprep_k_kernel(x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, sum_ptr, S, stride_xb, stride_xs, stride_cb, stride_cs,
                 stride_ob, stride_os, stride_sb, stride_sp, eps,
                 HEADS: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr, CHUNK: tl.constexpr):
        blk, b, rows, live, xb, rstd, cos, sin = program_rows(x_ptr, cos_ptr, sin_ptr, S, stride_xb, stride_xs,
                                                             stride_cb, stride_cs, eps, HEADS, D, ROWS, CHUNK)
        dcols = tl.arange(0, D)
        for h in range(HEADS):
            r = head_rope(xb, w_ptr, rows, live, rstd, cos, sin, stride_xs, h, D, ROWS)
            tl.store(out_ptr + b * stride_ob + rows[:, None] * stride_os + h * D + dcols[None, :],
                     r.to(tl.bfloat16), mask=live[:, None])
            # masked rows loaded as zeros and stay zeros through norm and rotation
            tl.store(sum_ptr + b * stride_sb + blk * stride_sp + h * D + dcols, tl.sum(r, axis=0))


def available() -> str | None:
    """None when the Triton prep can run, else why not."""
    return None if triton is not None else "triton is not installed (it comes with CUDA builds of PyTorch)"


# rows per program (Q: a multiple of 16, the per-thread scale groups) and warps per program;
# `python -m wan22bot.bench.qk_prep` times other choices (the figures: per-thread scales)
ROWS_Q, WARPS_Q = 32, 4  # H200, 81 frames: 0.793 ms per Q call (16 x 4: 0.817, 64 x 8: 1.271)
ROWS_K, WARPS_K = 32, 4  # 1.744 ms per 81-frame K (with its int8 step) against 2.310 at 64 x 8


def _chunk(channels: int) -> int:
    """Channels per step of the sum of squares: the largest power of two up to 512 dividing them
    (512 for Wan's 5120; the head size 128 always divides)."""
    c = 512
    while channels % c:
        c //= 2
    return c


def _eps(norm: torch.nn.Module, dtype: torch.dtype) -> float:
    eps = getattr(norm, "eps", None)
    return float(torch.finfo(dtype).eps if eps is None else eps)


def _check(x: torch.Tensor, cos: torch.Tensor, heads: int) -> tuple[int, int, int]:
    b, s, c = x.shape
    if c % heads or c // heads != 128:
        raise ValueError(f"qk_prep is built for head size 128 (Wan's); got {c} channels over {heads} heads")
    if x.stride(-1) != 1 or cos.stride(-1) != 1:
        raise ValueError("qk_prep needs the channel axis contiguous")
    if x.dtype != torch.bfloat16:
        raise ValueError(f"qk_prep takes bf16 projections; got {x.dtype}")
    return b, s, c


INT32_MAX = 2**31 - 1


def _fits_int32(x: torch.Tensor, cos: torch.Tensor, out_rows: int) -> bool:
    """Whether every element offset the kernels compute fits in 32 bits: they multiply row index
    by stride in int32 (Triton passes strides below 2**31 as int32), which would wrap past 2**31
    elements, e.g. at 161 frames of 2048x1536 (503,808 tokens x 5120 channels), or sooner when the
    projection is a slice of a fused qkv one. The output is contiguous, `out_rows` rows per batch."""
    def last(t):
        return sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True))

    b, _, c = x.shape
    return max(last(x), last(cos), b * out_rows * c - 1) <= INT32_MAX


def _eager_q(x, weight, eps, cos, sin, heads, per_thread):
    from .custom_attention import rotary
    from .sage_prequant import quantize_q

    n = torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)
    return quantize_q(rotary(n.unflatten(2, (heads, -1)), cos, sin), per_thread)


def _eager_k(x, weight, eps, cos, sin, heads):
    from .custom_attention import rotary

    k = rotary(torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps).unflatten(2, (heads, -1)), cos, sin)
    return k, k.mean(dim=1, keepdim=True)


def _on(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _tables(cos: torch.Tensor, sin: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 or B, S, 1, D) fp32 tables -> (1 or B, S, D) views; the kernels read both with cos's
    strides, so tables laid out differently are copied to one layout."""
    cos, sin = cos.reshape(cos.shape[0], s, -1), sin.reshape(sin.shape[0], s, -1)
    if cos.stride() != sin.stride() or cos.shape != sin.shape:
        cos, sin = cos.contiguous(), sin.contiguous()
    return cos, sin


@torch.library.custom_op("wan22bot::qk_prep_q_int8", mutates_args=())
def q_int8(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor, heads: int,
           per_thread: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """q projection (B, S, H*D) bf16 -> int8 Q (B, ceil(S/64)*64, H, D) and fp32 scales (B, H, n), as
    `quantize_q(rotary(norm_q(x)), per_thread)` gives them. An opaque op for torch.compile."""
    b, s, c = _check(x, cos, heads)
    if not _fits_int32(x, cos, math.ceil(s / CTA_Q) * CTA_Q):
        return _eager_q(x, weight, eps, cos, sin, heads, per_thread)  # correct, slower, and rare
    return launch_q(x, weight, eps, cos, sin, heads, per_thread, ROWS_Q, WARPS_Q)


def launch_q(x, weight, eps, cos, sin, heads, per_thread, rows, warps):
    b, s, c = _check(x, cos, heads)
    d = c // heads
    s_pad = math.ceil(s / CTA_Q) * CTA_Q
    if rows not in (16, 32, 64):
        raise ValueError(f"Q rows per program must be 16, 32 or 64 (multiples of 16 dividing 64); got {rows}")
    q8 = torch.empty(b, s_pad, heads, d, dtype=torch.int8, device=x.device)
    qs = torch.empty(b, heads, _q_scales(s_pad, per_thread), dtype=torch.float32, device=x.device)
    cos, sin = _tables(cos, sin, s)
    with _on(x.device):  # Triton launches on the current device, not the tensors'
        qkprep_q_kernel[(s_pad // rows, b)](
            x, weight, cos, sin, q8, qs, s, x.stride(0), x.stride(1), cos.stride(0) if cos.shape[0] > 1 else 0,
            cos.stride(1), q8.stride(0), q8.stride(1), qs.shape[-1], eps,
            HEADS=heads, D=d, ROWS=rows, CHUNK=_chunk(c), PER_THREAD=per_thread, enable_fp_fusion=False,
            num_warps=warps)
    return q8, qs


def _q_scales(s_pad: int, per_thread: bool) -> int:
    return (s_pad // WARP_Q) * (8 if per_thread else 1)


@q_int8.register_fake
def _(x, weight, eps, cos, sin, heads, per_thread):
    b, s, c = x.shape
    s_pad = math.ceil(s / CTA_Q) * CTA_Q
    return (x.new_empty((b, s_pad, heads, c // heads), dtype=torch.int8),
            x.new_empty((b, heads, _q_scales(s_pad, per_thread)), dtype=torch.float32))


@torch.library.custom_op("wan22bot::qk_prep_k_roped", mutates_args=())
def k_roped(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor,
            heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k projection (B, S, H*D) bf16 -> rotary(norm_k(x)) as (B, S, H, D) bf16, and its mean over the
    sequence (B, 1, H, D) in bf16, as `k.mean(dim=1, keepdim=True)` gives it. An opaque op."""
    b, s, c = _check(x, cos, heads)
    if not _fits_int32(x, cos, s):
        return _eager_k(x, weight, eps, cos, sin, heads)
    return launch_k(x, weight, eps, cos, sin, heads, ROWS_K, WARPS_K)


def launch_k(x, weight, eps, cos, sin, heads, rows, warps):
    b, s, c = _check(x, cos, heads)
    d = c // heads
    out = torch.empty(b, s, heads, d, dtype=torch.bfloat16, device=x.device)
    blocks = math.ceil(s / rows)
    sums = torch.empty(b, blocks, c, dtype=torch.float32, device=x.device)
    cos, sin = _tables(cos, sin, s)
    with _on(x.device):
        qkprep_k_kernel[(blocks, b)](
            x, weight, cos, sin, out, sums, s, x.stride(0), x.stride(1), cos.stride(0) if cos.shape[0] > 1 else 0,
            cos.stride(1), out.stride(0), out.stride(1), sums.stride(0), sums.stride(1), eps,
            HEADS=heads, D=d, ROWS=rows, CHUNK=_chunk(c), enable_fp_fusion=False, num_warps=warps)
    mean = (sums.sum(dim=1) / s).to(torch.bfloat16).view(b, 1, heads, d)
    return out, mean


@k_roped.register_fake
def _(x, weight, eps, cos, sin, heads):
    b, s, c = x.shape
    return (x.new_empty((b, s, heads, c // heads)), x.new_empty((b, 1, heads, c // heads)))


class TritonPrepSageProcessor:
    """The `sage-fused` self-attention with Q and K prepared by the Triton kernels above; cross
    attention (no rotary embedding) goes through the plain processor."""

    def __init__(self, per_thread: bool | None = None, fallback=None):
        from .custom_attention import CoreAttnProcessor
        from .sage_prequant import DEFAULT_PER_THREAD, sage_fused_thread_core, sage_fused_warp_core

        per_thread = DEFAULT_PER_THREAD if per_thread is None else per_thread
        self.per_thread = per_thread
        # the attention core without the prep: what split mode (gpus/split.py) wraps, as it does a
        # CoreAttnProcessor's, since the prep's K mean would only cover one device's tokens there
        self.core = sage_fused_thread_core if per_thread else sage_fused_warp_core
        self.fallback = fallback or CoreAttnProcessor(self.core)
        # K's int8 and V's fp8 steps by engine/kv_quant.py's kernels; False: torch code, compiled
        # (what bench.block_ab alternates with)
        self.kv_kernels = True

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if (encoder_hidden_states is not None or rotary_emb is None or attention_mask is not None
                or hidden_states.dtype != torch.bfloat16):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if getattr(attn, "fused_projections", False):
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        return self.attend(attn, q, k, v, rotary_emb)

    def attend(self, attn, q, k, v, rotary_emb=None, attention_mask=None, cross=False):
        """Everything after the q/k/v projections (B, S, H*D), through the output projection."""
        if cross or rotary_emb is None or attention_mask is not None or q.dtype != torch.bfloat16:
            return self.fallback.attend(attn, q, k, v, rotary_emb, attention_mask, cross)
        from .kv_quant import k_int8, v_fp8
        from .sage_prequant import quantize_v, sage_sm90_prequant

        heads = attn.heads
        cos, sin = rotary_emb
        q8, qs = q_int8(q, attn.norm_q.weight, _eps(attn.norm_q, q.dtype), cos, sin, heads, self.per_thread)
        kr, km = k_roped(k, attn.norm_k.weight, _eps(attn.norm_k, k.dtype), cos, sin, heads)
        if self.per_thread or not self.kv_kernels:  # the Triton int8 step of K writes per-block scales only
            k8, ks, _ = quantize_k(kr, self.per_thread, mean=km)
        else:
            k8, ks = k_int8(kr, km)
        if self.kv_kernels:
            v8, vs = v_fp8(v, heads)
        else:
            v8, vs = quantize_v(v.unflatten(2, (heads, -1)))
        s = q.shape[1]
        out = sage_sm90_prequant(q8, k8, v8, qs, ks, vs, s, kr.shape[-1] ** -0.5, self.per_thread)
        return attn.to_out[1](attn.to_out[0](out.flatten(2, 3).type_as(q)))


def install(model: torch.nn.Module, per_thread: bool | None = None, kv_kernels: bool | None = None,
            device: torch.device | None = None) -> int:
    """Give every attention block of `model` the Triton-prepared `sage-fused` processor (Q/K scales
    per thread or per warp; None: as `sage-fused` itself, sage_prequant.DEFAULT_PER_THREAD), with
    K's int8 and V's fp8 steps by engine/kv_quant.py's kernels where they pass their check on
    `device`, the device the model will run on (None: where its parameters are now; in swap and
    offload modes they are parked on the CPU at this point), or as `kv_kernels` says."""
    from .custom_attention import install_processors

    if kv_kernels is None:
        from . import kv_quant

        kv_kernels = kv_quant.checked(device if device is not None else next(model.parameters()).device) is None

    def make():
        proc = TritonPrepSageProcessor(per_thread)
        proc.kv_kernels = kv_kernels
        return proc

    return install_processors(model, make)



def _dequantize_q(q8: torch.Tensor, qs: torch.Tensor, per_thread: bool) -> torch.Tensor:
    from .sage_prequant import scale_index

    idx = scale_index(q8.shape[1], "q", per_thread).to(qs.device)
    return q8.float() * qs[:, :, idx].transpose(1, 2)[..., None]


SELF_CHECK_MAX_ERROR = 0.01  # a correct kernel differs from eager PyTorch only on rounding ties


@torch.no_grad()
def self_check(device: torch.device, heads: int = 4, frames: int = 3, seed: int = 0) -> float:
    """Both kernels once on small random inputs against eager PyTorch (RMSNorm, RoPE, the
    quantisers): the larger relative error of the dequantised Q and of the rotated K. Raises what
    the kernels raise (a Triton that cannot compile for this GPU, say)."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    from .custom_attention import rotary
    from .sage_prequant import DEFAULT_PER_THREAD, quantize_q

    g = torch.Generator(device="cpu").manual_seed(seed)
    c = heads * 128
    cos, sin = WanRotaryPosEmbed(128, (1, 2, 2), 1024)(torch.zeros(1, 16, frames, 10, 14))
    s = cos.shape[1]
    x = (torch.randn(1, s, c, generator=g) * (1 + 3 * torch.rand(c, generator=g))).to(device, torch.bfloat16)
    norm = torch.nn.RMSNorm(c, eps=1e-6)
    norm.weight.copy_(1 + 0.3 * torch.randn(c, generator=g))
    norm = norm.to(device, torch.bfloat16)
    cos, sin = cos.to(device), sin.to(device)
    ref = rotary(norm(x).unflatten(2, (heads, -1)), cos, sin)
    q8, qs = q_int8(x, norm.weight, 1e-6, cos, sin, heads, DEFAULT_PER_THREAD)
    r8, rs = quantize_q(ref, DEFAULT_PER_THREAD)
    deq, want = _dequantize_q(q8, qs, DEFAULT_PER_THREAD), _dequantize_q(r8, rs, DEFAULT_PER_THREAD)
    kr, km = k_roped(x, norm.weight, 1e-6, cos, sin, heads)
    errs = [float((deq - want).norm() / want.norm()),
            float((kr.float() - ref.float()).norm() / ref.float().norm()),
            float((km.float() - ref.float().mean(dim=1, keepdim=True)).norm()
                  / ref.float().mean(dim=1, keepdim=True).norm())]
    return max(errs)


_CHECKS: dict[str, float | str] = {}  # device -> self-check error or why it raised, once per process


def wanted(setting: str, backend: str, device: torch.device, checker=self_check,
           dtype: torch.dtype = torch.bfloat16) -> tuple[bool, str]:
    """`[model] qk_prep` for an expert whose attention is `backend`: (install the Triton prep?, why).

    "compiled": never (torch.compile writes the kernels). "auto": when the backend is `sage-fused`
    on a CUDA device computing in bf16, Triton imports, and the kernels pass a self-check against eager PyTorch (run
    once per process and device). "triton": the same, but anything missing or failing is an error.
    """
    if setting == "compiled":
        return False, "qk_prep = compiled"
    why = None
    if backend != "sage-fused":
        why = f"it prepares sage-fused's inputs and the attention is {backend}"
    elif device.type != "cuda":
        why = "it needs a CUDA device"
    elif dtype != torch.bfloat16:
        why = f"its kernels take bf16 projections and the model computes in {str(dtype).removeprefix('torch.')}"
    else:
        why = available()
    if why is None:
        from .kernel_checks import checked_once

        why = checked_once(_CHECKS, device, checker, SELF_CHECK_MAX_ERROR)
        if why is None:
            from . import kv_quant

            kv = kv_quant.checked(device)
            return True, (f"Triton kernels for Q/K norm, RoPE and int8, self-check error {_CHECKS[str(device)]:.4f}; "
                          + ("K's int8 and V's fp8 steps too, bit-exact" if kv is None
                             else f"K's int8 and V's fp8 steps compiled ({kv})"))
    if setting == "triton":
        from ..errors import ModelError

        raise ModelError(f"qk_prep = \"triton\" cannot run here: {why}; use \"auto\" or \"compiled\"")
    return False, why
