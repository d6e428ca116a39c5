"""Architecture read from tensor shapes: the full-size key contract (meta device) and wrong-file errors."""

from __future__ import annotations

import pytest
import torch

from wan22bot.engine.detect import detect_expert, detect_text_encoder, detect_vae
from wan22bot.engine.single_files import (build_expert, build_text_encoder, build_vae, expert_key_map, text_key_map,
                                          vae_key_map)
from wan22bot.errors import ModelError

from . import writers as W


def wan_expert_shapes(dim=5120, ffn=13824, layers=40, in_dim=36, out_dim=16, text_dim=4096, freq_dim=256,
                      image_branch=False, prefix="") -> dict[str, tuple[int, ...]]:
    """The tensors of an original-Wan checkpoint (as ComfyUI's files hold them), written out by hand."""
    s: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (dim, in_dim, 1, 2, 2), "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, text_dim), "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim), "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, freq_dim), "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim), "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim), "time_projection.1.bias": (6 * dim,),
        "head.head.weight": (out_dim * 4, dim), "head.head.bias": (out_dim * 4,), "head.modulation": (1, 2, dim),
    }
    for i in range(layers):
        b = f"blocks.{i}."
        for attn in ("self_attn", "cross_attn"):
            for p in ("q", "k", "v", "o"):
                s[f"{b}{attn}.{p}.weight"] = (dim, dim)
                s[f"{b}{attn}.{p}.bias"] = (dim,)
            s[f"{b}{attn}.norm_q.weight"] = (dim,)
            s[f"{b}{attn}.norm_k.weight"] = (dim,)
        if image_branch:
            for p in ("k_img", "v_img"):
                s[f"{b}cross_attn.{p}.weight"] = (dim, dim)
                s[f"{b}cross_attn.{p}.bias"] = (dim,)
            s[f"{b}cross_attn.norm_k_img.weight"] = (dim,)
        s[f"{b}norm3.weight"] = (dim,)
        s[f"{b}norm3.bias"] = (dim,)
        s[f"{b}ffn.0.weight"], s[f"{b}ffn.0.bias"] = (ffn, dim), (ffn,)
        s[f"{b}ffn.2.weight"], s[f"{b}ffn.2.bias"] = (dim, ffn), (dim,)
        s[f"{b}modulation"] = (1, 6, dim)
    if image_branch:
        s.update({"img_emb.proj.0.weight": (1280,), "img_emb.proj.0.bias": (1280,),
                  "img_emb.proj.1.weight": (1280, 1280), "img_emb.proj.1.bias": (1280,),
                  "img_emb.proj.3.weight": (dim, 1280), "img_emb.proj.3.bias": (dim,),
                  "img_emb.proj.4.weight": (dim,), "img_emb.proj.4.bias": (dim,)})
    return {prefix + k: v for k, v in s.items()}


def umt5_xxl_shapes(layers=24, d=4096, ff=10240, heads=64, buckets=32, vocab=256384, per_block_bias=True):
    s = {"shared.weight": (vocab, d), "encoder.final_layer_norm.weight": (d,)}
    for i in range(layers):
        b = f"encoder.block.{i}.layer."
        for p in ("q", "k", "v", "o"):
            s[f"{b}0.SelfAttention.{p}.weight"] = (d, d)
        if per_block_bias or i == 0:
            s[f"{b}0.SelfAttention.relative_attention_bias.weight"] = (buckets, heads)
        s[f"{b}0.layer_norm.weight"] = (d,)
        s[f"{b}1.DenseReluDense.wi_0.weight"] = (ff, d)
        s[f"{b}1.DenseReluDense.wi_1.weight"] = (ff, d)
        s[f"{b}1.DenseReluDense.wo.weight"] = (d, ff)
        s[f"{b}1.layer_norm.weight"] = (d,)
    return s


def meta(shapes):
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


