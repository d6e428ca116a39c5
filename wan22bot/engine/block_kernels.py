"""Residual add + LayerNorm + modulation + fp8 cast, and GELU + fp8 cast, each in one hand-written
Triton kernel (`[model] block_kernels`).

With static fp8 scales, every input of a transformer block's fp8 matmuls is an elementwise step
away from what the block already has in memory: the LayerNorm (and the residual add before it) for
the q/k/v, cross-attention q and first FFN projections, the tanh GELU for the second. torch.compile
writes those steps as kernels of its own, but in an 81-frame forward on an H200 they ran far from
memory speed (docs/perf/2026-11-29-h200-round5-profile81.json, per block): the three LayerNorm
kernels 1.44, 1.28 and 1.19 ms (looped reductions that read each 5120-wide row twice and write one
fp8 copy per consumer), the GELU kernel 1.94 ms (libdevice's tanh makes it compute-bound).

- `residual_norm_fp8`: per row, optionally x + a or x + a * gate (rounded to bf16 and written, the
  new residual stream), then the LayerNorm over the channels in fp32, then y * m + c (the adaLN
  modulation with m = 1 + scale, c = shift, or norm2's own weight and bias), rounded to bf16 as the
  block's `.type_as` does, then the fp8 step of FP8Linear's static scaling: clamp(v / scale) to
  e4m3. One fp8 copy, shared by q, k and v. A row's 5120 channels are held as 4096 + 1024, two
  power-of-two tiles, so no lane is masked off; the modulation vectors stay in registers over the
  program's rows.
- `gelu_fp8`: GELU(tanh approximation) as h * sigmoid(2u), the same function as
  0.5 * h * (1 + tanh(u)), with one exponential, then rounded to bf16 and cast like the above.

Roundings follow eager PyTorch (bf16 where the block rounds, fp8 round-to-nearest-even); on a GPU
the casts are the hardware's, under Triton's interpreter (whose casts truncate) they are written
with integer and fp32 operations, which is how the tests on the CPU compare them with eager
PyTorch. On the GPU a one-call self-check at load does the same.
"""

from __future__ import annotations

import os

import torch

from .fp8_linear import E4M3_MAX, quantize_static
from .qk_prep import _on

try:  # CUDA builds of torch ship Triton; without it `available()` says why
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None

