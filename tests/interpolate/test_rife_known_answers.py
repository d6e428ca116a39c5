"""Hand-set networks whose correct output is known exactly.

With every ``lastconv`` zeroed, the flows are zero and the mask is sigmoid(0) = 1/2. Setting biases
then gives constant flows (in pixels) and mask logits, which pins the warp's sign, the order and
units of the flow channels, ``align_corners=True``, border padding, bilinear filtering, the
per-block scales 16/8/4/2/1 and the accumulate-flow / replace-mask rules.
"""

from __future__ import annotations

import pytest
import torch

from .helpers import crafted_net

H, W = 64, 128  # multiples of 64: no padding involved


def _frames(h=H, w=W, seed=0, n=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g), torch.rand(n, 3, h, w, generator=g)


def _shift_x(x: torch.Tensor, d: int) -> torch.Tensor:
    """out[..., j] = x[..., clamp(j - d)]: content moves right by d px, edges repeat."""
    idx = (torch.arange(x.shape[-1]) - d).clamp(0, x.shape[-1] - 1)
    return x[..., idx]


def _shift_y(x: torch.Tensor, d: int) -> torch.Tensor:
    idx = (torch.arange(x.shape[-2]) - d).clamp(0, x.shape[-2] - 1)
    return x[..., idx, :]


@torch.inference_mode()
@pytest.mark.parametrize("size", [(H, W), (50, 70), (33, 97)])
def test_zero_heads_give_the_average(size):
    a, b = _frames(*size, n=2)
    out = crafted_net()(a, b, 0.5)
    assert out.shape == a.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, (a + b) / 2, atol=5e-5, rtol=0)


@torch.inference_mode()
def test_flow_into_frame0_moves_it_right():
    a, b = _frames()
    d = 3
    out = crafted_net(flows={0: (-d, 0, d, 0)}, mask_logits={4: 30.0})(a, b)
    torch.testing.assert_close(out, _shift_x(a, d), atol=5e-5, rtol=0)


@torch.inference_mode()
def test_flow_into_frame1_moves_it_left():
    a, b = _frames()
    d = 3
    out = crafted_net(flows={0: (-d, 0, d, 0)}, mask_logits={4: -30.0})(a, b)
    torch.testing.assert_close(out, _shift_x(b, -d), atol=5e-5, rtol=0)


@torch.inference_mode()
def test_second_flow_channel_is_vertical():
    a, b = _frames()
    d = 5
    out = crafted_net(flows={0: (0, -d, 0, d)}, mask_logits={4: 30.0})(a, b)
    torch.testing.assert_close(out, _shift_y(a, d), atol=5e-5, rtol=0)
    out = crafted_net(flows={0: (0, -d, 0, d)}, mask_logits={4: -30.0})(a, b)
    torch.testing.assert_close(out, _shift_y(b, -d), atol=5e-5, rtol=0)


@torch.inference_mode()
def test_half_pixel_flow_is_bilinear():
    a, b = _frames()
    out = crafted_net(flows={0: (-0.5, 0, 0, 0)}, mask_logits={4: 30.0})(a, b)
    expected = (a + _shift_x(a, 1)) / 2
    torch.testing.assert_close(out, expected, atol=5e-5, rtol=0)


@torch.inference_mode()
def test_block_flows_add_up_with_their_scales():
    # block0 works at 1/16, block2 at 1/4, block4 at full size: 1 + 1.5 + 0.5 px = 3 px
    a, b = _frames()
    net = crafted_net(flows={0: (-1, 0, 0, 0), 2: (-1.5, 0, 0, 0), 4: (-0.5, 0, 0, 0)}, mask_logits={4: 30.0})
    torch.testing.assert_close(net(a, b), _shift_x(a, 3), atol=5e-5, rtol=0)


@torch.inference_mode()
def test_later_mask_replaces_earlier_one():
    a, b = _frames()
    out = crafted_net(mask_logits={0: 30.0, 1: -30.0})(a, b)  # blocks 2-4 output logit 0 last
    torch.testing.assert_close(out, (a + b) / 2, atol=5e-5, rtol=0)


@torch.inference_mode()
def test_symmetric_flows_recover_the_middle_of_a_translation():
    g = torch.Generator().manual_seed(7)
    big = torch.rand(1, 3, H, W + 16, generator=g)
    d = 4
    a, mid, b = big[..., 8 - d : 8 - d + W], big[..., 8 : 8 + W], big[..., 8 + d : 8 + d + W]
    # content moves left by d per half step: the middle samples frame 0 at x - d... i.e. flow0 = -d
    out = crafted_net(flows={0: (-d, 0, d, 0)})(b, a)  # b is "earlier": content moves right
    torch.testing.assert_close(out[..., d:-d], mid[..., d:-d], atol=5e-5, rtol=0)


@torch.inference_mode()
def test_sampling_grid_stays_float32_in_low_precision():
    # A bf16 grid on a 512 px wide frame is off by up to ~2 px; an fp32 one is exact.
    a, b = _frames(64, 512)
    d = 3
    net = crafted_net(flows={0: (-d, 0, d, 0)}, mask_logits={4: 30.0}).to(torch.bfloat16)
    out = net(a, b)
    assert out.dtype == torch.float32
    expected = _shift_x(a.to(torch.bfloat16).float(), d)
    torch.testing.assert_close(out, expected, atol=2e-4, rtol=0)


@torch.inference_mode()
def test_padding_keeps_the_shift_exact_in_the_interior():
    a, b = _frames(50, 70)
    d = 2
    out = crafted_net(flows={0: (-d, 0, d, 0)}, mask_logits={4: 30.0})(a, b)
    assert out.shape == a.shape
    torch.testing.assert_close(out, _shift_x(a, d), atol=5e-5, rtol=0)


def test_core_rejects_unpadded_sizes_and_bad_scales():
    net = crafted_net()
    a, b = _frames(50, 70)
    f = torch.zeros(1, 4, 50, 70)
    with pytest.raises(ValueError, match="multiples of 64"):
        net.synthesize(a, b, f, f, 0.5)
    with pytest.raises(ValueError, match="scale"):
        net(a, b, 0.5, scale=3.0)
