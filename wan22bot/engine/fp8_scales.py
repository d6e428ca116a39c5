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
everywhere it touches. The generator adds the text encoder's and the VAE's, which feed the expert.
A file that does not load, names other layers or holds other than positive finite numbers is
removed, and the layers calibrate as without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import tempfile
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
def tensor_digest(module: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and sampled bytes of every parameter and buffer of
    `module`, leaving out the fp8 layers' calibration state."""
    h = hashlib.sha256()
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, t in sorted(tensors, key=lambda item: item[0]):
        if name.endswith("amax_history"):
            continue
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(_sample(t))
    return h.hexdigest()


def fingerprint(model: torch.nn.Module, settings: str) -> str | None:
    """The key of `model`'s present weights under `settings` (which should name what feeds it: the
    text encoder and VAE, see the generator); None when it has no static layers.

    Every parameter and buffer counts (a LoRA may patch biases, norms or the modulation table as
    well as the linear weights), except the calibration state itself."""
    if not static_layers(model):
        return None
    h = hashlib.sha256(f"wan22bot fp8 scales {FORMAT}\n{settings}\n{tensor_digest(model)}".encode())
    return h.hexdigest()[:32]


def _file(folder: Path, key: str) -> Path:
    return Path(folder) / f"{key}.pt"


@torch.no_grad()
def save(model: torch.nn.Module, folder: Path, key: str) -> Path | None:
    """Write the scales of `model` under `key` once every static layer is calibrated; returns the
    file written, or None (some layer not calibrated yet, already written, or not writable: a
    full disk or a read-only state folder costs a warning, never the job)."""
    layers = static_layers(model)
    if not layers or not all(lin.calibrated for _, lin in layers):
        return None
    path = _file(folder, key)
    tmp = None
    try:
        if path.exists():
            return None
        amax = {name: float(lin.amax_history[0]) for name, lin in layers}
        path.parent.mkdir(parents=True, exist_ok=True)
        # a name of its own: two daemons on one state folder may write the same key at once
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format": FORMAT, "amax": amax}, fh)
        os.replace(tmp, path)  # a reader never sees half a file
    except Exception as exc:  # torch.save reports a failed write as RuntimeError, not OSError
        log.warning("fp8 scales not kept in %s (%s: %s); the next start calibrates again", path.parent,
                    type(exc).__name__, exc)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return None
    return path


def _usable(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


@torch.no_grad()
def restore(model: torch.nn.Module, folder: Path, key: str) -> int:
    """Take back the scales written under `key`: returns how many layers got theirs (0: none). A
    file that cannot be used is removed, so the next calibration writes a good one."""
    path = _file(folder, key)
    try:
        if not path.is_file():
            return 0
        data = torch.load(path, map_location="cpu", weights_only=True)
        amax = data.get("amax") if isinstance(data, dict) and data.get("format") == FORMAT else None
    except Exception as exc:  # a truncated or foreign file, an unreadable folder
        why = f"not read ({type(exc).__name__}: {exc})"
    else:
        layers = static_layers(model)
        if not isinstance(amax, dict) or set(amax) != {name for name, _ in layers}:
            why = "for other layers"
        elif not all(_usable(v) for v in amax.values()):
            why = "not all positive finite numbers"
        else:
            for name, lin in layers:
                lin.amax_history.fill_(float(amax[name]))
                lin.calibrated = True
            return len(layers)
    log.warning("fp8 scales in %s %s; removed, calibrating again", path, why)
    with contextlib.suppress(OSError):
        path.unlink()
    return 0
