"""FP8 attention: scale bookkeeping on the CPU, the cuDNN kernel on a GPU."""

from __future__ import annotations

import math

import pytest
import torch

from wan22bot.engine import fp8_attention as fa
from wan22bot.errors import ModelError

CPU = torch.device("cpu")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- availability / install -------------------------------------------------------------------


def test_availability_on_cpu_is_a_reason_not_an_exception():
    reason = fa.availability(CPU)
    assert isinstance(reason, str) and reason
    assert not reason.startswith("ok")
    assert "Hopper" in reason


def test_availability_never_raises_on_odd_input():
    assert isinstance(fa.availability("cpu"), str)
    assert isinstance(fa.availability(torch.device("meta")), str)


def test_install_on_cpu_raises_model_error_with_the_reason():
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList()
    with pytest.raises(ModelError) as info:
        fa.install(model, CPU)
    assert fa.availability(CPU) in str(info.value)


# --- per-tensor quantisation ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_quantize_round_trip_gaussian(dtype):
    x = torch.randn((2, 256, 8, 64), generator=_gen(1)).to(dtype)
    x8, scale = fa.quantize_per_tensor(x)
    assert x8.dtype == torch.float8_e4m3fn and x8.shape == x.shape
    assert scale.dtype == torch.float32 and scale.numel() == 1
    amax = x.float().abs().max()
    torch.testing.assert_close(scale.reshape(()), amax / 448.0, rtol=0, atol=0)
    codes = x8.float()
    assert torch.isfinite(codes).all()
    assert codes.abs().max() <= 448.0
    # the largest element lands exactly on e4m3's largest finite value: full range, no saturation
    assert codes.abs().max() == 448.0
    back = codes * scale
    err = torch.linalg.vector_norm(back - x.float()) / torch.linalg.vector_norm(x.float())
    assert 0 < err < 0.07
    # elementwise: e4m3 keeps 3 mantissa bits, so a normal value is off by at most 2**-4 relative
    normal = codes.abs() >= 2.0**-6
    rel = ((back - x.float()).abs() / x.float().abs())[normal]
    assert rel.max() <= 2.0**-4 + 1e-6


def test_quantize_zero_tensor_has_unit_scale_and_zero_codes():
    x = torch.zeros((1, 16, 2, 32), dtype=torch.bfloat16)
    x8, scale = fa.quantize_per_tensor(x)
    assert scale.item() == 1.0
    assert (x8.float() == 0).all()
    assert torch.isfinite(fa.dequantize(x8, scale)).all()


def test_quantize_tiny_and_large_magnitudes():
    tiny = torch.full((4, 8), 1e-35)
    t8, ts = fa.quantize_per_tensor(tiny)
    assert torch.isfinite(ts).all() and ts.item() > 0
    assert torch.isfinite(t8.float()).all()
    big = torch.randn((64, 64), generator=_gen(2)) * 3e4
    b8, bs = fa.quantize_per_tensor(big)
    assert torch.isfinite(b8.float()).all() and b8.float().abs().max() == 448.0
    rel = torch.linalg.vector_norm(b8.float() * bs - big) / torch.linalg.vector_norm(big)
    assert rel < 0.07


def test_quantize_does_not_modify_its_input():
    x = torch.randn((3, 5, 7), generator=_gen(3))
    before = x.clone()
    fa.quantize_per_tensor(x)
    fa.quantize_with_descale(x, torch.tensor([0.01]))
    assert torch.equal(x, before)


def test_quantize_non_contiguous_input():
    base = torch.randn((1, 32, 3 * 4 * 16), generator=_gen(4), dtype=torch.bfloat16)
    v = base.chunk(3, dim=-1)[2].unflatten(2, (4, 16))  # strided like a fused-qkv view
    assert not v.is_contiguous()
    v8, scale = fa.quantize_per_tensor(v)
    assert v8.is_contiguous()
    back = v8.float() * scale
    assert torch.linalg.vector_norm(back - v.float()) / torch.linalg.vector_norm(v.float()) < 0.07


def test_quantize_slices_match_one_shot(monkeypatch):
    x = torch.randn((2, 50, 3, 16), generator=_gen(5))
    whole, s1 = fa.quantize_per_tensor(x)
    monkeypatch.setattr(fa, "_SLICE_ELEMS", 97)  # force many uneven slices
    sliced, s2 = fa.quantize_per_tensor(x)
    assert torch.equal(s1, s2)
    assert torch.equal(whole.view(torch.uint8), sliced.view(torch.uint8))


