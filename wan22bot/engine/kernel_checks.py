"""Load-time self-checks of our own GPU kernels, run once per process and device.

engine/qk_prep.py and engine/block_kernels.py each compare their Triton kernels with eager PyTorch
on a small input before the model uses them. A check that raises (a Triton that cannot build the
kernels for this GPU, say) is remembered as its reason, so the second expert does not pay it again.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def checked_once(cache: dict[str, float | str], device: torch.device, checker: Callable[[torch.device], float],
                 max_error: float) -> str | None:
    """None when `checker(device)` (run once per device, its result or failure kept in `cache`)
    returned an error of at most `max_error`, else why not."""
    key = str(device)
    if key not in cache:
        try:
            cache[key] = checker(device)
        except Exception as exc:  # a Triton that cannot build the kernels for this GPU, say
            cache[key] = f"the self-check raised {type(exc).__name__}: {exc}"
    err = cache[key]
    if isinstance(err, str):
        return err
    if not err <= max_error:
        return f"the self-check error {err:.4f} > {max_error}"
    return None
