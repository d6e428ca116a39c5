"""An MP4 encoder in its own thread, fed yuv420p chunks through a bounded queue.

The producer (VAE decode -> RIFE -> colour conversion, on the GPU thread) `put`s each chunk and
goes on with the next one while this thread runs x264 (or NVENC) and muxes; the queue bound keeps
at most `max_chunks` chunks of host memory in flight and makes a fast producer wait for a slow
encoder instead of piling up frames.

Failure either side stops both, with no thread left running:
- the encoder fails (a full disk, a codec error): it keeps draining the queue, so the producer
  never blocks on a dead consumer, and the error is raised from the producer's next `put` or
  from `finish`;
- the producer fails: it calls `abort` (or leaves the `with` block with the exception), which
  stops the encoder, joins it and removes the partial file.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from .video import Mp4Writer

_DONE = object()


@dataclass
class PlaneChunk:
    """yuv420p planes of n frames on the host; `ready` (a CUDA event) marks the copy finished."""

    y: torch.Tensor  # uint8 (n, H, W)
    u: torch.Tensor  # uint8 (n, H/2, W/2)
    v: torch.Tensor
    ready: torch.cuda.Event | None = None

    @classmethod
    def from_device(cls, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> "PlaneChunk":
        """Start the copy of device planes to the host without waiting for it.

        On CUDA the copy goes into pinned memory on the current stream and an event records its
        end; the encoder thread waits on that event alone, not on whatever the GPU thread queues
        next (a device-wide synchronize in the encoder would wait for the next chunk's decode).
        """
        if y.device.type != "cuda":
            return cls(y.cpu(), u.cpu(), v.cpu())
        host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in (y, u, v)]
        for h, d in zip(host, (y, u, v)):
            h.copy_(d, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        return cls(*host, ready=ev)

    def numpy(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.ready is not None:
            self.ready.synchronize()
        return self.y.numpy(), self.u.numpy(), self.v.numpy()


class BackgroundEncoder:
    """Owns `writer` from construction on: it is closed (file renamed) by `finish`, or aborted."""

    def __init__(self, writer: Mp4Writer, max_chunks: int = 4):
        if max_chunks < 1:
            raise ValueError(f"max_chunks must be at least 1, got {max_chunks}")
        self.writer = writer
        self.busy = 0.0  # seconds the thread spent encoding, muxing and finishing the file
        self.size: int | None = None
        self._q: queue.Queue = queue.Queue(maxsize=max_chunks)
        self._error: BaseException | None = None
        self._stop = threading.Event()  # the producer gave up: drop what is queued
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="mp4-encoder", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- producer side
    def put(self, chunk: PlaneChunk) -> None:
        """Queue a chunk (blocks while the queue is full); raises the encoder's error if it failed."""
        if self._closed:
            raise RuntimeError("BackgroundEncoder.put after finish() or abort()")
        self._raise_if_failed()
        self._q.put(chunk)

    def finish(self) -> int:
        """Wait for every queued frame to be encoded and the MP4 renamed into place; its size."""
        if self._closed:
            raise RuntimeError("BackgroundEncoder.finish called twice")
        self._closed = True
        self._q.put(_DONE)
        self._thread.join()
        self._raise_if_failed()
        assert self.size is not None
        return self.size

    def abort(self) -> None:
        """Stop without finishing: drop queued frames, join the thread, delete the partial file."""
        if not self._closed:
            self._closed = True
            self._stop.set()
            self._q.put(_DONE)  # never blocks for long: the thread drains the queue once stopped
        self._thread.join()
        self.writer.abort()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> "BackgroundEncoder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._closed:
            self.abort()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # ---------------------------------------------------------------- encoder thread
    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _DONE:
                break
            if self._error is not None or self._stop.is_set():
                continue  # drain: the producer must never block on a dead consumer
            t0 = time.perf_counter()
            try:
                self.writer.write_planes(*item.numpy())
            except BaseException as exc:  # noqa: BLE001 - handed to the producer
                self._error = exc
            self.busy += time.perf_counter() - t0
        if self._error is None and not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                self.size = self.writer.close()
            except BaseException as exc:  # noqa: BLE001
                self._error = exc
            self.busy += time.perf_counter() - t0
        if self._error is not None:
            self.writer.abort()