# --- emulated FP8 attention -------------------------------------------------------------------


def _qkv(b=1, s=192, h=4, d=64, seed=6, dtype=torch.float32):
    g = _gen(seed)
    return tuple(torch.randn((b, s, h, d), generator=g).to(dtype) for _ in range(3))


def test_emulation_is_close_to_exact_attention_but_lossy():
    q, k, v = _qkv()
    ref = fa.reference_sdpa(q, k, v)
    emu = fa.emulated_fp8_sdpa(q, k, v)
    assert emu.shape == q.shape and emu.dtype == q.dtype
    err = fa.rel_error(emu, ref)
    assert 0 < err < 0.1


def test_emulation_rounding_steps_are_each_lossy_and_small():
    q, k, v = _qkv(seed=7)
    ref = fa.reference_sdpa(q, k, v)
    only_inputs = fa.rel_error(fa.emulated_fp8_sdpa(q, k, v, quantize_p=False, quantize_output=False), ref)
    with_p = fa.rel_error(fa.emulated_fp8_sdpa(q, k, v, quantize_output=False), ref)
    full = fa.rel_error(fa.emulated_fp8_sdpa(q, k, v), ref)
    assert 0 < only_inputs < 0.08
    assert 0 < with_p < 0.1
    assert 0 < full < 0.1


def test_emulation_head_chunking_is_exact():
    q, k, v = _qkv(h=6, seed=8)
    a = fa.emulated_fp8_sdpa(q, k, v, heads_per_chunk=1)
    b = fa.emulated_fp8_sdpa(q, k, v, heads_per_chunk=6)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("scale_v", [1.0, 40.0, 1e-3])
def test_output_bound_holds(scale_v):
    q, k, v = _qkv(seed=9)
    v = v * scale_v
    amax_v = v.abs().max()
    # peaked attention: a few keys dominate, so rows of O approach rows of V
    q = q * 6.0
    out = fa.emulated_fp8_sdpa(q, k, v, quantize_output=False)
    assert out.abs().max() <= amax_v * (1 + 2.0**-4)
    out_q = fa.emulated_fp8_sdpa(q, k, v)
    assert torch.isfinite(out_q).all()
    assert out_q.abs().max() <= amax_v * (1 + 2.0**-4) * (1 + 2.0**-4)
    # the scale_o chosen for the kernel leaves O's e4m3 codes below saturation
    _, dv = fa.quantize_per_tensor(v)
    codes = out * (1.0 / (dv * fa._O_HEADROOM))
    assert codes.abs().max() < 448.0


def test_output_bound_one_hot_attention_reproduces_v_rows():
    # query i attends only to key i (score gap 400 / sqrt(d) >> log(s)): O equals V up to V's rounding
    s = d = 32
    h = 2
    eye = torch.eye(s).reshape(1, s, 1, d).expand(1, s, h, d).contiguous()
    q, k = eye * 400.0, eye
    v = torch.randn((1, s, h, d), generator=_gen(10))
    out = fa.emulated_fp8_sdpa(q, k, v, quantize_output=False)
    v_deq = fa.dequantize(*fa.quantize_per_tensor(v), dtype=torch.float32)
    torch.testing.assert_close(out, v_deq, rtol=1e-5, atol=1e-6)
    assert out.abs().max() <= v.abs().max() * (1 + 1e-6)


def test_emulation_zero_inputs():
    z = torch.zeros((1, 32, 2, 16))
    out = fa.emulated_fp8_sdpa(z, z, z)
    assert torch.isfinite(out).all() and (out == 0).all()


def test_emulation_bf16_in_bf16_out():
    q, k, v = _qkv(dtype=torch.bfloat16, seed=11)
    out = fa.emulated_fp8_sdpa(q, k, v)
    assert out.dtype == torch.bfloat16
    assert fa.rel_error(out, fa.reference_sdpa(q, k, v)) < 0.1


def test_descale_from_amax():
    amax = torch.tensor([0.0, 1e-40, 448.0, 3.5])
    d = fa.descale_from_amax(amax)
    torch.testing.assert_close(d, torch.tensor([1.0, 1.0, 1.0, 3.5 / 448.0]))


