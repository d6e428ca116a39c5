"""Every key kind and prefix fused into the tiny expert, checked against W + s * alpha/rank * up @ down
(and W + s * diff) computed here in fp64; errors before anything is touched; the per-file report."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from wan22bot.engine.lora import FusedLora, fuse_lora, lora_summary, read_lora
from wan22bot.engine.tiny import TRANSFORMER_CONFIG
from wan22bot.errors import ModelError

from .writers import BLOCK_LINEARS, DIM, LoraBuilder, lightx2v_like, params_of


def tiny(seed: int = 2, dtype=torch.float32) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**TRANSFORMER_CONFIG).eval().to(dtype)


def _check(model, builder: LoraBuilder, base, strength: float, atol: float = 2e-6) -> None:
    want = builder.expected(base, strength)
    got = params_of(model)
    for name in want:
        torch.testing.assert_close(got[name].double(), want[name], rtol=0, atol=atol,
                                   msg=lambda m, n=name: f"{n}: {m}")
    for name in builder.deltas:
        assert not torch.equal(got[name], base[name]), f"{name} not patched"


@pytest.mark.parametrize("prefix", ["diffusion_model.", "", "lora_unet_"])
@pytest.mark.parametrize("style", ["kohya", "peft"])
def test_lightx2v_like_file_every_prefix_and_factor_style(tmp_path, prefix, style):
    b = lightx2v_like(seed=1, rank=4, alpha=0.5, prefix=prefix, style=style)
    model = tiny()
    base = params_of(model)
    fl = fuse_lora(model, read_lora(b.write(tmp_path / "l.safetensors")), 0.9)
    _check(model, b, base, 0.9)
    kind = "lora_up/down" if style == "kohya" else "lora_A/B"
    # 2 blocks x 10 linears; diff_b on those 20 biases + norm3 x2 + 6 outside the blocks; diff on 5 norms x 2
    assert fl.report.applied == {kind: 20, "diff_b": 28, "diff": 10, "diff_m": 2}
    assert fl.report.render() == f"l.safetensors: 60 tensors patched ({kind} 20, diff 10, diff_b 28, diff_m 2)"


def test_peft_factors_without_alpha_have_scale_one_and_with_alpha_alpha_over_rank(tmp_path):
    b = LoraBuilder(seed=2, prefix="diffusion_model.")
    b.lora("blocks.0.self_attn.q", "blocks.0.attn1.to_q", (DIM, DIM), rank=3, alpha=None, style="peft")
    b.lora("blocks.1.ffn.2", "blocks.1.ffn.net.2", BLOCK_LINEARS["ffn.2"][1], rank=6, alpha=1.5, style="peft")
    b.lora("blocks.1.ffn.0", "blocks.1.ffn.net.0.proj", BLOCK_LINEARS["ffn.0"][1], rank=5, alpha=None)
    model = tiny()
    base = params_of(model)
    fuse_lora(model, read_lora(b.write(tmp_path / "p.safetensors")), -0.6)
    _check(model, b, base, -0.6)


def test_every_module_outside_the_blocks_and_the_conv_patch_embedding(tmp_path):
    b = LoraBuilder(seed=4)
    b.lora("text_embedding.0", "condition_embedder.text_embedder.linear_1", (DIM, 32))
    b.lora("time_embedding.2", "condition_embedder.time_embedder.linear_2", (DIM, DIM), alpha=8.0)
    b.lora("time_projection.1", "condition_embedder.time_proj", (6 * DIM, DIM))
    b.lora("head.head", "proj_out", (64, DIM))
    b.diff("head.head", "proj_out.bias", (64,), "diff_b")
    b.diff("head.modulation", "scale_shift_table", (1, 2, DIM))
    b.diff("blocks.1.modulation", "blocks.1.scale_shift_table", (1, 6, DIM))
    # the patch embedding is a Conv3d (24, 36, 1, 2, 2): a full diff, and factors over its flattened input
    b.diff("patch_embedding", "patch_embedding.weight", (DIM, 36, 1, 2, 2))
    b.diff("patch_embedding", "patch_embedding.bias", (DIM,), "diff_b")
    b.sd["diffusion_model.blocks.0.cross_attn.v.lora_down.weight"] = down = torch.randn(2, DIM, generator=b.g)
    b.sd["diffusion_model.blocks.0.cross_attn.v.lora_up.weight"] = up = torch.randn(DIM, 2, 1, generator=b.g)[..., 0]
    b.deltas["blocks.0.attn2.to_v.weight"] = up.double() @ down.double()
    model = tiny()
    base = params_of(model)
    fuse_lora(model, read_lora(b.write(tmp_path / "top.safetensors")), 1.0)
    _check(model, b, base, 1.0)


def test_conv_factors_shaped_like_the_conv(tmp_path):
    g = torch.Generator().manual_seed(5)
    down, up = torch.randn(4, 36, 1, 2, 2, generator=g), torch.randn(DIM, 4, 1, 1, 1, generator=g)
    path = tmp_path / "conv.safetensors"
    save_file({"diffusion_model.patch_embedding.lora_down.weight": down,
               "diffusion_model.patch_embedding.lora_up.weight": up,
               "diffusion_model.patch_embedding.alpha": torch.tensor(2.0)}, str(path))
    model = tiny()
    w0 = model.patch_embedding.weight.detach().double().clone()
    fuse_lora(model, read_lora(path), 1.0)
    want = w0 + 0.5 * (up.double().flatten(1) @ down.double().flatten(1)).reshape(w0.shape)
    torch.testing.assert_close(model.patch_embedding.weight.detach().double(), want, rtol=0, atol=2e-6)


def test_bf16_weights_are_rounded_once_from_the_fp32_sum(tmp_path):
    """ComfyUI: the bf16 weight goes to fp32, the fp32 delta is added, the sum is rounded once."""
    b = lightx2v_like(seed=7, rank=4, alpha=0.5)
    model = tiny(dtype=torch.bfloat16)
    base = params_of(model)
    fuse_lora(model, read_lora(b.write(tmp_path / "bf.safetensors")), 1.0)
    got = params_of(model)
    for name, d in b.deltas.items():
        want = (base[name].float() + d.float()).to(torch.bfloat16)  # d: alpha/rank * up@down, in fp64 -> fp32
        diff_ulps = (got[name].float() - want.float()).abs()
        # the delta differs from ours only by fp32 rounding (~1e-7 relative): the bf16 result is the same
        # or, at a rounding tie, one bf16 ulp away
        ulp = want.float().abs().clamp(min=1e-30) * 2.0 ** -7
        assert bool((diff_ulps <= ulp).all()), name
        assert (diff_ulps == 0).float().mean() > 0.99, name


def test_image_branch_keys_skipped_with_one_line_and_counted(tmp_path, caplog):
    b = lightx2v_like(seed=8, image_branch=True)
    path = b.write(tmp_path / "wan21_i2v.safetensors")
    model = tiny()
    base = params_of(model)
    with caplog.at_level(logging.WARNING, logger="wan22bot"):
        fl = fuse_lora(model, read_lora(path), 1.0)
    _check(model, b, base, 1.0)
    # per block: k_img, v_img (factors + diff_b each) and norm_k_img; img_emb.proj.1 (factors + diff_b), .0
    assert fl.report.skipped == 2 * 5 + 3
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("wan22bot")]
    assert len(lines) == 1 and "13 tensors skipped" in lines[0] and "image branch" in lines[0], lines
    assert "13 skipped (Wan 2.1 image branch" in fl.report.render()


def _refused(tmp_path, sd: dict[str, torch.Tensor], *fragments: str) -> None:
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    model = tiny()
    before = params_of(model)
    with pytest.raises(ModelError) as exc:
        FusedLora(model, read_lora(path), 1.0).set(True)
    msg = str(exc.value)
    assert "bad.safetensors" in msg, msg
    for f in fragments:
        assert f in msg, msg
    assert all(torch.equal(v, before[k]) for k, v in params_of(model).items())


def test_unknown_key_is_an_error_before_anything_is_touched(tmp_path):
    sd = dict(lightx2v_like(seed=9).sd)
    sd["diffusion_model.blocks.0.self_attn.q.lokr_w1"] = torch.zeros(2, 2)
    _refused(tmp_path, sd, "blocks.0.self_attn.q.lokr_w1", "1 key(s)")


def test_shape_mismatch_of_a_diff_names_module_and_shapes(tmp_path):
    sd = dict(lightx2v_like(seed=10).sd)
    sd["diffusion_model.blocks.1.norm3.diff"] = torch.zeros(48)
    _refused(tmp_path, sd, "blocks.1.norm2 is (24,)", "(48,)")


def test_unpaired_factor_and_mixed_styles_are_errors(tmp_path):
    g = torch.Generator().manual_seed(0)
    _refused(tmp_path, {"diffusion_model.blocks.0.ffn.0.lora_down.weight": torch.randn(4, DIM, generator=g),
                        "diffusion_model.blocks.0.ffn.0.alpha": torch.tensor(4.0)},
             "blocks.0.ffn.0 lacks the up factor")
    _refused(tmp_path, {"diffusion_model.blocks.0.ffn.0.lora_down.weight": torch.randn(4, DIM, generator=g),
                        "diffusion_model.blocks.0.ffn.0.lora_up.weight": torch.randn(FFN := 32, 4, generator=g),
                        "diffusion_model.blocks.0.ffn.0.lora_B.weight": torch.randn(FFN, 4, generator=g)},
             "both lora_down/lora_up and lora_A/lora_B")
    _refused(tmp_path, {"diffusion_model.blocks.0.ffn.0.lora_down.weight": torch.randn(4, DIM, generator=g),
                        "diffusion_model.blocks.0.ffn.0.lora_up.weight": torch.randn(32, 3, generator=g)},
             "do not multiply")
    _refused(tmp_path, {"diffusion_model.blocks.0.ffn.0.lora_down.weight": torch.randn(4, DIM, generator=g),
                        "diffusion_model.blocks.0.ffn.0.lora_up.weight": torch.randn(32, 4, generator=g),
                        "lora_unet_blocks_0_ffn_0.lora_up.weight": torch.randn(32, 4, generator=g)},
             "blocks.0.ffn.0 has the same factor under two prefixes")
    _refused(tmp_path, {"diffusion_model.blocks.0.ffn.0.lora_down.weight": torch.randn(4, DIM, generator=g),
                        "diffusion_model.blocks.0.ffn.0.lora_up.weight": torch.randn(32, 4, generator=g),
                        "diffusion_model.blocks.0.ffn.0.diff": torch.randn(32, DIM, generator=g)},
             "blocks.0.ffn.net.0.proj.weight is patched by both diff and lora_up/down")


def test_summary_on_the_meta_device_reads_no_factors(tmp_path):
    from diffusers import WanTransformer3DModel

    b = lightx2v_like(seed=11, image_branch=True)
    path = b.write(tmp_path / "m.safetensors")
    with torch.device("meta"):
        meta = WanTransformer3DModel(**TRANSFORMER_CONFIG)
    rep = lora_summary(path, meta)
    assert rep.applied == {"lora_up/down": 20, "diff_b": 28, "diff": 10, "diff_m": 2} and rep.skipped == 13
    assert all(p.up is None or p.up.is_meta for p in read_lora(path, shapes_only=True).patches)
