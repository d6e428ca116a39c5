"""A faster Wan 2.1 VAE decoder: diffusers' math, with its elementwise ops fused.

At 81 frames and 832x1216 the stock decoder spends much of its time moving memory in eager
elementwise ops rather than in its convolutions. Before every 3x3x3 convolution a residual block
runs WanRMS_norm (an fp32 copy, the norm, the divide, back to bf16, `* scale`, `* gamma`,
`+ 0.0`), then SiLU, then `torch.cat([cache, x], 2)` and `F.pad` for time and space: about ten
full passes over the activations. The upsamplers go to fp32 and back around a nearest-exact 2x.

`install_fast_decode(vae)` replaces, on the instances inside `vae.decoder` only, the forward of the
residual blocks, causal convolutions, RMS norms, upsamplers and the decoder's head, so that:

- norm + SiLU is one fused group, computed in fp32 and rounded to the activation dtype once at the
  end (the stock code rounds after each op; in fp32 the ops and their order are the same), written
  straight into a [time prefix | frames] buffer: the conv's causal prefix (zeros and/or the cached
  frames) costs no extra copy of the input;
- the spatial padding is the convolution's own `padding=(0, ph, pw)` instead of an `F.pad` copy;
- the upsamplers' frame interleave, layout change and nearest 2x run in the activation dtype as one
  group (nearest copies values, so this is bit-identical to going through fp32);
- the feature cache is diffusers' own, slot for slot: the same `feat_cache` list, `feat_idx`
  counter, "Rep" markers, CACHE_T frames kept (one frame after a one-frame first chunk), so
  `engine/vae_decode.decode_video_chunks` drives it unchanged.

The fused groups are plain torch functions. On CUDA each is wrapped once in
`torch.compile(fn, dynamic=True, fullgraph=True)` (shapes vary with chunk length, channels and
resolution); on the CPU they run eagerly, so the tests exercise the same code. A compile that fails
falls back to eager for that group, with one warning; it never fails a render.

Anything this does not mirror line for line (another diffusers release of the mirrored code, another
VAE class such as the Wan 2.2 TI2V VAE with its WanResidualUpBlock, tiling, offload hooks, a module
of an unknown kind in the decoder) is left alone: the report says why, and the stock decode runs.
The encoder is never touched (engine/vae_encode.py's exact shortcut relies on it being stock).
"""

from __future__ import annotations

import functools
import logging
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .mirrored_source import digest_or_empty, source_digest

log = logging.getLogger(__name__)

# sha256 of the diffusers 0.42.1 source this module mirrors (see _mirrored_source for the list):
# another release that changes any of it keeps the stock decoder until this module is checked.
MIRRORED_SOURCE = "a35a9c80c9f7683ad11cc382cd2babb99abb7fc2b5b8c362dfa0f88b5e801c9b"

# the attribute on vae.decoder that holds the install's state (and marks it as installed)
_MARK = "_wan22bot_fast_decode"


@dataclass
class FastDecodeReport:
    """What `install_fast_decode` did to one VAE."""

    applied: bool = False
    reason: str = ""  # why it was not applied
    residual_blocks: int = 0
    causal_convs: int = 0
    norms: int = 0  # standalone RMS norms (the attention block's); the blocks' own are fused in
    upsamplers: int = 0
    head: bool = False  # the decoder's own forward (its norm_out + SiLU + conv_out)
    compiled: bool = False  # the fused groups go through torch.compile (a CUDA decoder)
    eager_fallbacks: list[str] = field(default_factory=list)  # groups whose compile failed

    def describe(self) -> str:
        if not self.applied:
            return f"fast decode not applied ({self.reason})"
        how = "compiled" if self.compiled else "eager"
        if self.eager_fallbacks:
            how += f", eager after a failed compile: {', '.join(self.eager_fallbacks)}"
        return (f"fast decode ({self.residual_blocks} residual blocks, {self.causal_convs} causal convs, "
                f"{self.norms} norms, {self.upsamplers} upsamplers, head; {how})")

    def as_dict(self) -> dict:
        return {"applied": self.applied, "reason": self.reason, "residual_blocks": self.residual_blocks,
                "causal_convs": self.causal_convs, "norms": self.norms, "upsamplers": self.upsamplers,
                "head": self.head, "compiled": self.compiled, "eager_fallbacks": list(self.eager_fallbacks)}


