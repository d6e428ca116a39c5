"""`[model] comfyui`: the six files found by their standard names, and a render with no Diffusers folder."""

from __future__ import annotations

import pytest
import torch

from wan22bot.config import ModelConfig, config_from_dict
from wan22bot.engine.components import Components, check_model_files, load_components
from wan22bot.engine.generator import GenerationRequest, TwoPassGenerator
from wan22bot.engine.model_files import candidates, lora_paths, resolve_model_files
from wan22bot.engine.tokenizer import SentencePieceUMT5Tokenizer
from wan22bot.errors import ConfigError, ModelError

from ..core.helpers import small_photo
from . import writers as W

HIGH = "diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"
LOW = "diffusion_models/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"
TEXT = "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors"
VAE = "vae/wan_2.1_vae.safetensors"
LORA_HIGH = "loras/wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors"
LORA_LOW = "loras/wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors"


def real(**kw) -> ModelConfig:
    return ModelConfig(kind="wan2.2-i2v-a14b", device="cpu", **kw)


@pytest.fixture(scope="module")
def comfy_models(tmp_path_factory, expert_high, expert_low, spm_proto):
    """A ComfyUI models/ folder in the seed's layouts, plus the exact float values each file holds."""
    root = tmp_path_factory.mktemp("ComfyUI") / "models"
    reals = {}
    t, reals["high"] = W.quantise(W.expert_sd(expert_high), "fp8_scaled", prefix="model.diffusion_model.")
    W.save(t, root / HIGH)
    # the newer per-layer layout, under the same standard name
    t, reals["low"] = W.quantise(W.expert_sd(expert_low), "comfy_quant", prefix="model.diffusion_model.")
    W.save(t, root / LOW)
    te = W.tiny_text_encoder(21)
    t, reals["text"] = W.quantise(W.text_sd(te), "fp8_scaled")
    t["spiece_model"] = W.spiece_tensor(spm_proto)
    W.save(t, root / TEXT)
    t, reals["vae"] = W.quantise(W.vae_sd(W.tiny_vae(22)), "bf16")
    W.save(t, root / VAE)
    return root, reals


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# ------------------------------------------------------------------------------------- lookup
def test_lookup_prefers_the_seeds_files_then_other_precisions(tmp_path):
    root = tmp_path / "models"
    fp16 = _touch(root / "diffusion_models/wan2.2_i2v_high_noise_14B_fp16.safetensors")
    assert resolve_model_files(real(comfyui=root)).get("high_noise") == fp16
    seed = _touch(root / HIGH)
    assert resolve_model_files(real(comfyui=root)).get("high_noise") == seed
    # older installs keep the text encoder in clip/; the fp16 file is accepted too
    old = _touch(root / "clip/umt5_xxl_fp16.safetensors")
    assert resolve_model_files(real(comfyui=root)).get("text_encoder") == old
    new = _touch(root / TEXT)
    assert resolve_model_files(real(comfyui=root)).get("text_encoder") == new
    _touch(root / LORA_HIGH)
    _touch(root / LORA_LOW)
    assert lora_paths(real(comfyui=root)) == (root / LORA_HIGH, root / LORA_LOW)


def test_explicit_keys_win_over_the_folder(tmp_path):
    root = tmp_path / "models"
    _touch(root / HIGH)
    mine = _touch(tmp_path / "elsewhere" / "my_high.safetensors")
    lora = _touch(tmp_path / "elsewhere" / "my_lora.safetensors")
    _touch(root / LORA_HIGH)
    files = resolve_model_files(real(comfyui=root, high_noise=mine, lora_high=lora))
    assert files.get("high_noise") == mine and files.origin["high_noise"] == "model.high_noise"
    assert lora_paths(real(comfyui=root, lora_high=lora))[0] == lora


