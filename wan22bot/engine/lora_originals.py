"""Where taking a LoRA out finds an expert's original weights: its own checkpoint file, re-read.

Re-reading the memory-mapped file through the loader's own reader (weights.py: the same key map
and the same dequantisation in the same dtype) costs no host memory between jobs; the LoRA
applier checks each tensor bit for bit against the loaded one the first time and keeps a host copy
of any that differ. Experts from a Diffusers folder (or built in code) have no such source.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import ModelError
from .lora import OriginalFn

log = logging.getLogger(__name__)

EXPERT_PART = {"transformer": "high_noise", "transformer_2": "low_noise"}


def originals_from_file(path: Path) -> OriginalFn:
    from .single_files import expert_key_map
    from .weights import open_checkpoint

    ckpt = open_checkpoint(path)
    file_key = expert_key_map(ckpt.names())  # diffusers parameter name -> the file's key

    def original(name: str, dtype: torch.dtype) -> torch.Tensor | None:
        src = file_key.get(name)
        return None if src is None else ckpt.tensor(src, dtype)

    return original


def expert_originals(cfg: ModelConfig, key: str) -> OriginalFn | None:
    """The original-weight source for expert `key` ("transformer" / "transformer_2"), or None when it
    was not loaded from a single file."""
    if cfg.kind == "tiny":
        return None
    from .model_files import resolve_model_files

    path = resolve_model_files(cfg).get(EXPERT_PART[key])
    if path is None:
        return None
    try:
        return originals_from_file(Path(path))
    except ModelError as exc:  # the load itself read this file, so this is unexpected; a host copy still works
        log.warning("%s: cannot re-read original weights from %s (%s); keeping a host copy instead", key, path, exc)
        return None
