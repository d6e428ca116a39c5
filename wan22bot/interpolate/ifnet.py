"""The RIFE 4.25/4.26 intermediate-flow network (IFNet), written for wan22bot.

Architecture (the published 4.25/4.26 checkpoints fit it; the parameter names are theirs):

* ``encode``: a small per-frame feature head. ``cnn0`` (3->16, stride 2), ``cnn1``/``cnn2``
  (16->16) with LeakyReLU(0.2) in between, and ``cnn3``, a stride-2 transposed conv back to full
  resolution with 4 channels.
* ``block0`` .. ``block4``: coarse-to-fine flow estimators with widths 192/128/96/64/32. Each runs
  at ``1/s`` of the (padded) frame size for ``s`` in 16, 8, 4, 2, 1 (divided by the user ``scale``):
  two stride-2 3x3 convs (in -> c/2 -> c), eight residual convs ``LeakyReLU(conv(x) * beta + x)``,
  then ``ConvTranspose2d(c, 52, 4, 2, 1)`` + ``PixelShuffle(2)`` giving 13 channels:
  a 4-channel flow in pixels of the block's working resolution (``[0:2]`` points from the
  intermediate frame into frame 0, ``[2:4]`` into frame 1, x before y), a mask logit and 8 feature
  channels handed to the next block.
* block0 sees ``img0, img1, feat0, feat1, t`` (15 channels). The later blocks see both frames and
  both feature maps warped by the current flow, ``t``, the previous mask logit, the carried features
  and the current flow (28 channels); their flow output is added to the current flow, their mask
  logit replaces the previous one.
* The result is ``sigmoid(m) * warp(img0, flow[0:2]) + (1 - sigmoid(m)) * warp(img1, flow[2:4])``.

``warp`` is a backward warp, ``grid_sample`` with bilinear filtering, border padding and
``align_corners=True``. Its sampling grid, the accumulated flow, the warped frames used for the
final blend and the blend itself are kept in float32 even when the convolutions run in
float16/bfloat16: a half-precision grid is off by up to ~0.3 px on a 1216 px frame.

Frames are mirror-padded (bottom/right) to a multiple of 64 (``64 / scale`` for ``scale < 1``) and the
result is cropped back, so any frame size works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_WIDTHS = (192, 128, 96, 64, 32)
BLOCK_SCALES = (16, 8, 4, 2, 1)
FEATURE_CHANNELS = 4  # per frame, from the encoder
CARRY_CHANNELS = 8  # handed from one block to the next
BLOCK_OUTPUTS = 4 + 1 + CARRY_CHANNELS  # flow, mask logit, carried features
FIRST_INPUTS = 3 + 3 + 2 * FEATURE_CHANNELS + 1
LATER_INPUTS = FIRST_INPUTS + 1 + CARRY_CHANNELS + 4
PAD_MULTIPLE = 64  # coarsest block works at 1/16 and downsamples 4x more
ALLOWED_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
_SLOPE = 0.2
_GRID_CACHE_SIZE = 8


def _down_conv(cin: int, cout: int) -> nn.Sequential:
    # Nested so the parameters are named ``conv0.<i>.0.weight`` like the published checkpoints.
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.LeakyReLU(_SLOPE, inplace=True))


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(torch.addcmul(x, self.conv(x), self.beta), _SLOPE)


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.cnn0 = nn.Conv2d(3, 16, 3, 2, 1)
        self.cnn1 = nn.Conv2d(16, 16, 3, 1, 1)
        self.cnn2 = nn.Conv2d(16, 16, 3, 1, 1)
        self.cnn3 = nn.ConvTranspose2d(16, FEATURE_CHANNELS, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.cnn0(x), _SLOPE)
        x = F.leaky_relu(self.cnn1(x), _SLOPE)
        x = F.leaky_relu(self.cnn2(x), _SLOPE)
        return self.cnn3(x)


class _FlowBlock(nn.Module):
    """One refinement level. Returns the raw 13 output channels at the input resolution."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.conv0 = nn.Sequential(_down_conv(in_channels, width // 2), _down_conv(width // 2, width))
        self.convblock = nn.Sequential(*(_Residual(width) for _ in range(8)))
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(width, 4 * BLOCK_OUTPUTS, 4, 2, 1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor, s: float) -> torch.Tensor:
        if s != 1:
            x = F.interpolate(x, scale_factor=1.0 / s, mode="bilinear", align_corners=False)
        y = self.lastconv(self.convblock(self.conv0(x)))
        if s != 1:
            y = F.interpolate(y, scale_factor=s, mode="bilinear", align_corners=False)
        return y


