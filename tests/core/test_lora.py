"""LightX2V / ComfyUI LoRA files fused into the tiny experts, by hand and through the generator."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch

from wan22bot.config import Config, GenerationConfig, ModelConfig
from wan22bot.engine.generator import TwoPassGenerator
from wan22bot.engine.lora import FusedLora, fuse_lora, read_lora
from wan22bot.engine.presets import PRESETS
from wan22bot.engine.tiny import TRANSFORMER_CONFIG, tiny_components
from wan22bot.errors import ModelError
from wan22bot.jobs import JobOptions
from wan22bot.render import Renderer

from .helpers import (
    WAN_TO_DIFFUSERS,
    diffusers_name,
    expected_delta,
    lora_tensors,
    small_photo,
    weight_of,
    write_lora,
)

ALL = [(b, w) for b in (0, 1) for w in WAN_TO_DIFFUSERS]


def fresh_transformer(seed: int = 2) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**TRANSFORMER_CONFIG).eval()


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    sd = lora_tensors(seed=10, rank=4, alpha=2.0)  # alpha/rank = 0.5
    path = write_lora(tmp_path_factory.mktemp("lora") / "high.safetensors", sd)
    return path, sd


def test_read_lora_maps_every_wan_key_to_a_diffusers_module(lora_file):
    path, sd = lora_file
    lora = read_lora(path)
    assert {p.target for p in lora.patches} == {diffusers_name(b, w) + ".weight" for b, w in ALL}
    assert {p.kind for p in lora.patches} == {"lora_up/down"}
    for p in lora.patches:
        assert p.scale == 0.5  # alpha / rank, applied when fusing; the file's factors stay as they are
    for p in lora.patches:
        base = p.keys[0].rsplit(".", 1)[0]  # keys are sorted: <module>.alpha first
        assert torch.equal(p.up, sd[f"{base}.lora_up.weight"]) and torch.equal(p.down, sd[f"{base}.lora_down.weight"])


def test_fuse_gives_w_plus_strength_alpha_over_rank_up_down(lora_file):
    path, sd = lora_file
    model = fresh_transformer()
    before = {diffusers_name(b, w): weight_of(model, diffusers_name(b, w)) for b, w in ALL}
    untouched = weight_of(model, "proj_out")
    fl = fuse_lora(model, read_lora(path), 0.7)
    assert fl.report.applied == {"lora_up/down": len(ALL)} and fl.report.skipped == 0
    for b, w in ALL:
        name = diffusers_name(b, w)
        want = before[name].double() + 0.7 * expected_delta(sd, b, w)
        got = weight_of(model, name)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6)
    assert torch.equal(weight_of(model, "proj_out"), untouched)


def test_taking_the_lora_out_restores_every_tensor_bit_for_bit(lora_file):
    path, _ = lora_file
    model = fresh_transformer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fl = fuse_lora(model, read_lora(path), 1.3)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(ALL)
    fl.set(False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_lora_bias_diff_is_added_to_the_bias(tmp_path):
    sd = lora_tensors(blocks=(0,), modules=("self_attn.q",), seed=3)
    diff_b = torch.randn(24, generator=torch.Generator().manual_seed(4))
    sd["diffusion_model.blocks.0.self_attn.q.diff_b"] = diff_b
    model = fresh_transformer()
    name = diffusers_name(0, "self_attn.q")
    b0 = dict(model.named_modules())[name].bias.detach().clone()
    fuse_lora(model, read_lora(write_lora(tmp_path / "b.safetensors", sd)), 0.5)
    torch.testing.assert_close(dict(model.named_modules())[name].bias.detach(), b0 + 0.5 * diff_b,
                               rtol=0, atol=1e-6)


def test_image_branch_keys_are_skipped_with_one_summary_line(tmp_path, caplog):
    """k_img / v_img (Wan 2.1 I2V's image branch; Wan 2.2 A14B has none) are skipped, counted, logged once."""
    sd = lora_tensors(blocks=(0,), modules=("self_attn.q", "ffn.0"), seed=5)
    extra = lora_tensors(blocks=(0,), modules=("cross_attn.k",), seed=6)
    for k, v in extra.items():
        sd[k.replace("cross_attn.k", "cross_attn.k_img")] = v
        sd[k.replace("cross_attn.k", "cross_attn.v_img")] = v.clone()
    model = fresh_transformer()
    q_before = weight_of(model, diffusers_name(0, "self_attn.q"))
    with caplog.at_level(logging.WARNING, logger="wan22bot"):
        fl = fuse_lora(model, read_lora(write_lora(tmp_path / "extra.safetensors", sd)), 1.0)
    assert fl.report.applied == {"lora_up/down": 2} and fl.report.skipped == 2
    assert not torch.equal(weight_of(model, diffusers_name(0, "self_attn.q")), q_before)
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1 and re.search(r"\b2 tensors skipped\b", lines[0]) and "k_img" in lines[0], lines


def test_blocks_the_model_lacks_are_an_error_and_nothing_is_touched(tmp_path):
    sd = lora_tensors(blocks=(0,), modules=("self_attn.q",), seed=5)
    sd.update(lora_tensors(blocks=(7,), modules=("self_attn.q",), seed=7))  # the tiny model has 2 blocks
    model = fresh_transformer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelError, match=r"blocks\.7\.attn1\.to_q\.weight") as exc:
        fuse_lora(model, read_lora(write_lora(tmp_path / "deep.safetensors", sd)), 1.0)
    assert "deep.safetensors" in str(exc.value) and "blocks.7.self_attn.q" in str(exc.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_unknown_keys_are_an_error_naming_them(tmp_path):
    """A key that names no Wan module is refused before any weight is touched, not silently skipped."""
    sd = lora_tensors(blocks=(0,), modules=("self_attn.q",), seed=8)
    g = torch.Generator().manual_seed(9)
    sd["diffusion_model.blocks.0.some_new_layer.lora_down.weight"] = torch.randn(4, 24, generator=g)
    sd["diffusion_model.blocks.0.some_new_layer.lora_up.weight"] = torch.randn(24, 4, generator=g)
    with pytest.raises(ModelError) as exc:
        read_lora(write_lora(tmp_path / "odd.safetensors", sd))
    msg = str(exc.value)
    assert "odd.safetensors" in msg and "blocks.0.some_new_layer.lora_down.weight" in msg and "2 key(s)" in msg


def test_missing_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist") as exc:
        read_lora(tmp_path / "nope.safetensors")
    assert "nope.safetensors" in str(exc.value)


def test_corrupt_file_is_a_model_error(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage" + b"\x00" * 64)
    with pytest.raises(ModelError, match="not a readable .safetensors file") as exc:
        read_lora(bad)
    assert "broken.safetensors" in str(exc.value)


def test_truncated_file_is_a_model_error(tmp_path, lora_file):
    path, _ = lora_file
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelError, match="cut.safetensors"):
        read_lora(cut)


def test_file_with_no_lora_factors_is_a_model_error(tmp_path):
    p = write_lora(tmp_path / "weights.safetensors", {"diffusion_model.blocks.0.self_attn.q.weight": torch.zeros(24, 24)})
    with pytest.raises(ModelError, match="weights.safetensors.*blocks.0.self_attn.q.weight"):
        read_lora(p)


def test_shape_mismatch_is_a_model_error_naming_module_and_shapes(tmp_path):
    sd = lora_tensors(blocks=(0,), modules=("ffn.0",), shapes={"ffn.0": (48, 24)}, seed=11)
    lora = read_lora(write_lora(tmp_path / "big.safetensors", sd))
    model = fresh_transformer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelError) as exc:
        FusedLora(model, lora, 1.0).set(True)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    msg = str(exc.value)
    assert "big.safetensors" in msg and "blocks.0.ffn.net.0.proj" in msg
    assert "(32, 24)" in msg and "(48, 24)" in msg


