"""The fused Wan VAE decoder (engine/vae_fast_decode.py) decodes what diffusers' decoder decodes.

A random-weight AutoencoderKLWan of the real Wan 2.1 architecture (dim_mult 1-2-4-4, two residual
blocks per level, the attention block, both kinds of upsampler, a shortcut conv where the width
changes) at base_dim 4 and a few latent pixels, so each decode takes a fraction of a second on the
CPU, where the fused groups run eagerly: the same code the GPU compiles.
"""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders import autoencoder_kl_wan as akw

from wan22bot.engine import vae_fast_decode as fd
from wan22bot.engine.vae_decode import decode_video_chunks
from wan22bot.engine.vae_fast_decode import install_fast_decode, is_installed, remove_fast_decode
from wan22bot.engine.vae_levers import to_channels_last

# fp32: the fused groups run the stock ops in the stock order (F.normalize's norm and eps, `* scale`,
# `* gamma`, SiLU); only the convolutions take their spatial padding themselves instead of reading
# an F.pad copy, which a backend may sum in another order. Outputs lie in [-1, 1], so 1e-5 is a few
# dozen fp32 ulps: room for that reordering, and far below any wrong frame, cache slot or prefix.
FP32_BOUND = 1e-5


@pytest.fixture(scope="module")
def wan21() -> AutoencoderKLWan:
    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2).eval()


def latents(t: int, h: int = 3, w: int = 5, seed: int = 0) -> torch.Tensor:
    """Odd latent sizes on purpose: 3x5 latents decode to 24x40 frames."""
    return torch.randn((1, 16, t, h, w), generator=torch.Generator().manual_seed(seed))


def fast_copy(vae, channels_last: bool = False):
    v = copy.deepcopy(vae)
    if channels_last:
        to_channels_last(v)
    return v, install_fast_decode(v)


@torch.no_grad()
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
@pytest.mark.parametrize("t", [1, 2, 5])
def test_fast_decode_equals_the_stock_decode(wan21, t, channels_last):
    stock = copy.deepcopy(wan21)
    if channels_last:
        to_channels_last(stock)
    z = latents(t, seed=t)
    ref = stock.decode(z, return_dict=False)[0]
    vae, report = fast_copy(wan21, channels_last)
    assert report.applied and report.reason == ""
    # 3 levels x 3 blocks + the mid block's 2; 33 causal convs; the attention block's norm; 3 upsamplers
    assert (report.residual_blocks, report.causal_convs, report.norms, report.upsamplers, report.head) == (
        14, 33, 1, 3, True)
    assert report.compiled is False  # a CPU decoder: eager
    out = vae.decode(z, return_dict=False)[0]
    assert out.shape == ref.shape == (1, 3, 1 + 4 * (t - 1), 24, 40)
    assert (out - ref).abs().max().item() <= FP32_BOUND


@torch.no_grad()
def test_the_stock_elementwise_code_does_not_run_inside_the_decoder(wan21, monkeypatch):
    vae, _ = fast_copy(wan21)
    inside = set(vae.decoder.modules())
    called = []

    def refuse(cls):
        original = cls.forward

        def forward(self, *args, **kwargs):
            if self in inside:
                called.append(cls.__name__)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", forward)

    for cls in (akw.WanRMS_norm, akw.WanCausalConv3d, akw.WanResidualBlock, akw.WanResample, akw.WanUpsample,
                akw.WanDecoder3d):
        refuse(cls)
    vae.decode(latents(2), return_dict=False)
    assert called == []


def _frame_errors(vae, ref: torch.Tensor, z: torch.Tensor) -> list[float]:
    out = vae.decode(z, return_dict=False)[0]
    return [(out[:, :, f] - ref[:, :, f]).abs().max().item() for f in range(ref.shape[2])]


@torch.no_grad()
def test_every_frame_of_a_five_latent_frame_decode_matches_and_a_cache_bug_would_show(wan21, monkeypatch):
    # Latent frame 0 decodes alone (empty caches, the upsamplers' "Rep" marker), frame 1 meets
    # one-frame caches and the first time upsampling, frames 2-4 two-frame caches: 1 + 4 * 4 frames.
    z = latents(5, seed=7)
    ref = wan21.decode(z, return_dict=False)[0]
    vae, _ = fast_copy(wan21)
    errors = _frame_errors(vae, ref, z)
    assert len(errors) == 17 and max(errors) <= FP32_BOUND, errors
    # The same comparison catches a causal prefix that forgets the cache (zeros instead): the first
    # frame is still right, every later one is not.
    real = fd._time_prefix
    monkeypatch.setattr(fd, "_time_prefix", lambda cache, *args: real(None, *args))
    broken = _frame_errors(vae, ref, z)
    assert broken[0] <= FP32_BOUND
    assert min(broken[1:]) > 100 * FP32_BOUND, broken


