"""The three LoRA mismatches of issue 9, each through the generator as a daemon runs it.

These tests use only the generator's long-standing interface, so they also run against the code
before the fix (where each fails for the reason named in its docstring).
"""

from __future__ import annotations

import torch

from wan22bot.config import ModelConfig
from wan22bot.engine.generator import TwoPassGenerator
from wan22bot.engine.tiny import tiny_components

from .writers import BLOCK_LINEARS, BLOCK_NORMS, TOP_LINEARS, LoraBuilder, lightx2v_like, params_of


def _loaded(tmp_path, high: LoraBuilder, strength: float = 1.0, low: LoraBuilder | None = None) -> TwoPassGenerator:
    cfg = ModelConfig(kind="tiny", device="cpu", lora_high=high.write(tmp_path / "high.safetensors"),
                      lora_high_strength=strength,
                      lora_low=low.write(tmp_path / "low.safetensors") if low else None)
    gen = TwoPassGenerator(cfg)
    gen.load()
    return gen


def _base(key: str = "transformer") -> dict[str, torch.Tensor]:
    return params_of(tiny_components(0)[key])  # the same random weights the generator loads, never fused


def test_lightx2v_file_lands_at_alpha_over_rank_once_with_embedding_diff_b(tmp_path):
    """Bug 1: a file with diff_b on the text/time embeddings (no factors there) made the old code retry
    the conversion on tensors already multiplied by alpha/rank: cross-attention and FFN deltas landed at
    (alpha/rank)^2 and every key outside the blocks was dropped."""
    b = lightx2v_like(rank=4, alpha=0.5, norms=False, modulation=False)  # alpha/rank = 1/8, as rank 64 / alpha 8
    gen = _loaded(tmp_path, b, strength=1.0)
    want = b.expected(_base(), 1.0)
    got = params_of(gen.components.transformer)
    for i in (0, 1):
        for wan, (mod, _) in BLOCK_LINEARS.items():
            name = f"blocks.{i}.{mod}.weight"
            torch.testing.assert_close(got[name].double(), want[name], rtol=0, atol=2e-6,
                                       msg=lambda m, n=name: f"{n} ({wan}): {m}")
    for wan, (mod, _) in TOP_LINEARS.items():
        name = f"{mod}.bias"
        assert not torch.equal(got[name], _base()[name]), f"{name}: {wan}.diff_b was dropped"
        torch.testing.assert_close(got[name].double(), want[name], rtol=0, atol=2e-6)


def test_norm_diff_and_diff_b_are_applied(tmp_path):
    """Bug 2: `.diff` / `.diff_b` on norms (q/k RMS norms, Wan's norm3 = diffusers' norm2) were dropped
    without a word; ComfyUI adds them."""
    b = LoraBuilder(seed=3)
    b.lora("blocks.0.self_attn.q", "blocks.0.attn1.to_q", BLOCK_LINEARS["self_attn.q"][1])
    for i in (0, 1):
        for wan, (mod, has_bias) in BLOCK_NORMS.items():
            b.diff(f"blocks.{i}.{wan}", f"blocks.{i}.{mod}.weight", (24,))
            if has_bias:
                b.diff(f"blocks.{i}.{wan}", f"blocks.{i}.{mod}.bias", (24,), "diff_b")
    gen = _loaded(tmp_path, b, strength=0.8)
    base, got = _base(), params_of(gen.components.transformer)
    want = b.expected(base, 0.8)
    for name in b.deltas:
        assert not torch.equal(got[name], base[name]), f"{name} was not patched"
        torch.testing.assert_close(got[name].double(), want[name], rtol=0, atol=2e-6)


def test_taking_the_lora_out_and_back_restores_the_exact_weights(tmp_path):
    """Bug 3: taking a LoRA out subtracted the delta from the rounded sum, leaving weights an ulp off,
    so a seed's video depended on the presets of earlier jobs. Out must equal a fresh load bit for bit,
    and in again must equal the first fuse bit for bit."""
    high = lightx2v_like(seed=5, rank=4, alpha=2.0, norms=False, modulation=False)
    low = lightx2v_like(seed=6, rank=8, alpha=4.0, norms=False, modulation=False)
    gen = _loaded(tmp_path, high, 1.3, low)
    fused = {k: params_of(getattr(gen.components, k)) for k in ("transformer", "transformer_2")}
    fresh = {k: _base(k) for k in ("transformer", "transformer_2")}
    for _ in range(2):
        gen._set_lora(False)  # what a LoRA-free preset (quality) does before its job
        for key in fresh:
            now = params_of(getattr(gen.components, key))
            off = [n for n in fresh[key] if not torch.equal(now[n], fresh[key][n])]
            assert not off, f"{key}: {len(off)} tensors differ from a fresh load after taking the LoRA out, e.g. {off[:3]}"
        gen._set_lora(True)  # the next fast job
        for key in fused:
            now = params_of(getattr(gen.components, key))
            off = [n for n in fused[key] if not torch.equal(now[n], fused[key][n])]
            assert not off, f"{key}: {len(off)} tensors differ from the first fuse, e.g. {off[:3]}"
