"""`wan22bot check`'s LoRA lines: what each configured LoRA file patches in its expert, by key kind.

The expert is built on the meta device (names and shapes only; its architecture read from the
expert file's tensor shapes when there is one) and the LoRA files are read header-first, so this
runs in a second or two with no GPU and without loading 14B weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import ModelError
from .lora import lora_summary
from .model_files import lora_paths, resolve_model_files


def meta_expert(cfg: ModelConfig, part: str) -> torch.nn.Module:
    """The expert `part` ("high_noise" / "low_noise") the LoRA goes into, on the meta device: the tiny
    one, the architecture read from the expert's own file, or else the Wan 2.2 I2V A14B one."""
    from diffusers import WanTransformer3DModel

    if cfg.kind == "tiny":
        from .tiny import TRANSFORMER_CONFIG as config
    else:
        from .random_weights import A14B_TRANSFORMER as config

        expert_file = resolve_model_files(cfg).get(part)
        if expert_file is not None and Path(expert_file).is_file():
            from .detect import detect_expert
            from .weights import open_checkpoint

            try:
                config = detect_expert(open_checkpoint(Path(expert_file)).shapes, str(expert_file)).diffusers_config()
            except ModelError:
                pass  # the model-file check reports what the file is; match against the A14B names
    with torch.device("meta"):
        return WanTransformer3DModel(**config)


def check_loras(cfg: ModelConfig) -> tuple[list[str], list[str]]:
    """(ok lines, error lines), one per configured LoRA file."""
    ok: list[str] = []
    errors: list[str] = []
    for key, path in zip(("lora_high", "lora_low"), lora_paths(cfg)):
        if path is None:
            continue
        if not Path(path).is_file():
            if cfg.kind == "tiny":  # for the real model, the model-file check already says so
                errors.append(f"model.{key} = {path} does not exist (download the LoRA or remove the key)")
            continue
        model = meta_expert(cfg, "high_noise" if key == "lora_high" else "low_noise")
        expert = "high-noise" if key == "lora_high" else "low-noise"
        try:
            ok.append(f"model.{key} into the {expert} expert: {lora_summary(Path(path), model).render()}")
        except ModelError as exc:
            errors.append(f"model.{key}: {exc}")
    return ok, errors