def _model_shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------- full-size contract
def test_a14b_expert_contract_full_size():
    shapes = wan_expert_shapes(prefix="model.diffusion_model.")
    arch = detect_expert(meta(shapes))
    assert (arch.width, arch.heads, arch.depth, arch.in_channels, arch.out_channels) == (5120, 40, 40, 36, 16)
    assert (arch.ffn_dim, arch.text_dim, arch.freq_dim, arch.patch_size) == (13824, 4096, 256, (1, 2, 2))
    assert arch.is_a14b and not arch.image_branch and arch.cross_attn_norm and arch.qk_norm
    model = build_expert(arch)
    plain = {k.removeprefix("model.diffusion_model."): v for k, v in shapes.items()}
    mapping = expert_key_map(list(plain))
    want = _model_shapes(model)
    assert set(mapping) == set(want)  # every expected key present, none unknown
    assert {k: plain[src] for k, src in mapping.items()} == want
    assert sum(torch.Size(v).numel() for v in plain.values()) == pytest.approx(14.29e9, rel=0.01)


def test_umt5_xxl_contract_full_size():
    shapes = umt5_xxl_shapes()
    arch = detect_text_encoder(meta(shapes))
    # ComfyUI's umt5_config_xxl.json
    assert (arch.num_layers, arch.d_model, arch.vocab_size, arch.d_ff, arch.d_kv, arch.num_heads, arch.buckets) == \
        (24, 4096, 256384, 10240, 64, 64, 32)
    assert arch.gated and arch.is_xxl
    model = build_text_encoder(arch)
    assert model.config.dense_act_fn == "gelu_new" or model.config.dense_act_fn.startswith("gelu")
    mapping, tied = text_key_map(list(shapes))
    want = _model_shapes(model)
    assert set(mapping) | set(tied) == set(want)
    assert {k: shapes[src] for k, src in mapping.items()} == {k: v for k, v in want.items() if k not in tied}


def test_wan21_vae_contract_full_size():
    from diffusers import AutoencoderKLWan
    from accelerate import init_empty_weights

    with init_empty_weights():
        ref = AutoencoderKLWan()  # diffusers' defaults are the Wan 2.1 VAE
    shapes = {W.vae_original_name(k): tuple(v.shape) for k, v in ref.state_dict().items()}
    assert shapes["encoder.conv1.weight"] == (96, 3, 3, 3, 3) and shapes["conv1.weight"] == (32, 32, 1, 1, 1)
    assert shapes["decoder.conv1.weight"] == (384, 16, 3, 3, 3) and shapes["decoder.head.2.weight"] == (3, 96, 3, 3, 3)
    arch = detect_vae(meta(shapes))
    assert (arch.base_dim, arch.z_dim) == (96, 16)
    model = build_vae(arch)
    mapping = vae_key_map(list(shapes))
    want = _model_shapes(model)
    assert set(mapping) == set(want)
    assert {k: shapes[src] for k, src in mapping.items()} == want
    assert model.config.latents_mean[:2] == [-0.7571, -0.7089] and model.config.temperal_downsample == [False, True, True]