def pad_multiple(scale: float = 1.0) -> int:
    """The frame sizes (after padding) must be a multiple of this for the given ``scale``."""
    _check_scale(scale)
    return int(PAD_MULTIPLE * max(1.0, 1.0 / scale))


def _check_scale(scale: float) -> None:
    if float(scale) not in ALLOWED_SCALES:
        raise ValueError(f"RIFE scale must be one of {ALLOWED_SCALES}, got {scale!r}")


class IFNet(nn.Module):
    """RIFE 4.25/4.26 IFNet. ``state_dict()`` keys are exactly the 158 inference tensors of the
    published ``flownet.pkl``.

    Entry points (all under the caller's ``torch.inference_mode()``/``no_grad`` as wished):

    * ``forward(img0, img1, timestep=0.5, scale=1.0)``: two batches of frames ``(B, 3, H, W)`` with
      values in [0, 1], any ``H, W``; returns the frames at ``timestep`` as float32 ``(B, 3, H, W)``.
    * ``middles(frames, timestep=0.5, scale=1.0)``: a sequence ``(K, 3, H, W)``; returns the ``K-1``
      frames between consecutive ones, encoding every frame once.

    ``timestep`` is a float or a tensor of ``B`` values. ``scale`` < 1 estimates flow on a coarser
    grid (for large motion / large frames), > 1 on a finer one; 1 is the trained setting.
    Inputs are cast to the parameters' dtype.
    """

    def __init__(self):
        super().__init__()
        self.block0 = _FlowBlock(FIRST_INPUTS, BLOCK_WIDTHS[0])
        self.block1 = _FlowBlock(LATER_INPUTS, BLOCK_WIDTHS[1])
        self.block2 = _FlowBlock(LATER_INPUTS, BLOCK_WIDTHS[2])
        self.block3 = _FlowBlock(LATER_INPUTS, BLOCK_WIDTHS[3])
        self.block4 = _FlowBlock(LATER_INPUTS, BLOCK_WIDTHS[4])
        self.encode = _Encoder()
        self._grids: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def blocks(self) -> tuple[_FlowBlock, ...]:
        return (self.block0, self.block1, self.block2, self.block3, self.block4)

    @property
    def dtype(self) -> torch.dtype:
        return self.encode.cnn0.weight.dtype

    # ------------------------------------------------------------------ public entry points
    def forward(
        self,
        img0: torch.Tensor,
        img1: torch.Tensor,
        timestep: float | torch.Tensor = 0.5,
        scale: float = 1.0,
    ) -> torch.Tensor:
        if img0.shape != img1.shape or img0.ndim != 4 or img0.shape[1] != 3:
            raise ValueError(f"expected two (B, 3, H, W) batches of equal shape, got {tuple(img0.shape)} and {tuple(img1.shape)}")
        b, _, h, w = img0.shape
        both = self._pad(torch.cat([img0, img1], 0).to(self.dtype), scale)
        feats = self.encode(both)
        out = self.synthesize(both[:b], both[b:], feats[:b], feats[b:], timestep, scale)
        return out[:, :, :h, :w]

    def middles(self, frames: torch.Tensor, timestep: float | torch.Tensor = 0.5, scale: float = 1.0) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] < 2:
            raise ValueError(f"expected a (K>=2, 3, H, W) sequence, got {tuple(frames.shape)}")
        h, w = frames.shape[-2:]
        x = self._pad(frames.to(self.dtype), scale)
        feats = self.encode(x)
        out = self.synthesize(x[:-1], x[1:], feats[:-1], feats[1:], timestep, scale)
        return out[:, :, :h, :w]

    # ------------------------------------------------------------------ the network proper
    def synthesize(
        self,
        img0: torch.Tensor,
        img1: torch.Tensor,
        feat0: torch.Tensor,
        feat1: torch.Tensor,
        timestep: float | torch.Tensor,
        scale: float = 1.0,
    ) -> torch.Tensor:
        """The core on already padded frames and their encoder features; returns float32."""
        _check_scale(scale)
        b, _, h, w = img0.shape
        m = pad_multiple(scale)
        if h % m or w % m:
            raise ValueError(f"IFNet core needs frame sizes that are multiples of {m}, got {w}x{h}; use forward()/middles(), which pad")
        dt = self.dtype
        img0, img1, feat0, feat1 = (t.to(dt) for t in (img0, img1, feat0, feat1))
        tplane = self._time_plane(timestep, b, h, w, img0.device, dt)
        base = self._base_grid(h, w, img0.device)
        # Frames and features of both sides are warped together: one grid_sample per level.
        source = torch.cat([torch.cat([img0, feat0], 1), torch.cat([img1, feat1], 1)], 0).float()

        flow = None  # float32, (B, 4, H, W), pixels at full resolution
        mask = carry = warped = None
        n = len(self.blocks)
        for i, (block, level) in enumerate(zip(self.blocks, BLOCK_SCALES)):
            s = level / scale
            if flow is None:
                y = block(torch.cat([img0, img1, feat0, feat1, tplane], 1), s)
            else:
                w0, w1 = warped[:b].to(dt), warped[b:].to(dt)
                x = torch.cat([w0[:, :3], w1[:, :3], w0[:, 3:], w1[:, 3:], tplane, mask, carry, (flow / s).to(dt)], 1)
                y = block(x, s)
            delta = y[:, :4].float() * s
            flow = delta if flow is None else flow + delta
            mask, carry = y[:, 4:5], y[:, 5:]
            last = i == n - 1
            warped = _warp(source[:, :3] if last else source, flow, base)
        weight = torch.sigmoid(mask.float())
        return warped[:b] * weight + warped[b:] * (1.0 - weight)

    # ------------------------------------------------------------------ helpers
    def _pad(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        m = pad_multiple(scale)
        h, w = x.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            # Mirror padding. Upstream pads with zeros; on odd-sized translating test clips the
            # mirrored border gave a right/bottom 16 px band ~2.5 dB closer to the truth than
            # zeros or edge replication, and the same interior. Mirroring needs pad < size, so
            # tiny frames fall back to edge replication.
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return x

    @staticmethod
    def _time_plane(timestep, b: int, h: int, w: int, device, dtype) -> torch.Tensor:
        if isinstance(timestep, torch.Tensor):
            t = timestep.to(device=device, dtype=dtype).reshape(-1)
            if t.numel() == 1:
                t = t.expand(b)
            if t.numel() != b:
                raise ValueError(f"timestep has {t.numel()} values for a batch of {b}")
            return t.view(b, 1, 1, 1).expand(b, 1, h, w)
        return torch.full((b, 1, h, w), float(timestep), device=device, dtype=dtype)

    def _base_grid(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The identity sampling grid (1, H, W, 2) and the pixel -> [-1, 1] factors, float32."""
        key = (h, w, str(device))
        cached = self._grids.get(key)
        if cached is None:
            if len(self._grids) >= _GRID_CACHE_SIZE:
                self._grids.clear()
            ys = torch.linspace(-1.0, 1.0, h, device=device, dtype=torch.float32)
            xs = torch.linspace(-1.0, 1.0, w, device=device, dtype=torch.float32)
            grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).unsqueeze(0)
            norm = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=torch.float32).to(device)
            cached = self._grids[key] = (grid, norm)
        return cached


def _warp(source: torch.Tensor, flow: torch.Tensor, base: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Backward-warp ``source`` (2B, C, H, W): the first B by ``flow[:, 0:2]``, the rest by
    ``flow[:, 2:4]``. Flow is in pixels, (x, y); everything here is float32."""
    grid, norm = base
    offsets = torch.cat([flow[:, 0:2], flow[:, 2:4]], 0).permute(0, 2, 3, 1)
    return F.grid_sample(source, grid + offsets * norm, mode="bilinear", padding_mode="border", align_corners=True)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["IFNet", "pad_multiple", "parameter_count", "BLOCK_WIDTHS", "BLOCK_SCALES", "ALLOWED_SCALES"]
