"""Taking a LoRA out and putting it back gives the exact bits of a fresh load, in bf16 and fp8, from a
host copy of the patched tensors or from the loader's own source of the original values."""

from __future__ import annotations

import copy

import pytest
import torch

from wan22bot.engine import fp8_linear
from wan22bot.engine.fp8_linear import FP8Linear, convert_to_fp8
from wan22bot.engine.lora import FusedLora, fuse_lora, read_lora

from .test_apply import tiny
from .writers import lightx2v_like, params_of


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_bf16_out_in_out_is_bit_exact_and_subtracting_would_not_be(tmp_path):
    lora = read_lora(lightx2v_like(seed=1, rank=4, alpha=0.5).write(tmp_path / "l.safetensors"))
    model = tiny(dtype=torch.bfloat16)
    fresh = _state(model)
    fl = fuse_lora(model, lora, 1.0)
    fused = _state(model)
    assert len(_same(fresh, fused)) == 60
    # the old way (subtract the delta from the rounded sum) leaves a share of bf16 weights an ulp off
    w = fused["blocks.0.ffn.net.0.proj.weight"].float()
    d = next(p for p in lora.patches if p.target == "blocks.0.ffn.net.0.proj.weight")
    subtracted = (w - 0.125 * (d.up.float() @ d.down.float())).to(torch.bfloat16)
    assert not torch.equal(subtracted, fresh["blocks.0.ffn.net.0.proj.weight"])
    for _ in range(3):
        fl.set(False)
        assert _same(fresh, _state(model)) == []
        fl.set(True)
        assert _same(fused, _state(model)) == []
    # host copies of exactly the patched tensors were kept (the model's other tensors were not copied)
    assert fl.kept_bytes == sum(fresh[p.target].numel() * 2 for p in fl.plan.apply if fresh[p.target].dtype == torch.bfloat16) \
        + sum(fresh[p.target].numel() * 4 for p in fl.plan.apply if fresh[p.target].dtype == torch.float32)


def test_originals_from_the_loader_are_used_instead_of_a_host_copy(tmp_path):
    lora = read_lora(lightx2v_like(seed=2).write(tmp_path / "l.safetensors"))
    model = tiny(dtype=torch.bfloat16)
    source = {k: v.clone() for k, v in params_of(model).items()}  # what a loader re-reads from its file
    asked: list[str] = []

    def original(name: str, dtype: torch.dtype):
        asked.append(name)
        return source[name].to(dtype) if name in source else None

    fresh = _state(model)
    fl = fuse_lora(model, lora, 0.7, original=original)
    fused = _state(model)
    assert fl.kept_bytes == 0 and len(asked) == 60
    fl.set(False)
    assert _same(fresh, _state(model)) == []
    fl.set(True)
    assert _same(fused, _state(model)) == []


def test_a_source_that_disagrees_with_the_loaded_weights_is_not_trusted(tmp_path):
    lora = read_lora(lightx2v_like(seed=3).write(tmp_path / "l.safetensors"))
    model = tiny(dtype=torch.bfloat16)
    fresh = _state(model)
    wrong = {k: v.float() + 1e-3 for k, v in params_of(model).items()}  # e.g. another file
    fl = fuse_lora(model, lora, 1.0, original=lambda name, dtype: wrong[name].to(dtype))
    assert fl.kept_bytes > 0
    fl.set(False)
    assert _same(fresh, _state(model)) == []


@pytest.mark.parametrize("scaling", getattr(fp8_linear, "SCALINGS", ("rowwise",)))
def test_fp8_experts_are_requantised_from_the_originals(tmp_path, scaling):
    """Out: the fp8 buffers equal those of an expert quantised with no LoRA ever fused; in again: equal
    to those quantised right after the first fuse (what a fresh load with the LoRA gives)."""
    lora = read_lora(lightx2v_like(seed=4).write(tmp_path / "l.safetensors"))
    model = tiny(dtype=torch.bfloat16)
    never = copy.deepcopy(model)
    kw = {} if scaling == "rowwise" else {"scaling": scaling}
    convert_to_fp8(never, use_scaled_mm=False, **kw)
    fl = fuse_lora(model, lora, 1.0)
    convert_to_fp8(model, use_scaled_mm=False, **kw)
    assert isinstance(model.blocks[0].attn2.to_q, FP8Linear)
    fused = _state(model)
    fl.set(False)
    assert _same(_state(never), _state(model)) == []
    fl.set(True)
    assert _same(fused, _state(model)) == []