@torch.no_grad()
def test_the_streamed_decode_runs_on_it_unchanged(wan21):
    z = latents(5, seed=3)
    # The reference in the same memory layout: a channels-last and a contiguous convolution take
    # different CPU algorithms (1.19e-5 apart with oneDNN limited to AVX2), which is not the subject.
    reference = copy.deepcopy(wan21)
    to_channels_last(reference)
    stock = list(decode_video_chunks(reference, z))
    vae, _ = fast_copy(wan21, channels_last=True)
    chunks = list(decode_video_chunks(vae, z))
    assert [c.shape[2] for c in chunks] == [c.shape[2] for c in stock] == [1, 4, 4, 4, 4]
    for a, b in zip(chunks, stock):
        assert (a - b).abs().max().item() <= FP32_BOUND
    assert all(f is None for f in vae._feat_map)  # and the cache is left clean


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@torch.no_grad()
def test_bf16_stays_as_close_to_fp32_as_the_stock_bf16_decode(wan21):
    # bf16 rounds to 8 significant bits; through ~30 convolutions of random, untrained weights that
    # grows to several percent of the output even in the stock bf16 decode (its error against fp32
    # is the yardstick). The fused groups round once where the stock code rounds after every op, so
    # the fast decode must be no farther from fp32 than the stock one (25% slack for the different
    # rounding points), and the two bf16 decodes, each within that of fp32, within twice of each other.
    z = latents(5, seed=11)
    ref32 = wan21.decode(z, return_dict=False)[0]
    stock16 = copy.deepcopy(wan21).to(torch.bfloat16)
    s = stock16.decode(z.bfloat16(), return_dict=False)[0]
    vae16, report = fast_copy(stock16)
    assert report.applied
    f = vae16.decode(z.bfloat16(), return_dict=False)[0]
    assert f.dtype == torch.bfloat16 and f.shape == s.shape
    stock_err = _rel(s, ref32)
    assert 0 < stock_err < 0.2
    assert _rel(f, ref32) <= 1.25 * stock_err
    assert _rel(f, s) <= 2 * stock_err


def test_a_changed_mirrored_source_leaves_the_decoder_stock(wan21, monkeypatch):
    def forward(self, x):  # another release's WanRMS_norm.forward: other source, other hash
        return super(akw.WanRMS_norm, self).forward(x)

    monkeypatch.setattr(akw.WanRMS_norm, "forward", forward)
    fd._installed_source.cache_clear()
    try:
        vae = copy.deepcopy(wan21)
        report = install_fast_decode(vae)
    finally:
        monkeypatch.undo()
        fd._installed_source.cache_clear()
    assert not report.applied and "is not the code this mirrors" in report.reason
    assert report.describe().startswith("fast decode not applied")
    assert not is_installed(vae)
    assert not any("forward" in vars(m) for m in vae.modules())
    assert install_fast_decode(copy.deepcopy(wan21)).applied  # the real source again


def test_the_wan22_ti2v_vae_is_left_stock():
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=1, is_residual=True,
                           patch_size=2, in_channels=12, out_channels=12).eval()
    report = install_fast_decode(vae)
    assert not report.applied and "WanResidualUpBlock" in report.reason
    assert not any("forward" in vars(m) for m in vae.modules())


def test_tiling_and_hooks_leave_it_stock(wan21):
    from diffusers.hooks import HookRegistry

    vae = copy.deepcopy(wan21)
    vae.enable_tiling()
    report = install_fast_decode(vae)
    assert not report.applied and report.reason == "tiled decode is on"
    vae.disable_tiling()
    HookRegistry.check_if_exists_or_initialize(vae.decoder.mid_block)
    report = install_fast_decode(vae)
    assert not report.applied and "hooks (decoder.mid_block)" in report.reason
    assert not is_installed(vae)


