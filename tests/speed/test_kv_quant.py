"""The Triton int8 step of K and fp8 step of V for `sage-fused` (engine/kv_quant.py), bit for bit
against sage_prequant's torch quantisers, whose formats tests/speed/test_sage_prequant.py checks
through attention itself.

Without a GPU the kernels run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET).
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels need triton (installed with the test extra)")

from wan22bot.engine import kv_quant  # noqa: E402
from wan22bot.engine.sage_prequant import PERM16, dequantize, quantize_k, quantize_v  # noqa: E402

DEV = torch.device("cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda")


def _kv(tokens, heads=2, batch=1, seed=0, offset=0.5):
    g = torch.Generator().manual_seed(seed)
    c = heads * 128
    spread = 1 + 3 * torch.rand(c, generator=g)
    k = (torch.randn(batch, tokens, c, generator=g) * spread + offset).to(torch.bfloat16)
    v = (torch.randn(batch, tokens, c, generator=g) * spread).to(torch.bfloat16)
    return k.to(DEV).unflatten(2, (heads, -1)), v.to(DEV)


@pytest.mark.parametrize("tokens", [128, 300, 37])  # whole blocks, a padded tail, less than one block
def test_k_int8_is_quantize_k_bit_for_bit(tokens):
    k, _ = _kv(tokens)
    mean = k.mean(dim=1, keepdim=True)
    k8, ks = kv_quant.k_int8(k, mean)
    want8, wants, _ = quantize_k(k, False, mean=mean)
    assert k8.dtype == torch.int8 and k8.shape == want8.shape and ks.shape == wants.shape
    assert torch.equal(k8, want8) and torch.equal(ks, wants)
    assert not k8[:, tokens:].any()  # the padding rows stay zero after the shift


@pytest.mark.parametrize("tokens", [128, 300, 37])
def test_v_fp8_is_quantize_v_bit_for_bit(tokens):
    _, v = _kv(tokens, seed=1)
    v8, vs = kv_quant.v_fp8(v, 2)
    want8, wants = quantize_v(v.unflatten(2, (2, -1)))
    assert v8.dtype == torch.float8_e4m3fn and v8.shape == want8.shape and vs.shape == wants.shape
    assert torch.equal(v8.view(torch.uint8), want8.view(torch.uint8)) and torch.equal(vs, wants)


def test_negative_values_that_round_to_zero_keep_their_sign():
    """-0 in e4m3 is 0x80: small negatives round to it, as torch's cast gives them."""
    _, v = _kv(40, heads=1, seed=3)
    v[0, :8, :] = torch.tensor([-0.0, -1e-6, -3e-4, 1e-6, -0.0, 2e-6, -5e-7, -1e-5], dtype=torch.bfloat16)[:, None]
    v8, vs = kv_quant.v_fp8(v, 1)
    want8, wants = quantize_v(v.unflatten(2, (1, -1)))
    assert int((want8.view(torch.uint8) == 0x80).sum()) > 0  # the case is there
    assert torch.equal(v8.view(torch.uint8), want8.view(torch.uint8)) and torch.equal(vs, wants)


def test_v_fp8_puts_each_token_where_the_fp8_mma_reads_it():
    """Independently of quantize_v: token PERM16[p] of each 16 sits at position p, channels become
    rows, and the largest value of each channel becomes 448."""
    tokens = 32
    v = torch.zeros(1, tokens, 128, dtype=torch.bfloat16)
    v[0, :, :] = torch.arange(1, tokens + 1, dtype=torch.bfloat16)[:, None]  # token t holds t + 1
    v8, vs = kv_quant.v_fp8(v.to(DEV), 1)
    got = (v8.float() * vs[..., None])[0, 0, 0, :tokens]  # channel 0 of head 0, dequantised
    order = torch.tensor([16 * (p // 16) + PERM16[p % 16] for p in range(tokens)], dtype=torch.float32)
    assert torch.allclose(got.cpu(), order + 1, rtol=0.07)  # e4m3 keeps 3 mantissa bits
    assert float(v8.float().amax()) == 448.0 and torch.all(vs.cpu() == tokens / 448.0)


def test_a_batch_and_a_strided_v_are_handled():
    k, v = _kv(150, heads=1, batch=2, seed=2)
    wide = torch.cat([v, v], dim=-1)[..., :128]  # rows two V's apart, as a fused qkv projection gives
    assert wide.stride(1) == 256
    v8, vs = kv_quant.v_fp8(wide, 1)
    want8, wants = quantize_v(v.unflatten(2, (1, -1)))
    assert torch.equal(v8.view(torch.uint8), want8.view(torch.uint8)) and torch.equal(vs, wants)
    mean = k.mean(dim=1, keepdim=True)
    k8, ks = kv_quant.k_int8(k, mean)
    want_k8, want_ks, _ = quantize_k(k, False, mean=mean)
    assert torch.equal(k8, want_k8) and torch.equal(ks, want_ks)
    q = torch.zeros(2, 192, 1, 128, dtype=torch.int8, device=DEV)
    qs = torch.ones(2, 1, 12, device=DEV)
    _, dk, dv = dequantize(q, qs, k8, ks, v8, vs, 150)  # the formats read back as the kernel reads them
    assert float((dv - v.unflatten(2, (1, -1)).float()).norm() / v.float().norm()) < 0.05
    assert float((dk - (k - mean).float()).norm() / (k - mean).float().norm()) < 0.02


def test_the_self_check_finds_no_mismatch():
    assert kv_quant.mismatch(DEV) == 0.0
