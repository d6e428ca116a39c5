"""FP8 (e4m3) self-attention for Wan 2.2 on Hopper, through cuDNN's fused FP8 SDPA.

The experts' self-attention core gets q, k, v as bf16 (B, S, H, D). We quantise each of them with
one per-tensor scale, run cuDNN's FP8 flash-attention graph (`pygraph.sdpa_fp8` from the
`nvidia-cudnn-frontend` package, Python module `cudnn`) and dequantise the FP8 output back to
bf16. Cross-attention (512 text tokens) stays on PyTorch SDPA through `CoreAttnProcessor`.

Scale conventions (cuDNN's names):

* ``descale_x`` multiplies the stored FP8 code back to the real value: ``x ~= x_fp8 * descale_x``.
  We use the per-tensor ``descale_x = amax(|x|) / 448`` (448 is e4m3's largest finite value), so
  the largest element maps to +-448 and nothing saturates.
* ``scale_s`` / ``descale_s`` quantise the softmax probabilities before the P @ V product. The
  kernel rounds ``exp(s - rowmax)`` (in [0, 1]) times ``scale_s`` to e4m3; the frontend's own
  documentation gives 448 as the bound for E4M3 without dropout, so ``scale_s = 448`` and
  ``descale_s = 1 / 448``.
* ``scale_o`` multiplies the real output before it is rounded to e4m3 (see `_O_HEADROOM`).

Hopper's FP8 kernel only writes an FP8 output (bf16 output from the FP8 kernel needs Blackwell and
cuDNN 9.13+), hence the explicit dequantisation at the end. All amax/scale arithmetic stays on
the GPU as 1-element tensors: the hot path never synchronises with the host. The scaled casts
run as one fused Triton kernel each when Triton is installed (eager torch otherwise).

The pure-torch emulation (`quantize_per_tensor`, `emulated_fp8_sdpa`) reproduces the same scale
bookkeeping in fp32 so it can be unit-tested on a CPU and compared with the kernel on a GPU.

The accuracy and speed self-check lives beside the other benchmarks: run
``python -m wan22bot.bench.fp8_attention --tokens 27664 82992`` on the GPU machine (JSON on stdout).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ModelError

FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
# Amax values below this are treated as an all-zero tensor (scale 1): it keeps amax / 448 a normal
# fp32 number, so no division by zero or by a denormal can happen.
_TINY_AMAX = 1e-30
# Softmax probabilities lie in [0, 1]; 448 maps 1 onto e4m3's largest finite value.
P_SCALE = E4M3_MAX
# Output bound. O = sum_j w_j V_j / sum_j w_j is a convex combination of V's rows, so
# |O| <= max|V| = amax_v (exactly, since the dequantised V never exceeds its amax). The kernel
# rounds the weights w_j to e4m3 before the P @ V product; each may round up by at most half an
# e4m3 step (2**-4 relative), so |O| <= (1 + 2**-4) * amax_v in the worst case. A power-of-two
# headroom of 2 covers that with margin: scale_o = 448 / (2 * amax_v) and the output is
# dequantised with descale_o = 2 * amax_v / 448. Precision is unaffected (e4m3's relative step is
# the same in every binade); only the lowest binade moves into the subnormal range.
_O_HEADROOM = 2.0
# Elements per slice in the eager (no Triton) quantise / dequantise loops: bounds the fp32
# temporaries to 256 MiB even at 82,992 tokens x 40 heads x 128 (425 M elements).
_SLICE_ELEMS = 1 << 26
# cuDNN's own FP8 SDPA tests require backend 9.14.0 or newer.
MIN_CUDNN = (9, 14, 0)
_HEAD_DIM_MULTIPLE = 16  # FP8 SDPA needs the head dim to be a multiple of 16


# ---------------------------------------------------------------------------------------------
# Quantisation helpers (device-agnostic; used by the kernel path and by the emulation)
# ---------------------------------------------------------------------------------------------


def _amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| as a 0-dim fp32 tensor, on x's device, without a full-size |x| temporary."""
    lo, hi = torch.aminmax(x.detach())
    return torch.maximum(-lo, hi).float()


