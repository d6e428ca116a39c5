"""Static fp8 input scales kept across restarts (`[model] keep_fp8_scales`).

Under `fp8_scaling = "static"` each fp8 layer freezes its input scale on its first call. That call
runs a graph of its own, so after a restart the first job pays for it again even with a filled
compile cache (13.26 s against 8.77 s for the calibrated call at 81 frames on an H200,
docs/PERFORMANCE.md round 6). Here the scales an expert calibrated are written once, next to the
compile cache, under a key over the weights as they are in the layers (a LoRA fused in changes
them) and the settings upstream of the activations; a load or a LoRA switch that finds its key
takes them back and starts calibrated.

The key reads 4,096 evenly spaced bytes of every parameter and buffer (all of a small one: scales,
biases, norms), not whole weights: a different file, LoRA or strength changes the values
everywhere it touches. A file that does
not load, or names other layers, is ignored and the layers calibrate as without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SAMPLE_BYTES = 4096
FORMAT = 1


def static_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The expert's fp8 layers with static scaling that calibrate (fp8 matmuls), by name."""
    from .fp8_linear import FP8Linear

    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, FP8Linear) and m.scaling == "static" and m.use_scaled_mm]


def _sample(t: torch.Tensor) -> bytes:
    """SAMPLE_BYTES evenly spaced bytes of `t` (all of a small tensor)."""
    b = t.detach().reshape(-1).view(torch.uint8)
    step = max(1, b.numel() // SAMPLE_BYTES)
    return b[::step][:SAMPLE_BYTES].cpu().numpy().tobytes()


@torch.no_grad()
def fingerprint(model: torch.nn.Module, settings: str) -> str | None:
    """The key of `model`'s present weights under `settings`; None when it has no static layers.

    Every parameter and buffer counts (a LoRA may patch biases, norms or the modulation table as
    well as the linear weights), except the calibration state itself."""
    if not static_layers(model):
        return None
    h = hashlib.sha256(f"wan22bot fp8 scales {FORMAT}\n{settings}\n".encode())
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in sorted(tensors, key=lambda item: item[0]):
        if name.endswith("amax_history"):
            continue
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(_sample(t))
    return h.hexdigest()[:32]


def _file(folder: Path, key: str) -> Path:
    return Path(folder) / f"{key}.pt"


@torch.no_grad()
def save(model: torch.nn.Module, folder: Path, key: str) -> Path | None:
    """Write the scales of `model` under `key` once every static layer is calibrated; returns the
    file written, or None (some layer not calibrated yet, or already written)."""
    layers = static_layers(model)
    if not layers or not all(lin.calibrated for _, lin in layers):
        return None
    path = _file(folder, key)
    if path.exists():
        return None
    amax = {name: float(lin.amax_history[0]) for name, lin in layers}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": FORMAT, "amax": amax}, tmp)
        os.replace(tmp, path)  # a reader never sees half a file
    except OSError as exc:  # a full disk or a read-only state folder: the job goes on, uncached
        log.warning("fp8 scales not kept in %s (%s); the next start calibrates again", path.parent, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
        return None
    return path


@torch.no_grad()
def restore(model: torch.nn.Module, folder: Path, key: str) -> int:
    """Take back the scales written under `key`: returns how many layers got theirs (0: none)."""
    path = _file(folder, key)
    if not path.is_file():
        return 0
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        amax = data["amax"] if data.get("format") == FORMAT else None
    except Exception as exc:  # a truncated or foreign file: calibrate as without it
        log.warning("fp8 scales in %s not read (%s: %s); calibrating again", path, type(exc).__name__, exc)
        return 0
    layers = static_layers(model)
    if not isinstance(amax, dict) or set(amax) != {name for name, _ in layers}:
        log.warning("fp8 scales in %s are for other layers; calibrating again", path)
        return 0
    for name, lin in layers:
        lin.amax_history.fill_(float(amax[name]))
        lin.calibrated = True
    return len(layers)
