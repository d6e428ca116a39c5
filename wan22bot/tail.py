"""Everything after pass 2, streamed: decoded chunks -> RIFE -> YUV -> encoder thread -> MP4.

`StreamingTail` is the frame sink `TwoPassGenerator.generate(..., sink=...)` feeds as each latent
frame is decoded. On the GPU thread it doubles the frames (RIFE, in the same batches as a
whole-clip call), converts them to yuv420p planes on the device and starts their copy to the host;
the `BackgroundEncoder` thread encodes and muxes meanwhile. So x264 runs while the VAE and RIFE
work, and what is left after the last decoded frame is one RIFE batch, one conversion and the
encoder's flush.

Stage seconds (all device-synchronised, so honest on CUDA):
- `interpolate`: RIFE on the GPU thread; `yuv`: colour conversion plus the start of the host copy;
- `encode`: how long the encoder thread was busy (frames in, muxing, flush, faststart, rename);
  it overlaps the others, so it no longer adds up into the total;
- `tail` (set by the caller): wall time from the end of pass 2 to the MP4 renamed into place.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .background_encoder import BackgroundEncoder, PlaneChunk
from .engine.timing import synchronize
from .errors import Cancelled
from .yuv import rgb_to_yuv420

StageFn = Callable[[str], None]
EMIT_FRAMES = 16  # frames per colour conversion and per queued chunk


class StreamingTail:
    """Callable frame sink; `finish()` after the last chunk returns the MP4's size in bytes."""

    def __init__(self, encoder: BackgroundEncoder, device: torch.device | str, *, doubler=None,
                 matrix: str = "bt709", should_cancel: Callable[[], bool] | None = None,
                 on_stage: StageFn | None = None):
        self.encoder = encoder
        self.device = torch.device(device)
        self.doubler = doubler  # an interpolate.DoublingStream, or None
        self.matrix = matrix
        self.should_cancel = should_cancel or (lambda: False)
        self.on_stage = on_stage or (lambda stage: None)
        self.frames_in = 0
        self.frames_out = 0
        self.interpolate = 0.0
        self.yuv = 0.0
        self._announced: set[str] = set()

    def __call__(self, chunk: torch.Tensor) -> None:
        if self.should_cancel():
            raise Cancelled("cancelled while decoding")
        self.frames_in += chunk.shape[0]
        if self.doubler is not None:
            self._announce("interpolate")
            chunk = self._timed_double(lambda: self.doubler.push(chunk))
        self._emit(chunk)

    def finish(self) -> int:
        if self.doubler is not None:
            self._emit(self._timed_double(self.doubler.finish))
        self._announce("encode")
        return self.encoder.finish()

    def _timed_double(self, fn) -> torch.Tensor:
        synchronize(self.device)
        t0 = time.perf_counter()
        out = fn()
        synchronize(self.device)
        self.interpolate += time.perf_counter() - t0
        return out

    def _emit(self, frames: torch.Tensor) -> None:
        # In slices: the float temporaries of the conversion stay small (about 40 MB a frame at
        # 832x1216) even when a fallback decode hands over the whole clip at once.
        for start in range(0, frames.shape[0], EMIT_FRAMES):
            part = frames[start:start + EMIT_FRAMES]
            synchronize(self.device)
            t0 = time.perf_counter()
            planes = PlaneChunk.from_device(*rgb_to_yuv420(part, self.matrix))
            synchronize(self.device)
            self.yuv += time.perf_counter() - t0
            self.frames_out += part.shape[0]
            self.encoder.put(planes)

    def _announce(self, stage: str) -> None:
        if stage not in self._announced:
            self._announced.add(stage)
            self.on_stage(stage)