def descale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """amax / 448, or 1 for an (effectively) all-zero tensor. Same shape and device as `amax`."""
    safe = torch.where(amax > _TINY_AMAX, amax, torch.full_like(amax, E4M3_MAX))
    return safe / E4M3_MAX


def _scaled_copy_torch(src: torch.Tensor, factor: torch.Tensor, out: torch.Tensor, clamp: float | None) -> torch.Tensor:
    """Eager-torch `_scaled_copy`: flat slices so the fp32 temporaries stay small."""
    flat_src = src.reshape(-1)
    flat_out = out.view(-1)
    f = factor.reshape(())
    for start in range(0, flat_src.numel(), _SLICE_ELEMS):
        piece = flat_src[start : start + _SLICE_ELEMS]
        # never scale `src` in place (.float() of an fp32 tensor is the tensor itself)
        block = piece * f if piece.dtype == torch.float32 else piece.float().mul_(f)
        if clamp is not None:
            block.clamp_(-clamp, clamp)
        flat_out[start : start + _SLICE_ELEMS].copy_(block)
    return out


_triton_state: dict[str, Any] = {}


def _triton_scaled_cast():
    """A fused Triton kernel for `_scaled_copy` (one read, one write), or None without Triton.

    The eager version makes four passes over fp32 temporaries; at 82,992 tokens that costs about
    15 ms per attention call on an H100 against about 4 ms fused.
    """
    if "kernel" not in _triton_state:
        kernel = None
        try:
            import triton  # type: ignore[import-not-found]
            import triton.language as tl  # type: ignore[import-not-found]

            @triton.jit
            def scaled_cast(src, dst, factor, n, clamp_val, CLAMP: tl.constexpr, BLOCK: tl.constexpr):
                offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
                mask = offs < n
                y = tl.load(src + offs, mask=mask, other=0.0).to(tl.float32) * tl.load(factor)
                if CLAMP:
                    y = tl.minimum(tl.maximum(y, -clamp_val), clamp_val)
                tl.store(dst + offs, y.to(dst.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)

            kernel = (triton, scaled_cast)
        except Exception:  # no Triton (CPU builds of torch): the eager path serves
            kernel = None
        _triton_state["kernel"] = kernel
    return _triton_state["kernel"]


_TRITON_BLOCK = 4096


def _scaled_copy(src: torch.Tensor, factor: torch.Tensor, out: torch.Tensor, clamp: float | None) -> torch.Tensor:
    """out = src * factor (fp32 arithmetic, optionally clamped to +-clamp), cast to out.dtype.

    `src` and `out` are contiguous tensors of equal size; `factor` is a 1-element fp32 tensor on
    their device. Casting fp32 to e4m3 rounds to nearest even; torch's cast does not saturate
    (out-of-range becomes NaN), hence the clamp. On CUDA a fused Triton kernel does it in one
    pass; both paths give bit-identical results.
    """
    found = _triton_scaled_cast() if src.is_cuda and src.numel() else None
    if found is None:
        return _scaled_copy_torch(src, factor, out, clamp)
    triton, kernel = found
    n = src.numel()
    grid = (triton.cdiv(n, _TRITON_BLOCK),)
    with torch.cuda.device(src.device):
        kernel[grid](
            src,
            out,
            factor.reshape(1),
            n,
            float(clamp) if clamp is not None else 0.0,
            CLAMP=clamp is not None,
            BLOCK=_TRITON_BLOCK,
            num_warps=8,
        )
    return out


def quantize_with_descale(x: torch.Tensor, descale: torch.Tensor) -> torch.Tensor:
    """e4m3 codes of x for a given descale (x ~= codes * descale); same shape, contiguous."""
    out = torch.empty(x.shape, dtype=FP8, device=x.device)
    return _scaled_copy(x.contiguous(), descale.reciprocal(), out, E4M3_MAX)


def quantize_per_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor e4m3 quantisation: returns (x_fp8, scale) with x ~= x_fp8.float() * scale.

    `scale` is amax(|x|) / 448 as a 1-element fp32 tensor on x's device (1 for an all-zero tensor),
    i.e. what cuDNN calls the descale factor. No host synchronisation.
    """
    descale = descale_from_amax(_amax(x)).reshape(1)
    return quantize_with_descale(x, descale), descale


def dequantize(x_fp8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """x_fp8 * scale in `dtype` (computed in fp32)."""
    out = torch.empty(x_fp8.shape, dtype=dtype, device=x_fp8.device)
    return _scaled_copy(x_fp8.contiguous(), scale, out, None)


# ---------------------------------------------------------------------------------------------
# Pure-torch emulation of the FP8 kernel's numerics
# ---------------------------------------------------------------------------------------------


def emulated_fp8_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    quantize_p: bool = True,
    quantize_output: bool = True,
    heads_per_chunk: int = 8,
) -> torch.Tensor:
    """FP8 attention emulated in fp32: (B, S, H, D) in, (B, S, H, D) out in q's dtype.

    Mirrors the kernel's scale bookkeeping: q, k, v quantised per tensor (amax / 448), scores from
    the dequantised values times 1/sqrt(D), P = exp(s - rowmax) rounded to e4m3 with scale 448,
    O = (P_q @ V) / rowsum(P) (the row sum from the unrounded P, as cuDNN's reference does), then O
    rounded to e4m3 with scale_o = 448 / (2 * amax_v) and dequantised. The kernel works on blocks
    of keys with an online softmax, so its P is relative to running row maxima; the rounding errors
    are of the same size, not bit-identical. Heads are processed in chunks to bound memory.
    """
    if not (q.dim() == k.dim() == v.dim() == 4):
        raise ValueError("emulated_fp8_sdpa expects (B, S, H, D) tensors")
    out_dtype = q.dtype
    q8, dq = quantize_per_tensor(q)
    k8, dk = quantize_per_tensor(k)
    v8, dv = quantize_per_tensor(v)
    b, s_q, h, d = q.shape
    attn_scale = 1.0 / math.sqrt(d)
    o = torch.empty((b, s_q, h, v.shape[-1]), dtype=torch.float32, device=q.device)
    for h0 in range(0, h, heads_per_chunk):
        hs = slice(h0, min(h, h0 + heads_per_chunk))
        qh = (q8[:, :, hs].float() * dq).transpose(1, 2)
        kh = (k8[:, :, hs].float() * dk).transpose(1, 2)
        vh = (v8[:, :, hs].float() * dv).transpose(1, 2)
        s = torch.matmul(qh, kh.transpose(-1, -2)) * attn_scale
        p = torch.exp(s - s.amax(dim=-1, keepdim=True))
        denom = p.sum(dim=-1, keepdim=True)
        if quantize_p:
            p = (p * P_SCALE).to(FP8).float() / P_SCALE
        o[:, :, hs] = (torch.matmul(p, vh) / denom).transpose(1, 2)
    if not quantize_output:
        return o.to(out_dtype)
    descale_o = dv * _O_HEADROOM
    return dequantize(quantize_with_descale(o, descale_o), descale_o, out_dtype)


def reference_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Plain SDPA of (B, S, H, D) tensors computed in `dtype` (default fp32); returns (B, S, H, D)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2).to(dtype), k.transpose(1, 2).to(dtype), v.transpose(1, 2).to(dtype))
    return out.transpose(1, 2)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp64 (returns a float: synchronises)."""
    o, r = out.double(), ref.double()
    return float(torch.linalg.vector_norm(o - r) / torch.linalg.vector_norm(r).clamp_min(1e-300))


# ---------------------------------------------------------------------------------------------
# Availability
# ---------------------------------------------------------------------------------------------


def _import_cudnn():
    import cudnn  # type: ignore[import-not-found]

    return cudnn


def _parse_version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in str(text).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _backend_version(cudnn) -> tuple[int, ...]:
    """cuDNN backend (libcudnn) version as (major, minor, patch)."""
    getter = getattr(cudnn, "backend_version_string", None)
    if getter is not None:
        return _parse_version(getter())
    n = int(cudnn.backend_version())  # 9xxyy encoding: major * 10000 + minor * 100 + patch
    return (n // 10000, (n // 100) % 100, n % 100)


def availability(device: torch.device) -> str:
    """'ok (cuDNN x.y, frontend a.b)' when fp8 attention can run on `device`, else a short reason."""
    try:
        device = torch.device(device)
        if device.type != "cuda":
            return "needs a Hopper GPU (CUDA device, compute capability 9.x)"
        if not torch.cuda.is_available():
            return "needs a Hopper GPU (CUDA is not available)"
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        if major in (12, 11) or major < 9:
            if major >= 11:
                why = f"compute capability {major}.{minor}: cuDNN has no fp8 attention for this architecture"
            else:
                why = f"compute capability {major}.{minor}: fp8 attention needs Hopper (9.x)"
            return f"needs a Hopper GPU ({why})"
        try:
            cudnn = _import_cudnn()
        except ImportError:
            return "nvidia-cudnn-frontend is not installed (pip install nvidia-cudnn-frontend)"
        except Exception as exc:  # a broken install: missing shared library, ABI mismatch, ...
            return f"nvidia-cudnn-frontend failed to import: {exc}"
        if not hasattr(getattr(cudnn, "pygraph", None), "sdpa_fp8"):
            return f"nvidia-cudnn-frontend {getattr(cudnn, '__version__', '?')} has no pygraph.sdpa_fp8"
        try:
            backend = _backend_version(cudnn)
        except Exception as exc:
            return f"the cuDNN library could not be loaded by nvidia-cudnn-frontend: {exc}"
        if backend < MIN_CUDNN:
            have = ".".join(map(str, backend))
            need = ".".join(map(str, MIN_CUDNN))
            return f"cuDNN {have} is too old for fp8 attention (needs {need} or newer)"
        frontend = ".".join(str(getattr(cudnn, "__version__", "?")).split(".")[:2])
        note = "" if major == 9 else f"; untested on compute capability {major}.{minor}"
        return f"ok (cuDNN {backend[0]}.{backend[1]}, frontend {frontend}{note})"
    except Exception as exc:  # never raise from a capability probe
        return f"fp8 attention availability check failed: {exc}"


# ---------------------------------------------------------------------------------------------
# The cuDNN graph
# ---------------------------------------------------------------------------------------------

# Fixed tensor uids of the graph (the variant pack is keyed by them).
_UID_Q, _UID_K, _UID_V, _UID_O = 1, 2, 3, 4
_UID_DESCALE_Q, _UID_DESCALE_K, _UID_DESCALE_V = 5, 6, 7
_UID_DESCALE_S, _UID_SCALE_S, _UID_SCALE_O = 8, 9, 10
_UID_AMAX_O = 11


@dataclass
class _Graph:
    graph: Any
    workspace: torch.Tensor
    build_seconds: float


@dataclass
class _DeviceState:
    handle: Any
    scale_s: torch.Tensor
    descale_s: torch.Tensor


_lock = threading.RLock()
_graphs: dict[tuple, _Graph] = {}
_devices: dict[int, _DeviceState] = {}


def _bshd_strides(s: int, h: int, d: int) -> list[int]:
    """Strides of a contiguous (B, S, H, D) buffer, listed in cuDNN's logical (B, H, S, D) order."""
    return [s * h * d, d, h * d, 1]


def _device_state(device: torch.device) -> _DeviceState:
    cudnn = _import_cudnn()
    index = device.index if device.index is not None else torch.cuda.current_device()
    state = _devices.get(index)
    if state is None:
        with torch.cuda.device(index):
            handle = cudnn.create_handle()
            one = torch.ones((1, 1, 1, 1), dtype=torch.float32, device=device)
            state = _DeviceState(handle=handle, scale_s=one * P_SCALE, descale_s=one / P_SCALE)
        _devices[index] = state
    return state


def _build_graph(cudnn, handle, b: int, s_q: int, s_kv: int, h: int, d: int, device: torch.device) -> _Graph:
    t0 = time.perf_counter()
    fp8, f32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    g = cudnn.pygraph(
        io_data_type=fp8,
        intermediate_data_type=f32,
        compute_data_type=f32,
        handle=handle,
    )
    q = g.tensor(name="q", uid=_UID_Q, dim=[b, h, s_q, d], stride=_bshd_strides(s_q, h, d), data_type=fp8)
    k = g.tensor(name="k", uid=_UID_K, dim=[b, h, s_kv, d], stride=_bshd_strides(s_kv, h, d), data_type=fp8)
    v = g.tensor(name="v", uid=_UID_V, dim=[b, h, s_kv, d], stride=_bshd_strides(s_kv, h, d), data_type=fp8)

    def scalar(name: str, uid: int):
        return g.tensor(name=name, uid=uid, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=f32)

    o, _stats, _amax_s, amax_o = g.sdpa_fp8(
        q=q,
        k=k,
        v=v,
        descale_q=scalar("descale_q", _UID_DESCALE_Q),
        descale_k=scalar("descale_k", _UID_DESCALE_K),
        descale_v=scalar("descale_v", _UID_DESCALE_V),
        descale_s=scalar("descale_s", _UID_DESCALE_S),
        scale_s=scalar("scale_s", _UID_SCALE_S),
        scale_o=scalar("scale_o", _UID_SCALE_O),
        generate_stats=False,
        attn_scale=1.0 / math.sqrt(d),
        use_causal_mask=False,
        name="wan_self_attention",
    )
    # Amax_S stays virtual (deprecated output; declaring it restricts engine choice).
    o.set_uid(_UID_O).set_output(True).set_dim([b, h, s_q, d]).set_stride(_bshd_strides(s_q, h, d)).set_data_type(fp8)
    amax_o.set_uid(_UID_AMAX_O).set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(f32)
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans()
    size = int(g.get_workspace_size())
    workspace = torch.empty(max(size, 1), dtype=torch.uint8, device=device)
    return _Graph(graph=g, workspace=workspace, build_seconds=time.perf_counter() - t0)


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if not (q.dim() == k.dim() == v.dim() == 4):
        raise ValueError(f"fp8_sdpa expects (B, S, H, D) tensors, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.device.type != "cuda" or k.device != q.device or v.device != q.device:
        raise ValueError("fp8_sdpa needs q, k and v on one CUDA device")
    b, _, h, d = q.shape
    if k.shape[0] != b or v.shape[0] != b or k.shape[2] != h or v.shape[2] != h:
        raise ValueError(f"fp8_sdpa needs equal batch and head counts, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[-1] != d or v.shape[-1] != d or k.shape[1] != v.shape[1]:
        raise ValueError(f"fp8_sdpa needs equal head dims and K/V lengths, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if d % _HEAD_DIM_MULTIPLE:
        raise ValueError(f"fp8_sdpa needs a head dim that is a multiple of {_HEAD_DIM_MULTIPLE}, got {d}")


def _graph_for(b: int, s_q: int, s_kv: int, h: int, d: int, device: torch.device) -> tuple[_Graph, _DeviceState]:
    cudnn = _import_cudnn()
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (index, b, s_q, s_kv, h, d)
    with _lock:
        state = _device_state(device)
        entry = _graphs.get(key)
        if entry is None:
            with torch.cuda.device(index):
                entry = _build_graph(cudnn, state.handle, b, s_q, s_kv, h, d, device)
            _graphs[key] = entry
        return entry, state


def _run_graph(
    entry: _Graph,
    state: _DeviceState,
    q8: torch.Tensor,
    k8: torch.Tensor,
    v8: torch.Tensor,
    descale_q: torch.Tensor,
    descale_k: torch.Tensor,
    descale_v: torch.Tensor,
    scale_o: torch.Tensor,
    o8: torch.Tensor,
    amax_o: torch.Tensor,
) -> None:
    """Launch the built graph on torch's current stream (asynchronous)."""
    cudnn = _import_cudnn()
    stream = torch.cuda.current_stream(q8.device)
    pack = {
        _UID_Q: q8,
        _UID_K: k8,
        _UID_V: v8,
        _UID_O: o8,
        _UID_DESCALE_Q: descale_q,
        _UID_DESCALE_K: descale_k,
        _UID_DESCALE_V: descale_v,
        _UID_DESCALE_S: state.descale_s,
        _UID_SCALE_S: state.scale_s,
        _UID_SCALE_O: scale_o,
        _UID_AMAX_O: amax_o,
    }
    with _lock:  # one cuDNN handle per device: serialise launches from different threads
        cudnn.set_stream(state.handle, stream.cuda_stream)
        entry.graph.execute(pack, entry.workspace, handle=state.handle)


def fp8_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, return_fp8: bool = False) -> Any:
    """Non-causal attention of (B, S, H, D) tensors through cuDNN's FP8 kernel; (B, S, H, D) out.

    The output has q's dtype. With `return_fp8=True` returns (o_fp8, descale_o, amax_o) instead,
    for diagnostics: o_fp8 the raw (B, S, H, D) e4m3 output and amax_o cuDNN's amax output.
    """
    _check_inputs(q, k, v)
    b, s_q, h, d = q.shape
    s_kv = k.shape[1]
    device = q.device
    entry, state = _graph_for(b, s_q, s_kv, h, d, device)

    def descale_of(x: torch.Tensor) -> torch.Tensor:
        return descale_from_amax(_amax(x)).reshape(1, 1, 1, 1)

    descale_q, descale_k, descale_v = descale_of(q), descale_of(k), descale_of(v)
    q8 = quantize_with_descale(q, descale_q)
    k8 = quantize_with_descale(k, descale_k)
    v8 = quantize_with_descale(v, descale_v)
    descale_o = descale_v * _O_HEADROOM  # |O| <= (1 + 2**-4) * amax_v, see _O_HEADROOM
    scale_o = descale_o.reciprocal()
    o8 = torch.empty((b, s_q, h, d), dtype=FP8, device=device)
    amax_o = torch.empty((1, 1, 1, 1), dtype=torch.float32, device=device)
    _run_graph(entry, state, q8, k8, v8, descale_q, descale_k, descale_v, scale_o, o8, amax_o)
    if return_fp8:
        return o8, descale_o, amax_o
    return dequantize(o8, descale_o, q.dtype)


# ---------------------------------------------------------------------------------------------
# Installing into the experts
# ---------------------------------------------------------------------------------------------

_probed: dict[int, str] = {}


def _probe(device: torch.device) -> str:
    """Build and run a small graph once per device; '' when it works, else the error text."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _probed:
        try:
            gen = torch.Generator(device=device).manual_seed(0)
            x = torch.randn((1, 256, 2, 128), generator=gen, device=device, dtype=torch.bfloat16)
            out = fp8_sdpa(x, x, x)
            ok = bool(torch.isfinite(out).all())
            _probed[index] = "" if ok else "the fp8 attention probe produced non-finite values"
        except Exception as exc:
            _probed[index] = f"{type(exc).__name__}: {exc}"
    return _probed[index]


def install(model: torch.nn.Module, device: torch.device) -> None:
    """Route the self-attention of every block of `model` through `fp8_sdpa`."""
    device = torch.device(device)
    reason = availability(device)
    if not reason.startswith("ok"):
        raise ModelError(f"attention backend 'fp8' is not available: {reason}")
    failure = _probe(device)
    if failure:
        raise ModelError(f"attention backend 'fp8' failed its first run on {device}: {failure}")
    from .custom_attention import install_core, opaque_core

    install_core(model, opaque_core("fp8_sdpa", fp8_sdpa))


if __name__ == "__main__":  # the self-check moved to wan22bot.bench.fp8_attention; this spelling still works
    from ..bench.fp8_attention import main

    raise SystemExit(main())