def test_strength_zero_and_a_second_handle_leave_nothing_behind(tmp_path):
    lora = read_lora(lightx2v_like(seed=5).write(tmp_path / "l.safetensors"))
    model = tiny()
    fresh = _state(model)
    fuse_lora(model, lora, 0.0)
    assert _same(fresh, _state(model)) == []
    fl = FusedLora(model, lora, 2.0)
    assert _same(fresh, _state(model)) == []  # planning touches nothing
    fl.set(True)
    fl.set(True)  # idempotent
    fl.set(False)
    assert _same(fresh, _state(model)) == []


def test_generator_uses_the_loaders_originals_when_the_components_offer_them(tmp_path):
    from wan22bot.config import ModelConfig
    from wan22bot.engine.components import load_components
    from wan22bot.engine.generator import TwoPassGenerator

    def factory(cfg, device, dtype):
        comps = load_components(cfg, device, dtype)
        # what a loader does: a way back to each expert's tensors as loaded, by parameter name
        for key in ("transformer", "transformer_2"):
            src = params_of(getattr(comps, key))
            comps.originals = getattr(comps, "originals", {})
            comps.originals[key] = lambda name, dtype, src=src: src[name].to(dtype)
        return comps

    path = lightx2v_like(seed=6).write(tmp_path / "l.safetensors")
    gen = TwoPassGenerator(ModelConfig(kind="tiny", device="cpu", lora_high=path, lora_low=path),
                           components_factory=factory)
    gen.load()
    assert set(gen.loras) == {"transformer", "transformer_2"}
    assert all(fl.kept_bytes == 0 for fl in gen.loras.values())
    fused = _state(gen.components.transformer_2)
    gen._set_lora(False)
    from wan22bot.engine.tiny import tiny_components

    assert _same(_state(tiny_components(0)["transformer_2"]), _state(gen.components.transformer_2)) == []
    gen._set_lora(True)
    assert _same(fused, _state(gen.components.transformer_2)) == []


def test_preset_switches_in_swap_mode_give_the_videos_of_fresh_loads(tmp_path):
    """fast, quality, fast: the quality video equals one from a daemon that never had the LoRA, the
    second fast video equals the first. In swap mode the experts are parked on the host between passes:
    the switch must land in those host copies, not in a device copy the next swap drops."""
    mode = "swap"
    import numpy as np
    from PIL import Image

    from wan22bot.config import ModelConfig
    from wan22bot.engine.generator import GenerationRequest, TwoPassGenerator

    img = Image.fromarray((np.random.RandomState(1).rand(96, 64, 3) * 255).astype("uint8"))

    def req(lora: bool) -> GenerationRequest:
        return GenerationRequest(image=img, width=64, height=96, frames=1, prompt="a cat", seed=4, steps=2,
                                 switch_step=1, lora=lora)

    hi = lightx2v_like(seed=7).write(tmp_path / "hi.safetensors")
    lo = lightx2v_like(seed=8).write(tmp_path / "lo.safetensors")
    g = TwoPassGenerator(ModelConfig(device="cpu", memory=mode, lora_high=hi, lora_low=lo))
    fast = g.generate(req(True)).frames
    quality = g.generate(req(False)).frames
    fast_again = g.generate(req(True)).frames
    assert g.memory_mode == mode
    never = TwoPassGenerator(ModelConfig(device="cpu", memory=mode)).generate(req(False)).frames
    assert torch.equal(quality, never)
    assert torch.equal(fast_again, fast)
    assert not torch.equal(fast, quality)


@pytest.mark.parametrize("layout", ["bf16", "fp8_scaled"])
def test_originals_re_read_from_a_comfyui_expert_file(tmp_path, layout):
    """The default source for an expert loaded from a single file: the file itself, read by the loader's
    own reader. Nothing is kept on the host, and out/in are still bit-exact."""
    from tests.comfy import writers as W
    from wan22bot.engine.lora_originals import originals_from_file
    from wan22bot.engine.single_files import load_expert

    tensors, _ = W.quantise(W.expert_sd(W.tiny_expert(3)), layout, prefix="model.diffusion_model.")
    path = W.save(tensors, tmp_path / f"expert_{layout}.safetensors")
    model = load_expert(path, torch.bfloat16).module
    fresh = _state(model)
    lora = read_lora(lightx2v_like(seed=9, model=model).write(tmp_path / "l.safetensors"))
    fl = fuse_lora(model, lora, 1.0, original=originals_from_file(path))
    fused = _state(model)
    assert fl.kept_bytes == 0 and len(_same(fresh, fused)) == 60
    fl.set(False)
    assert _same(fresh, _state(model)) == []
    fl.set(True)
    assert _same(fused, _state(model)) == []
