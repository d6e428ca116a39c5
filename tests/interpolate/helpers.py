"""Shared helpers for the RIFE tests: deterministic textures, PSNR and hand-set networks."""

from __future__ import annotations

import math

import numpy as np
import torch

from wan22bot.interpolate import IFNet
from wan22bot.interpolate.ifnet import BLOCK_SCALES


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Colour texture of band-limited noise (three octaves), uint8 (h, w, 3), deterministic."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    out = np.zeros((h, w, 3))
    for sigma, weight in ((1.0, 0.3), (2.5, 0.5), (6.0, 0.8)):
        gain = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
        for c in range(3):
            field = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((h, w))) * gain))
            out[..., c] += weight * field / field.std()
    out = (out - out.mean()) / (4.0 * out.std()) + 0.5
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def moving_pair(h: int, w: int, dx: int, dy: int, seed: int = 0, margin: int = 32):
    """Two frames of a texture translating by (2*dx, 2*dy) px and the true frame halfway."""
    big = texture(h + 2 * margin, w + 2 * margin, seed)
    oy = ox = margin

    def crop(y: int, x: int) -> np.ndarray:
        return big[y : y + h, x : x + w].copy()

    return crop(oy - dy, ox - dx), crop(oy + dy, ox + dx), crop(oy, ox)


def psnr(a, b, peak: float = 255.0) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def crop(x: np.ndarray, border: int) -> np.ndarray:
    return x[border:-border, border:-border]


def to_nchw(frame: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (1, 3, H, W) in [0, 1]."""
    return torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0


def to_hwc_uint8(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).mul(255.0).round().clamp(0, 255).to(torch.uint8).numpy()


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) * 0.05 for k, v in IFNet().state_dict().items()}


def crafted_net(flows: dict[int, tuple[float, float, float, float]] | None = None, mask_logits: dict[int, float] | None = None) -> IFNet:
    """An IFNet whose every ``lastconv`` is zero except for hand-set biases.

    ``flows[i] = (x0, y0, x1, y1)``: block ``i`` outputs this constant flow in full-resolution
    pixels (into frame 0, then into frame 1). ``mask_logits[i]``: block ``i``'s mask logit.
    The biases are set through the published parameter names; ``PixelShuffle(2)`` makes output
    channel ``c`` the four transposed-conv channels ``4c .. 4c+3``.
    """
    torch.manual_seed(1234)
    net = IFNet().eval()
    state = net.state_dict()
    with torch.no_grad():
        for i in range(5):
            state[f"block{i}.lastconv.0.weight"].zero_()
            state[f"block{i}.lastconv.0.bias"].zero_()
        for i, flow in (flows or {}).items():
            bias = state[f"block{i}.lastconv.0.bias"]
            for c, value in enumerate(flow):
                bias[4 * c : 4 * c + 4] = value / BLOCK_SCALES[i]
        for i, logit in (mask_logits or {}).items():
            state[f"block{i}.lastconv.0.bias"][16:20] = logit
    return net
