"""Accuracy of the real RIFE weights on CPU, against frames whose true middle is known.

The weights come from ``default_weights_cache()`` and are fetched when missing. Without network
these tests FAIL unless WAN22BOT_ALLOW_NO_RIFE=1 is set (then they are skipped).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wan22bot.interpolate import Interpolator, load_ifnet

from .helpers import crop, moving_pair, psnr, texture, to_hwc_uint8, to_nchw

BORDER = 16  # content entering the frame cannot be known; compare inside this margin


def test_identical_frames_come_back_unchanged(real_net):
    frame = texture(96, 160, seed=3)
    out = Interpolator.from_model(real_net).double(np.stack([frame, frame, frame]))
    for k in (1, 3):
        assert psnr(out[k], frame) >= 60.0


@pytest.mark.parametrize("h, w, dx, dy", [(128, 128, 2, 0), (128, 128, -2, 2), (128, 128, 0, 3), (100, 150, 3, 1)])
def test_translation_middle_matches_the_true_half_shift(real_net, h, w, dx, dy):
    f0, f1, truth = moving_pair(h, w, dx, dy, seed=0)
    out = Interpolator.from_model(real_net).double(np.stack([f0, f1]))
    assert out.shape == (3, h, w, 3)
    rife = psnr(crop(out[1], BORDER), crop(truth, BORDER))
    blend = psnr(crop((f0.astype(np.float64) + f1) / 2, BORDER), crop(truth, BORDER))
    assert rife >= 45.0, f"RIFE {rife:.1f} dB"
    assert rife - blend >= 20.0, f"RIFE {rife:.1f} dB vs blend {blend:.1f} dB"


def test_steady_pan_over_a_clip(real_net):
    big = texture(128 + 64, 128 + 64 + 40, seed=5)
    clip = np.stack([big[32:160, 32 + 4 * k : 160 + 4 * k] for k in range(5)])
    truth = np.stack([big[32:160, 34 + 4 * k : 162 + 4 * k] for k in range(4)])
    out = Interpolator.from_model(real_net, batch=3).double(clip)
    assert np.array_equal(out[0::2], clip)
    for k in range(4):
        assert psnr(crop(out[2 * k + 1], BORDER), crop(truth[k], BORDER)) >= 45.0, k


@torch.inference_mode()
def test_endpoints_are_reproduced_at_t0_and_t1(real_net):
    f0, f1, _ = moving_pair(128, 128, 3, 1, seed=0)
    a, b = to_nchw(f0), to_nchw(f1)
    assert psnr(to_hwc_uint8(real_net(a, b, 0.0)), f0) >= 55.0
    assert psnr(to_hwc_uint8(real_net(a, b, 1.0)), f1) >= 55.0
    # and the middle is neither endpoint
    mid = to_hwc_uint8(real_net(a, b, 0.5))
    assert psnr(mid, f0) < 30.0 and psnr(mid, f1) < 30.0


@torch.inference_mode()
def test_swapping_the_frames_gives_a_similar_middle(real_net):
    f0, f1, _ = moving_pair(128, 128, 3, 1, seed=0)
    a, b = to_nchw(f0), to_nchw(f1)
    assert psnr(to_hwc_uint8(real_net(a, b)), to_hwc_uint8(real_net(b, a))) >= 35.0


@torch.inference_mode()
def test_bf16_agrees_with_fp32(rife_weights, real_net):
    f0, f1, _ = moving_pair(128, 128, 3, 1, seed=0)
    a, b = to_nchw(f0), to_nchw(f1)
    low = load_ifnet(rife_weights, "cpu", "bf16")
    assert psnr(to_hwc_uint8(low(a, b)), to_hwc_uint8(real_net(a, b))) >= 45.0