def test_each_missing_file_is_one_error_with_the_paths_looked_at(tmp_path):
    root = tmp_path / "models"
    _touch(root / HIGH)
    problems = check_model_files(real(comfyui=root))
    assert len(problems) == 3, problems  # low-noise expert, text encoder, VAE
    low, text, vae = problems
    for p in candidates(root, "low_noise"):
        assert str(p) in low
    assert str(root / "clip/umt5_xxl_fp8_e4m3fn_scaled.safetensors") in text
    assert str(root / VAE) in vae
    assert all(f"wan22bot fetch-models --dest {root}" in p for p in problems)
    missing = check_model_files(real(comfyui=tmp_path / "nope"))
    assert len(missing) == 1 and "is not a folder" in missing[0] and "fetch-models" in missing[0]


def test_config_accepts_comfyui_alone_or_four_files_alone(tmp_path):
    ok = config_from_dict({"model": {"kind": "wan2.2-i2v-a14b", "comfyui": str(tmp_path)}})
    assert ok.model.comfyui == tmp_path and ok.model.path is None
    four = {k: str(tmp_path / f"{k}.safetensors") for k in ("high_noise", "low_noise", "text_encoder", "vae")}
    assert config_from_dict({"model": {"kind": "wan2.2-i2v-a14b", **four}}).model.path is None
    three = dict(four)
    del three["vae"]
    with pytest.raises(ConfigError, match="comfyui"):
        config_from_dict({"model": {"kind": "wan2.2-i2v-a14b", **three}})


# ------------------------------------------------------------------------------------- render
def _reference_components(reals, proto) -> Components:
    make = lambda: W.WanTransformer3DModel(**W.EXPERT_CONFIG)  # noqa: E731
    te = W.tiny_text_encoder(0)
    te.load_state_dict({k: reals["text"]["shared.weight" if k == "encoder.embed_tokens.weight" else k]
                        for k in te.state_dict()})
    return Components(
        tokenizer=SentencePieceUMT5Tokenizer(proto),
        text_encoder=te.eval(),
        vae=W.reference_model(lambda: W.tiny_vae(0), reals["vae"], W.vae_original_name),
        transformer=W.reference_model(make, reals["high"], W.expert_original_name),
        transformer_2=W.reference_model(make, reals["low"], W.expert_original_name),
        default_width=832, default_height=1216, default_frames=81, max_sequence_length=512,
        description="reference",
    )


def _request(photo):
    return GenerationRequest(image=photo, width=64, height=96, frames=5, prompt="a red kite over the sea",
                             steps=4, switch_step=2, cfg=1.0, shift=5.0, seed=1234)


def test_renders_from_the_comfyui_folder_alone(comfy_models, spm_proto):
    root, reals = comfy_models
    cfg = real(comfyui=root)
    assert cfg.path is None
    gen = TwoPassGenerator(cfg)
    photo = small_photo(64, 96)
    out = gen.generate(_request(photo))
    comps = gen.components
    assert out.frames.dtype == torch.uint8 and tuple(out.frames.shape) == (5, 96, 64, 3)
    assert "ComfyUI folder" in comps.description and str(root) in comps.description
    assert "fp8_scaled (" in comps.parts["text_encoder"] and "tokenizer from its spiece_model" in comps.parts["text_encoder"]
    assert "fp8_scaled (" in comps.parts["high_noise"] and "per-layer quantisation" in comps.parts["low_noise"]
    # the same weights computed by hand, through the same generator: the same video
    ref = TwoPassGenerator(cfg, components_factory=lambda *a: _reference_components(reals, spm_proto))
    expect = ref.generate(_request(photo)).frames
    diff = (out.frames.int() - expect.int()).abs()
    assert diff.max().item() <= 1, diff.max()


