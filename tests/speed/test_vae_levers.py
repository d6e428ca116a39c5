"""The VAE levers (engine/vae_levers.py): each works on the CPU, is off by default, reaches the render
path through its [model] key, and the tail bench reports its time and PSNR against an fp32 decode."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKLWan

from wan22bot.bench.tail import main as tail_main
from wan22bot.config import ModelConfig
from wan22bot.engine.tiny import VAE_CONFIG
from wan22bot.engine.vae_decode import decode_video_chunks
from wan22bot.engine.vae_levers import compile_decoder, cudnn_benchmark, to_channels_last


def _vae(seed: int = 3) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    return AutoencoderKLWan(**VAE_CONFIG).eval()


def _decode(vae, z):
    with torch.no_grad():
        return torch.cat(list(decode_video_chunks(vae, z)), dim=2)


Z = torch.randn((1, 16, 4, 4, 4), generator=torch.Generator().manual_seed(0))


def test_channels_last_moves_every_conv_weight_and_decodes_the_same_video():
    vae = _vae()
    ref = _decode(vae, Z)
    n = to_channels_last(vae)
    convs = [m for m in vae.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Conv2d))]
    assert n == len(convs) > 0
    for m in convs:
        fmt = torch.channels_last_3d if isinstance(m, torch.nn.Conv3d) else torch.channels_last
        assert m.weight.is_contiguous(memory_format=fmt)
        if max(m.kernel_size) > 1:  # (a 1x1 kernel is laid out the same either way)
            assert not m.weight.is_contiguous()
    # same weights, another memory order: only the summation order may differ
    torch.testing.assert_close(_decode(vae, Z), ref, rtol=1e-5, atol=1e-5)


def test_cudnn_benchmark_is_on_only_inside_and_comes_back_after_an_error():
    before = torch.backends.cudnn.benchmark
    with cudnn_benchmark(False):
        assert torch.backends.cudnn.benchmark == before
    with pytest.raises(ValueError):
        with cudnn_benchmark(True):
            assert torch.backends.cudnn.benchmark is True
            raise ValueError("decode failed")
    assert torch.backends.cudnn.benchmark == before


def test_compiled_decoder_decodes_the_same_video():
    vae = _vae()
    ref = _decode(vae, Z)
    compile_decoder(vae, backend="eager")  # traces every variant; "inductor" on the GPU
    torch.testing.assert_close(_decode(vae, Z), ref, rtol=1e-5, atol=1e-5)
    assert vae.decoder._compiled_call_impl is not None


def test_only_channels_last_is_on_by_default_and_only_on_a_gpu():
    cfg = ModelConfig()
    assert (cfg.vae_channels_last, cfg.vae_cudnn_benchmark, cfg.vae_compile) == ("auto", False, False)
    from wan22bot.engine.generator import TwoPassGenerator

    gen = TwoPassGenerator(ModelConfig(kind="tiny", device="cpu"))
    gen.load()
    convs = [m for m in gen.components.vae.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and not any(m.weight.is_contiguous(memory_format=torch.channels_last_3d)
                             and not m.weight.is_contiguous() for m in convs)


def test_the_render_path_applies_the_configured_levers(photo_small):
    from wan22bot.engine.generator import GenerationRequest, TwoPassGenerator

    gen = TwoPassGenerator(ModelConfig(kind="tiny", device="cpu", vae_channels_last=True, vae_compile=True,
                                       vae_cudnn_benchmark=True))
    gen.load()
    vae = gen.components.vae
    assert vae.decoder._compiled_call_impl is not None
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last_3d)
               for m in vae.modules() if isinstance(m, torch.nn.Conv3d))
    seen = []
    real = vae.decoder.forward

    def watch(*a, **kw):
        seen.append(torch.backends.cudnn.benchmark)
        return real(*a, **kw)

    vae.decoder._compiled_call_impl = None  # run the decoder eagerly here: inductor on a CPU is minutes
    vae.decoder.forward = watch
    before = torch.backends.cudnn.benchmark
    out = gen.generate(GenerationRequest(image=photo_small, width=64, height=96, frames=9, seed=3))
    assert out.frames.shape == (9, 96, 64, 3)
    assert seen == [True] * 3  # autotuning on for each decoder call (3 latent frames) ...
    assert torch.backends.cudnn.benchmark == before  # ... and off again for the rest of the process


@pytest.fixture
def photo_small():
    from tests.core.helpers import small_photo

    return small_photo(64, 96)


TAIL = ["--device", "cpu", "--vae", "tiny", "--frames", "9", "--width", "32", "--height", "32", "--rife-batch", "4",
        "--encoder", "libx264", "--threads", "1", "--psnr", "--no-serial"]


@pytest.mark.parametrize("lever", [[], ["--channels-last"], ["--cudnn-benchmark"],
                                   ["--compile-decoder", "--compile-backend", "eager"]])
def test_tail_bench_times_each_lever_and_reports_its_psnr(lever, capsys, tmp_path):
    assert tail_main(TAIL + lever + ["--out", str(tmp_path)]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (r["channels_last"], r["cudnn_benchmark"], r["compile_decoder"]) == (
        "--channels-last" in lever, "--cudnn-benchmark" in lever, "--compile-decoder" in lever)
    assert r["overlapped"]["vae_decode"] > 0 and r["serial"] is None and r["mp4"]["overlapped"]["frames"] == 17
    # the PSNR is against an fp32 decode without levers: identical (None) or very close on the CPU
    assert r["max_abs_vs_fp32"] < 1e-4
    assert r["psnr_vs_fp32"] is None or r["psnr_vs_fp32"] > 100
    assert ("compile_warmup_s" in r) == ("--compile-decoder" in lever)
    # the image encode: diffusers' and the shortcut's, equal
    assert r["image_encode"] > 0 and r["image_encode_fast"] > 0 and r["image_encode_fast_exact"] is True
    assert r["image_encode_report"]["method"] == "fast"
