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


# which rows share a scale, per the kernel's tiles (64 query rows in 4 warps of 16, where lane
# groups hold rows t and t + 8; 128 key rows, where a thread holds rows with r % 8 in {2t, 2t + 1})
def _q_groups(rows, per_thread):
    if per_thread:
        return {(blk * 8 + t): [blk * 16 + t, blk * 16 + t + 8] for blk in range(rows // 16) for t in range(8)}
    return {g: list(range(g * 16, g * 16 + 16)) for g in range(rows // 16)}


def _k_groups(rows, per_thread):
    if per_thread:
        return {(blk * 4 + t): [r for r in range(blk * 128, blk * 128 + 128) if r % 8 in (2 * t, 2 * t + 1)]
                for blk in range(rows // 128) for t in range(4)}
    return {g: list(range(g * 128, g * 128 + 128)) for g in range(rows // 128)}


def _check_int8(x8, scale, x, groups, s):
    """Every scale is its rows' amax / 127 (1e-7 floor) and every value rounds x / scale."""
    assert scale.shape[-1] == len(groups) and scale.is_contiguous()
    for h in range(x.shape[2]):
        for idx, rows in groups.items():
            valid = [r for r in rows if r < s]
            vals = x[0, valid, h] if valid else torch.zeros(1, x.shape[-1])
            amax = max(float(vals.abs().max()), 1e-7)
            assert scale[0, h, idx].item() == pytest.approx(amax / 127, rel=1e-6), (h, idx)
            if not valid:
                continue
            y = vals * (127.0 / amax)
            off = (x8[0, valid, h].float() - torch.round(y)).abs()
            # an exact .5 tie may go either way (the last bit of 127 / amax decides, and
            # SageAttention's own quantiser is built with fast math)
            tie = ((y - y.floor()) - 0.5).abs() < 1e-4
            assert ((off == 0) | ((off == 1) & tie)).all(), (h, idx)
    assert not x8[0, s:].any()  # the padding rows


@pytest.mark.parametrize("per_thread", [False, True])
def test_q_is_int8_with_its_scales_grouped_as_the_kernel_reads_them(per_thread):
    q, _, _ = _qkv(s=150, h=2)
    q8, scale = quantize_q(q, per_thread)
    assert q8.dtype == torch.int8 and q8.shape == (1, 192, 2, 128)  # 150 -> 3 tiles of 64
    assert scale.dtype == torch.float32 and scale.shape == (1, 2, 96 if per_thread else 12)
    _check_int8(q8, scale, q.float(), _q_groups(192, per_thread), 150)


@pytest.mark.parametrize("per_thread", [False, True])
def test_k_loses_its_sequence_mean_then_gets_int8_scales_grouped_as_the_kernel_reads_them(per_thread):
    _, k, _ = _qkv(s=300, h=2)
    k8, scale, km = quantize_k(k, per_thread)
    assert k8.shape == (1, 384, 2, 128) and scale.shape == (1, 2, 12 if per_thread else 3)
    exact = k.float().mean(1, keepdim=True)
    assert km.dtype == torch.bfloat16 and ((km.float() - exact).abs() <= exact.abs() / 128).all()  # bf16 rounding
    centred = k.float() - km.float()
    _check_int8(k8, scale, centred, _k_groups(384, per_thread), 300)
    # smoothing made a difference: the offset would have eaten most of the int8 range
    assert scale[0, 0, 0] < k.float()[0, :128, 0].abs().max() / 127 * 0.8


@pytest.mark.parametrize("kind,per_thread", [("q", False), ("q", True), ("k", False), ("k", True)])
def test_the_scale_index_of_each_row_is_the_grouping_above(kind, per_thread):
    rows = 384
    groups = (_q_groups if kind == "q" else _k_groups)(rows, per_thread)
    index = sage_prequant.scale_index(rows, kind, per_thread)
    for idx, members in groups.items():
        assert all(index[r] == idx for r in members)


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


@pytest.mark.parametrize("per_thread", [False, True])
def test_attention_on_what_the_kernel_would_read_matches_fp32_attention(per_thread):
    q, k, v = _qkv(s=333, h=2, seed=3)
    q8, qs = quantize_q(q, per_thread)
    k8, ks, _ = quantize_k(k, per_thread)
    v8, vs = quantize_v(v)
    qf, kf, vf = dequantize(q8, qs, k8, ks, v8, vs, 333, per_thread)

    def attn(a, b, c):
        return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (a, b, c))).transpose(1, 2)

    ref = attn(q.float(), k.float(), v.float())
    err = float((attn(qf, kf, vf) - ref).norm() / ref.norm())
    assert err < 0.05, err  # int8 Q/K + fp8 V: a few percent, as SageAttention's own path
    # the check can fail: V read in plain token order (the permutation ignored) is far off, and so
    # are Q scales read with the other granularity
    plain = (v8.float() * vs[..., None]).permute(0, 3, 1, 2)[:, :333]
    assert float((attn(qf, kf, plain) - ref).norm() / ref.norm()) > 0.5
    other = sage_prequant.scale_index(q8.shape[1], "q", not per_thread).clamp(max=qs.shape[-1] - 1)
    q_wrong = (q8.float() * qs[:, :, other].transpose(1, 2)[..., None])[:, :333]
    assert float((attn(q_wrong, kf, vf) - ref).norm() / ref.norm()) > 2 * err


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


def test_sage_fused_is_its_default_granularity_and_both_stay_for_comparison():
    from torch._subclasses.fake_tensor import FakeTensorMode

    assert attention.core_for("sage-fused") is sage_fused_core
    default = (sage_prequant.sage_fused_thread_core if sage_prequant.DEFAULT_PER_THREAD
               else sage_prequant.sage_fused_warp_core)
    assert sage_fused_core is default
    with FakeTensorMode():
        q = torch.empty(1, 300, 4, 128, dtype=torch.bfloat16)
        for core in (sage_prequant.sage_fused_warp_core, sage_prequant.sage_fused_thread_core):
            assert core(q, q, q).shape == (1, 300, 4, 128)


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


def test_k_takes_a_smoothing_mean_handed_over():
    """The Triton K prep hands quantize_k the mean it summed; quantize_k must subtract that one."""
    _, k, _ = _qkv(s=300, h=2)
    given = (k.float().mean(dim=1, keepdim=True) + 0.75).to(k.dtype)
    k8, scale, km = quantize_k(k, True, mean=given)
    assert km is given
    own8, _, _ = quantize_k(k, True)
    assert not torch.equal(k8, own8)
    _check_int8(k8, scale, k.float() - given.float(), _k_groups(384, True), 300)