def test_bshd_strides_describe_a_contiguous_bshd_buffer():
    b, s, h, d = 2, 5, 3, 16
    x = torch.empty((b, s, h, d))
    logical = x.permute(0, 2, 1, 3)  # (B, H, S, D) view of the (B, S, H, D) buffer
    assert list(logical.stride()) == fa._bshd_strides(s, h, d)


def test_fp8_sdpa_rejects_cpu_tensors():
    q, k, v = _qkv(s=16, h=2, d=16)
    with pytest.raises(ValueError):
        fa.fp8_sdpa(q, k, v)


def test_flops_formula_matches_brief():
    # 4 * S^2 * D * H for one non-causal forward
    s, d, h = 82992, 128, 40
    assert 4.0 * s * s * d * h == pytest.approx(1.41e14, rel=0.01)
    assert math.isclose(fa.P_SCALE, 448.0)


# --- GPU -------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_self_check_on_gpu():
    device = torch.device("cuda")
    reason = fa.availability(device)
    if not reason.startswith("ok"):
        pytest.skip(reason)
    from wan22bot.bench.fp8_attention import self_check

    result = self_check(device, tokens=[], accuracy_tokens=4096)
    acc = result["accuracy"]
    assert acc["finite"]
    assert acc["o_fp8_nan"] == 0
    assert acc["rel_err_vs_bf16_sdpa"] <= 0.08
    assert acc["rel_err_vs_fp32"] <= 0.08
    assert acc["rel_err_vs_emulation"] <= 0.08


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp8_sdpa_matches_emulation_on_odd_shapes():
    device = torch.device("cuda")
    reason = fa.availability(device)
    if not reason.startswith("ok"):
        pytest.skip(reason)
    g = torch.Generator(device=device).manual_seed(1)
    for b, s_q, s_kv, h in [(1, 1000, 1000, 3), (2, 333, 333, 5), (1, 256, 512, 2)]:
        q = torch.randn((b, s_q, h, 128), generator=g, device=device, dtype=torch.bfloat16)
        k = torch.randn((b, s_kv, h, 128), generator=g, device=device, dtype=torch.bfloat16) * 0.5
        v = torch.randn((b, s_kv, h, 128), generator=g, device=device, dtype=torch.bfloat16) * 3.0
        out = fa.fp8_sdpa(q, k, v)
        assert out.shape == q.shape and out.dtype == torch.bfloat16
        ref = fa.reference_sdpa(q, k, v)
        assert fa.rel_error(out, ref) <= 0.08, (b, s_q, s_kv, h)
        assert fa.rel_error(out, fa.emulated_fp8_sdpa(q, k, v)) <= 0.08, (b, s_q, s_kv, h)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_casts_match_the_eager_path_bit_for_bit():
    if fa._triton_scaled_cast() is None:
        pytest.skip("Triton is not installed")
    device = torch.device("cuda")
    g = torch.Generator(device=device).manual_seed(2)
    for shape in [(1, 4099, 3, 128), (7,), (2, 33, 5, 16)]:
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            x = (torch.randn(shape, generator=g, device=device) * 7.0).to(dtype)
            descale = fa.descale_from_amax(fa._amax(x)).reshape(1)
            fused = torch.empty(shape, dtype=torch.float8_e4m3fn, device=device)
            eager = torch.empty_like(fused)
            fa._scaled_copy(x, descale.reciprocal(), fused, 448.0)
            fa._scaled_copy_torch(x, descale.reciprocal(), eager, 448.0)
            assert torch.equal(fused.view(torch.uint8), eager.view(torch.uint8)), (shape, dtype)
            back_fused = torch.empty(shape, dtype=torch.bfloat16, device=device)
            back_eager = torch.empty_like(back_fused)
            fa._scaled_copy(fused, descale, back_fused, None)
            fa._scaled_copy_torch(fused, descale, back_eager, None)
            assert torch.equal(back_fused, back_eager), (shape, dtype)
    # values beyond the clamp saturate to +-448 instead of turning into NaN
    x = torch.tensor([1e6, -1e6, 447.0, 449.0], device=device)
    out = torch.empty(4, dtype=torch.float8_e4m3fn, device=device)
    fa._scaled_copy(x, torch.ones(1, device=device), out, 448.0)
    assert out.float().tolist() == [448.0, -448.0, 448.0, 448.0]
