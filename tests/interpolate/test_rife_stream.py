"""DoublingStream: RIFE on frames that arrive in chunks gives the whole-sequence result bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wan22bot.interpolate import IFNet, Interpolator
from wan22bot.interpolate.sequence import DoublingStream

from .helpers import random_state_dict


@pytest.fixture(scope="module")
def random_net() -> IFNet:
    net = IFNet()
    net.load_state_dict(random_state_dict(5))
    return net.eval()


def _clip(n: int, h: int = 32, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def _streamed(interp: Interpolator, frames, sizes: list[int]) -> torch.Tensor:
    assert sum(sizes) == len(frames)
    stream = interp.stream(total_frames=len(frames))
    parts, at = [], 0
    for k in sizes:
        parts.append(stream.push(frames[at:at + k]))
        at += k
    parts.append(stream.finish())
    return torch.cat(parts)


# The VAE's own pattern (1 frame, then 4 per latent frame), single frames, one big chunk, odd sizes.
@pytest.mark.parametrize("batch,sizes", [
    (3, [1, 4, 4, 4]),
    (8, [1, 4, 4, 4]),
    (2, [1] * 5),
    (4, [9]),
    (1, [2, 3, 1]),
    (5, [4, 3]),
])
def test_chunked_equals_whole_sequence(random_net, batch, sizes):
    n = sum(sizes)
    frames = torch.from_numpy(_clip(n))
    interp = Interpolator.from_model(random_net, batch=batch)
    whole = interp.double(frames)
    got = _streamed(interp, frames, sizes)
    assert got.shape == (2 * n - 1, 32, 48, 3) and got.dtype == torch.uint8
    assert torch.equal(got, whole)


def test_each_push_returns_what_is_final_so_far(random_net):
    interp = Interpolator.from_model(random_net, batch=4)
    stream = interp.stream()
    frames = torch.from_numpy(_clip(13))
    # first frame: out at once; then nothing until 4 pairs (5 frames) are in
    assert stream.push(frames[:1]).shape[0] == 1
    assert stream.push(frames[1:4]).shape[0] == 0
    assert stream.push(frames[4:5]).shape[0] == 8  # m, f, m, f, m, f, m, f
    assert stream.push(frames[5:13]).shape[0] == 16
    assert stream.finish().shape[0] == 0
    with pytest.raises(RuntimeError, match="after finish"):
        stream.push(frames[:1])


def test_float_frames_stream_like_double(random_net):
    frames = torch.from_numpy(_clip(6)).float().div_(255.0) * 1.1 - 0.05  # some out of [0, 1]: clamped
    interp = Interpolator.from_model(random_net, batch=2)
    assert torch.equal(_streamed(interp, frames, [1, 4, 1]), interp.double(frames))


def test_one_frame_and_progress(random_net):
    interp = Interpolator.from_model(random_net, batch=2)
    seen: list[tuple[int, int]] = []
    stream = DoublingStream(interp, progress=lambda d, t: seen.append((d, t)), total_frames=5)
    frames = torch.from_numpy(_clip(5))
    out = torch.cat([stream.push(frames[:1]), stream.push(frames[1:]), stream.finish()])
    assert out.shape[0] == 9 and seen == [(2, 4), (4, 4)]
    single = interp.stream()
    assert torch.equal(torch.cat([single.push(frames[:1]), single.finish()]), frames[:1])


def test_a_frame_size_change_is_refused(random_net):
    stream = Interpolator.from_model(random_net, batch=2).stream()
    stream.push(torch.from_numpy(_clip(2)))
    with pytest.raises(ValueError, match="frame size changed"):
        stream.push(torch.from_numpy(_clip(1, 16, 48)))
