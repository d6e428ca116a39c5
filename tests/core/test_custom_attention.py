"""The pluggable-core attention processor against diffusers' stock Wan processor."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import WanTransformer3DModel

from wan22bot.engine.custom_attention import CoreAttnProcessor, install_core, sdpa_core
from wan22bot.engine.tiny import TRANSFORMER_CONFIG


@pytest.fixture(scope="module")
def stock():
    torch.manual_seed(2)
    return WanTransformer3DModel(**TRANSFORMER_CONFIG).eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return dict(
        hidden_states=torch.randn(1, 36, 3, 12, 8, generator=g),  # 3 latent frames of 96x64
        timestep=torch.tensor([937.5]),
        encoder_hidden_states=torch.randn(1, 32, 32, generator=g),
        return_dict=False,
    )


@torch.no_grad()
def test_install_core_with_sdpa_matches_the_stock_processor(stock, inputs):
    custom = copy.deepcopy(stock)
    assert install_core(custom, sdpa_core) == 2 * len(custom.blocks)
    for block in custom.blocks:
        assert isinstance(block.attn1.processor, CoreAttnProcessor)
        assert isinstance(block.attn2.processor, CoreAttnProcessor)
    assert not isinstance(stock.blocks[0].attn1.processor, CoreAttnProcessor)
    want = stock(**inputs)[0]
    got = custom(**inputs)[0]
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5


@torch.no_grad()
def test_the_core_is_what_self_attention_runs(stock, inputs):
    """A core that changes the result must change the output: the processor really calls it."""
    calls = []

    def halved(q, k, v):
        calls.append(q.shape)
        return sdpa_core(q, k, v) * 0.5

    custom = copy.deepcopy(stock)
    install_core(custom, halved)
    want = stock(**inputs)[0]
    got = custom(**inputs)[0]
    assert len(calls) == len(custom.blocks)  # self-attention only; cross-attention stays on SDPA
    b, s, h, d = calls[0]
    assert (b, h, d) == (1, 2, 12) and s == 3 * 6 * 4  # (B, S, H, D): tokens = frames x (H/2) x (W/2)
    assert (got - want).abs().max().item() > 1e-3
