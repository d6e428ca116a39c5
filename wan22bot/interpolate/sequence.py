"""Doubling a clip's frame rate with RIFE: N frames in, 2N-1 out.

The originals pass through untouched at the even output indices; the odd ones are the RIFE frames
at t=0.5 between each consecutive pair, computed ``batch`` pairs at a time (every input frame is
encoded once per batch, not once per pair).

Accepted forms for ``Interpolator.double(frames)``, always ``(N, H, W, 3)`` RGB, frames first:

* ``numpy.ndarray`` of ``uint8``: returns a ``numpy.ndarray`` ``uint8`` ``(2N-1, H, W, 3)``; the
  frames travel to the model's device and back once.
* ``torch.Tensor`` of ``uint8`` on any device (typically already on the model's GPU, straight from
  the VAE decode): returns a ``torch.uint8`` tensor ``(2N-1, H, W, 3)`` on the model's device, ready
  for the encoder; no host round-trip.
* ``torch.Tensor`` floating point with values in [0, 1] (clamped): as above; the middle frames are
  computed from the unquantised values, the originals are rounded to ``uint8`` like the middles.

Float results are rounded to the nearest integer (not truncated) before the cast to ``uint8``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError, OutOfMemory
from .ifnet import IFNet, _check_scale
from .weights import load_ifnet, resolve_dtype

Progress = Callable[[int, int], None]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8 with round-to-nearest (ties to even) and clamping."""
    return x.float().mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)


