"""The two workflows of the seed: its active 4-step LoRA path and its bypassed 20-step path."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    steps: int
    switch_step: int
    cfg: float
    lora: bool


PRESETS = {
    # KSamplerAdvanced 0->2 on the high-noise expert, 2->4 on the low-noise one, cfg 1, LoRAs at 1.0.
    "fast": Preset(steps=4, switch_step=2, cfg=1.0, lora=True),
    # The seed's "fp8_scaled" path: 20 steps split at 10, cfg 3.5 with the negative prompt, no LoRA.
    "quality": Preset(steps=20, switch_step=10, cfg=3.5, lora=False),
}
