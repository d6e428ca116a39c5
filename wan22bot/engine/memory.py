"""Where the big modules live between and during jobs: the memory modes.

- resident: text encoder, both experts and the VAE stay on the GPU (needs ~60 GiB in bf16,
  ~32 GiB with fp8 experts).
- swap: one expert on the GPU at a time. Each big module keeps a pinned host copy of its weights;
  bringing one in is a host-to-device copy (~0.3 s for a 14 GB fp8 expert), sending one out just
  drops the GPU tensors (weights never change, so nothing is copied back). The text encoder is
  brought in for the prompt and dropped again.
- offload: block-level streaming through diffusers' group offload (for cards that cannot hold one
  expert plus activations); slowest, smallest.
- auto: the first of resident / swap / offload that fits the free memory minus `reserve_vram_gb`.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

log = logging.getLogger(__name__)

GiB = 2**30


def module_bytes(m: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))


def activation_bytes(width: int, height: int, frames: int) -> int:
    """A deliberately generous estimate of the peak working memory of one expert forward + decode."""
    tokens = ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)
    dit = tokens * 5120 * 2 * 12  # residual stream, q/k/v/o, FFN intermediate (13824) and temporaries
    vae = int(11.4 * GiB * (frames / 81) * (width * height) / (832 * 1216))  # measured peak at 81 frames
    return max(dit, vae)


def usable_free(free: int, total: int, fraction: float, reserved: int) -> int:
    """What this process may still allocate: the device's free memory, or less when the process is
    capped (`torch.cuda.set_per_process_memory_fraction`, as `wan22bot bench --memory-cap-gib`
    does to stand in for a smaller card): the cap minus what its allocator already holds."""
    if fraction >= 1.0:
        return free
    return max(0, min(free, int(fraction * total) - reserved))


def device_free_bytes(device: torch.device) -> int:
    """usable_free for a CUDA device, read from the driver and this process's allocator."""
    # `model.device = "cuda"` has no index; get_per_process_memory_fraction, unlike mem_get_info,
    # refuses such a device, so every query gets the index the allocator would use
    index = device.index if device.index is not None else torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    fraction = torch.cuda.get_per_process_memory_fraction(index)
    return usable_free(free, total, fraction, torch.cuda.memory_reserved(index))


def choose_mode(requested: str, free_bytes: int, reserve_gb: float, experts: int, text_encoder: int,
                work: int) -> str:
    if requested != "auto":
        return requested
    budget = free_bytes - int(reserve_gb * GiB)
    if 2 * experts + text_encoder + work <= budget:
        return "resident"
    if experts + work <= budget:
        return "swap"
    return "offload"


class PinnedSwap:
    """Moves a module's weights between a pinned host copy and the GPU without copying back."""

    def __init__(self, module: nn.Module, device: torch.device):
        self.module = module
        self.device = device
        self.host: dict[str, torch.Tensor] = {}
        for name, t in self._tensors():
            self.host[name] = t.detach().to("cpu").pin_memory() if torch.cuda.is_available() else t.detach().cpu()
        self.on_device = False
        self.evict()

    def _tensors(self):
        for name, p in self.module.named_parameters(recurse=True):
            yield name, p
        for name, b in self.module.named_buffers(recurse=True):
            yield name, b

    def _current(self, name: str) -> torch.Tensor:
        mod_name, _, leaf = name.rpartition(".")
        mod = self.module.get_submodule(mod_name) if mod_name else self.module
        return getattr(mod, leaf)

    def _assign(self, name: str, value: torch.Tensor) -> None:
        mod_name, _, leaf = name.rpartition(".")
        mod = self.module.get_submodule(mod_name) if mod_name else self.module
        cur = getattr(mod, leaf)
        if isinstance(cur, nn.Parameter):
            cur.data = value
        else:
            mod._buffers[leaf] = value

    def load(self) -> float:
        if self.on_device:
            return 0.0
        t0 = time.perf_counter()
        for name, host in self.host.items():
            # copy=True: on a CPU too the module gets its own tensors, as on a GPU, so what it
            # writes while "on the device" reaches the host copy only through evict()
            self._assign(name, host.to(self.device, non_blocking=True, copy=True))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.on_device = True
        return time.perf_counter() - t0

    def _mutable(self, name: str) -> bool:
        """Buffers a module updates while it runs (fp8 calibration state) must survive a swap."""
        mod_name, _, leaf = name.rpartition(".")
        mod = self.module.get_submodule(mod_name) if mod_name else self.module
        return leaf in getattr(mod, "mutable_buffers", ())

    def evict(self) -> None:
        for name, host in self.host.items():
            if self.on_device and self._mutable(name):
                host.copy_(self._current(name))
            self._assign(name, host)
        self.on_device = False
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def oom_advice(stage: str | None, memory_mode: str, weights: str, width: int, height: int, frames: int) -> str:
    """One sentence for an out-of-memory error: where it overflowed and what would help with the
    settings in force (never advice that is already taken)."""
    where = f"during {stage}" if stage else "during the render"
    steps = []
    if weights != "fp8":
        steps.append('set model.weights = "fp8" (halves each expert)')
    if memory_mode == "resident":
        steps.append('set model.memory = "swap" (one expert on the GPU at a time)')
    elif memory_mode == "swap" and stage in ("pass1", "pass2", "swap"):
        steps.append('set model.memory = "offload" (streams the expert block by block; slower)')
    if frames > 25:
        steps.append(f"use fewer frames than {frames}")
    steps.append(f"use a smaller size than {width}x{height}")
    return (f"the GPU ran out of memory {where} at {width}x{height}, {frames} frames "
            f"(memory mode {memory_mode}, weights {weights}); " + ", or ".join(steps))
