"""Where the model's parts come from: the built-in tiny set, ComfyUI files (a models folder or single
files), or a Diffusers folder.

Everything returns the same `Components`, so the generator cannot tell (and must not care) whether
it runs the tiny model or the 14B checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import ModelError
from .model_files import MODEL_PARTS, ModelFiles, resolve_model_files

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
    # part -> where it came from and what it is (file, architecture, weight layout), for check and logs
    parts: dict[str, str] = field(default_factory=dict)


def check_model_files(cfg: ModelConfig) -> list[str]:
    """Every problem with the configured model files, each a sentence with its fix. Empty = fine.

    Only looks at names and folders (fast); `inspect_model_files` also reads each file's header.
    """
    if cfg.kind == "tiny":
        return []
    files = resolve_model_files(cfg)
    problems = list(files.problems)
    from_folder = [part for part in MODEL_PARTS if files.get(part) is None]
    if cfg.path is None:
        return problems
    root = Path(cfg.path)
    if not root.is_dir():
        problems.append(f"model.path = {root} is not a folder (download Wan-AI/Wan2.2-I2V-A14B-Diffusers there)")
        return problems
    needed = [FOLDER_OF[part] for part in from_folder]
    if "text_encoder" in needed or not _has_tokenizer(files):
        needed.append("tokenizer")
    for part in FOLDER_PARTS:
        if part not in needed:
            continue
        sub = root / part
        if not sub.is_dir():
            problems.append(f"the model folder {root} has no '{part}' folder: the download is incomplete")
        elif part != "tokenizer" and not (sub / "config.json").is_file():
            problems.append(f"{sub} has no config.json: the download is incomplete")
        elif part != "tokenizer" and not any(sub.glob("*.safetensors")) and not any(sub.glob("*.bin")):
            problems.append(f"{sub} has no weight files (*.safetensors): the download is incomplete")
    return problems


FOLDER_OF = {"high_noise": "transformer", "low_noise": "transformer_2", "text_encoder": "text_encoder", "vae": "vae"}


def _has_tokenizer(files: ModelFiles) -> bool:
    """Whether the single text encoder file carries its sentencepiece model (ComfyUI's files do)."""
    p = files.get("text_encoder")
    if p is None or not Path(p).is_file():
        return p is not None
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as fh:
            return "spiece_model" in fh.keys()
    except Exception:
        return True  # unreadable: the load names the real problem


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
    problems = check_model_files(cfg) + inspect_model_files(cfg)
    if problems:
        raise ModelError("the model files are not usable:\n  " + "\n  ".join(problems))
    return _load_real(cfg, dtype)


def inspect_model_files(cfg: ModelConfig) -> list[str]:
    """Header-level problems of the single files that exist: wrong kind of model, unreadable layout."""
    from .single_files import inspect_file

    problems: list[str] = []
    files = resolve_model_files(cfg)
    for part in MODEL_PARTS:
        p = files.get(part)
        if p is None or not Path(p).is_file():
            continue
        try:
            inspect_file(p, part)
        except ModelError as exc:
            problems.append(str(exc))
    return problems


def _load_real(cfg: ModelConfig, dtype: torch.dtype) -> Components:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    from .single_files import inspect_file, load_expert, load_text_encoder, load_vae

    files = resolve_model_files(cfg)
    root = Path(cfg.path) if cfg.path is not None else None
    parts: dict[str, str] = {}

    def expert(part: str, sub: str):
        single = files.get(part)
        if single is None:
            parts[part] = f"{root / sub} (Diffusers folder)"
            return WanTransformer3DModel.from_pretrained(root, subfolder=sub, torch_dtype=dtype)
        parts[part] = f"{single}: {inspect_file(single, part)}"
        # Built when the generator asks, so a swap/offload setup never holds two experts in RAM.
        return lambda: load_expert(single, dtype).module

    try:
        transformer = expert("high_noise", "transformer")
        transformer_2 = expert("low_noise", "transformer_2")
        tokenizer = None
        te_file = files.get("text_encoder")
        if te_file is not None:
            log.info("loading text encoder from %s", te_file)
            loaded, tokenizer = load_text_encoder(te_file, dtype)
            text_encoder = loaded.module
            parts["text_encoder"] = f"{te_file}: {loaded.summary}"
        else:
            log.info("loading text encoder")
            text_encoder = UMT5EncoderModel.from_pretrained(root, subfolder="text_encoder", torch_dtype=dtype)
            parts["text_encoder"] = f"{root / 'text_encoder'} (Diffusers folder)"
        if tokenizer is None:
            if root is None:
                raise ModelError(f"{te_file} carries no sentencepiece model (spiece_model), so there is no tokenizer; "
                                 "use ComfyUI's umt5_xxl_fp8_e4m3fn_scaled.safetensors or umt5_xxl_fp16.safetensors, "
                                 "or set model.path to a Diffusers folder for its tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer")
        log.info("loading VAE")
        vae_file = files.get("vae")
        if vae_file is not None:
            loaded = load_vae(vae_file)
            vae = loaded.module
            parts["vae"] = f"{vae_file}: {loaded.summary}"
        else:
            vae = AutoencoderKLWan.from_pretrained(root, subfolder="vae", torch_dtype=torch.float32)
            parts["vae"] = f"{root / 'vae'} (Diffusers folder)"
    except ModelError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelError(f"loading the model failed: {exc}") from None
    for part, what in parts.items():
        log.info("%s: %s", part, what)
    where = (f"ComfyUI folder {cfg.comfyui}" if cfg.comfyui is not None and root is None
             else f"{root}" if root is not None else "single files")
    return Components(
        tokenizer=tokenizer,
        text_encoder=text_encoder.eval(),
        vae=vae.eval(),
        transformer=transformer.eval() if isinstance(transformer, torch.nn.Module) else transformer,
        transformer_2=transformer_2.eval() if isinstance(transformer_2, torch.nn.Module) else transformer_2,
        default_width=832,
        default_height=1216,
        default_frames=81,
        max_sequence_length=512,
        description=f"Wan 2.2 I2V A14B from {where}",
        parts=parts,
    )
