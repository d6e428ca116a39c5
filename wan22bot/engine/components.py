"""Where the model's parts come from: the built-in tiny set, a Diffusers folder, or ComfyUI files.

Everything returns the same `Components`, so the generator cannot tell (and must not care) whether
it runs the tiny model or the 14B checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import ModelError

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FOLDER_PARTS = ("transformer", "transformer_2", "text_encoder", "tokenizer", "vae")


@dataclass
class Components:
    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    transformer: torch.nn.Module  # high-noise expert
    transformer_2: torch.nn.Module  # low-noise expert
    default_width: int
    default_height: int
    default_frames: int
    max_sequence_length: int
    description: str


def check_model_files(cfg: ModelConfig) -> list[str]:
    """Every problem with the configured model files, each a sentence with its fix. Empty = fine."""
    problems: list[str] = []
    if cfg.kind == "tiny":
        return problems
    singles = {"high_noise": cfg.high_noise, "low_noise": cfg.low_noise, "text_encoder": cfg.text_encoder, "vae": cfg.vae}
    for key, p in singles.items():
        if p is not None and not Path(p).is_file():
            problems.append(f"model.{key} = {p} does not exist (download the ComfyUI file or remove the key)")
    for key in ("lora_high", "lora_low"):
        p = getattr(cfg, key)
        if p is not None and not Path(p).is_file():
            problems.append(f"model.{key} = {p} does not exist (download the LightX2V 4-step LoRA or remove the key)")
    if cfg.path is None:
        problems.append("model.path is not set: the text encoder, tokenizer and VAE config come from a "
                        "Diffusers-format Wan2.2-I2V-A14B folder")
        return problems
    root = Path(cfg.path)
    if not root.is_dir():
        problems.append(f"model.path = {root} is not a folder (download Wan-AI/Wan2.2-I2V-A14B-Diffusers there)")
        return problems
    needed = {"transformer": cfg.high_noise, "transformer_2": cfg.low_noise, "text_encoder": cfg.text_encoder,
              "tokenizer": None, "vae": cfg.vae}
    for part, single in needed.items():
        sub = root / part
        if single is not None and part != "text_encoder":
            # a single file replaces the weights, the folder still gives the config
            if not (sub / "config.json").is_file():
                problems.append(f"{sub}/config.json is missing (needed to read {part}'s single file)")
            continue
        if not sub.is_dir():
            problems.append(f"the model folder {root} has no '{part}' folder: the download is incomplete")
        elif part != "tokenizer" and not (sub / "config.json").is_file():
            problems.append(f"{sub} has no config.json: the download is incomplete")
        elif part != "tokenizer" and not any(sub.glob("*.safetensors")) and not any(sub.glob("*.bin")):
            problems.append(f"{sub} has no weight files (*.safetensors): the download is incomplete")
    return problems


def load_components(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> Components:
    if cfg.kind == "tiny":
        from .tiny import TINY_FRAMES, TINY_HEIGHT, TINY_MAX_SEQUENCE_LENGTH, TINY_WIDTH, tiny_components

        parts = tiny_components(cfg.seed_weights)
        return Components(
            **parts,
            default_width=TINY_WIDTH,
            default_height=TINY_HEIGHT,
            default_frames=TINY_FRAMES,
            max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
            description=f"tiny (built-in, random weights, seed {cfg.seed_weights})",
        )
    problems = check_model_files(cfg)
    if problems:
        raise ModelError("the model files are not usable:\n  " + "\n  ".join(problems))
    return _load_folder(cfg, dtype)


def _load_folder(cfg: ModelConfig, dtype: torch.dtype) -> Components:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    root = Path(cfg.path)  # type: ignore[arg-type]

    def expert(sub: str, single: Path | None):
        if single is None:
            return WanTransformer3DModel.from_pretrained(root, subfolder=sub, torch_dtype=dtype)
        # Auto-detection would classify a 36-channel file as Wan 2.1 I2V (with an image branch);
        # the folder's config pins the Wan 2.2 architecture.
        sd = read_comfy_checkpoint(single, dtype)
        return WanTransformer3DModel.from_single_file(sd, config=str(root), subfolder=sub, torch_dtype=dtype)

    try:
        log.info("loading high-noise expert")
        transformer = expert("transformer", cfg.high_noise)
        log.info("loading low-noise expert")
        transformer_2 = expert("transformer_2", cfg.low_noise)
        log.info("loading text encoder")
        text_encoder = UMT5EncoderModel.from_pretrained(root, subfolder="text_encoder", torch_dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer")
        log.info("loading VAE")
        if cfg.vae is not None:
            vae = AutoencoderKLWan.from_single_file(str(cfg.vae), config=str(root), subfolder="vae", torch_dtype=torch.float32)
        else:
            vae = AutoencoderKLWan.from_pretrained(root, subfolder="vae", torch_dtype=torch.float32)
    except ModelError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelError(f"loading the model from {root} failed: {exc}") from None
    return Components(
        tokenizer=tokenizer,
        text_encoder=text_encoder.eval(),
        vae=vae.eval(),
        transformer=transformer.eval(),
        transformer_2=transformer_2.eval(),
        default_width=832,
        default_height=1216,
        default_frames=81,
        max_sequence_length=512,
        description=f"Wan 2.2 I2V A14B from {root}",
    )


def read_comfy_checkpoint(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Read a ComfyUI expert file; fp8_scaled files are dequantised (diffusers ignores scale_weight)."""
    from safetensors.torch import load_file

    try:
        sd = load_file(str(path))
    except Exception as exc:
        raise ModelError(f"{path} is not a readable .safetensors checkpoint ({exc})") from None
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k == "scaled_fp8" or k.endswith((".scale_weight", ".scale_input")):
            continue
        if v.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            scale = sd.get(k.rsplit(".", 1)[0] + ".scale_weight")
            v = v.float() * (scale.float() if scale is not None else 1.0)
        out[k] = v.to(dtype) if v.is_floating_point() else v
    return out