def test_the_encoder_is_untouched_and_removal_gives_every_forward_back(wan21):
    from wan22bot.engine import vae_encode

    vae = copy.deepcopy(wan21)
    report = install_fast_decode(vae)
    assert report.applied and is_installed(vae)
    assert install_fast_decode(vae) is report  # a second install changes nothing
    for part in (vae.encoder, vae.quant_conv, vae.post_quant_conv):
        for m in part.modules():
            assert "forward" not in vars(m)
            assert m.forward.__func__ is type(m).forward
    assert vae_encode.unsupported_reason(vae, torch.zeros((1, 3, 5, 16, 16))) is None  # its shortcut still applies
    patched = [m for m in vae.decoder.modules() if "forward" in vars(m)]
    assert len(patched) == 1 + 14 + 33 + 14 * 2 + 2 + 3  # decoder, blocks, convs, norms, upsamplers
    assert remove_fast_decode(vae) and not is_installed(vae)
    assert not any("forward" in vars(m) for m in vae.modules())
    assert remove_fast_decode(vae) is False


@torch.no_grad()
def test_a_copy_of_a_patched_vae_runs_its_own_weights(wan21):
    vae, _ = fast_copy(wan21)
    twin = copy.deepcopy(vae)
    assert twin.decoder.forward.__self__ is twin.decoder
    for p in twin.decoder.conv_out.parameters():
        p.zero_()  # the copy's head now outputs zeros; the original's must not
    z = latents(1)
    assert torch.count_nonzero(twin.decode(z, return_dict=False)[0]) == 0
    assert torch.count_nonzero(vae.decode(z, return_dict=False)[0]) > 0


def test_a_failed_compile_falls_back_to_eager_once_with_one_warning(monkeypatch, caplog):
    calls = []

    def broken_compile(fn, **kwargs):
        def run(*args):
            calls.append(kwargs)
            raise RuntimeError("inductor: no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    group = fd._Fused(fd.rms_norm)
    report = fd.FastDecodeReport(applied=True, compiled=True)
    state = fd._State(compile=True, report=report)
    x = torch.randn((1, 4, 2, 3, 3))
    gamma, scale = torch.rand((4, 1, 1, 1)), torch.tensor(2.0)
    with caplog.at_level(logging.WARNING, logger=fd.__name__):
        a = group(state, x, gamma, scale, None, torch.float32)
        b = group(state, x, gamma, scale, None, torch.float32)
    assert calls == [{"dynamic": True, "fullgraph": True}]  # tried once, not again
    expected = fd.rms_norm(x, gamma, scale, None, torch.float32)
    assert torch.equal(a, expected) and torch.equal(b, expected)
    assert report.eager_fallbacks == ["rms_norm"] and "rms_norm" in report.describe()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0].getMessage()


def test_config_key_and_the_render_path():
    from pydantic import ValidationError

    from wan22bot.config import ModelConfig
    from wan22bot.engine.generator import TwoPassGenerator

    assert ModelConfig().vae_fast_decode == "auto"
    with pytest.raises(ValidationError, match="vae_fast_decode"):
        ModelConfig(vae_fast_decode="sometimes")
    gen = TwoPassGenerator(ModelConfig(kind="tiny", device="cpu", vae_fast_decode=True))
    gen.load()
    assert is_installed(gen.components.vae)
    auto = TwoPassGenerator(ModelConfig(kind="tiny", device="cpu"))
    auto.load()
    assert not is_installed(auto.components.vae)  # "auto" on a CPU: off


def test_the_tail_bench_times_the_fast_decode_and_its_psnr(capsys, tmp_path):
    from wan22bot.bench.tail import main as tail_main

    assert tail_main(["--device", "cpu", "--vae", "tiny", "--frames", "9", "--width", "32", "--height", "32",
                      "--no-rife", "--encoder", "libx264", "--threads", "1", "--psnr", "--no-serial",
                      "--channels-last", "--fast-decode", "--out", str(tmp_path)]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["fast_decode"] is True and r["channels_last"] is True
    assert r["fast_decode_report"]["applied"] is True and r["fast_decode_report"]["compiled"] is False
    assert r["fast_decode_warmup_s"] > 0 and "compile_warmup_s" not in r
    assert r["overlapped"]["vae_decode"] > 0 and r["mp4"]["overlapped"]["frames"] == 9
    # against the stock fp32 decode
    assert r["max_abs_vs_fp32"] <= 1e-4
