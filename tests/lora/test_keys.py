"""The key map: every original-Wan module name against diffusers' own checkpoint converter, the
prefixes real files use, and the full-size A14B expert's parameter names (meta device)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wan22bot.engine.lora_keys import split_key, target_of
from wan22bot.engine.random_weights import A14B_TRANSFORMER

BLOCK_MODULES = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "self_attn.norm_q", "self_attn.norm_k",
                 "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "cross_attn.norm_q",
                 "cross_attn.norm_k", "ffn.0", "ffn.2", "norm3"]
TOP_MODULES = ["patch_embedding", "text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2",
               "time_projection.1", "head.head"]
IMAGE_MODULES = ["blocks.3.cross_attn.k_img", "blocks.3.cross_attn.v_img", "blocks.3.cross_attn.norm_k_img",
                 "img_emb.proj.1", "img_emb.proj.3"]


def _target(key: str):
    kn = split_key(key)
    assert kn is not None, key
    t = target_of(kn)
    assert t is not None, key
    return t


def _diffusers_converter(names: list[str]) -> dict[str, str]:
    """diffusers' single-file converter applied to a checkpoint holding just these tensor names."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    out = convert_wan_transformer_to_diffusers({f"model.diffusion_model.{n}": torch.zeros(1) for n in names})
    assert len(out) == len(names)
    # the converter keeps insertion order, one output per input
    return dict(zip(names, out))


@pytest.fixture(scope="module")
def a14b_params() -> dict[str, tuple[int, ...]]:
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        m = WanTransformer3DModel(**A14B_TRANSFORMER)
    return {n: tuple(p.shape) for n, p in m.named_parameters()}


def test_every_module_maps_as_diffusers_converts_the_checkpoint(a14b_params):
    wan = [f"blocks.17.{m}" for m in BLOCK_MODULES] + TOP_MODULES + IMAGE_MODULES
    tensors = []
    for m in wan:
        tensors.append(f"{m}.weight")
        if not m.endswith(("norm_q", "norm_k", "norm_k_img")):
            tensors.append(f"{m}.bias")
    tensors += ["blocks.17.modulation", "head.modulation"]
    theirs = _diffusers_converter(tensors)
    for name, want in theirs.items():
        if name.endswith(".weight"):
            ours = _target(f"diffusion_model.{name[:-7]}.diff")
        elif name.endswith(".bias"):
            ours = _target(f"diffusion_model.{name[:-5]}.diff_b")
        else:
            ours = _target(f"diffusion_model.{name}.diff")
        assert ours.param == want, name
        assert ours.image_branch == any(s in name for s in ("k_img", "v_img", "img_emb")), name
        if not ours.image_branch:
            assert want in a14b_params, f"{want} is not a parameter of the A14B expert"
    assert theirs["blocks.17.norm3.weight"] == "blocks.17.norm2.weight"  # Wan's norm3 is diffusers' norm2


def test_modulation_tables_have_the_same_shape_in_both_layouts(a14b_params):
    # Wan: blocks.N.modulation (1, 6, dim), head.modulation (1, 2, dim); diffusers keeps both shapes
    assert a14b_params["blocks.0.scale_shift_table"] == (1, 6, 5120)
    assert a14b_params["scale_shift_table"] == (1, 2, 5120)
    assert _target("diffusion_model.blocks.39.diff_m").param == "blocks.39.scale_shift_table"
    assert _target("diffusion_model.head.modulation.diff").param == "scale_shift_table"


