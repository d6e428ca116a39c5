"""The Wan VAE encode of the I2V conditioning video, with an exact shortcut for its zero frames.

Image-to-video encodes [photo, then F-1 black (all-zero) frames] through the causal Wan encoder,
chunk by chunk (the first frame alone, then 4 frames at a time), each layer carrying a cache of
the last frames it saw. diffusers' `AutoencoderKLWan._encode` runs every layer on every chunk,
although the same zero chunk goes in 20 times at 81 frames.

This module drives the same loop itself, split into the encoder's top-level units (`conv_in`,
each of `down_blocks`, `mid_block`, the head). A unit is a state machine: (cache, input) ->
(cache', output). When a unit gets the same input as in the previous chunk and its cache slots
come out of the chunk identical (torch.equal; same None/"Rep" markers) to what they were before
it, the unit has reached a fixed point: for as long as its input stays the same, every later
chunk gives the output it just gave, and leaves the cache as it is. So it is not run again: its
last output is reused. The unit after it then sees the same input chunk after chunk and may
settle in turn. Once every unit has settled, a whole chunk's encoder output is a copy of the last.

Why this is exact: each unit is deterministic, so equal (cache, input) give equal outputs. The
settled units always form a prefix (a unit can only settle once the one before it has), every
chunk's input is compared with the previous chunk's (a different one, e.g. a last frame, undoes
all of it), and nothing is ever approximated: a unit either runs as diffusers runs it, or its
output is a tensor it already produced from the same cache and input.

How much it saves depends on the encoder's temporal reach: the full-resolution layers (most of the
work) settle after a few chunks, the latent-resolution ones (2 frames of reach per conv at one
frame per chunk) much later. `EncodeReport` says where each unit settled.

Anything this loop does not mirror line for line (another VAE class, another diffusers release of
the mirrored code, tiling, offload hooks, an encoder layer of another kind) goes to diffusers' own
encode instead, and the report says why.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .mirrored_source import digest_or_empty, source_digest

# sha256 of the diffusers 0.42.1 source this loop mirrors (AutoencoderKLWan.clear_cache, ._encode,
# .encode, WanEncoder3d.forward) or relies on (the encoder layers' cache handling: each slot is
# replaced by a new tensor, never written in place). Another release that changes any of it is run
# through its own encode until this module is checked against it.
MIRRORED_SOURCE = "9b35ab0f8fa7dfd232dcb640f7dced19f7400a9134fc5033fac7cc5ece40915f"


@dataclass
class EncodeReport:
    """What one conditioning-video encode did."""

    method: str = "diffusers"  # "fast" (this module's loop) or "diffusers" (its own encode)
    reason: str = ""  # why diffusers' own encode ran
    chunks: int = 0  # encoder chunks (1 + (frames - 1) // 4)
    units: tuple[str, ...] = ()
    # per unit: the chunk (0-based) after which its cache stopped changing, or None (never)
    settled_at: tuple[int | None, ...] = ()
    unit_runs: int = 0  # unit calls made
    unit_runs_skipped: int = 0  # unit calls replaced by the unit's last output
    copied_chunks: int = 0  # chunks in which no unit ran at all (the whole output copied)

    @property
    def converged_at(self) -> int | None:
        """The chunk after which every unit had settled (later chunks are copies), or None."""
        if not self.settled_at or any(s is None for s in self.settled_at):
            return None
        return max(s for s in self.settled_at if s is not None)

    def describe(self) -> str:
        if self.method != "fast":
            return f"diffusers' own encode ({self.reason})"
        total = self.unit_runs + self.unit_runs_skipped
        conv = self.converged_at
        whole = (f"every unit settled after chunk {conv}, {self.copied_chunks} chunks copied" if conv is not None
                 else "the last unit never settled")
        return (f"{self.chunks} chunks, {self.unit_runs_skipped} of {total} unit runs skipped; {whole}; settled at "
                + ", ".join(f"{n} {s}" for n, s in zip(self.units, self.settled_at)))

    def as_dict(self) -> dict:
        return {"method": self.method, "reason": self.reason, "chunks": self.chunks, "units": list(self.units),
                "settled_at": list(self.settled_at), "unit_runs": self.unit_runs,
                "unit_runs_skipped": self.unit_runs_skipped, "copied_chunks": self.copied_chunks,
                "converged_at": self.converged_at}


@dataclass
class _Unit:
    name: str
    run: Callable  # (x, feat_cache, feat_idx) -> x
    slots: tuple[int, int] | None = None  # the cache slots it used last time: [start, end)
    settled_at: int | None = None
    held: torch.Tensor | None = field(default=None, repr=False)  # its output once settled


def _mirrored_source() -> str:
    from diffusers.models.autoencoders import autoencoder_kl_wan as akw

    return source_digest((akw.AutoencoderKLWan.clear_cache, akw.AutoencoderKLWan._encode,
                          akw.AutoencoderKLWan.encode, akw.WanEncoder3d.forward, akw.WanCausalConv3d.forward,
                          akw.WanResidualBlock.forward, akw.WanResample.forward,
                          akw.WanResidualDownBlock.forward, akw.WanMidBlock.forward))


@functools.lru_cache(maxsize=1)
def _installed_source() -> str:
    return digest_or_empty(_mirrored_source)


def unsupported_reason(vae, x: torch.Tensor) -> str | None:
    """Why `encode` must leave `vae.encode(x)` to diffusers, or None when the loop here mirrors it."""
    from diffusers.models.autoencoders import autoencoder_kl_wan as akw

    if type(vae) is not akw.AutoencoderKLWan:
        return f"{type(vae).__name__} is not diffusers' AutoencoderKLWan"
    if _installed_source() != MIRRORED_SOURCE:
        import diffusers

        return f"diffusers {diffusers.__version__}'s Wan VAE encode is not the code this loop mirrors (0.42.1)"
    if any(getattr(m, "_hf_hook", None) is not None or getattr(m, "_diffusers_hook", None) is not None
           for m in vae.modules()):
        return "the VAE has offload hooks"
    if x.dim() != 5:
        return f"input of {x.dim()} dimensions, not (B, C, T, H, W)"
    height, width = x.shape[-2:]
    if vae.use_tiling and (width > vae.tile_sample_min_width or height > vae.tile_sample_min_height):
        return "tiled encode"
    enc = vae.encoder
    if type(enc) is not akw.WanEncoder3d or type(enc.mid_block) is not akw.WanMidBlock:
        return f"encoder of type {type(enc).__name__}"
    known = (akw.WanResidualBlock, akw.WanResample, akw.WanResidualDownBlock)
    for i, layer in enumerate(enc.down_blocks):
        if type(layer) not in known:
            return f"encoder layer down_blocks.{i} is a {type(layer).__name__}"
    return None


def _cached_conv(conv, x: torch.Tensor, feat_cache: list, feat_idx: list) -> torch.Tensor:
    """WanEncoder3d.forward's causal conv with its cache slot (conv_in and conv_out), line for line."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import CACHE_T

    idx = feat_idx[0]
    cache_x = x[:, :, -CACHE_T:, :, :].clone()
    if cache_x.shape[2] < 2 and feat_cache[idx] is not None:
        # cache last frame of last two chunk
        cache_x = torch.cat([feat_cache[idx][:, :, -1, :, :].unsqueeze(2).to(cache_x.device), cache_x], dim=2)
    x = conv(x, feat_cache[idx])
    feat_cache[idx] = cache_x
    feat_idx[0] += 1
    return x


