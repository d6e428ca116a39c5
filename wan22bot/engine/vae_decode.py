"""Wan VAE decode that hands out frames as each latent frame is decoded.

Wan's causal VAE decodes one latent frame at a time anyway (diffusers' AutoencoderKLWan._decode
loops over them with a feature cache), but returns only when all are done. Driving the same loop
here lets the first frames go on to RIFE and the encoder while the rest decode, and frees each
chunk's float output early. It runs the same modules on the same inputs in the same order as the
stock decode, so the frames are bit-identical (pinned by tests/video/test_vae_chunks.py); where
the loop cannot be driven safely (tiling on, accelerate hooks, a VAE class without that loop) it
falls back to the stock decode and yields everything at once.

Latent frame 0 gives 1 video frame, each later one 4 (the 4x temporal compression).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch

from .timing import synchronize

_LOOP_PARTS = ("clear_cache", "post_quant_conv", "decoder")
# The loop's feature cache: diffusers creates these in clear_cache(), not in __init__, so a VAE
# that has never encoded or decoded has none until decode_video_chunks calls it.
_CACHE_PARTS = ("_feat_map", "_conv_idx")


def can_stream(vae, z: torch.Tensor) -> bool:
    """True when decode_video_chunks can drive the frame loop itself for latents `z`."""
    if not all(hasattr(vae, name) for name in _LOOP_PARTS) or getattr(vae, "_hf_hook", None) is not None:
        return False
    if getattr(vae, "use_slicing", False) and z.shape[0] > 1:
        return False
    if getattr(vae, "use_tiling", False):
        ratio = vae.spatial_compression_ratio
        if z.shape[-1] > vae.tile_sample_min_width // ratio or z.shape[-2] > vae.tile_sample_min_height // ratio:
            return False
    return True


def decode_video_chunks(vae, z: torch.Tensor) -> Iterator[torch.Tensor]:
    """Denormalised latents (B, C, T, h, w) -> video chunks (B, 3, f, H, W) in [-1, 1], in order."""
    streamable = can_stream(vae, z)
    if streamable:
        vae.clear_cache()
    if not streamable or not all(hasattr(vae, name) for name in _CACHE_PARTS):
        yield vae.decode(z, return_dict=False)[0]
        return
    patch = getattr(vae.config, "patch_size", None)
    if patch is not None:
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify
    try:
        x = vae.post_quant_conv(z)
        for i in range(z.shape[2]):
            vae._conv_idx = [0]
            extra = {"first_chunk": True} if i == 0 else {}
            out = vae.decoder(x[:, :, i:i + 1, :, :], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, **extra)
            if patch is not None:
                out = unpatchify(out, patch_size=patch)
            yield torch.clamp(out, min=-1.0, max=1.0)
    finally:
        vae.clear_cache()  # also when the consumer stops early (cancel, error): no stale cache


def drive(chunks: Iterator[torch.Tensor], sink: Callable[[torch.Tensor], None], device: torch.device) -> float:
    """Feed each chunk to `sink` as it is produced; returns the seconds spent producing (the
    decode alone, device-synchronised, the sink's own time left out)."""
    busy = 0.0
    it = iter(chunks)
    try:
        while True:
            synchronize(device)
            t0 = time.perf_counter()
            chunk = next(it, None)
            synchronize(device)
            busy += time.perf_counter() - t0
            if chunk is None:
                return busy
            sink(chunk)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()  # a sink that raised leaves the decoder loop now, not at garbage collection
