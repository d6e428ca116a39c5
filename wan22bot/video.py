"""MP4 writing (H.264, yuv420p, faststart) with PyAV, and reading back for checks.

yuv420p needs even dimensions; every size the generator makes is a multiple of 16, but a
re-encode to fit an upload limit may scale, so sizes are rounded down to even there.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .errors import DiskFull


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int
    codec: str
    pix_fmt: str
    duration: float


def encode_mp4(frames: np.ndarray, path: Path, fps: int, *, crf: int = 18, preset: str = "medium",
               bitrate: int | None = None, size: tuple[int, int] | None = None) -> int:
    """Write uint8 (F, H, W, 3) frames to `path` atomically; returns the file size in bytes.

    Written to a temporary name in the same folder and renamed, so a crash or a full disk never
    leaves a half-written MP4 under the real name. `bitrate` (bits/s) replaces CRF when given;
    `size` (w, h) scales on the way out.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 (F, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    h, w = frames.shape[1:3]
    out_w, out_h = size if size else (w, h)
    out_w, out_h = out_w - out_w % 2, out_h - out_h % 2
    try:
        with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=Fraction(fps, 1))
            stream.width, stream.height, stream.pix_fmt = out_w, out_h, "yuv420p"
            opts = {"preset": preset}
            if bitrate:
                stream.bit_rate = int(bitrate)
                opts.update({"maxrate": str(int(bitrate)), "bufsize": str(int(bitrate) * 2)})
            else:
                opts["crf"] = str(crf)
            stream.options = opts
            for arr in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
                if (out_w, out_h) != (w, h):
                    frame = frame.reformat(width=out_w, height=out_h)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except OSError as exc:
        _cleanup(tmp)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"no space left to write {path.name} in {path.parent}") from None
        raise
    except BaseException:
        _cleanup(tmp)
        raise
    return path.stat().st_size


def _cleanup(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass


def probe_mp4(path: Path) -> VideoInfo:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        fps = float(s.average_rate) if s.average_rate else 0.0
        dur = float(c.duration / av.time_base) if c.duration else 0.0
        return VideoInfo(n, fps, s.codec_context.width, s.codec_context.height, s.codec_context.name,
                         s.codec_context.pix_fmt or "", dur)


def read_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
