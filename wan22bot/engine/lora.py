"""Fusing LightX2V / ComfyUI LoRA files into the experts' weights.

The files use the original Wan key names (`diffusion_model.blocks.0.self_attn.q.lora_down.weight`,
`...lora_up.weight`, `...alpha`). Diffusers' Wan LoRA loader knows how to rename those to the
diffusers module names and folds alpha/rank into the factors; we use that conversion, then add
`strength * up @ down` to each weight ourselves (in fp32, rounded once to the storage dtype).
Fusing by hand rather than through PEFT keeps the delta factors so a job with a LoRA-free preset
can subtract them again, and keeps PEFT's wrapper layers out of the hot loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import ModelError

log = logging.getLogger(__name__)


@dataclass
class LoraDelta:
    """The low-rank factors for one module; `up @ down` already includes alpha/rank."""

    up: torch.Tensor  # (out, rank)
    down: torch.Tensor  # (rank, in)
    bias: torch.Tensor | None = None


@dataclass
class LoraFile:
    path: Path
    deltas: dict[str, LoraDelta] = field(default_factory=dict)  # module name -> factors
    ignored: list[str] = field(default_factory=list)


def read_lora(path: Path) -> LoraFile:
    """Read and convert a LoRA file to diffusers module names. Raises ModelError on unusable files."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"LoRA file {path} does not exist")
    try:
        raw = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise ModelError(f"LoRA file {path} is not a readable .safetensors file ({exc})") from None
    out = LoraFile(path)
    converted = _convert(raw, out.ignored)
    for key, tensor in converted.items():
        name = key.removeprefix("transformer.")
        if ".lora_A." in name and name.endswith(".weight"):
            mod = name.split(".lora_A.")[0]
            out.deltas.setdefault(mod, LoraDelta(up=None, down=None)).down = tensor  # type: ignore[arg-type]
        elif ".lora_B." in name and name.endswith(".weight"):
            mod = name.split(".lora_B.")[0]
            out.deltas.setdefault(mod, LoraDelta(up=None, down=None)).up = tensor  # type: ignore[arg-type]
        elif ".lora_B." in name and name.endswith(".bias"):
            mod = name.split(".lora_B.")[0]
            out.deltas.setdefault(mod, LoraDelta(up=None, down=None)).bias = tensor  # type: ignore[arg-type]
        else:
            out.ignored.append(key)
    incomplete = [m for m, d in out.deltas.items() if (d.up is None) != (d.down is None)]
    if incomplete:
        raise ModelError(f"LoRA file {path} has unpaired up/down factors for {incomplete[:3]}")
    if not out.deltas:
        raise ModelError(f"LoRA file {path} contains no LoRA factors wan22bot recognises")
    return out


_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".lora_A.weight", ".lora_B.weight", ".alpha", ".diff_b", ".diff")


def _convert(raw: dict[str, torch.Tensor], ignored: list[str]) -> dict[str, torch.Tensor]:
    """Diffusers' Wan LoRA conversion; if the file as a whole does not convert (a key diffusers does
    not know), convert module by module and skip the groups that fail, as ComfyUI skips keys it
    cannot load."""
    from diffusers import WanImageToVideoPipeline

    def conv(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = WanImageToVideoPipeline.lora_state_dict(sd)
        return out[0] if isinstance(out, tuple) else out

    try:
        return conv(raw)
    except Exception:
        pass
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in raw.items():
        base = next((k[: -len(sfx)] for sfx in _SUFFIXES if k.endswith(sfx)), k)
        groups.setdefault(base, {})[k] = v
    merged: dict[str, torch.Tensor] = {}
    for base, sd in groups.items():
        try:
            merged.update(conv(sd))
        except Exception:
            ignored.extend(sd)
    return merged


@torch.no_grad()
def apply_lora(model: torch.nn.Module, lora: LoraFile, strength: float) -> int:
    """W += strength * up @ down (and b += strength * bias) for every module the file names.

    Call with a negative strength to take a fused LoRA back out. Returns the modules changed.
    Keys with no matching module (e.g. image-branch keys Wan 2.2 A14B lacks) are logged, as
    ComfyUI's "lora key not loaded" does, and skipped.
    """
    modules = dict(model.named_modules())
    changed, missing = 0, []
    # check every shape before touching any weight, so a wrong file leaves the model as it was
    for name, d in lora.deltas.items():
        mod = modules.get(name)
        if mod is None or not hasattr(mod, "weight") or d.up is None:
            continue
        want = (d.up.shape[0], d.down.shape[1])
        if tuple(mod.weight.shape) != want:
            raise ModelError(
                f"LoRA {lora.path.name} does not fit this model: {name} is {tuple(mod.weight.shape)}, "
                f"the LoRA gives {want} (is it for the other model size?)"
            )
    for name, d in lora.deltas.items():
        mod = modules.get(name)
        if mod is None or not hasattr(mod, "weight"):
            missing.append(name)
            continue
        w = mod.weight
        if d.up is not None:
            delta = (d.up.to(w.device, torch.float32) @ d.down.to(w.device, torch.float32)) * strength
            if delta.shape != w.shape:
                raise ModelError(
                    f"LoRA {lora.path.name} does not fit this model: {name} is {tuple(w.shape)}, "
                    f"the LoRA gives {tuple(delta.shape)} (is it for the other model size?)"
                )
            w.copy_((w.float() + delta).to(w.dtype))
        if d.bias is not None and getattr(mod, "bias", None) is not None:
            b = mod.bias
            b.copy_((b.float() + d.bias.to(b.device, torch.float32) * strength).to(b.dtype))
        changed += 1
    if missing:
        log.warning("LoRA %s: %d keys have no module in this model and were skipped (e.g. %s)",
                    lora.path.name, len(missing), missing[0])
    if lora.ignored:
        log.warning("LoRA %s: %d keys were not LoRA factors and were skipped (e.g. %s)",
                    lora.path.name, len(lora.ignored), lora.ignored[0])
    return changed