def _units(enc) -> list[_Unit]:
    """WanEncoder3d.forward (the feat_cache branch) as a sequence of units, in its order."""
    units = [_Unit("conv_in", lambda x, c, i: _cached_conv(enc.conv_in, x, c, i))]
    for n, layer in enumerate(enc.down_blocks):
        units.append(_Unit(f"down_blocks.{n}", lambda x, c, i, layer=layer: layer(x, feat_cache=c, feat_idx=i)))
    units.append(_Unit("mid_block", lambda x, c, i: enc.mid_block(x, feat_cache=c, feat_idx=i)))

    def head(x, c, i):
        x = enc.norm_out(x)
        x = enc.nonlinearity(x)
        return _cached_conv(enc.conv_out, x, c, i)

    units.append(_Unit("head", head))
    return units


def _same(a, b) -> bool:
    """One cache slot before and after a chunk: the same None/"Rep" marker, or equal tensors."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return False


def _encode_one(vae, x: torch.Tensor, report: EncodeReport) -> torch.Tensor:
    """AutoencoderKLWan._encode (no tiling) with settled units skipped: the moments (B, 2z, t, h, w)."""
    _, _, num_frame, height, width = x.shape
    vae.clear_cache()
    if vae.config.patch_size is not None:
        from diffusers.models.autoencoders.autoencoder_kl_wan import patchify

        x = patchify(x, patch_size=vae.config.patch_size)
    units = _units(vae.encoder)
    iter_ = 1 + (num_frame - 1) // 4
    outs = []
    prev_in: torch.Tensor | None = None
    try:
        for i in range(iter_):
            vae._enc_conv_idx = [0]
            feat_cache, feat_idx = vae._enc_feat_map, vae._enc_conv_idx
            chunk = x[:, :, :1, :, :] if i == 0 else x[:, :, 1 + 4 * (i - 1):1 + 4 * i, :, :]
            same_input = prev_in is not None and _same(prev_in, chunk)
            if not same_input:
                # a different chunk (the photo, a last frame): nothing carries over
                for u in units:
                    u.settled_at, u.held = None, None
            prev_in = chunk
            # the settled prefix is skipped: its last unit's output is this chunk's input to the rest
            k = next((n for n, u in enumerate(units) if u.settled_at is None), len(units))
            h = chunk
            if k:
                h = units[k - 1].held
                feat_idx[0] = units[k - 1].slots[1]  # their slots already hold the fixed point
                report.unit_runs_skipped += k
            ran = False
            for n in range(k, len(units)):
                u = units[n]
                start = feat_idx[0]
                before = list(feat_cache)
                h = u.run(h, feat_cache, feat_idx)
                ran = True
                report.unit_runs += 1
                slots = (start, feat_idx[0])
                # Same input as in the last chunk: the unit's own chunk input (n == 0), or the output of
                # a unit that had settled before this chunk (so it gave the same output last chunk too).
                same = same_input if n == 0 else (units[n - 1].settled_at is not None
                                                  and units[n - 1].settled_at < i)
                if same and slots == u.slots and all(_same(before[j], feat_cache[j]) for j in range(*slots)):
                    u.settled_at, u.held = i, h
                    if n:
                        units[n - 1].held = None  # only the frontier's output is needed from now on
                u.slots = slots
            if not ran:
                report.copied_chunks += 1
            outs.append(h)
        out = torch.cat(outs, 2) if len(outs) > 1 else outs[0]
        enc = vae.quant_conv(out)
    finally:
        vae.clear_cache()
        report.chunks += iter_
        report.units = tuple(u.name for u in units)
        report.settled_at = tuple(u.settled_at for u in units)
        for u in units:
            u.held = None
    return enc


def encode(vae, x: torch.Tensor, return_dict: bool = True, report: EncodeReport | None = None,
           fallback: Callable | None = None):
    """`vae.encode(x, return_dict)` with the shortcut where it applies, else diffusers' own encode
    (`fallback`, default `vae.encode`). Returns what diffusers' encode returns."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from diffusers.models.modeling_outputs import AutoencoderKLOutput

    report = report if report is not None else EncodeReport()
    why = unsupported_reason(vae, x)
    if why is not None:
        report.method, report.reason = "diffusers", why
        return (fallback or vae.encode)(x, return_dict=return_dict)
    report.method, report.reason = "fast", ""
    if vae.use_slicing and x.shape[0] > 1:
        h = torch.cat([_encode_one(vae, x_slice, report) for x_slice in x.split(1)])
    else:
        h = _encode_one(vae, x, report)
    posterior = DiagonalGaussianDistribution(h)
    if not return_dict:
        return (posterior,)
    return AutoencoderKLOutput(latent_dist=posterior)


def prepare_latents(pipe, *args, fast: bool = True, **kwargs) -> tuple[tuple, EncodeReport]:
    """`pipe.prepare_latents(*args, **kwargs)` (diffusers' own: conditioning video, mask, latent
    normalisation) with its `vae.encode` call going through `encode` above when `fast`."""
    report = EncodeReport()
    if not fast:
        report.reason = "fast_image_encode is off"
        return pipe.prepare_latents(*args, **kwargs), report
    vae = pipe.vae
    original = vae.encode

    def fast_encode(x, return_dict=True):
        return encode(vae, x, return_dict, report=report, fallback=original)

    vae.encode = fast_encode  # an instance attribute shadows the method for this one call
    try:
        return pipe.prepare_latents(*args, **kwargs), report
    finally:
        del vae.encode