@pytest.mark.parametrize("key, param", [
    ("diffusion_model.blocks.0.self_attn.q.lora_down.weight", "blocks.0.attn1.to_q.weight"),
    ("blocks.0.self_attn.q.lora_up.weight", "blocks.0.attn1.to_q.weight"),
    ("lora_unet_blocks_0_self_attn_q.lora_down.weight", "blocks.0.attn1.to_q.weight"),
    ("lora_unet__blocks_12_cross_attn_o.lora_up.weight", "blocks.12.attn2.to_out.0.weight"),  # Wan Fun's spelling
    ("lora_unet_blocks_3_cross_attn_norm_k.diff", "blocks.3.attn2.norm_k.weight"),
    ("lora_unet_blocks_3_ffn_0.alpha", "blocks.3.ffn.net.0.proj.weight"),
    ("lora_unet_blocks_3_norm3.diff_b", "blocks.3.norm2.bias"),
    ("lora_unet_time_projection_1.diff_b", "condition_embedder.time_proj.bias"),
    ("lora_unet_head_head.lora_A.weight", "proj_out.weight"),
    ("lora_unet_blocks_5.diff_m", "blocks.5.scale_shift_table"),
    ("diffusion_model.blocks.39.ffn.2.lora_B.weight", "blocks.39.ffn.net.2.weight"),
    ("text_embedding.2.diff_b", "condition_embedder.text_embedder.linear_2.bias"),
    ("diffusion_model.patch_embedding.lora_down.weight", "patch_embedding.weight"),
])
def test_prefixes_and_parts(key, param):
    assert _target(key).param == param


@pytest.mark.parametrize("key", [
    "diffusion_model.blocks.0.self_attn.qkv.lora_down.weight",  # not a Wan module
    "diffusion_model.blocks.0.norm1.diff",  # Wan's norm1/norm2 have no parameters
    "diffusion_model.blocks.0.modulation.lora_down.weight",  # a parameter takes only full deltas
    "diffusion_model.blocks.0.self_attn.q.lokr_w1",  # another adapter kind
    "diffusion_model.blocks.0.self_attn.q.dora_scale",
    "transformer.blocks.0.attn1.to_q.lora_A.weight",  # diffusers' own names
    "lora_unet_blocks_0_self_attn_qq.lora_down.weight",
    "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
])
def test_keys_that_are_not_wan_lora_keys(key):
    kn = split_key(key)
    assert kn is None or target_of(kn) is None


def test_module_names_agree_with_diffusers_lora_converter_and_alpha_lands_once():
    """diffusers' own Wan LoRA converter (read for the facts; wan22bot does not call it) names the same
    modules, and its factors, alpha folded in, multiply to the delta wan22bot computes from the file."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers

    from wan22bot.engine.lora import _patches

    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    for m in ["self_attn.q", "self_attn.o", "cross_attn.k", "cross_attn.o", "ffn.0", "ffn.2"]:
        sd[f"diffusion_model.blocks.0.{m}.lora_down.weight"] = torch.randn(4, 8, generator=g)
        sd[f"diffusion_model.blocks.0.{m}.lora_up.weight"] = torch.randn(8, 4, generator=g)
        sd[f"diffusion_model.blocks.0.{m}.alpha"] = torch.tensor(1.0)
        sd[f"diffusion_model.blocks.0.{m}.diff_b"] = torch.randn(8, generator=g)
    for m in ["time_projection.1", "head.head", "text_embedding.0", "time_embedding.2"]:
        sd[f"diffusion_model.{m}.lora_down.weight"] = torch.randn(4, 8, generator=g)
        sd[f"diffusion_model.{m}.lora_up.weight"] = torch.randn(8, 4, generator=g)
        sd[f"diffusion_model.{m}.diff_b"] = torch.randn(8, generator=g)
    converted = _convert_non_diffusers_wan_lora_to_diffusers({k: v.clone() for k, v in sd.items()})
    theirs = {k.removeprefix("transformer."): v for k, v in converted.items()}
    ours = {p.target: p for p in _patches(Path("x.safetensors"), sd)}
    their_weights = {k.replace(".lora_A.weight", ".weight") for k in theirs if k.endswith(".lora_A.weight")}
    their_biases = {k.replace(".lora_B.bias", ".bias") for k in theirs if k.endswith(".lora_B.bias")}
    assert {t for t, p in ours.items() if p.kind == "lora_up/down"} == their_weights
    assert {t for t, p in ours.items() if p.kind == "diff_b"} == their_biases
    for target in their_weights:
        mod = target[: -len(".weight")]
        their_delta = theirs[f"{mod}.lora_B.weight"].double() @ theirs[f"{mod}.lora_A.weight"].double()
        p = ours[target]
        torch.testing.assert_close(p.scale * (p.up.double() @ p.down.double()), their_delta, rtol=1e-6, atol=1e-6)
