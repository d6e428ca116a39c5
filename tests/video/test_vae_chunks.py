"""Driving the Wan VAE's frame loop ourselves gives the stock decode's output bit for bit."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan

from wan22bot.engine.tiny import VAE_CONFIG
from wan22bot.engine.vae_decode import can_stream, decode_video_chunks, drive


@pytest.fixture(scope="module")
def vae() -> AutoencoderKLWan:
    torch.manual_seed(3)
    return AutoencoderKLWan(**VAE_CONFIG).eval()


def latents(t: int, h: int = 4, w: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn((1, VAE_CONFIG["z_dim"], t, h, w), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
@pytest.mark.parametrize("t", [1, 4])
def test_chunks_equal_the_stock_decode(vae, t):
    z = latents(t)
    stock = vae.decode(z, return_dict=False)[0]
    chunks = list(decode_video_chunks(vae, z))
    assert [c.shape[2] for c in chunks] == [1] + [4] * (t - 1)  # 1 frame, then 4 per latent frame
    assert torch.equal(torch.cat(chunks, dim=2), stock)
    # and the cache is left clean: a second stock decode is unaffected
    assert torch.equal(vae.decode(z, return_dict=False)[0], stock)


@torch.no_grad()
def test_a_vae_that_never_ran_streams_too():
    """diffusers makes the frame loop's cache in clear_cache(), not at construction: a VAE fresh
    from its constructor (no encode or decode yet) must still stream, not fall back to one chunk."""
    torch.manual_seed(3)
    fresh = AutoencoderKLWan(**VAE_CONFIG).eval()
    assert not hasattr(fresh, "_feat_map")
    z = latents(3, seed=5)
    chunks = list(decode_video_chunks(fresh, z))
    assert [c.shape[2] for c in chunks] == [1, 4, 4]
    assert torch.equal(torch.cat(chunks, dim=2), fresh.decode(z, return_dict=False)[0])


@torch.no_grad()
def test_stopping_early_leaves_the_vae_clean(vae):
    z = latents(3, seed=1)
    it = decode_video_chunks(vae, z)
    next(it)
    it.close()  # a consumer that gave up (cancel, error)
    assert all(f is None for f in vae._feat_map)
    assert torch.equal(torch.cat(list(decode_video_chunks(vae, z)), 2), vae.decode(z, return_dict=False)[0])


@torch.no_grad()
def test_tiled_vae_falls_back_to_the_stock_decode(vae):
    z = latents(2, h=6, w=6, seed=2)
    vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32,
                      tile_sample_stride_height=24, tile_sample_stride_width=24)
    try:
        assert not can_stream(vae, z)
        chunks = list(decode_video_chunks(vae, z))
        assert len(chunks) == 1 and torch.equal(chunks[0], vae.decode(z, return_dict=False)[0])
    finally:
        vae.disable_tiling()
    assert can_stream(vae, z)


@torch.no_grad()
def test_drive_times_the_decoder_and_closes_it_when_the_sink_fails(vae):
    z = latents(3, seed=4)
    seen = []
    busy = drive(decode_video_chunks(vae, z), lambda c: seen.append(c.shape[2]), torch.device("cpu"))
    assert seen == [1, 4, 4] and busy > 0

    def broken(chunk):
        raise RuntimeError("encoder gone")

    with pytest.raises(RuntimeError, match="encoder gone"):
        drive(decode_video_chunks(vae, z), broken, torch.device("cpu"))
    assert all(f is None for f in vae._feat_map)  # closed at once, not at garbage collection