def test_check_reports_each_layout_and_a_finite_forward(comfy_models):
    from wan22bot.engine.model_check import check_model

    root, _ = comfy_models
    rep = check_model(real(comfyui=root), dtype=torch.float32)
    assert rep.errors == []
    text = "\n".join(rep.ok)
    assert f"high_noise: {root / HIGH}: Wan 2.2 I2V-layout expert (not the A14B size), 2 blocks, width 256, " \
           "fp8_scaled (bf16 + fp8 e4m3, per-tensor scale_weight" in text
    assert "low_noise:" in text and "per-layer quantisation (bf16 + fp8 e4m3, per-tensor weight_scale" in text
    assert "text_encoder:" in text and "vae:" in text and "Wan 2.1 VAE (z_dim 16" in text
    assert text.count("one test forward is finite") == 4
    assert any("no LoRA" in w for w in rep.warnings)


def test_check_catches_a_forward_that_is_not_finite(tmp_path, expert_high, comfy_models):
    """A file the header check accepts but whose numbers are broken is stopped before any render."""
    from wan22bot.engine.model_check import check_model

    t, _ = W.quantise(W.expert_sd(expert_high), "fp8_scaled")
    t["blocks.0.self_attn.q.scale_weight"] = torch.tensor(float("nan"))
    bad = W.save(t, tmp_path / "bad_high.safetensors")
    rep = check_model(real(high_noise=bad, low_noise=bad, text_encoder=bad, vae=bad), dtype=torch.float32)
    # the text encoder / VAE slots hold an expert: named, so no forward runs at all
    assert any("not the UMT5-XXL text encoder" in e for e in rep.errors)
    from wan22bot.engine.model_check import forward_is_finite

    with pytest.raises(ModelError, match=r"blocks\.0\.self_attn\.q\.weight holds NaN/inf"):
        forward_is_finite("high_noise", bad, torch.float32)
    rep = check_model(real(high_noise=bad, comfyui=comfy_models[0]), dtype=torch.float32)
    assert len(rep.errors) == 1 and rep.errors[0].startswith(f"high_noise: {bad}: ") and "NaN/inf" in rep.errors[0]
    assert sum("one test forward is finite" in m for m in rep.ok) == 3  # the other three parts
    good, _ = W.quantise(W.expert_sd(expert_high), "fp8_scaled")
    assert forward_is_finite("high_noise", W.save(good, tmp_path / "good.safetensors"), torch.float32) is None
    # finite weights whose forward overflows (a scale off by 1e30): caught by the output check
    huge = dict(good)
    for k in [k for k in huge if k.endswith("ffn.0.scale_weight")]:
        huge[k] = huge[k] * 1e30
    problem = forward_is_finite("high_noise", W.save(huge, tmp_path / "huge.safetensors"), torch.float32)
    assert problem is not None and "test forward gives NaN/inf" in problem


def test_the_four_files_alone_load_with_no_folder(comfy_models):
    root, reals = comfy_models
    cfg = real(high_noise=root / HIGH, low_noise=root / LOW, text_encoder=root / TEXT, vae=root / VAE)
    comps = load_components(cfg, torch.device("cpu"), torch.float32)
    assert comps.description.endswith("single files")
    assert set(comps.parts) == {"high_noise", "low_noise", "text_encoder", "vae"}
    vae_sd = comps.vae.state_dict()
    torch.testing.assert_close(vae_sd["decoder.conv_in.weight"], reals["vae"]["decoder.conv1.weight"], rtol=0, atol=0)
    assert isinstance(comps.tokenizer, SentencePieceUMT5Tokenizer)


def test_wan22bot_check_prints_each_file_and_says_usable(comfy_models, tmp_path):
    from wan22bot.commands.check import run_checks
    from wan22bot.config import Config, PathsConfig

    root, _ = comfy_models
    paths = PathsConfig(input=tmp_path / "in", output=tmp_path / "out", state=tmp_path / "state")
    rep = run_checks(Config(paths=paths, model=real(comfyui=root)))
    text = rep.render()
    assert f"  ok    high_noise: {root / HIGH}: Wan 2.2 I2V-layout expert" in text
    assert f"  ok    text_encoder: {root / TEXT}: UMT5 encoder" in text
    assert "  ok    vae: loaded and one test forward is finite" in text
    assert rep.errors == [] and text.endswith("wan22bot check: usable")