# ------------------------------------------------------------------------------------- wrong files
@pytest.mark.parametrize("shapes,words", [
    (wan_expert_shapes(image_branch=True, layers=2), ["Wan 2.1 I2V", "img_emb"]),
    (wan_expert_shapes(in_dim=16, layers=2), ["text-to-video", "16 input channels"]),
    (wan_expert_shapes(dim=3072, in_dim=48, out_dim=48, ffn=14336, layers=2), ["TI2V-5B", "width 3072"]),
    ({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, ["Stable Diffusion UNet"]),
    (umt5_xxl_shapes(layers=2, d=64, ff=64, vocab=100), ["UMT5"]),
    ({"encoder.conv1.weight": (96, 3, 3, 3, 3), "decoder.conv1.weight": (384, 16, 3, 3, 3),
      "conv1.weight": (32, 32, 1, 1, 1)}, ["Wan VAE"]),
])
def test_wrong_file_as_expert_says_what_it_is(shapes, words):
    with pytest.raises(ModelError) as exc:
        detect_expert(meta(shapes), source="/m/diffusion_models/x.safetensors")
    msg = str(exc.value)
    assert "/m/diffusion_models/x.safetensors" in msg
    for w in words:
        assert w in msg, msg


def test_wan22_vae_of_the_5b_model_is_named():
    shapes = {"encoder.conv1.weight": (160, 12, 3, 3, 3), "decoder.conv1.weight": (1024, 48, 3, 3, 3),
              "conv1.weight": (96, 96, 1, 1, 1)}
    with pytest.raises(ModelError, match=r"Wan 2\.2 VAE \(z_dim 48\).*TI2V-5B.*wan_2\.1_vae"):
        detect_vae(meta(shapes), source="vae/wan2.2_vae.safetensors")


def test_expert_given_as_vae_is_named():
    with pytest.raises(ModelError, match="Wan 2.2 I2V A14B expert.*not the Wan 2.1 VAE"):
        detect_vae(meta(wan_expert_shapes()), source="vae/x.safetensors")


def test_t5_of_flux_given_as_text_encoder_is_named():
    shapes = umt5_xxl_shapes(vocab=32128, per_block_bias=False)
    with pytest.raises(ModelError, match="T5 encoder .*one relative_attention_bias.*not UMT5-XXL"):
        detect_text_encoder(meta(shapes), source="clip/t5xxl_fp16.safetensors")


def test_wrong_file_in_the_comfyui_folder_fails_the_load_naming_it(tmp_path):
    """A T2V expert saved under the I2V name: the load stops with the file and what it really is."""
    from wan22bot.config import ModelConfig
    from wan22bot.engine.components import load_components

    cfg = dict(W.EXPERT_CONFIG, in_channels=16)
    torch.manual_seed(0)
    t2v = W.WanTransformer3DModel(**cfg)
    root = tmp_path / "models"
    W.save({k: v.to(torch.bfloat16) for k, v in W.expert_sd(t2v).items()},
           root / "diffusion_models" / "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors")
    with pytest.raises(ModelError) as exc:
        load_components(ModelConfig(kind="wan2.2-i2v-a14b", comfyui=root, device="cpu"), torch.device("cpu"),
                        torch.float32)
    msg = str(exc.value)
    assert "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors" in msg
    # the missing parts are each named with the paths looked at and the fix, before anything loads
    assert "no low-noise expert" in msg and "fetch-models --dest" in msg and "umt5_xxl_fp16.safetensors" in msg


def test_a_missing_or_misshapen_tensor_is_named_before_any_weight_is_read(tmp_path, expert_high):
    from wan22bot.engine.single_files import inspect_file

    sd = {k: v.to(torch.bfloat16) for k, v in W.expert_sd(expert_high).items()}
    del sd["blocks.1.cross_attn.norm_k.weight"]
    sd["blocks.0.extra_thing.weight"] = torch.zeros(3)
    path = W.save(sd, tmp_path / "damaged.safetensors")
    with pytest.raises(ModelError) as exc:
        inspect_file(path, "high_noise")
    msg = str(exc.value)
    assert "1 weight(s) the Wan 2.2 I2V expert needs are not in the file (e.g. blocks.1.attn2.norm_k.weight)" in msg
    assert "1 tensor(s) in the file have no place in a Wan 2.2 I2V expert (e.g. blocks.0.extra_thing.weight)" in msg
    sd = {k: v.to(torch.bfloat16) for k, v in W.expert_sd(expert_high).items()}
    sd["blocks.1.ffn.2.bias"] = torch.zeros(7)
    with pytest.raises(ModelError, match=r"blocks\.1\.ffn\.2\.bias has shape \[7\], the Wan 2\.2 I2V expert needs \[256\]"):
        inspect_file(W.save(sd, tmp_path / "odd.safetensors"), "high_noise")
