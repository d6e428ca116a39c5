"""RGB -> yuv420p in torch against PyAV/swscale's own conversion of the same frames."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from wan22bot.yuv import MATRICES, rgb_to_yuv420


def swscale_planes(rgb: np.ndarray, sws: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What PyAV does to an rgb24 frame on its way into a yuv420p encoder (None: its default)."""
    h, w = rgb.shape[:2]
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    kw = {} if sws is None else {"dst_colorspace": sws}
    a = frame.reformat(format="yuv420p", **kw).to_ndarray()
    return a[:h], a[h:h + h // 4].reshape(h // 2, w // 2), a[h + h // 4:].reshape(h // 2, w // 2)


def gradient_scene(h: int, w: int) -> np.ndarray:
    """Smooth colours with hard-edged saturated blocks (the worst case for chroma siting)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) * 255 // (w + h - 2)], -1).astype(np.uint8)
    img[h // 4:h // 2, w // 5:w // 3] = (255, 0, 0)
    img[h // 2 + 1:h - 3, w // 2 + 1:w - 5] = (0, 0, 255)
    img[3:9, 5:27] = (0, 255, 0)
    return img


@pytest.mark.parametrize("name,sws", [("bt709", "ITU709"), ("bt601", "ITU601"), ("bt601", None)])
@pytest.mark.parametrize("h,w", [(48, 64), (100, 78)])
def test_planes_match_swscale_within_one_code_value(name, sws, h, w):
    rng = np.random.default_rng(h + w)
    frames = np.stack([rng.integers(0, 256, (h, w, 3), dtype=np.uint8), gradient_scene(h, w)])
    y, u, v = rgb_to_yuv420(torch.from_numpy(frames), name)
    assert (y.shape, u.shape, v.shape) == ((2, h, w), (2, h // 2, w // 2), (2, h // 2, w // 2))
    assert y.dtype == u.dtype == v.dtype == torch.uint8
    for i in range(2):
        ref = swscale_planes(frames[i], sws)
        for ours, theirs, plane in zip((y[i], u[i], v[i]), ref, "YUV"):
            diff = np.abs(ours.numpy().astype(int) - theirs.astype(int))
            assert diff.max() <= 1, (name, plane, diff.max())
            assert (diff > 0).mean() < 0.15, (name, plane)  # rounding, not a systematic offset


def test_limited_range_extremes():
    frames = torch.tensor([[[[0, 0, 0], [255, 255, 255]], [[0, 0, 0], [255, 255, 255]]]], dtype=torch.uint8)
    y, u, v = rgb_to_yuv420(frames)
    assert y[0].tolist() == [[16, 235], [16, 235]]
    assert u.item() == 128 and v.item() == 128
    blue = torch.zeros((1, 2, 2, 3), dtype=torch.uint8)
    blue[..., 2] = 255
    _, u, v = rgb_to_yuv420(blue)
    assert u.item() == 240  # full blue reaches the top of the chroma range


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="even width and height"):
        rgb_to_yuv420(torch.zeros((1, 5, 4, 3), dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        rgb_to_yuv420(torch.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="unknown colour matrix"):
        rgb_to_yuv420(torch.zeros((1, 4, 4, 3), dtype=torch.uint8), "bt2020")
    assert set(MATRICES) == {"bt709", "bt601"}
