"""Which file each model part comes from: an explicit key, the ComfyUI models folder, or a Diffusers folder.

Order, per part: the explicit `[model]` key (`high_noise`, `low_noise`, `text_encoder`, `vae`,
`lora_high`, `lora_low`) wins; else the `[model] comfyui` folder, searched in the order below;
else the part of the Diffusers folder `[model] path`. Within the ComfyUI folder the seed's own
file comes first, then the other precisions of the same model under ComfyUI's standard names,
and the newer folder name before the older one (`text_encoders/` before `clip/`,
`diffusion_models/` before `unet/`): the first file that exists is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import ModelConfig

EXPERT_DIRS = ("diffusion_models", "unet")
EXPERT_PRECISIONS = ("fp8_scaled", "fp16", "bf16", "fp32")
TEXT_DIRS = ("text_encoders", "clip")
TEXT_NAMES = ("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "umt5_xxl_fp16.safetensors", "umt5_xxl_bf16.safetensors")


def _expert_names(noise: str) -> list[str]:
    return [f"wan2.2_i2v_{noise}_noise_14B_{p}.safetensors" for p in EXPERT_PRECISIONS]


# part -> (folders, names) under the ComfyUI models folder, in lookup order
COMFY_LOOKUP: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "high_noise": (EXPERT_DIRS, tuple(_expert_names("high"))),
    "low_noise": (EXPERT_DIRS, tuple(_expert_names("low"))),
    "text_encoder": (TEXT_DIRS, TEXT_NAMES),
    "vae": (("vae",), ("wan_2.1_vae.safetensors",)),
    "lora_high": (("loras",), ("wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",)),
    "lora_low": (("loras",), ("wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors",)),
}
MODEL_PARTS = ("high_noise", "low_noise", "text_encoder", "vae")
WHAT = {
    "high_noise": "high-noise expert",
    "low_noise": "low-noise expert",
    "text_encoder": "UMT5-XXL text encoder",
    "vae": "Wan 2.1 VAE",
    "lora_high": "LightX2V 4-step LoRA (high noise)",
    "lora_low": "LightX2V 4-step LoRA (low noise)",
}


def candidates(root: Path, part: str) -> list[Path]:
    dirs, names = COMFY_LOOKUP[part]
    return [root / d / n for n in names for d in dirs]


def find_in_comfyui(root: Path, part: str) -> Path | None:
    for p in candidates(root, part):
        if p.is_file():
            return p
    return None


@dataclass
class ModelFiles:
    """Resolved single files (None: the part comes from the Diffusers folder, or, for LoRAs, none)."""

    files: dict[str, Path | None] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # part -> "model.<key>" / "model.comfyui" / "model.path"
    problems: list[str] = field(default_factory=list)

    def get(self, part: str) -> Path | None:
        return self.files.get(part)


def resolve_model_files(cfg: ModelConfig) -> ModelFiles:
    out = ModelFiles()
    comfy = Path(cfg.comfyui) if cfg.comfyui is not None else None
    if comfy is not None and not comfy.is_dir():
        out.problems.append(f"model.comfyui = {comfy} is not a folder (point it at ComfyUI's models/ folder, or run "
                            f"`wan22bot fetch-models --dest {comfy}`)")
        comfy = None
    for part in COMFY_LOOKUP:
        explicit = getattr(cfg, part)
        if explicit is not None:
            out.files[part] = Path(explicit)
            out.origin[part] = f"model.{part}"
            if not Path(explicit).is_file():
                fix = ("download the LightX2V 4-step LoRA or remove the key" if part.startswith("lora")
                       else "download the ComfyUI file or remove the key")
                out.problems.append(f"model.{part} = {explicit} does not exist ({fix})")
            continue
        found = find_in_comfyui(comfy, part) if comfy is not None else None
        if found is not None:
            out.files[part] = found
            out.origin[part] = "model.comfyui"
            continue
        out.files[part] = None
        if part in MODEL_PARTS and comfy is not None and cfg.path is None:
            looked = ", ".join(str(p) for p in candidates(comfy, part))
            out.problems.append(f"no {WHAT[part]} in model.comfyui = {comfy}: looked for {looked} (run `wan22bot "
                                f"fetch-models --dest {comfy}`, or set model.{part} to the file)")
        elif part in MODEL_PARTS and cfg.path is not None:
            out.origin[part] = "model.path"
    return out


def lora_paths(cfg: ModelConfig) -> tuple[Path | None, Path | None]:
    """(high, low) LoRA files: explicit keys, else the seed's files in the ComfyUI folder when present."""
    files = resolve_model_files(cfg)
    return files.get("lora_high"), files.get("lora_low")
