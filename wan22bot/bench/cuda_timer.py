"""Median GPU time of a callable, by CUDA events: what the kernel benchmarks share."""

from __future__ import annotations

import statistics

# the H200's memory bandwidth: the "ideal" time of a kernel is its own memory traffic at this rate
HBM_BYTES_PER_S = 4.8e12


def median_seconds(fn, repeat: int, warmup: int = 1):
    """(median seconds of `repeat` timed calls of fn(), the output of the last of `warmup` untimed
    calls that compile and warm it up)."""
    import torch

    with torch.no_grad():
        out = None
        for _ in range(warmup):
            out = fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times), out
