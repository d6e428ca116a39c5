"""Interpolator: N -> 2N-1 frames, pass-through, batching, rounding, accepted input forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wan22bot.errors import ModelError
from wan22bot.interpolate import IFNet, Interpolator
from wan22bot.interpolate.weights import resolve_dtype

from .helpers import crafted_net, random_state_dict


def _clip(n=5, h=48, w=80, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def random_net() -> IFNet:
    net = IFNet()
    net.load_state_dict(random_state_dict(11))
    return net.eval()


def test_n_frames_give_2n_minus_1_with_originals_untouched(random_net):
    frames = _clip(5)
    out = Interpolator.from_model(random_net, batch=3).double(frames)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert out.shape == (9, 48, 80, 3)
    assert np.array_equal(out[0::2], frames)
    for k in range(4):  # the middles are new frames, not copies
        assert not np.array_equal(out[2 * k + 1], frames[k])


def test_single_frame_gives_itself(random_net):
    frames = _clip(1)
    calls = []
    out = Interpolator.from_model(random_net).double(frames, progress=lambda d, t: calls.append((d, t)))
    assert out.shape == (1, 48, 80, 3) and np.array_equal(out, frames)
    assert calls == []


def test_middle_k_sits_between_frames_k_and_k_plus_1():
    frames = _clip(6, seed=1)
    out = Interpolator.from_model(crafted_net(), batch=4).double(frames)  # zero heads: the average
    mean = (frames[:-1].astype(np.float64) + frames[1:]) / 2
    assert np.abs(out[1::2].astype(np.float64) - mean).max() <= 0.5 + 1e-6


def test_batch_size_does_not_change_the_result(random_net):
    frames = _clip(6, seed=2)  # 5 pairs: batches of 3 then a partial batch of 2
    one = Interpolator.from_model(random_net, batch=1).double(frames)
    three = Interpolator.from_model(random_net, batch=3).double(frames)
    diff = np.abs(one.astype(np.int16) - three)
    assert diff.max() <= 1
    assert (diff > 0).mean() < 1e-3


def test_middles_equal_pairwise_forward(random_net):
    g = torch.Generator().manual_seed(5)
    seq = torch.rand(4, 3, 50, 70, generator=g)
    with torch.inference_mode():
        batched = random_net.middles(seq)
        pairwise = torch.cat([random_net(seq[k : k + 1], seq[k + 1 : k + 2]) for k in range(3)])
    assert batched.shape == (3, 3, 50, 70)
    torch.testing.assert_close(batched, pairwise, atol=1e-5, rtol=0)


def test_odd_sizes_come_back_at_their_shape(random_net):
    frames = _clip(3, h=50, w=70)
    out = Interpolator.from_model(random_net).double(frames)
    assert out.shape == (5, 50, 70, 3)
    assert np.array_equal(out[0::2], frames)


def test_results_are_rounded_not_truncated():
    # frame 0 black, frame 1 white; final mask weight w on frame 0 -> (1 - w) * 255 = 100.7
    w = 1 - 100.7 / 255
    net = crafted_net(mask_logits={4: math.log(w / (1 - w))})
    frames = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    frames[1] = 255
    out = Interpolator.from_model(net).double(frames)
    assert np.all(out[1] == 101)


def test_tensor_inputs_give_the_same_frames(random_net):
    frames = _clip(4, seed=3)
    interp = Interpolator.from_model(random_net, batch=2)
    ref = interp.double(frames)
    as_u8 = interp.double(torch.from_numpy(frames))
    assert isinstance(as_u8, torch.Tensor) and as_u8.dtype == torch.uint8
    assert as_u8.device == interp.device
    assert np.array_equal(as_u8.numpy(), ref)
    as_float = interp.double(torch.from_numpy(frames).float() / 255)
    assert as_float.dtype == torch.uint8
    assert np.array_equal(as_float.numpy(), ref)


def test_progress_reports_pairs_per_batch(random_net):
    calls = []
    Interpolator.from_model(random_net, batch=4).double(_clip(10, 16, 16), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 9), (8, 9), (9, 9)]


@pytest.mark.parametrize(
    "frames, error",
    [
        (np.zeros((2, 8, 8, 3), dtype=np.int16), ValueError),
        (np.zeros((2, 8, 8, 4), dtype=np.uint8), ValueError),
        (np.zeros((8, 8, 3), dtype=np.uint8), ValueError),
        (np.zeros((0, 8, 8, 3), dtype=np.uint8), ValueError),
        (torch.zeros(2, 8, 8, 3, dtype=torch.int32), ValueError),
        ([[0]], TypeError),
    ],
)
def test_bad_inputs_are_rejected(random_net, frames, error):
    with pytest.raises(error):
        Interpolator.from_model(random_net).double(frames)


def test_weights_load_once_and_stay_resident(tmp_path):
    path = tmp_path / "flownet.pkl"
    torch.save(random_state_dict(2), path)
    interp = Interpolator(path, device="cpu", dtype="auto", batch=2)
    assert not interp.loaded and interp.dtype == torch.float32
    model = interp.load().model
    interp.double(_clip(3, 16, 16))
    interp.load()
    assert interp.model is model and interp.loaded


def test_missing_weights_raise_model_error_on_use(tmp_path):
    interp = Interpolator(tmp_path / "absent.pkl")
    with pytest.raises(ModelError, match="fetch-rife"):
        interp.double(_clip(2, 16, 16))


def test_dtype_names():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.float16
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("fp16", "cuda") == torch.float16
    with pytest.raises(ValueError):
        resolve_dtype("int8")
    with pytest.raises(ValueError):
        Interpolator("x.pkl", batch=0)


def test_bf16_and_channels_last_stay_close(random_net):
    frames = _clip(3, seed=4)
    ref = Interpolator.from_model(random_net).double(frames)
    for kwargs in ({"dtype": "bf16"}, {"channels_last": True}):
        net = IFNet()
        net.load_state_dict(random_net.state_dict())
        out = Interpolator.from_model(net, **kwargs).double(frames)
        assert np.array_equal(out[0::2], frames)
        assert np.abs(out.astype(np.int16) - ref).mean() < 1.0, kwargs
