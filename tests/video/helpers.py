"""Frames and MP4 read-back helpers for the video tests."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import av
import numpy as np


def moving_frames(n: int, h: int, w: int, seed: int = 0, grain: int = 12) -> np.ndarray:
    """A gradient (with +-grain noise) and a square sliding across it; uint8 (n, h, w, 3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 90)], -1).astype(np.int16)
    base = np.clip(base + rng.integers(-grain, grain + 1, base.shape), 0, 255).astype(np.uint8)
    out = np.repeat(base[None], n, 0)
    for i in range(n):
        x0 = (i * 3) % (w - 12)
        out[i, 4:16, x0:x0 + 12] = (250, 40, 30)
    return out


def decoded_planes(path: Path) -> np.ndarray:
    """Every decoded frame's yuv420p planes, stacked (n, H*3/2, W)."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray() for f in c.decode(video=0)])


def x264_threads(path: Path) -> int:
    """The `threads=` x264 wrote into its settings SEI."""
    m = re.search(rb" threads=(\d+)", Path(path).read_bytes())
    assert m, "no x264 settings SEI in the stream"
    return int(m.group(1))


def encoder_threads_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "mp4-encoder" and t.is_alive()]