# ---------------------------------------------------------------------------------------------
# The fused groups: plain torch, positional arguments only (torch.compile specialises on the
# Python values among them: the prefix length, the layout flag, None against a tensor).


def _layout(channels_last: bool, dim: int) -> torch.memory_format:
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last_3d if dim == 5 else torch.channels_last


def _rms(x: torch.Tensor, gamma: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """WanRMS_norm (channel-first) in fp32: F.normalize (its eps 1e-12), `* scale`, `* gamma`, `+ bias`."""
    xf = x.float()
    y = xf / xf.norm(2, dim=1, keepdim=True).clamp_min(1e-12)
    y = y * scale * gamma.float()
    if bias is not None:
        y = y + bias.float()
    return y


def rms_norm(x: torch.Tensor, gamma: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
             out_dtype: torch.dtype) -> torch.Tensor:
    """WanRMS_norm.forward, rounded to `out_dtype` once at the end."""
    return _rms(x, gamma, scale, bias).to(out_dtype)


def norm_silu_prefixed(x: torch.Tensor, prefix: torch.Tensor, gamma: torch.Tensor, scale: torch.Tensor,
                       bias: torch.Tensor | None, out_dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """[prefix | silu(norm(x))] along time, (B, C, P + T, H, W): a causal conv's whole input.

    `prefix` holds the P frames before x (the cached frames, zero-filled in front where the cache is
    short). The buffer is laid out as the conv's weight is.
    """
    y = F.silu(_rms(x, gamma, scale, bias)).to(out_dtype)
    b, c, t, h, w = x.shape
    pad = prefix.shape[2]
    out = torch.empty((b, c, pad + t, h, w), dtype=out_dtype, device=x.device,
                      memory_format=_layout(channels_last, 5))
    out[:, :, :pad] = prefix
    out[:, :, pad:] = y
    return out


def upsample_frames(x: torch.Tensor, doubled: bool, channels_last: bool) -> torch.Tensor:
    """WanResample's frame interleave (after its time conv), (B, C, T, H, W) -> (B*T, C, H, W)
    and nearest 2x, in x's dtype: (B * T', C, 2H, 2W). Nearest only copies values: output pixel
    (i, j) is input pixel (i // 2, j // 2), at 2x for "nearest" and "nearest-exact" alike."""
    b, c, t, h, w = x.shape
    if channels_last:
        # the same values, indexed in (frame, row, column, channel) order so that reads and writes
        # both run along the channels, which are innermost in memory on either side
        y = x.permute(0, 2, 3, 4, 1)  # (b, t, h, w, c)
        if doubled:
            # the time conv's 2C channels are two frames per input frame: frame 2i + k is block k
            c = c // 2
            y = y.reshape(b, t, h, w, 2, c).permute(0, 1, 4, 2, 3, 5)
            t = t * 2
        y = y.reshape(b * t, h, 1, w, 1, c).expand(b * t, h, 2, w, 2, c).reshape(b * t, 2 * h, 2 * w, c)
        return y.permute(0, 3, 1, 2)  # (b*t, c, 2h, 2w), channels-last in memory
    if doubled:
        c = c // 2
        x = x.reshape(b, 2, c, t, h, w)
        x = torch.stack((x[:, 0, :, :, :, :], x[:, 1, :, :, :, :]), 3)
        t = t * 2
        x = x.reshape(b, c, t, h, w)
    x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    return x[:, :, :, None, :, None].expand(b * t, c, h, 2, w, 2).reshape(b * t, c, 2 * h, 2 * w)


class _Fused:
    """One fused group: eager on the CPU; on CUDA wrapped once (per process) in torch.compile, and
    eager for good after a compile that raised."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.name = fn.__name__
        self._compiled: Callable | None = None
        self.failed = False

    def __call__(self, state: _State, *args):
        if state.compile and not self.failed:
            if self._compiled is None:
                self._compiled = torch.compile(self.fn, dynamic=True, fullgraph=True)
            try:
                return self._compiled(*args)
            except torch.OutOfMemoryError:
                raise  # eager needs more memory, not less
            except Exception as e:  # noqa: BLE001 - any compile failure: the eager code is the same math
                self.failed = True
                state.report.eager_fallbacks.append(self.name)
                first = str(e).splitlines()[0] if str(e) else ""
                log.warning("VAE fast decode: torch.compile of %s failed (%s: %s); it runs eagerly from now on",
                            self.name, type(e).__name__, first)
        return self.fn(*args)


_NORM_SILU = _Fused(norm_silu_prefixed)
_NORM = _Fused(rms_norm)
_UPSAMPLE = _Fused(upsample_frames)


# ---------------------------------------------------------------------------------------------
# The patched forwards and their helpers.


@dataclass
class _State:
    """One install: whether to compile, its report, and the norms' scales as fp32 device scalars
    (a tensor rather than a Python float, so one compiled graph serves every channel count)."""

    compile: bool
    report: FastDecodeReport
    originals: dict = field(default_factory=dict)  # module -> what its instance "forward" was (absent: none)
    scales: dict = field(default_factory=dict)

    def scale(self, norm, device: torch.device) -> torch.Tensor:
        key = (norm.scale, device)  # by value: the same for every norm of that width, and for a copy
        s = self.scales.get(key)
        if s is None:
            s = self.scales[key] = torch.tensor(norm.scale, dtype=torch.float32, device=device)
        return s


def _wants_channels_last(weight: torch.Tensor) -> bool:
    fmt = torch.channels_last_3d if weight.dim() == 5 else torch.channels_last
    return weight.is_contiguous(memory_format=fmt) and not weight.is_contiguous()


def _norm_args(state: _State, norm, x: torch.Tensor) -> tuple:
    """gamma, scale, bias, output dtype: the stock `normalized.to(x.dtype) * scale * gamma + bias`
    has the dtype those promote to."""
    bias = norm.bias if isinstance(norm.bias, torch.Tensor) else None  # the float 0.0: adds nothing
    out = torch.promote_types(x.dtype, norm.gamma.dtype)
    if bias is not None:
        out = torch.promote_types(out, bias.dtype)
    return norm.gamma, state.scale(norm, x.device), bias, out


def _conv(conv, x: torch.Tensor) -> torch.Tensor:
    """WanCausalConv3d's convolution on an input that already has its time prefix; the spatial
    zero padding is the convolution's own instead of an F.pad copy."""
    p = conv._padding  # (w, w, h, h, 2 * t, 0), set up by WanCausalConv3d.__init__
    return F.conv3d(x, conv.weight, conv.bias, conv.stride, (0, p[2], p[0]), conv.dilation, conv.groups)


def _time_prefix(cache: torch.Tensor | None, pad: int, x: torch.Tensor, dtype: torch.dtype,
                 channels_last: bool) -> torch.Tensor:
    """The `pad` frames WanCausalConv3d.forward puts before x: the cached frames, zero-filled in
    front where there are fewer (F.pad), the oldest dropped where there are more (F.pad with a
    negative pad); all zeros without a cache. Always a tensor of `pad` frames in the conv's layout,
    so that one compiled graph serves the first chunk, the one-frame caches and the rest."""
    fmt = _layout(channels_last, 5)
    k = 0 if cache is None else cache.shape[2]
    if k >= pad:
        cache = cache[:, :, k - pad:].to(x.device)
        if cache.dtype == dtype and cache.is_contiguous(memory_format=fmt):
            return cache
    b, c, _, h, w = x.shape
    out = torch.empty((b, c, pad, h, w), dtype=dtype, device=x.device, memory_format=fmt).zero_()
    if k:
        out[:, :, max(pad - k, 0):] = cache[:, :, max(k - pad, 0):]
    return out


def _causal_conv_forward(state: _State, conv, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
    """WanCausalConv3d.forward with one copy (the time prefix and x together) instead of two."""
    pad = conv._padding[4]
    if pad > 0:
        x = torch.cat([_time_prefix(cache_x, pad, x, x.dtype, x.is_contiguous(memory_format=torch.channels_last_3d)
                                    and not x.is_contiguous()), x], 2)
    return _conv(conv, x)


def _norm_silu_conv(state: _State, norm, conv, x: torch.Tensor, feat_cache: list | None, feat_idx: list):
    """norm -> SiLU -> (cache slot) -> causal conv, as WanResidualBlock.forward and the decoder's
    head run them, with diffusers' cache semantics kept exactly."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import CACHE_T

    pad = conv._padding[4]  # CACHE_T (checked at install)
    gamma, scale, bias, out_dtype = _norm_args(state, norm, x)
    cl = _wants_channels_last(conv.weight)
    if feat_cache is None:
        buf = _NORM_SILU(state, x, _time_prefix(None, pad, x, out_dtype, cl), gamma, scale, bias, out_dtype, cl)
        return _conv(conv, buf)
    idx = feat_idx[0]
    old = feat_cache[idx]
    buf = _NORM_SILU(state, x, _time_prefix(old, pad, x, out_dtype, cl), gamma, scale, bias, out_dtype, cl)
    # diffusers keeps the last CACHE_T activated frames; a one-frame chunk keeps the cache's last
    # frame before it, which is the buffer's frame before it (the prefix ends with it), and keeps
    # only itself when there was no cache (a one-frame cache: the first chunk).
    keep = CACHE_T if (x.shape[2] >= CACHE_T or old is not None) else x.shape[2]
    feat_cache[idx] = buf[:, :, buf.shape[2] - keep:].clone()
    feat_idx[0] += 1
    return _conv(conv, buf)


def _residual_forward(state: _State, block, x: torch.Tensor, feat_cache=None, feat_idx=[0]) -> torch.Tensor:  # noqa: B006 - diffusers' signature
    """WanResidualBlock.forward (its dropout is the identity: checked at install)."""
    h = block.conv_shortcut(x)
    x = _norm_silu_conv(state, block.norm1, block.conv1, x, feat_cache, feat_idx)
    x = _norm_silu_conv(state, block.norm2, block.conv2, x, feat_cache, feat_idx)
    return x + h


def _norm_forward(state: _State, norm, x: torch.Tensor) -> torch.Tensor:
    """WanRMS_norm.forward (channel-first), in fp32 with one rounding."""
    gamma, scale, bias, out_dtype = _norm_args(state, norm, x)
    return _NORM(state, x, gamma, scale, bias, out_dtype)


def _resample_forward(state: _State, res, x: torch.Tensor, feat_cache=None, feat_idx=[0]) -> torch.Tensor:  # noqa: B006
    """WanResample.forward for the decoder's modes ("upsample2d", "upsample3d")."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import CACHE_T

    b = x.shape[0]
    doubled = False
    if res.mode == "upsample3d" and feat_cache is not None:
        idx = feat_idx[0]
        old = feat_cache[idx]
        if old is None:
            # the first chunk: no time upsampling; the marker makes the next chunk's conv start from zeros
            feat_cache[idx] = "Rep"
            feat_idx[0] += 1
        else:
            rep = isinstance(old, str) and old == "Rep"
            cache_x = x[:, :, -CACHE_T:, :, :].clone()
            if cache_x.shape[2] < 2 and not rep:
                cache_x = torch.cat([old[:, :, -1, :, :].unsqueeze(2).to(cache_x.device), cache_x], dim=2)
            if cache_x.shape[2] < 2 and rep:
                cache_x = torch.cat([torch.zeros_like(cache_x), cache_x], dim=2)
            x = res.time_conv(x) if rep else res.time_conv(x, old)
            feat_cache[idx] = cache_x
            feat_idx[0] += 1
            doubled = True
    conv2d = res.resample[1]
    up = _UPSAMPLE(state, x, doubled, _wants_channels_last(conv2d.weight))
    t = up.shape[0] // b
    out = conv2d(up)
    return out.view(b, t, out.size(1), out.size(2), out.size(3)).permute(0, 2, 1, 3, 4)


def _decoder_forward(state: _State, dec, x: torch.Tensor, feat_cache=None, feat_idx=[0],  # noqa: B006
                     first_chunk=False) -> torch.Tensor:
    """WanDecoder3d.forward: conv_in with its cache slot, the mid block, the up blocks, and the head
    (norm_out + SiLU + conv_out) as one fused group and a conv."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import CACHE_T

    if feat_cache is not None:
        idx = feat_idx[0]
        cache_x = x[:, :, -CACHE_T:, :, :].clone()
        if cache_x.shape[2] < 2 and feat_cache[idx] is not None:
            cache_x = torch.cat([feat_cache[idx][:, :, -1, :, :].unsqueeze(2).to(cache_x.device), cache_x], dim=2)
        x = dec.conv_in(x, feat_cache[idx])
        feat_cache[idx] = cache_x
        feat_idx[0] += 1
    else:
        x = dec.conv_in(x)
    x = dec.mid_block(x, feat_cache=feat_cache, feat_idx=feat_idx)
    for up_block in dec.up_blocks:
        x = up_block(x, feat_cache=feat_cache, feat_idx=feat_idx, first_chunk=first_chunk)
    return _norm_silu_conv(state, dec.norm_out, dec.conv_out, x, feat_cache, feat_idx)


# ---------------------------------------------------------------------------------------------
# Guard, install, remove.


def _mirrored_source() -> str:
    from diffusers.models.autoencoders import autoencoder_kl_wan as akw

    mirrored = (akw.AutoencoderKLWan.clear_cache, akw.AutoencoderKLWan._decode, akw.WanDecoder3d.__init__,
                akw.WanDecoder3d.forward, akw.WanUpBlock.forward, akw.WanMidBlock.forward,
                akw.WanAttentionBlock.forward, akw.WanResidualBlock.__init__, akw.WanResidualBlock.forward,
                akw.WanResample.__init__, akw.WanResample.forward, akw.WanUpsample.forward,
                akw.WanCausalConv3d.__init__, akw.WanCausalConv3d.forward, akw.WanRMS_norm.__init__,
                akw.WanRMS_norm.forward)
    return source_digest(mirrored, prefix=f"CACHE_T={akw.CACHE_T}")


@functools.lru_cache(maxsize=1)
def _installed_source() -> str:
    return digest_or_empty(_mirrored_source)


_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def unsupported_reason(vae) -> str | None:
    """Why `install_fast_decode` must leave `vae` stock, or None when this module mirrors its decoder."""
    from diffusers.models.autoencoders import autoencoder_kl_wan as akw

    if type(vae) is not akw.AutoencoderKLWan:
        return f"{type(vae).__name__} is not diffusers' AutoencoderKLWan"
    if _installed_source() != MIRRORED_SOURCE:
        import diffusers

        return f"diffusers {diffusers.__version__}'s Wan VAE decoder is not the code this mirrors (0.42.1)"
    for name, m in vae.named_modules():
        if getattr(m, "_hf_hook", None) is not None or getattr(m, "_diffusers_hook", None) is not None:
            return f"the VAE has offload or casting hooks ({name or 'the VAE itself'})"
    if vae.use_tiling:
        return "tiled decode is on"
    dec = vae.decoder
    if type(dec) is not akw.WanDecoder3d:
        return f"decoder of type {type(dec).__name__}"
    if getattr(dec, "_compiled_call_impl", None) is not None:
        return "the decoder is torch.compiled ([model] vae_compile)"
    for i, block in enumerate(dec.up_blocks):
        if type(block) is not akw.WanUpBlock:
            return f"decoder block up_blocks.{i} is a {type(block).__name__} (not the Wan 2.1 VAE's WanUpBlock)"
    known = (akw.WanDecoder3d, akw.WanMidBlock, akw.WanUpBlock, akw.WanResidualBlock, akw.WanAttentionBlock,
             akw.WanResample, akw.WanUpsample, akw.WanCausalConv3d, akw.WanRMS_norm, torch.nn.Conv2d,
             torch.nn.SiLU, torch.nn.Dropout, torch.nn.Identity, torch.nn.ModuleList, torch.nn.Sequential)
    for name, m in dec.named_modules():
        where = f"decoder.{name}" if name else "decoder"
        if type(m) not in known:
            return f"{where} is a {type(m).__name__}, which this does not mirror"
        if "forward" in vars(m):
            return f"{where} already has its forward replaced"
        if isinstance(m, torch.nn.Dropout) and m.p != 0 and m.training:
            return f"{where} drops out (p={m.p}) in training mode"
        if isinstance(m, (torch.nn.Conv2d, akw.WanCausalConv3d)) and m.padding_mode != "zeros":
            return f"{where} pads with {m.padding_mode!r}"
        if isinstance(m, akw.WanRMS_norm) and not m.channel_first:
            return f"{where} normalises the last dimension"
        if isinstance(m, akw.WanResample) and m.mode not in ("upsample2d", "upsample3d"):
            return f"{where} resamples in mode {m.mode!r}"
        if isinstance(m, akw.WanUpsample) and (m.mode not in ("nearest", "nearest-exact") or m.size is not None
                                               or tuple(m.scale_factor or ()) != (2.0, 2.0)):
            return f"{where} upsamples by {m.scale_factor} with {m.mode!r}"
        if isinstance(m, akw.WanResidualBlock) and not isinstance(m.nonlinearity, torch.nn.SiLU):
            return f"{where} uses {type(m.nonlinearity).__name__}, not SiLU"
    if not isinstance(dec.nonlinearity, torch.nn.SiLU):
        return f"the decoder's head uses {type(dec.nonlinearity).__name__}, not SiLU"
    for name, m in dec.named_modules():
        if isinstance(m, akw.WanResidualBlock):
            convs = (m.conv1, m.conv2)
        elif m is dec:
            convs = (m.conv_out,)
        else:
            continue
        if any(c._padding[4] != akw.CACHE_T for c in convs):
            return f"decoder.{name or 'conv_out'}: a conv whose time padding is not {akw.CACHE_T} frames"
    dtypes = {p.dtype for p in dec.parameters()}
    if not dtypes <= set(_DTYPES):
        return f"decoder weights in {', '.join(sorted(str(d) for d in dtypes))}"
    return None


def _patch(state: _State, module, fn: Callable) -> None:
    """Give this one instance `fn(state, module, ...)` as its forward. A bound method (not a
    closure) so that a deepcopy of the VAE gets forwards bound to the copy's modules."""
    state.originals[module] = vars(module).get("forward")
    module.forward = types.MethodType(functools.partial(fn, state), module)


def install_fast_decode(vae, compile: bool | None = None) -> FastDecodeReport:
    """Patch `vae.decoder`'s modules (those instances only) to the fused forwards above.

    `compile`: wrap the fused groups in torch.compile; None = when the decoder is on CUDA. Returns
    what was done; when not applied (`report.reason` says why) the VAE is left as it was.
    """
    from diffusers.models.autoencoders import autoencoder_kl_wan as akw

    dec = getattr(vae, "decoder", None)
    done = getattr(dec, _MARK, None)
    if done is not None:
        return done.report
    report = FastDecodeReport()
    why = unsupported_reason(vae)
    if why is not None:
        report.reason = why
        return report
    if compile is None:
        compile = next(dec.parameters()).device.type == "cuda"
    if compile:
        from torch import _dynamo

        # per group: a graph per dtype, layout, prefix kind and one-frame/longer chunk
        _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
    state = _State(compile=compile, report=report)
    # module class -> its fused forward and the report's count of them
    kinds = ((akw.WanResidualBlock, _residual_forward, "residual_blocks"),
             (akw.WanCausalConv3d, _causal_conv_forward, "causal_convs"),
             (akw.WanRMS_norm, _norm_forward, "norms"),
             (akw.WanResample, _resample_forward, "upsamplers"))
    for m in dec.modules():
        for cls, forward, count in kinds:
            if isinstance(m, cls):
                _patch(state, m, forward)
                setattr(report, count, getattr(report, count) + 1)
                break
    _patch(state, dec, _decoder_forward)
    # the blocks' and the head's norms are fused into their steps: count only those run on their own
    report.norms -= 2 * report.residual_blocks + 1
    report.head = True
    report.compiled = compile
    report.applied = True
    setattr(dec, _MARK, state)
    for group in (_NORM_SILU, _NORM, _UPSAMPLE):
        if compile and group.failed:
            report.eager_fallbacks.append(group.name)  # failed earlier in this process
    return report


def remove_fast_decode(vae) -> bool:
    """Give `vae.decoder`'s modules their forwards back; False when it was not installed."""
    dec = getattr(vae, "decoder", None)
    state = getattr(dec, _MARK, None)
    if state is None:
        return False
    for module, before in state.originals.items():
        if before is None:
            del module.forward
        else:
            module.forward = before
    delattr(dec, _MARK)
    return True


def is_installed(vae) -> bool:
    return getattr(getattr(vae, "decoder", None), _MARK, None) is not None
