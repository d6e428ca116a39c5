"""`wan22bot check` prints each LoRA's patched tensors by kind, and refuses one that does not fit."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from wan22bot.commands.check import run_checks
from wan22bot.config import Config, ModelConfig, PathsConfig

from .writers import lightx2v_like


def _cfg(tmp_path, **model) -> Config:
    paths = PathsConfig(input=tmp_path / "in", output=tmp_path / "out", state=tmp_path / "state")
    return Config(paths=paths, model=ModelConfig(device="cpu", **model))


def test_check_reports_each_lora_by_kind_and_refuses_an_unknown_key(tmp_path):
    good = lightx2v_like(seed=1, image_branch=True).write(tmp_path / "high.safetensors")
    bad_sd = dict(lightx2v_like(seed=2).sd)
    bad_sd["diffusion_model.blocks.0.self_attn.qkv.lora_down.weight"] = torch.zeros(4, 24)
    bad = tmp_path / "low.safetensors"
    save_file(bad_sd, str(bad))
    rep = run_checks(_cfg(tmp_path, lora_high=good, lora_low=bad))
    text = rep.render()
    assert ("model.lora_high into the high-noise expert: high.safetensors: 60 tensors patched (lora_up/down 20, "
            "diff 10, diff_b 28, diff_m 2); 13 skipped (Wan 2.1 image branch") in text, text
    lora_errors = [e for e in rep.errors if "lora_low" in e]
    assert len(lora_errors) == 1 and "blocks.0.self_attn.qkv.lora_down.weight" in lora_errors[0], rep.errors
    assert "NOT usable" in text


def test_check_uses_the_full_size_expert_for_the_real_model(tmp_path):
    """A LoRA for the A14B expert (dim 5120) is matched against its real names and shapes on the meta
    device; the tiny expert's LoRA does not fit it."""
    g = torch.Generator().manual_seed(0)
    sd = {"diffusion_model.blocks.39.cross_attn.k.lora_down.weight": torch.randn(1, 5120, generator=g),
          "diffusion_model.blocks.39.cross_attn.k.lora_up.weight": torch.randn(5120, 1, generator=g),
          "diffusion_model.blocks.39.cross_attn.k.alpha": torch.tensor(1.0),
          "diffusion_model.blocks.39.ffn.0.diff_b": torch.randn(13824, generator=g),
          "diffusion_model.blocks.39.diff_m": torch.randn(1, 6, 5120, generator=g),
          "diffusion_model.time_projection.1.diff_b": torch.randn(6 * 5120, generator=g)}
    full = tmp_path / "full.safetensors"
    save_file(sd, str(full))
    small = lightx2v_like(seed=3).write(tmp_path / "small.safetensors")
    comfy = tmp_path / "ComfyUI" / "models"
    comfy.mkdir(parents=True)
    rep = run_checks(_cfg(tmp_path, kind="wan2.2-i2v-a14b", comfyui=comfy, lora_high=full, lora_low=small))
    assert any("full.safetensors: 4 tensors patched (lora_up/down 1, diff_b 2, diff_m 1)" in m for m in rep.ok), rep.ok
    err = [e for e in rep.errors if e.startswith("model.lora_low")]
    assert len(err) == 1 and "does not fit this model" in err[0] and "(5120, 5120)" in err[0], rep.errors
