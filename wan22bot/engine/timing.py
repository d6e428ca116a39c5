"""Wall-clock stage timing that is honest on asynchronous devices.

CUDA kernels run after the Python call returns, so each stage boundary synchronises the device
before reading the clock; otherwise pass 1 would be billed for pass 2's work.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class StageTimer:
    """Seconds per stage, the stage running now (an out-of-memory error names it), and on CUDA the
    peak memory each stage reached (GiB), so the stage that overflows a card can be found."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self.peak_gib: dict[str, float] = {}
        self.current: str | None = None

    @contextmanager
    def stage(self, name: str):
        synchronize(self.device)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.current = name
        t0 = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            if cuda:
                peak = torch.cuda.max_memory_allocated(self.device) / 2**30
                self.peak_gib[name] = max(self.peak_gib.get(name, 0.0), peak)
        self.current = None
