"""`wan22bot check`'s LoRA lines: what each configured LoRA file patches in its expert, by key kind.

The expert is built on the meta device (names and shapes only) and the files are read header-first,
so this runs in a second or two with no GPU and without loading 14B weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import ModelError
from .lora import lora_summary
from .model_files import lora_paths


def meta_expert(cfg: ModelConfig) -> torch.nn.Module:
    """The expert the LoRAs go into, on the meta device: the tiny one, or the Wan 2.2 I2V A14B one."""
    from diffusers import WanTransformer3DModel

    if cfg.kind == "tiny":
        from .tiny import TRANSFORMER_CONFIG as config
    else:
        from .random_weights import A14B_TRANSFORMER as config
    with torch.device("meta"):
        return WanTransformer3DModel(**config)


def check_loras(cfg: ModelConfig) -> tuple[list[str], list[str]]:
    """(ok lines, error lines), one per configured LoRA file."""
    ok: list[str] = []
    errors: list[str] = []
    model = None
    for key, path in zip(("lora_high", "lora_low"), lora_paths(cfg)):
        if path is None:
            continue
        if not Path(path).is_file():
            if cfg.kind == "tiny":  # for the real model, the model-file check already says so
                errors.append(f"model.{key} = {path} does not exist (download the LoRA or remove the key)")
            continue
        model = model if model is not None else meta_expert(cfg)
        expert = "high-noise" if key == "lora_high" else "low-noise"
        try:
            ok.append(f"model.{key} into the {expert} expert: {lora_summary(Path(path), model).render()}")
        except ModelError as exc:
            errors.append(f"model.{key}: {exc}")
    return ok, errors
