"""Mismatches 3 and 4 of issue 9, through the loader a config reaches (Diffusers folder + single expert file).

3: ComfyUI's fp8_scaled files store the biases of quantised layers as e4m3; ComfyUI uses them as
   stored. Multiplying them by the layer's scale_weight (what the loader once did) is wrong.
4: the newer per-layer layout (`weight_scale` + `comfy_quant`) must be dequantised, not read as
   plain weights (which loads silently and renders garbage).
The reference is computed by hand: e4m3 value x float32 scale for weights, the e4m3 value for biases.
"""

from __future__ import annotations

import pytest
import torch

from wan22bot.config import ModelConfig
from wan22bot.engine.components import load_components
from wan22bot.engine.tiny import tiny_components

from . import writers as W
from .conftest import built, run_expert

# fp32 compute on both sides from identical fp32 weights: only summation order could differ
FORWARD_TOL = 1e-5


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory, expert_high, expert_low):
    root = tmp_path_factory.mktemp("diffusers") / "Wan2.2-I2V-small-Diffusers"
    parts = tiny_components(0)
    parts["transformer"], parts["transformer_2"] = expert_high, expert_low
    for name, part in parts.items():
        part.save_pretrained(root / name)
    return root


def _load_high(folder, path):
    cfg = ModelConfig(kind="wan2.2-i2v-a14b", path=folder, high_noise=path, device="cpu")
    comps = load_components(cfg, torch.device("cpu"), torch.float32)
    return built(comps.transformer)


def _reference(real):
    return W.reference_model(lambda: W.WanTransformer3DModel(**W.EXPERT_CONFIG), real, W.expert_original_name)


def test_fp8_scaled_biases_are_used_unscaled(tmp_path, diffusers_folder, expert_high):
    tensors, real = W.quantise(W.expert_sd(expert_high), "fp8_scaled", prefix="model.diffusion_model.")
    q_bias = tensors["model.diffusion_model.blocks.0.self_attn.q.bias"]
    assert q_bias.dtype == W.E4M3 and "model.diffusion_model.blocks.0.self_attn.q.scale_weight" in tensors
    path = W.save(tensors, tmp_path / "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors")
    model = _load_high(diffusers_folder, path)
    sd = model.state_dict()
    scale = tensors["model.diffusion_model.blocks.0.self_attn.q.scale_weight"].item()
    assert scale < 0.01  # a scaled bias would be visibly off
    torch.testing.assert_close(sd["blocks.0.attn1.to_q.bias"], q_bias.float(), rtol=0, atol=0)
    torch.testing.assert_close(sd["blocks.0.attn1.to_q.weight"], real["blocks.0.self_attn.q.weight"], rtol=0, atol=0)
    for key, value in sd.items():
        torch.testing.assert_close(value.float(), real[W.expert_original_name(key)], rtol=0, atol=0, msg=key)
    out, ref = run_expert(model), run_expert(_reference(real))
    assert (out - ref).abs().max().item() <= FORWARD_TOL


def test_per_layer_comfy_quant_layout_is_dequantised(tmp_path, diffusers_folder, expert_high):
    tensors, real = W.quantise(W.expert_sd(expert_high), "comfy_quant", prefix="model.diffusion_model.")
    assert "model.diffusion_model.blocks.1.ffn.0.comfy_quant" in tensors
    assert not any(k.endswith("scaled_fp8") for k in tensors)
    path = W.save(tensors, tmp_path / "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors")
    model = _load_high(diffusers_folder, path)
    sd = model.state_dict()
    for key, value in sd.items():
        torch.testing.assert_close(value.float(), real[W.expert_original_name(key)], rtol=0, atol=0, msg=key)
    out, ref = run_expert(model), run_expert(_reference(real))
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max().item() <= FORWARD_TOL
