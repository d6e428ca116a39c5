"""RGB -> YUV 4:2:0 (limited range) as torch ops, on whatever device the frames are on.

The MP4 encoder wants yuv420p. Letting PyAV convert (swscale, on one CPU core, in the encoder's
thread) cost seconds per clip at 832x1216; here the conversion runs where the frames already are
(the GPU in production) and only 1.5 bytes per pixel instead of 3 cross to the host.

Matrix: BT.709 by default, written into the stream's colour tags (see `STREAM_TAGS`), because it
is the HD standard and what players assume for untagged HD video, so the colours are right whether
a player reads the tags or not. BT.601 (swscale's own default for rgb24 -> yuv420p, which earlier
versions of wan22bot wrote untagged) is kept for comparison.

Chroma is sited the way swscale does it for rgb24 -> yuv420p, so the planes match PyAV's own
conversion to within a code value of rounding: each pair of columns is averaged, and rows are
filtered with taps 1/8, 3/8, 3/8, 1/8 centred between each pair of rows, the edge rows repeated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Matrix:
    name: str
    kr: float
    kb: float
    # PyAV/FFmpeg names: AVColorSpace / AVColorPrimaries / AVColorTransferCharacteristic values,
    # and the swscale colourspace PyAV's reformat() takes, for checking against it.
    colorspace: int
    primaries: int
    trc: int
    sws: str


MATRICES = {
    # sRGB content: BT.709 primaries and transfer either way; only the matrix differs.
    "bt709": Matrix("bt709", 0.2126, 0.0722, colorspace=1, primaries=1, trc=1, sws="ITU709"),
    "bt601": Matrix("bt601", 0.299, 0.114, colorspace=6, primaries=1, trc=1, sws="ITU601"),
}
COLOR_RANGE_TV = 1  # AVCOL_RANGE_MPEG: Y in 16..235, Cb/Cr in 16..240


def matrix(name: str) -> Matrix:
    try:
        return MATRICES[name]
    except KeyError:
        raise ValueError(f"unknown colour matrix {name!r}; use one of {', '.join(MATRICES)}") from None


def rgb_to_yuv420(frames: torch.Tensor, matrix_name: str = "bt709") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 (F, H, W, 3) RGB -> uint8 planes Y (F, H, W), U and V (F, H/2, W/2), same device.

    H and W must be even. Computed in float32 (exact enough for 8-bit codes), rounded half up.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 (F, H, W, 3) frames, got {frames.dtype} {tuple(frames.shape)}")
    f, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs an even width and height, got {w}x{h}")
    m = matrix(matrix_name)
    kr, kb = m.kr, m.kb
    kg = 1.0 - kr - kb
    x = frames.float()
    r, g, b = x.unbind(-1)
    luma = r * kr + g * kg + b * kb  # 0..255
    y = luma * (219.0 / 255.0) + 16.0

    # Chroma is linear in RGB, so averaging RGB then converting equals converting then averaging.
    pair = x.view(f, h, w // 2, 2, 3).mean(3)  # (F, H, W/2, 3)
    padded = torch.cat([pair[:, :1], pair, pair[:, -1:]], dim=1)  # edge rows repeated: (F, H+2, ...)
    # Output row j takes input rows 2j-1, 2j, 2j+1, 2j+2 (padded rows 2j .. 2j+3).
    rows = (padded[:, 0:h:2] + padded[:, 3:h + 3:2] + 3.0 * (padded[:, 1:h + 1:2] + padded[:, 2:h + 2:2])) / 8.0
    cr_, cg_, cb_ = rows.unbind(-1)
    cl = cr_ * kr + cg_ * kg + cb_ * kb
    scale = 224.0 / 255.0
    u = (cb_ - cl) * (scale / (2.0 * (1.0 - kb))) + 128.0
    v = (cr_ - cl) * (scale / (2.0 * (1.0 - kr))) + 128.0
    return _to_u8(y), _to_u8(u), _to_u8(v)


def _to_u8(t: torch.Tensor) -> torch.Tensor:
    return t.add_(0.5).floor_().clamp_(0.0, 255.0).to(torch.uint8)


__all__ = ["COLOR_RANGE_TV", "MATRICES", "Matrix", "matrix", "rgb_to_yuv420"]
