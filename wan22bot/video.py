"""MP4 writing (H.264, yuv420p, faststart) with PyAV, and reading back for checks.

Frames reach the encoder as yuv420p planes made by `yuv.rgb_to_yuv420` (on the GPU in production),
so neither PyAV nor the encoder converts colours; the stream is tagged with the matrix used
(BT.709, limited range, by default) so players show the colours as they were generated.

`Mp4Writer` takes frames in any number of chunks (the streaming tail feeds it from a background
thread, see tail.py); `encode_mp4` is the one-shot form for a whole clip of RGB frames.

yuv420p needs even dimensions; every size the generator makes is a multiple of 16, but a
re-encode to fit an upload limit may scale, so sizes are rounded down to even there.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from .errors import ConfigError, DiskFull
from .yuv import COLOR_RANGE_TV, matrix, rgb_to_yuv420

log = logging.getLogger(__name__)

ENCODERS = ("auto", "libx264", "nvenc")
NVENC = "h264_nvenc"
# x264 preset names -> the NVENC preset of about the same speed/quality trade.
NVENC_PRESETS = {"ultrafast": "p1", "superfast": "p1", "veryfast": "p2", "faster": "p3", "fast": "p4",
                 "medium": "p5", "slow": "p6", "slower": "p7", "veryslow": "p7"}


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int
    codec: str
    pix_fmt: str
    duration: float


@dataclass(frozen=True)
class EncodeSettings:
    """How the H.264 stream is made. `encoder`: "auto", "libx264" or "nvenc" (see choose_codec).

    `crf` is libx264's constant quality (NVENC gets it as its `cq`); `bitrate` (bits/s) replaces it
    when given. `threads`: libx264 frame threads, 0 = one per core (x264's own choice).
    """

    encoder: str = "libx264"
    crf: int = 18
    preset: str = "medium"
    threads: int = 0
    bitrate: int | None = None
    matrix: str = "bt709"


@functools.lru_cache(maxsize=None)
def nvenc_problem() -> str | None:
    """None when this PyAV can open an h264_nvenc encoder here, else why not (one phrase).

    Being listed in av.codecs_available is not enough: the encoder only opens with an NVIDIA GPU
    and driver that have NVENC (data-centre Hopper cards, for one, have none). Cached per process.
    """
    return open_problem(NVENC)


def open_problem(codec: str) -> str | None:
    """None when a yuv420p `codec` encoder opens in this process, else why not (one phrase)."""
    if codec not in av.codecs_available:
        return f"this PyAV build has no {codec} encoder"
    try:
        ctx = av.CodecContext.create(codec, "w")
        ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
        ctx.time_base = Fraction(1, 16)
        ctx.framerate = Fraction(16, 1)
        ctx.open()
        del ctx  # PyAV frees (and closes) the context with the object
    except Exception as exc:  # noqa: BLE001 - any failure to open means "not usable here"
        return f"{codec} does not open here ({exc})"
    return None


def choose_codec(encoder: str) -> str:
    """The FFmpeg encoder name for the configured `generation.encoder`.

    "auto" takes NVENC when it opens (it costs no CPU and no time on the critical path) and
    libx264 otherwise, saying so in the log; "nvenc" insists and fails with the reason.
    """
    if encoder not in ENCODERS:
        raise ConfigError(f"generation.encoder is {encoder!r}; use one of {', '.join(ENCODERS)}")
    if encoder == "nvenc":
        problem = nvenc_problem()
        if problem:
            raise ConfigError(f"generation.encoder is \"nvenc\" but {problem}; "
                              "set generation.encoder = \"libx264\" (or \"auto\")")
        return NVENC
    if encoder == "auto":
        problem = nvenc_problem()
        if problem is None:
            return NVENC
        _log_fallback_once(problem)
    if "libx264" not in av.codecs_available:
        raise ConfigError("this PyAV build has no libx264 encoder; install the PyAV wheel (it bundles libx264) "
                          "or set generation.encoder = \"nvenc\" on an NVIDIA GPU")
    return "libx264"


@functools.lru_cache(maxsize=None)
def _log_fallback_once(problem: str) -> None:
    log.info("video encoder: NVENC not used (%s); encoding with libx264", problem)


def _codec_options(codec: str, s: EncodeSettings) -> dict[str, str]:
    if codec == NVENC:
        opts = {"preset": NVENC_PRESETS.get(s.preset, "p5"), "tune": "hq"}
        if s.bitrate:
            opts.update({"rc": "vbr", "maxrate": str(int(s.bitrate)), "bufsize": str(int(s.bitrate) * 2)})
        else:
            opts.update({"rc": "vbr", "cq": str(max(1, s.crf)), "b": "0"})
        return opts
    opts = {"preset": s.preset}
    if s.bitrate:
        opts.update({"maxrate": str(int(s.bitrate)), "bufsize": str(int(s.bitrate) * 2)})
    else:
        opts["crf"] = str(s.crf)
    return opts


@contextmanager
def _disk_errors(path: Path):
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"no space left to write {path.name} in {path.parent}") from None
        raise


class Mp4Writer:
    """An H.264 MP4 written frame by frame to a hidden `.part` file, renamed by `close()`.

    A crash, an `abort()` or a full disk never leaves a half-written MP4 under the real name.
    Not thread-safe: one thread writes (the encoder thread of tail.py, or the caller).
    """

    def __init__(self, path: Path, width: int, height: int, fps: int, settings: EncodeSettings | None = None):
        self.settings = s = settings or EncodeSettings()
        if width % 2 or height % 2 or width < 2 or height < 2:
            raise ValueError(f"yuv420p needs an even width and height, got {width}x{height}")
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.part")
        self.width, self.height = width, height
        self.frames = 0
        self._m = matrix(s.matrix)
        self._container = None
        self._fps = fps
        self.codec = choose_codec(s.encoder)
        try:
            self._open(self.codec)
        except DiskFull:
            raise
        except Exception as exc:
            if self.codec != NVENC:
                raise
            if s.encoder == "nvenc":
                raise ConfigError(f"generation.encoder is \"nvenc\" but h264_nvenc failed to open for "
                                  f"{width}x{height} ({exc}); set generation.encoder = \"libx264\" (or \"auto\")"
                                  ) from None
            # NVENC opened in the probe but not for this stream (a size it refuses, no free
            # session): "auto" still makes the video, with x264.
            log.warning("video encoder: h264_nvenc failed to open for %dx%d (%s); encoding with libx264",
                        width, height, exc)
            self.codec = "libx264"
            self._open(self.codec)

    def _open(self, codec: str) -> None:
        """Create the .part file and open the encoder now, so a codec that cannot start fails
        here (before the passes, in render) rather than at the first frame."""
        s = self.settings
        self.abort()
        try:
            with _disk_errors(self.path):
                self._container = av.open(str(self.tmp), mode="w", format="mp4",
                                          options={"movflags": "+faststart"})
                stream = self._container.add_stream(codec, rate=Fraction(self._fps, 1))
                stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
                cc = stream.codec_context
                cc.color_range, cc.colorspace = COLOR_RANGE_TV, self._m.colorspace
                cc.color_primaries, cc.color_trc = self._m.primaries, self._m.trc
                if s.bitrate:
                    stream.bit_rate = int(s.bitrate)
                if codec == "libx264":
                    # Frame threads (x264's and the ffmpeg tool's default; PyAV asks for slices):
                    # higher throughput. Two lossy encodes are not promised to be bit-identical
                    # (one such pair differed on a loaded 2-core machine); the tests compare lossless.
                    cc.thread_type = "FRAME"
                    cc.thread_count = int(s.threads)
                stream.options = _codec_options(codec, s)
                self._stream = stream
                self._container.start_encoding()
        except BaseException:
            self.abort()
            raise

    # ---------------------------------------------------------------- writing
    def write_planes(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        """uint8 planes: Y (F, H, W), U and V (F, H/2, W/2), as made by yuv.rgb_to_yuv420."""
        h, w = self.height, self.width
        if (y.dtype != np.uint8 or y.ndim != 3 or y.shape[1:] != (h, w) or u.shape != (y.shape[0], h // 2, w // 2)
                or v.shape != u.shape):
            raise ValueError(f"expected yuv420p planes for {w}x{h}, got Y {y.shape} U {u.shape} V {v.shape}")
        with _disk_errors(self.path):
            for i in range(y.shape[0]):
                frame = av.VideoFrame(w, h, "yuv420p")
                frame.color_range, frame.colorspace = COLOR_RANGE_TV, self._m.colorspace
                for plane, data in zip(frame.planes, (y[i], u[i], v[i])):
                    view = np.frombuffer(plane, dtype=np.uint8).reshape(plane.height, plane.line_size)
                    view[:, : plane.width] = data
                for packet in self._stream.encode(frame):
                    self._container.mux(packet)
                self.frames += 1

    def write_rgb(self, frames: np.ndarray | torch.Tensor) -> None:
        """uint8 (F, H, W, 3) RGB, converted here (on the tensor's device) and written."""
        t = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
        y, u, v = rgb_to_yuv420(t, self.settings.matrix)
        self.write_planes(y.cpu().numpy(), u.cpu().numpy(), v.cpu().numpy())

    def close(self) -> int:
        """Flush, finish the file and rename it into place; returns its size in bytes."""
        try:
            with _disk_errors(self.path):
                for packet in self._stream.encode():
                    self._container.mux(packet)
                self._container.close()
                self._container = None
                os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path.stat().st_size

    def abort(self) -> None:
        """Drop the partial file (safe to call more than once, and after a failure)."""
        c, self._container = self._container, None
        if c is not None:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - the file goes anyway; the first error is what matters
                pass
        _cleanup(self.tmp)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._container is not None:
            self.abort()


def encode_mp4(frames: np.ndarray, path: Path, fps: int, *, crf: int = 18, preset: str = "medium",
               bitrate: int | None = None, size: tuple[int, int] | None = None,
               encoder: str = "libx264", threads: int = 0) -> int:
    """Write uint8 (F, H, W, 3) frames to `path` atomically; returns the file size in bytes.

    Written to a temporary name in the same folder and renamed, so a crash or a full disk never
    leaves a half-written MP4 under the real name. `bitrate` (bits/s) replaces CRF when given;
    `size` (w, h) scales on the way out.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 (F, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    h, w = frames.shape[1:3]
    out_w, out_h = size if size else (w, h)
    out_w, out_h = out_w - out_w % 2, out_h - out_h % 2
    settings = EncodeSettings(encoder=encoder, crf=crf, preset=preset, threads=threads, bitrate=bitrate)
    with Mp4Writer(Path(path), out_w, out_h, fps, settings) as writer:
        for start in range(0, frames.shape[0], 16):
            chunk = frames[start:start + 16]
            if (out_w, out_h) != (w, h):
                chunk = np.stack([av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24")
                                  .reformat(width=out_w, height=out_h).to_ndarray() for a in chunk])
            writer.write_rgb(chunk)
        return writer.close()


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
    """Decoded RGB frames; the stream's own colour tags decide the matrix (untagged = BT.601)."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def read_planes(path: Path) -> list[np.ndarray]:
    """Decoded yuv420p frames as (H*3/2, W) arrays (Y rows, then U, then V), for exact comparisons."""
    with av.open(str(path)) as c:
        return [f.to_ndarray() for f in c.decode(video=0)]
