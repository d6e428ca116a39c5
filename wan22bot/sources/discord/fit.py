"""Re-encoding a finished MP4 so it fits an upload limit. Blocking CPU work: call it in a thread.

Lower bitrate first (at full size), then smaller frames. The frames are read back from the
original MP4 and written with wan22bot.video.encode_mp4 (bitrate=, size=). Returns None when no
attempt fits (very small limits: the MP4 headers alone are about 2 KB).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from ...video import encode_mp4, probe_mp4, read_frames

log = logging.getLogger(__name__)

HEADROOM = 0.95  # aim under the limit: the bitrate is an average, not a cap
MIN_BITS_PER_PIXEL = 0.02  # below this, frames turn to mush: make them smaller instead
MIN_SIDE = 32


@dataclass(frozen=True)
class Fitted:
    path: Path
    bytes: int
    width: int
    height: int
    bitrate: int
    scaled: bool
    attempts: int


def fit_video(src: Path, dst: Path, limit: int, *, max_attempts: int = 8, preset: str = "medium") -> Fitted | None:
    info = probe_mp4(src)
    frames = read_frames(src)
    fps = max(1, round(info.fps or 16))
    duration = max(frames.shape[0] / fps, 1.0 / fps)
    h, w = frames.shape[1:3]
    bitrate = int(limit * 8 * HEADROOM / duration)
    scale = 1.0
    for attempt in range(1, max_attempts + 1):
        size = (max(2, int(w * scale)), max(2, int(h * scale)))
        size = (size[0] - size[0] % 2, size[1] - size[1] % 2)
        n = encode_mp4(frames, dst, fps, bitrate=bitrate, size=None if scale == 1.0 else size, preset=preset)
        log.debug("fit %s: attempt %d at %d bit/s, %dx%d -> %d bytes (limit %d)", src.name, attempt, bitrate,
                  *size, n, limit)
        if n <= limit:
            return Fitted(dst, n, size[0], size[1], bitrate, scale != 1.0, attempt)
        ratio = limit / n
        floor = int(size[0] * size[1] * fps * MIN_BITS_PER_PIXEL)
        if bitrate * ratio * 0.85 >= floor:
            bitrate = max(1000, int(bitrate * ratio * 0.85))
            continue
        new_scale = scale * max(0.5, min(0.9, math.sqrt(ratio) * 0.9))
        if min(w, h) * new_scale < MIN_SIDE:
            break
        scale = new_scale
        bitrate = max(1000, min(bitrate, int(bitrate * ratio * 0.85)))
    dst.unlink(missing_ok=True)
    return None