class Interpolator:
    """RIFE frame doubler that keeps its model resident on ``device`` after ``load()``.

    ``dtype``: ``"auto"`` (float16 on CUDA, float32 on CPU), ``"fp32"``, ``"fp16"`` or ``"bf16"``.
    ``batch``: pairs per forward pass (memory grows linearly with it; 8 is ~2.3 GiB in float16
    at 832x1216). ``scale``: RIFE's flow-resolution factor (1 is the trained setting, 0.5 helps very
    large motion). ``channels_last``: run the convolutions in NHWC memory format (can be faster
    on tensor-core GPUs; benchmark before switching it on).
    """

    def __init__(
        self,
        weights: str | Path,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "auto",
        batch: int = 8,
        *,
        scale: float = 1.0,
        channels_last: bool = False,
    ):
        if int(batch) < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        _check_scale(scale)
        self.weights = Path(weights) if weights is not None else None
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch = int(batch)
        self.scale = float(scale)
        self.channels_last = bool(channels_last)
        self._model: IFNet | None = None

    @classmethod
    def from_model(
        cls,
        model: IFNet,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "auto",
        batch: int = 8,
        **kwargs,
    ) -> "Interpolator":
        """Wrap an already built ``IFNet`` (e.g. crafted or random weights); it is moved to
        ``device`` (default: where its parameters are) and ``dtype``."""
        if device is None:
            device = next(model.parameters()).device
        self = cls(None, device=device, dtype=dtype, batch=batch, **kwargs)  # type: ignore[arg-type]
        self._model = self._prepare(model)
        return self

    # ------------------------------------------------------------------ lifecycle
    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> IFNet:
        if self._model is None:
            raise RuntimeError("Interpolator.load() has not been called")
        return self._model

    def load(self) -> "Interpolator":
        """Load the weights onto the device (once; later calls are no-ops). Raises ModelError."""
        if self._model is None:
            if self.weights is None:
                raise ModelError("no RIFE weights path was given")
            self._model = self._prepare(load_ifnet(self.weights, self.device, self.dtype))
        return self

    def unload(self) -> None:
        self._model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _prepare(self, model: IFNet) -> IFNet:
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ModelError("RIFE was asked to run on CUDA but no CUDA device is available")
        model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    # ------------------------------------------------------------------ work
    def double(self, frames: np.ndarray | torch.Tensor, progress: Progress | None = None) -> np.ndarray | torch.Tensor:
        """N frames -> 2N-1 frames (see the module docstring for accepted forms).

        ``progress(done_pairs, total_pairs)`` is called after each batch. N=1 returns one frame.
        """
        self.load()
        as_numpy = isinstance(frames, np.ndarray)
        src = self._as_device_tensor(frames)
        n, h, w, _ = src.shape
        total = n - 1

        if as_numpy and self.device.type == "cpu":
            result = np.empty((2 * n - 1, h, w, 3), dtype=np.uint8)
            out = torch.from_numpy(result)
        else:
            result = None
            out = torch.empty((2 * n - 1, h, w, 3), dtype=torch.uint8, device=self.device)
        out[0::2] = src if src.dtype == torch.uint8 else to_uint8(src.clamp(0.0, 1.0))

        for start in range(0, total, self.batch):
            stop = min(start + self.batch, total)
            out[2 * start + 1 : 2 * stop : 2] = self.middles(src[start : stop + 1])
            if progress is not None:
                progress(stop, total)

        if not as_numpy:
            return out
        if result is None:
            result = out.cpu().numpy()
        result[0::2] = frames  # already equal; makes the pass-through independent of the device
        return result

    def middles(self, frames: torch.Tensor) -> torch.Tensor:
        """k+1 consecutive frames (as from _as_device_tensor) -> the k uint8 middles, one forward.

        The one place a batch of pairs meets the model, so `double` and `DoublingStream` (which
        form the same batches) give the same bits.
        """
        model = self.load().model
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        chunk = frames.permute(0, 3, 1, 2)
        try:
            with torch.inference_mode():
                if chunk.dtype == torch.uint8:
                    x = chunk.to(self.dtype).div_(255.0)
                else:
                    x = chunk.to(self.dtype).clamp_(0.0, 1.0)
                x = x.contiguous(memory_format=fmt)
                mids = model.middles(x, 0.5, self.scale)  # float32 (k, 3, H, W)
                return to_uint8(mids.permute(0, 2, 3, 1))
        except torch.cuda.OutOfMemoryError:
            h, w = frames.shape[1:3]
            raise OutOfMemory(
                f"RIFE ran out of GPU memory interpolating {w}x{h} frames {self.batch} pairs at a time; "
                "lower the interpolation batch"
            ) from None

    def stream(self, progress: Progress | None = None, total_frames: int | None = None) -> "DoublingStream":
        """A DoublingStream on this model: frames in chunks, doubled frames out as they are final."""
        return DoublingStream(self, progress, total_frames)

    def _as_device_tensor(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(frames, np.ndarray):
            if frames.dtype != np.uint8:
                raise ValueError(f"numpy frames must be uint8, got {frames.dtype}")
            t = torch.from_numpy(np.ascontiguousarray(frames))
        elif isinstance(frames, torch.Tensor):
            if frames.dtype != torch.uint8 and not frames.is_floating_point():
                raise ValueError(f"tensor frames must be uint8 or floating point in [0, 1], got {frames.dtype}")
            t = frames.detach()
        else:
            raise TypeError(f"frames must be a numpy array or a torch tensor, not {type(frames).__name__}")
        if t.ndim != 4 or t.shape[-1] != 3 or t.shape[0] < 1 or t.shape[1] < 1 or t.shape[2] < 1:
            raise ValueError(f"frames must be shaped (N>=1, H, W, 3), got {tuple(t.shape)}")
        return t.to(self.device)


class DoublingStream:
    """`Interpolator.double` for frames that arrive in chunks (as the VAE decodes them).

    `push(chunk)` returns the output frames that are final so far, `finish()` the rest; all the
    returned pieces concatenated equal ``double(all frames)`` bit for bit, because the pairs go to
    the model in the same batches of ``batch`` pairs (a batch waits until it is full, the last
    one is run by `finish`). Chunks may have any length >= 1, uint8 or float as for `double`;
    outputs are uint8 tensors (n, H, W, 3) on the model's device.
    """

    def __init__(self, interp: Interpolator, progress: Progress | None = None, total_frames: int | None = None):
        self.interp = interp
        self.progress = progress
        self.total_pairs = max(0, total_frames - 1) if total_frames else 0
        self.pairs_done = 0
        self.frames_in = 0
        self._pending: torch.Tensor | None = None  # [0] already sent out, the rest waiting for a batch
        self._finished = False

    def push(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        if self._finished:
            raise RuntimeError("DoublingStream.push after finish()")
        src = self.interp._as_device_tensor(frames)
        if self._pending is not None and src.shape[1:] != self._pending.shape[1:]:
            raise ValueError(f"frame size changed mid-stream: {tuple(self._pending.shape[1:])} then {tuple(src.shape[1:])}")
        self.frames_in += src.shape[0]
        out: list[torch.Tensor] = []
        if self._pending is None:
            out.append(_as_uint8(src[:1]))  # the first frame passes straight through
            self._pending = src
        else:
            self._pending = torch.cat([self._pending, src])
        while self._pending.shape[0] - 1 >= self.interp.batch:
            out.append(self._run(self.interp.batch))
        return self._join(out, src)

    def finish(self) -> torch.Tensor:
        """The frames after the last full batch; the stream is done afterwards."""
        self._finished = True
        pending, out = self._pending, []
        if pending is not None and pending.shape[0] > 1:
            out.append(self._run(pending.shape[0] - 1))
        self._pending = None
        return self._join(out, pending)

    def _run(self, k: int) -> torch.Tensor:
        """Interpolate the first k pending pairs; returns middle, frame, middle, frame, ..."""
        p = self._pending
        assert p is not None
        mids = self.interp.middles(p[: k + 1])
        right = _as_uint8(p[1 : k + 1])
        out = torch.stack([mids, right], dim=1).flatten(0, 1)  # interleave
        self._pending = p[k:]
        self.pairs_done += k
        if self.progress is not None:
            self.progress(self.pairs_done, max(self.total_pairs, self.pairs_done))
        return out

    def _join(self, out: list[torch.Tensor], like: torch.Tensor | None) -> torch.Tensor:
        if out:
            return torch.cat(out) if len(out) > 1 else out[0]
        shape = (0, *like.shape[1:]) if like is not None else (0, 0, 0, 3)
        return torch.empty(shape, dtype=torch.uint8, device=self.interp.device)


def _as_uint8(frames: torch.Tensor) -> torch.Tensor:
    return frames if frames.dtype == torch.uint8 else to_uint8(frames.clamp(0.0, 1.0))


__all__ = ["DoublingStream", "Interpolator", "to_uint8"]
