"""fp8 weight storage: per-row quantisation bounds, the layer swap, and the generator path on CPU."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from wan22bot.config import ModelConfig
from wan22bot.engine.fp8_linear import E4M3_MAX, FP8Linear, convert_to_fp8, fp8_matmul_supported, quantize_rows
from wan22bot.engine.generator import GenerationRequest, TwoPassGenerator
from wan22bot.engine.tiny import tiny_components


def test_quantize_rows_scale_and_error():
    torch.manual_seed(0)
    w = torch.randn(64, 128) * torch.linspace(0.01, 10, 64)[:, None]  # rows of very different range
    q, scale = quantize_rows(w)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (64, 1)
    assert torch.allclose(scale[:, 0], w.abs().amax(dim=1) / E4M3_MAX)
    back = q.float() * scale
    rel = ((back - w).norm(dim=1) / w.norm(dim=1)).max().item()
    assert 0 < rel < 0.04  # e4m3 has 3 mantissa bits: ~2-3% per row, never worse thanks to per-row scales


def test_fp8_linear_matches_linear_within_fp8_error():
    torch.manual_seed(1)
    lin = torch.nn.Linear(96, 48)
    x = torch.randn(5, 7, 96)
    ref = lin(x)
    f = FP8Linear(lin)
    assert not f.use_scaled_mm  # CPU: dequantise per call
    out = f(x)
    assert out.shape == ref.shape
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.05
    assert not fp8_matmul_supported(torch.device("cpu"))


def test_convert_replaces_every_block_linear_only():
    tr = tiny_components()["transformer"]
    n_linear = sum(isinstance(m, torch.nn.Linear) for b in tr.blocks for m in b.modules())
    n = convert_to_fp8(tr)
    assert n == n_linear == 20  # 2 blocks x (4 self-attn + 4 cross-attn + 2 FFN)
    assert not any(isinstance(m, torch.nn.Linear) for b in tr.blocks for m in b.modules())
    assert isinstance(tr.proj_out, torch.nn.Linear)  # the head stays in full precision


def _req(**kw) -> GenerationRequest:
    img = Image.fromarray((np.random.RandomState(0).rand(96, 64, 3) * 255).astype("uint8"))
    return GenerationRequest(image=img, width=64, height=96, frames=5, prompt="x", seed=2, **kw)


def test_generator_with_fp8_weights():
    bf = TwoPassGenerator(ModelConfig()).generate(_req()).frames
    g = TwoPassGenerator(ModelConfig(weights="fp8"))
    out = g.generate(_req()).frames
    assert out.shape == bf.shape
    diff = (out.float() - bf.float()).abs().mean().item()
    assert 0 < diff < 8  # close to the bf16/fp32 video, not identical
    assert isinstance(g.components.transformer.blocks[0].attn1.to_q, FP8Linear)
    assert isinstance(g.components.transformer_2.blocks[0].ffn.net[2], FP8Linear)


def test_fp8_weights_take_the_lora_out_for_a_lora_free_preset(tmp_path):
    """The LoRA-free preset re-quantises the experts from their original weights (tests/lora has the
    bit-for-bit checks); the same job then gives the same video as a daemon loaded without the LoRA."""
    from tests.core.helpers import lora_tensors, write_lora

    hi = write_lora(tmp_path / "hi.safetensors", lora_tensors())
    lo = write_lora(tmp_path / "lo.safetensors", lora_tensors())
    g = TwoPassGenerator(ModelConfig(weights="fp8", lora_high=hi, lora_low=lo))
    assert g.generate(_req()).frames.shape == (5, 96, 64, 3)  # the fast preset: LoRA stays fused
    assert g.lora_fused
    quality = _req(lora=False, steps=2, switch_step=1)  # the quality preset: no LoRA (fewer steps here)
    out = g.generate(quality).frames
    assert not g.lora_fused
    assert torch.equal(out, TwoPassGenerator(ModelConfig(weights="fp8")).generate(quality).frames)


def test_fast_accumulation_reaches_the_fp8_matmul(monkeypatch):
    """`[model] fp8_fast_accum` (on by default) is handed to torch._scaled_mm by every converted layer."""
    calls = []

    def fake_scaled_mm(a, b, scale_a=None, scale_b=None, bias=None, out_dtype=None, use_fast_accum=False):
        calls.append(use_fast_accum)
        return torch.zeros(a.shape[0], b.shape[1], dtype=out_dtype)

    monkeypatch.setattr(torch, "_scaled_mm", fake_scaled_mm)
    assert ModelConfig().fp8_fast_accum is True
    for fast in (True, False):
        model = torch.nn.Module()
        model.blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(16, 32))])
        convert_to_fp8(model, use_scaled_mm=True, scaling="static", fast_accum=fast)
        for scaling in ("static", "rowwise"):
            layer = model.blocks[0][0]
            layer.scaling = scaling
            if scaling == "rowwise":
                layer.weight_scale = layer.weight_scale.expand(1, 32)
            layer(torch.randn(4, 16))
        assert calls[-2:] == [fast, fast]


def test_the_generator_hands_fp8_fast_accum_to_its_fp8_layers():
    for fast in (True, False):
        g = TwoPassGenerator(ModelConfig(weights="fp8", fp8_fast_accum=fast))
        g.load()
        layers = [m for key in ("transformer", "transformer_2") for m in getattr(g.components, key).modules()
                  if isinstance(m, FP8Linear)]
        assert layers and all(m.fast_accum is fast for m in layers)
