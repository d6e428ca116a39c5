"""`attention = "sage-fused"`: our own quantisation in the formats SageAttention 2's sm90 kernel reads.

The kernel needs a Hopper GPU; these tests pin the formats on the CPU against the specification
written out independently here (group sizes, scale rules, V's token order as SageAttention's
documentation lists it), and run attention on the dequantised tensors, as the kernel would compute.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wan22bot.engine import attention, sage_prequant
from wan22bot.engine.attention import choose_auto
from wan22bot.engine.sage_prequant import dequantize, quantize_k, quantize_q, quantize_v, sage_fused_core

# position p of each group of 16 holds token SPEC_ORDER[p] (SageAttention's per_channel_fp8 docstring)
SPEC_ORDER = [0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15]
CUDA = torch.device("cuda")  # only named


def _qkv(s=150, h=3, d=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    # channel outliers, as RMSNorm'd Q/K have them, and a K offset for the smoothing to remove
    q = torch.randn(1, s, h, d, generator=g) * (1 + 4 * torch.rand(d, generator=g))
    k = torch.randn(1, s, h, d, generator=g) + 3 * torch.randn(d, generator=g)
    v = torch.randn(1, s, h, d, generator=g)
    return tuple(t.to(torch.bfloat16) for t in (q, k, v))


def test_q_is_int8_with_one_scale_per_16_tokens_per_head_padded_to_the_64_row_tile():
    q, _, _ = _qkv(s=150)
    q8, scale = quantize_q(q)
    assert q8.dtype == torch.int8 and q8.shape == (1, 192, 3, 128)  # 150 -> 3 tiles of 64
    assert scale.dtype == torch.float32 and scale.shape == (1, 3, 12) and scale.is_contiguous()
    qf = q.float()
    for h in range(3):
        for grp in range(12):
            rows = qf[0, grp * 16:(grp + 1) * 16, h]
            amax = max(float(rows.abs().max()) if rows.numel() else 0.0, 1e-7)
            assert scale[0, h, grp].item() == pytest.approx(amax / 127, rel=1e-6)
            x = rows * (127.0 / amax)
            got = q8[0, grp * 16:grp * 16 + rows.shape[0], h].float()
            # round to nearest; an exact .5 tie may go either way (the last bit of 127 / amax decides,
            # and SageAttention's own quantiser is built with fast math)
            off = (got - torch.round(x)).abs()
            tie = ((x - x.floor()) - 0.5).abs() < 1e-4
            assert ((off == 0) | ((off == 1) & tie)).all()
    assert not q8[0, 150:].any()  # the padding rows


def test_k_loses_its_sequence_mean_then_gets_one_int8_scale_per_128_tokens():
    _, k, _ = _qkv(s=300)
    k8, scale, km = quantize_k(k)
    assert k8.shape == (1, 384, 3, 128) and scale.shape == (1, 3, 3)
    exact = k.float().mean(1, keepdim=True)
    assert km.dtype == torch.bfloat16 and ((km.float() - exact).abs() <= exact.abs() / 128).all()  # bf16 rounding
    centred = k.float() - km.float()
    for h in range(3):
        for blk in range(3):
            rows = centred[0, blk * 128:(blk + 1) * 128, h]
            assert scale[0, h, blk].item() == pytest.approx(float(rows.abs().max()) / 127, rel=1e-6)
            back = k8[0, blk * 128:blk * 128 + rows.shape[0], h].float() * scale[0, h, blk]
            assert (back - rows).abs().max() <= scale[0, h, blk] / 2 + 1e-6  # within half a step
    assert not k8[0, 300:].any()
    # smoothing made a difference: the offset would have eaten most of the int8 range
    raw_amax = k.float()[0, :128, 0].abs().max()
    assert scale[0, 0, 0] < raw_amax / 127 * 0.8


def test_v_is_fp8_transposed_padded_to_128_and_token_permuted_within_16():
    _, _, v = _qkv(s=150)
    v8, scale = quantize_v(v)
    assert v8.dtype == torch.float8_e4m3fn and v8.shape == (1, 3, 128, 256) and v8.is_contiguous()
    assert scale.shape == (1, 3, 128)
    vf = v.float()
    assert torch.allclose(scale, vf.abs().amax(1) / 448)
    for grp in range(150 // 16 + 1):
        for p, tok in enumerate(SPEC_ORDER):
            t = grp * 16 + tok
            got = v8[0, :, :, grp * 16 + p].float() * scale[0]
            if t >= 150:
                assert not got.any()
                continue
            want = vf[0, t]  # (H, D)
            # e4m3 keeps 3 mantissa bits: relative error <= 1/16, plus the subnormal step near 0
            assert ((got - want).abs() <= want.abs() / 16 + scale[0] * 2 ** -6).all(), (grp, p, tok)
    assert not v8[0, :, :, 160:].float().any()


def test_attention_on_what_the_kernel_would_read_matches_fp32_attention():
    q, k, v = _qkv(s=333, h=2, seed=3)
    q8, qs = quantize_q(q)
    k8, ks, _ = quantize_k(k)
    v8, vs = quantize_v(v)
    qf, kf, vf = dequantize(q8, qs, k8, ks, v8, vs, 333)

    def attn(a, b, c):
        return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (a, b, c))).transpose(1, 2)

    ref = attn(q.float(), k.float(), v.float())
    err = float((attn(qf, kf, vf) - ref).norm() / ref.norm())
    assert err < 0.05, err  # int8 Q/K + fp8 V: a few percent, as SageAttention's own path
    # the check can fail: V read in plain token order (the permutation ignored) is far off
    b, h, d, s = v8.shape
    plain = (v8.float() * vs[..., None]).permute(0, 3, 1, 2)[:, :333]
    assert float((attn(qf, kf, plain) - ref).norm() / ref.norm()) > 0.5


def test_an_all_zero_channel_of_v_gives_zeros_not_nan():
    _, _, v = _qkv(s=64)
    v[..., 5] = 0
    v8, scale = quantize_v(v)
    assert torch.isfinite(v8.float()).all() and not v8[:, :, 5].float().any()


def test_the_kernel_op_has_a_shape_rule_for_the_compiler():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k, v = (torch.empty(1, 27664, 40, 128, dtype=torch.bfloat16) for _ in range(3))
        out = sage_fused_core(q, k, v)
    assert out.shape == (1, 27664, 40, 128) and out.dtype == torch.bfloat16


def test_other_head_sizes_are_refused_with_the_reason():
    q = torch.zeros(1, 16, 2, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="head size 128"):
        sage_fused_core(q, q, q)


def _reasons(missing=()):
    return lambda name, device: (f"{name} missing" if name in missing else None)


def test_auto_tries_sage_fused_first_when_the_blocks_are_compiled():
    tried = []

    def checker(core, device):
        tried.append(core)
        return 0.03

    pick = choose_auto(CUDA, checker=checker, reason=_reasons(), compiled=True)
    assert pick.backend == "sage-fused" and tried == [sage_fused_core]


def test_auto_leaves_sage_fused_out_when_nothing_is_compiled():
    pick = choose_auto(CUDA, checker=lambda c, d: 0.03, reason=_reasons(), compiled=False)
    assert pick.backend == "sage-warp" and pick.skipped == ()


def test_sage_fused_needs_hopper(monkeypatch):
    monkeypatch.setattr(attention, "sage_version", lambda: "2.2.0")
    monkeypatch.setattr(attention, "_capability", lambda device: (12, 0))
    assert "sm90" in attention.unavailable_reason("sage-fused", CUDA)
    monkeypatch.setattr(attention, "_capability", lambda device: (9, 0))
    assert attention.unavailable_reason("sage-fused", CUDA) is None
    assert "CUDA" in attention.unavailable_reason("sage-fused", torch.device("cpu"))


def test_group_constants_match_the_kernel_tiles():
    # the sm90 kernel's CTA_Q = 64 rows in 4 warps, CTA_K = 128 (its shape checks)
    assert sage_prequant.CTA_Q // sage_prequant.WARP_Q == 4 and sage_prequant.CTA_K == 128
    assert math.prod((2, 4, 2)) == len(SPEC_ORDER) == 16
