"""How hard inductor tunes the kernels it generates for the compiled blocks (`[model] compile_tuning`).

At 81 frames the kernels inductor writes around the two big ones (RMS norm + RoPE, LayerNorm +
modulation + fp8 cast, GELU + fp8 cast, the attention inputs' quantisation) run at a fraction of the
H200's memory bandwidth: about 0.55 s of a 9 s forward where reading and writing their tensors once
would take about 0.15 s. "coordinate-descent" lets inductor search block sizes and warp counts for
each of them at compile time (a longer first compile, kept in the compile cache); "default" leaves
inductor's heuristics. The choice is process-wide, as inductor's configuration is.
"""

from __future__ import annotations

from typing import Literal

CompileTuning = Literal["default", "coordinate-descent"]
TUNINGS: tuple[str, ...] = ("default", "coordinate-descent")


def apply_compile_tuning(name: str) -> None:
    """Set inductor's tuning for kernels compiled from now on."""
    if name not in TUNINGS:
        raise ValueError(f"compile tuning must be one of {TUNINGS}, not {name!r}")
    import torch._inductor.config as inductor_config

    inductor_config.coordinate_descent_tuning = name == "coordinate-descent"
