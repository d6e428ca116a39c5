"""The image encode's shortcut (engine/vae_encode.py) gives diffusers' conditioning latents bit for bit.

Checked against diffusers' own `WanImageToVideoPipeline.prepare_latents` on the tiny model and on a
random-weight VAE with the real Wan 2.1 architecture (the VAE of Wan 2.2 A14B), at small sizes.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan, WanImageToVideoPipeline

from wan22bot.config import ModelConfig
from wan22bot.engine import vae_encode
from wan22bot.engine.schedule import make_scheduler
from wan22bot.engine.vae_encode import EncodeReport, encode, prepare_latents

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def wan21_pipe() -> WanImageToVideoPipeline:
    """diffusers' I2V pipeline around a random-weight AutoencoderKLWan of the real 2.1 shape."""
    torch.manual_seed(0)
    vae = AutoencoderKLWan().eval()
    return WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=make_scheduler(5.0),
                                   transformer=None, transformer_2=None, boundary_ratio=0.9)


def _args(size: int, frames: int, seed: int = 0, height: int | None = None):
    """prepare_latents' arguments as the generator passes them: a photo in [-1, 1], given noise."""
    h = height or size
    g = torch.Generator().manual_seed(seed)
    photo = torch.rand((1, 3, h, size), generator=g) * 2 - 1
    noise = torch.randn((1, 16, (frames - 1) // 4 + 1, h // 8, size // 8), generator=g)
    return (photo, 1, 16, h, size, frames, torch.float32, CPU, None), {"latents": noise}


def _both(pipe, args, kwargs):
    with torch.no_grad():
        ref = pipe.prepare_latents(*args, **kwargs)
        out, report = prepare_latents(pipe, *args, **kwargs)
    return ref, out, report


def _equal(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_tiny_model_gives_diffusers_latents_bit_for_bit(tiny_generator):
    args, kwargs = _args(96, 81, height=144)
    ref, out, report = _both(tiny_generator.pipe, args, kwargs)
    assert _equal(out, ref)
    assert report.method == "fast" and report.chunks == 21
    assert report.unit_runs_skipped > 0


def test_wan21_vae_at_81_frames_is_bit_identical_and_skips_the_settled_layers(wan21_pipe):
    args, kwargs = _args(16, 81)
    ref, out, report = _both(wan21_pipe, args, kwargs)
    assert _equal(out, ref)
    assert report.method == "fast" and report.chunks == 21
    names = list(report.units)
    assert names[0] == "conv_in" and names[-2:] == ["mid_block", "head"]
    settled = dict(zip(names, report.settled_at))
    # conv_in sees zeros from chunk 1 on: its cache (the last two input frames) is zeros after chunks 1 and 2
    assert settled["conv_in"] == 2
    # the full-resolution layers (most of the work) settle in order, one chunk apart
    assert [settled[f"down_blocks.{i}"] for i in range(3)] == [3, 4, 5]
    # the head's receptive field still reaches the photo at chunk 20: no whole chunk can be copied
    assert settled["head"] is None and report.converged_at is None and report.copied_chunks == 0
    assert report.unit_runs_skipped > 0.45 * (report.unit_runs + report.unit_runs_skipped)


def test_wan21_encoder_converges_where_its_receptive_field_leaves_the_photo(wan21_pipe):
    # Latent chunk m's output depends on input frames from 4m - 112 on: 9 causal 3-tap convs at the
    # latent rate (18 latent frames), a stride-2 downsample, 4 convs at half rate, another downsample
    # and 9 convs at the full rate. Chunk 28 still sees the photo (frame 0), chunk 29 does not: the
    # earliest chunk after which the whole encoder can be at its fixed point.
    args, kwargs = _args(8, 161)
    ref, out, report = _both(wan21_pipe, args, kwargs)
    assert _equal(out, ref)
    assert report.chunks == 41 and report.converged_at == 29
    assert report.copied_chunks == 41 - 30  # chunks 30..40 are copies of chunk 29's output


def test_a_different_last_frame_is_computed_not_copied(wan21_pipe):
    """[photo, black frames, last photo] (first/last-frame video): the last chunk's input differs,
    so everything settled before it is run again."""
    vae = wan21_pipe.vae
    g = torch.Generator().manual_seed(5)
    video = torch.zeros((1, 3, 81, 16, 16))
    video[:, :, 0] = torch.rand((3, 16, 16), generator=g) * 2 - 1
    video[:, :, -1] = torch.rand((3, 16, 16), generator=g) * 2 - 1
    with torch.no_grad():
        ref = vae.encode(video).latent_dist.mode()
        report = EncodeReport()
        out = encode(vae, video, report=report).latent_dist.mode()
    assert torch.equal(out, ref)
    assert report.unit_runs_skipped > 0
    assert all(s is None for s in report.settled_at)  # the last chunk reset every unit


def test_a_video_with_no_repeated_chunk_skips_nothing(tiny_generator):
    vae = tiny_generator.pipe.vae
    video = torch.rand((1, 3, 17, 16, 16), generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        report = EncodeReport()
        out = encode(vae, video, report=report).latent_dist.mode()
        assert torch.equal(out, vae.encode(video).latent_dist.mode())
    assert report.method == "fast" and report.unit_runs_skipped == 0


def test_the_skipped_layers_really_do_not_run(tiny_generator):
    """Counted with a forward hook on the first full-resolution block, not from our own report."""
    vae = tiny_generator.pipe.vae
    block = vae.encoder.down_blocks[0]
    calls = []
    handle = block.register_forward_hook(lambda *a: calls.append(1))
    args, kwargs = _args(16, 81)
    try:
        with torch.no_grad():
            tiny_generator.pipe.prepare_latents(*args, **kwargs)
            stock = len(calls)
            calls.clear()
            prepare_latents(tiny_generator.pipe, *args, **kwargs)
    finally:
        handle.remove()
    # conv_in settles at chunk 2, so down_blocks.0 has the same input from chunk 3 on and settles
    # there: it runs in chunks 0 to 3 only
    assert stock == 21 and len(calls) == 4


@pytest.fixture
def tiny_vae():
    from wan22bot.engine.tiny import VAE_CONFIG

    torch.manual_seed(1)
    return AutoencoderKLWan(**VAE_CONFIG).eval()


def _fallback(vae, video=None):
    video = video if video is not None else torch.zeros((1, 3, 9, 16, 16))
    video[:, :, 0] = 0.5
    report = EncodeReport()
    with torch.no_grad():
        out = encode(vae, video, report=report).latent_dist.mode()
        ref = type(vae).encode(vae, video).latent_dist.mode()
    assert torch.equal(out, ref)
    return report


def test_tiling_falls_back_to_diffusers(tiny_vae):
    tiny_vae.enable_tiling(tile_sample_min_height=8, tile_sample_min_width=8, tile_sample_stride_height=8,
                           tile_sample_stride_width=8)
    report = _fallback(tiny_vae)
    assert (report.method, report.reason) == ("diffusers", "tiled encode")


def test_another_vae_class_falls_back_to_diffusers(tiny_vae):
    class Custom(AutoencoderKLWan):
        pass

    from wan22bot.engine.tiny import VAE_CONFIG

    vae = Custom(**VAE_CONFIG).eval()
    vae.load_state_dict(tiny_vae.state_dict())
    report = _fallback(vae)
    assert report.method == "diffusers" and "Custom is not diffusers' AutoencoderKLWan" in report.reason


def test_other_diffusers_code_falls_back(tiny_vae, monkeypatch):
    monkeypatch.setattr(vae_encode, "MIRRORED_SOURCE", "0" * 64)
    report = _fallback(tiny_vae)
    assert report.method == "diffusers" and "not the code this loop mirrors" in report.reason


def test_the_installed_diffusers_is_the_mirrored_one():
    # if this fails, diffusers changed: read its Wan VAE encode against vae_encode.py, then update the hash
    assert vae_encode._installed_source() == vae_encode.MIRRORED_SOURCE


def test_offload_hooks_fall_back(tiny_vae):
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module

    add_hook_to_module(tiny_vae.encoder, ModelHook())
    try:
        report = _fallback(tiny_vae)
    finally:
        remove_hook_from_module(tiny_vae.encoder)
    assert (report.method, report.reason) == ("diffusers", "the VAE has offload hooks")


def test_prepare_latents_puts_the_vae_encode_back_even_when_it_fails(wan21_pipe):
    vae = wan21_pipe.vae
    args, kwargs = _args(16, 5)
    bad = (args[0][:, :2],) + args[1:]  # two colour channels: the encoder's first conv refuses it
    with pytest.raises(RuntimeError):
        prepare_latents(wan21_pipe, *bad, **kwargs)
    assert "encode" not in vae.__dict__ and all(f is None for f in vae._enc_feat_map)


def test_fast_image_encode_is_on_by_default_and_can_be_turned_off(tmp_path):
    from wan22bot.config import load_config
    from wan22bot.errors import ConfigError

    assert ModelConfig().fast_image_encode is True
    path = tmp_path / "c.toml"
    path.write_text('[model]\nkind = "tiny"\nfast_image_encode = false\n')
    assert load_config(path).model.fast_image_encode is False
    path.write_text('[model]\nkind = "tiny"\nfast_image_encode = "sometimes"\n')
    with pytest.raises(ConfigError, match="fast_image_encode"):
        load_config(path)


def test_the_generator_renders_the_same_video_with_the_shortcut_on_and_off(tiny_generator, tmp_path):
    from wan22bot.engine.generator import GenerationRequest
    from tests.core.helpers import small_photo

    req = GenerationRequest(image=small_photo(64, 96), width=64, height=96, frames=17, prompt="a kite", seed=7)
    cfg = tiny_generator.cfg
    try:
        cfg.fast_image_encode = False
        off = tiny_generator.generate(req).frames
        assert tiny_generator.last_encode.method == "diffusers"
        cfg.fast_image_encode = True
        on = tiny_generator.generate(req).frames
        assert tiny_generator.last_encode.method == "fast" and tiny_generator.last_encode.unit_runs_skipped > 0
    finally:
        cfg.fast_image_encode = True
    assert torch.equal(on, off)