if triton is not None:
    from .qk_prep import bf16_round, rne

    @triton.jit
    def e4m3_round(y):
        """fp32 within e4m3's range -> the nearest e4m3 value (ties to even), kept in fp32: the
        quantum is 2**(exponent - 3), and 2**-9 below e4m3's smallest normal (2**-6)."""
        e = ((y.to(tl.uint32, bitcast=True) >> 23) & 0xFF).to(tl.int32)
        e = tl.maximum(e, 127 - 6)
        quantum = ((e - 3) << 23).to(tl.float32, bitcast=True)
        return rne(y / quantum) * quantum

    @triton.jit
    def as_bf16(x, HW: tl.constexpr):
        if HW:
            return x.to(tl.bfloat16).to(tl.float32)
        else:
            return bf16_round(x)

    @triton.jit
    def as_e4m3(v, inv, HW: tl.constexpr):
        v = tl.minimum(tl.maximum(v * inv, -448.0), 448.0)
        if HW:
            return v.to(tl.float8e4nv)
        else:
            r = e4m3_round(v)
            # the rounding's add and subtract turn -0 into +0; the cast keeps the sign of zero
            return tl.where(r == 0.0, v * 0.0, r).to(tl.float8e4nv)

    @triton.jit
    def _vec(ptr, cols, mask):
        return tl.load(ptr + cols, mask=mask, other=0.0).to(tl.float32)[None, :]

    @triton.jit
    def _rows(x_ptr, a_ptr, b, S, blk, step, ca, cb, all_a, mb, C: tl.constexpr, R: tl.constexpr,
              STEPS: tl.constexpr, RESID: tl.constexpr):
        """One step's R rows of x (and of a): fp32 tiles, masked past S, past C and past the
        program's last step (which a prefetch asks for)."""
        rows = (blk * STEPS + step) * R + tl.arange(0, R)
        live = ((rows < S) & (step < STEPS))[:, None]
        off = (b.to(tl.int64) * S + rows.to(tl.int64))[:, None] * C
        la, lb = live & all_a[None, :], live & mb[None, :]
        xa = tl.load(x_ptr + off + ca[None, :], mask=la, other=0.0).to(tl.float32)
        xb = tl.load(x_ptr + off + cb[None, :], mask=lb, other=0.0).to(tl.float32)
        if RESID > 0:
            aa = tl.load(a_ptr + off + ca[None, :], mask=la, other=0.0).to(tl.float32)
            ab = tl.load(a_ptr + off + cb[None, :], mask=lb, other=0.0).to(tl.float32)
        else:
            aa = xa
            ab = xb
        return off, la, lb, xa, xb, aa, ab

    @triton.jit
    def residual_norm_fp8_kernel(x_ptr, a_ptr, g_ptr, m_ptr, c_ptr, inv_ptr, xo_ptr, q_ptr, S, stride_vb, eps,
                                 C: tl.constexpr, CA: tl.constexpr, CB: tl.constexpr, R: tl.constexpr,
                                 STEPS: tl.constexpr, RESID: tl.constexpr, PREFETCH: tl.constexpr,
                                 HW: tl.constexpr):
        """Rows [blk * R * STEPS, ...) of batch b, R at a time. RESID: 0 none, 1 x + a, 2 x + a * g.
        PREFETCH: the next step's rows are loaded before this step's arithmetic."""
        blk = tl.program_id(0)
        b = tl.program_id(1)
        ca = tl.arange(0, CA)
        cb = CA + tl.arange(0, CB)
        mb = cb < C
        all_a = ca < CA
        m_a, m_b = _vec(m_ptr + b * stride_vb, ca, all_a), _vec(m_ptr + b * stride_vb, cb, mb)
        c_a, c_b = _vec(c_ptr + b * stride_vb, ca, all_a), _vec(c_ptr + b * stride_vb, cb, mb)
        if RESID == 2:
            g_a, g_b = _vec(g_ptr + b * stride_vb, ca, all_a), _vec(g_ptr + b * stride_vb, cb, mb)
        inv = tl.load(inv_ptr)
        if PREFETCH:
            off, la, lb, xa, xb, aa, ab = _rows(x_ptr, a_ptr, b, S, blk, 0, ca, cb, all_a, mb, C, R, STEPS, RESID)
        for step in range(STEPS):
            if PREFETCH:
                n_off, n_la, n_lb, n_xa, n_xb, n_aa, n_ab = _rows(x_ptr, a_ptr, b, S, blk, step + 1, ca, cb, all_a,
                                                                  mb, C, R, STEPS, RESID)
            else:
                off, la, lb, xa, xb, aa, ab = _rows(x_ptr, a_ptr, b, S, blk, step, ca, cb, all_a, mb, C, R, STEPS,
                                                    RESID)
            if RESID > 0:
                if RESID == 2:
                    aa = aa * g_a
                    ab = ab * g_b
                xa = as_bf16(xa + aa, HW)
                xb = as_bf16(xb + ab, HW)
                tl.store(xo_ptr + off + ca[None, :], xa.to(tl.bfloat16), mask=la)
                tl.store(xo_ptr + off + cb[None, :], xb.to(tl.bfloat16), mask=lb)
            mean = (tl.sum(xa, axis=1) + tl.sum(xb, axis=1)) / C
            da = xa - mean[:, None]
            db = tl.where(mb[None, :], xb - mean[:, None], 0.0)
            var = (tl.sum(da * da, axis=1) + tl.sum(db * db, axis=1)) / C
            rstd = (1.0 / tl.sqrt(var + eps))[:, None]
            ya = as_bf16(da * rstd * m_a + c_a, HW)
            yb = as_bf16(db * rstd * m_b + c_b, HW)
            tl.store(q_ptr + off + ca[None, :], as_e4m3(ya, inv, HW), mask=la)
            tl.store(q_ptr + off + cb[None, :], as_e4m3(yb, inv, HW), mask=lb)
            if PREFETCH:
                off, la, lb, xa, xb, aa, ab = n_off, n_la, n_lb, n_xa, n_xb, n_aa, n_ab

    @triton.jit
    def gelu_fp8_kernel(h_ptr, inv_ptr, q_ptr, n, BLOCK: tl.constexpr, FAST_DIV: tl.constexpr, HW: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        live = offs < n
        h = tl.load(h_ptr + offs, mask=live, other=0.0).to(tl.float32)
        u = 0.7978845608028654 * (h + 0.044715 * h * h * h)
        if FAST_DIV:  # the hardware's approximate division (2 ulp), not IEEE's
            g = tl.fdiv(h, 1.0 + tl.exp(-2.0 * u))
        else:
            g = h / (1.0 + tl.exp(-2.0 * u))
        g = as_bf16(g, HW)
        tl.store(q_ptr + offs, as_e4m3(g, tl.load(inv_ptr), HW), mask=live)


def available() -> str | None:
    """None when the kernels can run, else why not."""
    return None if triton is not None else "triton is not installed (it comes with CUDA builds of PyTorch)"


# The norm kernel's rows per step, steps per program, warps and prefetching, per kind of call
# (0: no residual add, 1: x + a, 2: x + a * gate); the GELU kernel's elements and warps per program
# and division. `python -m wan22bot.bench.block_kernels` times other choices. H200, 81 frames
# (docs/perf/2026-11-29-h200-round8-block-kernels81-b.json): norm 0.526 ms (compiled, three
# copies: 1.669), x + a 0.866 (1.146), x + a * gate 0.824 (1.185), GELU 1.114 (1.658).
NORM_CHOICE = {0: "1x32x4p", 1: "1x8x4", 2: "1x32x4p"}
GELU_CHOICE = "1024x4f"


def parse_norm_choice(choice: str) -> tuple[int, int, int, bool]:
    """"RxSTEPSxWARPS" with a trailing "p" for prefetching -> (r, steps, warps, prefetch)."""
    prefetch = choice.endswith("p")
    r, steps, warps = (int(v) for v in choice.rstrip("p").split("x"))
    return r, steps, warps, prefetch


def parse_gelu_choice(choice: str) -> tuple[int, int, bool]:
    """"BLOCKxWARPS" with a trailing "f" for the approximate division -> (block, warps, fast_div)."""
    fast = choice.endswith("f")
    block, warps = (int(v) for v in choice.rstrip("f").split("x"))
    return block, warps, fast


def _hw(device: torch.device) -> bool:
    """The hardware's casts on a GPU; written-out rounding under Triton's interpreter."""
    return device.type == "cuda" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")


def _tiles(c: int) -> tuple[int, int]:
    """The row's channels as two power-of-two tiles: 5120 = 4096 + 1024, 3072 = 2048 + 1024; a
    power of two splits in halves. The second tile masks whatever the first leaves over."""
    ca = 1 << (c.bit_length() - 1)
    if ca == c:
        ca //= 2
    rest = c - ca
    return ca, 1 << (rest - 1).bit_length()


def _vector(v: torch.Tensor, b: int, c: int) -> torch.Tensor:
    """A per-channel vector as (1 or B, C) fp32 contiguous rows."""
    v = v.reshape(-1, c).float()
    if v.shape[0] not in (1, b):
        raise ValueError(f"a modulation vector of {v.shape[0]} rows for a batch of {b}")
    return v.contiguous()



def _bf16_rows(x: torch.Tensor, what: str) -> torch.Tensor:
    """`x` as the kernels read it: bf16, contiguous (a strided view is copied once; the kernels
    index rows by position)."""
    if x.dtype != torch.bfloat16:
        raise ValueError(f"{what} takes bf16; got {x.dtype}")
    return x.contiguous()


@torch.library.custom_op("wan22bot::norm_fp8", mutates_args=())
def norm_fp8(x: torch.Tensor, m: torch.Tensor, c: torch.Tensor, inv_scale: torch.Tensor, eps: float) -> torch.Tensor:
    """(B, S, C) bf16 -> e4m3(clamp(bf16(layer_norm(x) * m + c) * inv_scale, +-448)), m and c
    (1 or B, 1, C) or (C,). An opaque op for torch.compile."""
    return launch_norm(x, None, None, m, c, inv_scale, eps, NORM_CHOICE[0])[1]


@norm_fp8.register_fake
def _(x, m, c, inv_scale, eps):
    return x.new_empty(x.shape, dtype=torch.float8_e4m3fn)


@torch.library.custom_op("wan22bot::residual_norm_fp8", mutates_args=())
def residual_norm_fp8(x: torch.Tensor, a: torch.Tensor, gate: torch.Tensor | None, m: torch.Tensor,
                      c: torch.Tensor, inv_scale: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, C) bf16 residual stream and addend -> (new, norm_fp8(new, m, c, inv_scale, eps)) with
    new = bf16(x + a * gate), or bf16(x + a) when gate is None. An opaque op for torch.compile."""
    return launch_norm(x, a, gate, m, c, inv_scale, eps, NORM_CHOICE[1 if gate is None else 2])


@residual_norm_fp8.register_fake
def _(x, a, gate, m, c, inv_scale, eps):
    return x.new_empty(x.shape), x.new_empty(x.shape, dtype=torch.float8_e4m3fn)


def launch_norm(x, a, gate, m, c, inv_scale, eps, choice):
    """The norm kernel with `choice` (parse_norm_choice); returns (the new stream, or None
    without an addend; the e4m3 tensor)."""
    r, steps, warps, prefetch = parse_norm_choice(choice)
    x = _bf16_rows(x, "the norm kernel")
    if a is not None:
        a = _bf16_rows(a, "the norm kernel")
        if a.shape != x.shape:
            raise ValueError(f"the norm kernel: the addend {tuple(a.shape)} is not the stream's {tuple(x.shape)}")
    if x.dim() != 3:
        raise ValueError(f"the norm kernel takes (B, S, C); got {tuple(x.shape)}")
    b, s, ch = x.shape
    m, c = _vector(m, b, ch), _vector(c, b, ch)
    g = _vector(gate, b, ch) if gate is not None else m
    if not (m.shape[0] == c.shape[0] == g.shape[0]):
        m, c, g = (v.expand(b, ch).contiguous() for v in (m, c, g))
    q = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    xo = x.new_empty(x.shape) if a is not None else None
    ca, cb = _tiles(ch)
    resid = 0 if a is None else 1 if gate is None else 2
    with _on(x.device):
        residual_norm_fp8_kernel[(triton.cdiv(s, r * steps), b)](
            x, a if a is not None else x, g, m, c, inv_scale.float().reshape(1), xo if xo is not None else x, q, s,
            ch if m.shape[0] > 1 else 0, eps, C=ch, CA=ca, CB=cb, R=r, STEPS=steps, RESID=resid,
            PREFETCH=prefetch, HW=_hw(x.device), enable_fp_fusion=False, num_warps=warps)
    return xo, q


@torch.library.custom_op("wan22bot::gelu_fp8", mutates_args=())
def gelu_fp8(h: torch.Tensor, inv_scale: torch.Tensor) -> torch.Tensor:
    """bf16 -> e4m3(clamp(bf16(gelu_tanh(h)) * inv_scale, +-448)), any shape. An opaque op."""
    return launch_gelu(h, inv_scale, GELU_CHOICE)


def launch_gelu(h, inv_scale, choice):
    """The GELU kernel with `choice` (parse_gelu_choice)."""
    block, warps, fast_div = parse_gelu_choice(choice)
    h = _bf16_rows(h, "gelu_fp8")
    q = torch.empty(h.shape, dtype=torch.float8_e4m3fn, device=h.device)
    n = h.numel()
    with _on(h.device):
        gelu_fp8_kernel[(triton.cdiv(n, block),)](h, inv_scale.float().reshape(1), q, n, BLOCK=block,
                                                  FAST_DIV=fast_div, HW=_hw(h.device), num_warps=warps)
    return q


@gelu_fp8.register_fake
def _(h, inv_scale):
    return h.new_empty(h.shape, dtype=torch.float8_e4m3fn)


# --- eager PyTorch: what the kernels stand for, written as the block and FP8Linear compute it ---

def eager_residual_norm(x, a, gate, m, c, inv_scale, eps):
    if a is not None:
        x = (x.float() + (a * gate if gate is not None else a.float())).to(x.dtype)
    y = torch.nn.functional.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    return x, quantize_static((y * m + c).to(x.dtype), inv_scale)


def eager_gelu(h, inv_scale):
    return quantize_static(torch.nn.functional.gelu(h, approximate="tanh"), inv_scale)


SELF_CHECK_MAX_ERROR = 0.01  # one e4m3 step is 6-12%; a correct kernel differs only on ties


@torch.no_grad()
def self_check(device: torch.device, channels: int = 5120, rows: int = 67, seed: int = 0) -> float:
    """The kernels once on random rows against eager PyTorch: the largest relative error of the
    dequantised outputs (and of the new residual stream). Raises what the kernels raise."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    x = rnd(1, rows, channels, scale=4.0).to(torch.bfloat16)
    a = rnd(1, rows, channels).to(torch.bfloat16)
    gate, m, c = rnd(1, 1, channels), 1 + rnd(1, 1, channels, scale=0.2), rnd(1, 1, channels, scale=0.2)
    inv = torch.tensor(E4M3_MAX / 6.0, device=device)

    def err(got, want):
        got, want = got.float(), want.float()
        return float((got - want).norm() / want.norm().clamp_min(1e-12))

    errs = []
    errs.append(err(norm_fp8(x, m, c, inv, 1e-6), eager_residual_norm(x, None, None, m, c, inv, 1e-6)[1]))
    for gg in (None, gate):
        xo, q = residual_norm_fp8(x, a, gg, m, c, inv, 1e-6)
        wx, wq = eager_residual_norm(x, a, gg, m, c, inv, 1e-6)
        errs += [err(xo, wx), err(q, wq)]
    h = rnd(rows, 3 * channels, scale=2.0).to(torch.bfloat16)
    errs.append(err(gelu_fp8(h, inv), eager_gelu(h, inv)))
    return max(errs)


_CHECKS: dict[str, float | str] = {}  # device -> self-check error or why it raised, once per process


def checked(device: torch.device, checker=self_check) -> str | None:
    """None when the kernels passed their self-check on `device` (run once per process), else why not."""
    from .kernel_checks import checked_once

    return available() or checked_once(_CHECKS, device, checker, SELF_CHECK_MAX_ERROR)


def check_error(device: torch.device) -> float | None:
    err = _CHECKS.get(str(device))
    return err if isinstance(err, float) else None
