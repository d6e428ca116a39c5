"""The seed's LoRAs found in a ComfyUI models folder: fused at load, reported by check, and taken out
and put back exactly with the originals re-read from the expert files (nothing kept on the host)."""

from __future__ import annotations

import pytest
import torch

from tests.comfy import writers as W
from wan22bot.commands.check import run_checks
from wan22bot.config import Config, ModelConfig, PathsConfig
from wan22bot.engine.generator import TwoPassGenerator
from wan22bot.engine.single_files import load_expert

from .writers import lightx2v_like, params_of

HIGH = "diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"
LOW = "diffusion_models/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"
TEXT = "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors"
VAE = "vae/wan_2.1_vae.safetensors"
LORA_HIGH = "loras/wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors"
LORA_LOW = "loras/wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors"


@pytest.fixture(scope="module")
def comfy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ComfyUI") / "models"
    for rel, seed, layout in ((HIGH, 31, "fp8_scaled"), (LOW, 32, "comfy_quant")):
        t, _ = W.quantise(W.expert_sd(W.tiny_expert(seed)), layout, prefix="model.diffusion_model.")
        W.save(t, root / rel)
    t, _ = W.quantise(W.text_sd(W.tiny_text_encoder(33)), "fp8_scaled")
    t["spiece_model"] = W.spiece_tensor(W.train_spiece(tmp_path_factory.mktemp("spm")))
    W.save(t, root / TEXT)
    t, _ = W.quantise(W.vae_sd(W.tiny_vae(34)), "bf16")
    W.save(t, root / VAE)
    shapes = W.tiny_expert(0)
    (root / "loras").mkdir()
    lightx2v_like(seed=35, model=shapes, image_branch=False).write(root / LORA_HIGH)
    lightx2v_like(seed=36, model=shapes, rank=8, alpha=4.0).write(root / LORA_LOW)
    return root


def test_folder_loras_fused_and_switched_exactly_from_the_files(comfy_root):
    gen = TwoPassGenerator(ModelConfig(kind="wan2.2-i2v-a14b", device="cpu", comfyui=comfy_root))
    gen.load()
    assert set(gen.loras) == {"transformer", "transformer_2"}
    assert all(fl.kept_bytes == 0 for fl in gen.loras.values())  # originals come from the expert files
    fused = {k: params_of(getattr(gen.components, k)) for k in gen.loras}
    plain = {"transformer": params_of(load_expert(comfy_root / HIGH, torch.float32).module),
             "transformer_2": params_of(load_expert(comfy_root / LOW, torch.float32).module)}
    gen._set_lora(False)
    for key in plain:
        now = params_of(getattr(gen.components, key))
        assert [n for n in plain[key] if not torch.equal(now[n], plain[key][n])] == [], key
    gen._set_lora(True)
    for key in fused:
        now = params_of(getattr(gen.components, key))
        assert [n for n in fused[key] if not torch.equal(now[n], fused[key][n])] == [], key


def test_check_lists_the_folder_loras_against_each_experts_own_architecture(comfy_root, tmp_path):
    paths = PathsConfig(input=tmp_path / "in", output=tmp_path / "out", state=tmp_path / "state")
    cfg = Config(paths=paths, model=ModelConfig(kind="wan2.2-i2v-a14b", device="cpu", comfyui=comfy_root))
    rep = run_checks(cfg)
    lines = [m for m in rep.ok if m.startswith("model.lora_")]
    assert lines == [
        f"model.lora_high into the high-noise expert: {LORA_HIGH[6:]}: 60 tensors patched "
        "(lora_up/down 20, diff 10, diff_b 28, diff_m 2)",
        f"model.lora_low into the low-noise expert: {LORA_LOW[6:]}: 60 tensors patched "
        "(lora_up/down 20, diff 10, diff_b 28, diff_m 2)",
    ], rep.render()
    assert not [e for e in rep.errors if "lora" in e], rep.errors