# ------------------------------------------------------------------ through the generator


@pytest.fixture(scope="module")
def lora_gen(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen-lora")
    high = lora_tensors(seed=21, rank=4, alpha=2.0)
    low = lora_tensors(seed=22, rank=8, alpha=4.0, modules=("self_attn.q", "cross_attn.v", "ffn.2"))
    cfg = ModelConfig(kind="tiny", device="cpu",
                      lora_high=write_lora(d / "high.safetensors", high),
                      lora_low=write_lora(d / "low.safetensors", low),
                      lora_high_strength=0.7, lora_low_strength=1.3)
    gen = TwoPassGenerator(cfg)
    gen.load()
    ref = tiny_components(0)  # the same random weights, never fused
    base = {k: {n: m.weight.detach().clone() for n, m in ref[k].named_modules()
                if getattr(m, "weight", None) is not None}
            for k in ("transformer", "transformer_2")}
    return gen, high, low, base, d


def _fused_expected(base, sd, strength, modules):
    return {diffusers_name(b, w): base[diffusers_name(b, w)].double() + strength * expected_delta(sd, b, w)
            for b in (0, 1) for w in modules}


def _assert_fused(gen, high, low, base):
    t1, t2 = gen.components.transformer, gen.components.transformer_2
    exp1 = _fused_expected(base["transformer"], high, 0.7, WAN_TO_DIFFUSERS)
    exp2 = _fused_expected(base["transformer_2"], low, 1.3, ("self_attn.q", "cross_attn.v", "ffn.2"))
    for model, exp, key in ((t1, exp1, "transformer"), (t2, exp2, "transformer_2")):
        for name, m in model.named_modules():
            w = getattr(m, "weight", None)
            if w is None:
                continue
            want = exp.get(name, base[key][name].double())
            torch.testing.assert_close(w.detach().double(), want, rtol=0, atol=5e-6,
                                       msg=lambda s, n=name, k=key: f"{k}.{n}: {s}")


def test_generator_fuses_high_file_into_transformer_and_low_file_into_transformer_2(lora_gen):
    gen, high, low, base, _ = lora_gen
    assert gen.lora_fused
    # every weight of each expert checked: transformer = base + 0.7 * high only, transformer_2 = base +
    # 1.3 * low only (a file fused into the wrong expert, or into both, changes some weight here)
    _assert_fused(gen, high, low, base)
    name = diffusers_name(0, "ffn.0")  # in the high file only: transformer_2 keeps it bit for bit
    torch.testing.assert_close(weight_of(gen.components.transformer_2, name), base["transformer_2"][name],
                               rtol=0, atol=0)


def test_lora_free_preset_takes_the_lora_out_and_back(lora_gen):
    gen, high, low, base, d = lora_gen
    assert PRESETS["quality"].lora is False and PRESETS["fast"].lora is True
    cfg = Config(model=gen.cfg, generation=GenerationConfig(width=64, height=96, frames=1))
    renderer = Renderer(cfg, generator=gen)
    photo = d / "p.png"
    small_photo(64, 96).save(photo)

    res = renderer.render(photo, "quality", d / "out", JobOptions(preset="quality", steps=2, seed=1))
    assert res.frames == 1
    settings = json.loads(Path(res.sidecar).read_text(encoding="utf-8"))["settings"]
    assert (settings["preset"], settings["lora"], settings["cfg"]) == ("quality", False, 3.5)
    assert gen.lora_fused is False
    for key in ("transformer", "transformer_2"):
        for name, m in getattr(gen.components, key).named_modules():
            w = getattr(m, "weight", None)
            if w is not None:
                torch.testing.assert_close(w.detach(), base[key][name], rtol=0, atol=2e-6)

    renderer.render(photo, "fast", d / "out", JobOptions(preset="fast", steps=2, seed=1))
    assert gen.lora_fused is True
    _assert_fused(gen, high, low, base)


def test_bad_lora_in_config_fails_load_with_model_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    gen = TwoPassGenerator(ModelConfig(kind="tiny", device="cpu", lora_low=bad))
    with pytest.raises(ModelError, match="bad.safetensors"):
        gen.load()
    assert not gen.loaded
