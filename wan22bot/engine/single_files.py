"""Build the diffusers/transformers modules straight from ComfyUI's single files, no Diffusers folder.

Each file's architecture comes from its own tensor shapes (detect.py), the module is created with
empty (meta) parameters, and every tensor is read, dequantised (weights.py) and assigned in place:
peak memory is the finished model plus one tensor, not two copies. Keys are checked both ways:
a tensor the model lacks, or a model weight the file lacks, is an error naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError
from .detect import ExpertArch, TextArch, VaeArch, detect_expert, detect_text_encoder, detect_vae
from .weights import Checkpoint, open_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    module: torch.nn.Module
    summary: str  # "<what it is>, <layout>" for check and the load log
    checkpoint: Checkpoint


def _empty(factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The module with parameters on the meta device; buffers (e.g. RoPE tables) are real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return factory()


def _dtype_rule(module: torch.nn.Module, dtype: torch.dtype) -> Callable[[str], torch.dtype]:
    """fp32 for the parts the library keeps in fp32 (as from_pretrained does), `dtype` elsewhere."""
    keep = set(getattr(module, "_keep_in_fp32_modules", None) or [])
    if dtype == torch.float32 or not keep:
        return lambda name: dtype
    return lambda name: torch.float32 if keep & set(name.split(".")) else dtype


def _assign(module: torch.nn.Module, ckpt: Checkpoint, mapping: Mapping[str, str], dtype: torch.dtype,
            what: str, tied: Mapping[str, str] | None = None) -> None:
    """Load `module` from `ckpt` through `mapping` (module key -> file key), strictly, in place."""
    tied = dict(tied or {})
    _check_keys(module, ckpt, mapping, what, tied)
    rule = _dtype_rule(module, dtype)
    sd: dict[str, torch.Tensor] = {}
    for key, src in mapping.items():
        t = ckpt.tensor(src, rule(key))  # shapes were checked against the module above
        if t.is_floating_point() and t.numel() and not _finite(t):
            # a scale read wrongly or a damaged file: never let it reach a render
            raise ModelError(f"{ckpt.path}: {src} holds NaN/inf values after reading it as "
                             f"{ckpt.layout.describe()}; the file is damaged, re-download it")
        sd[key] = t
    for key, same_as in tied.items():
        sd[key] = sd[same_as]
    module.load_state_dict(sd, strict=True, assign=True)


def _finite(t: torch.Tensor) -> bool:
    """No NaN/inf in `t`, without a temporary of its size (min/max propagate NaN and show inf)."""
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def _check_keys(module: torch.nn.Module, ckpt: Checkpoint, mapping: Mapping[str, str], what: str,
                tied: Mapping[str, str] | None = None) -> None:
    """Every weight the module expects is in the file and every tensor of the file has a place, with
    the shape the module needs; a ModelError naming the first few otherwise."""
    tied = dict(tied or {})
    expected = module.state_dict()
    given = set(mapping) | set(tied)
    missing = sorted(set(expected) - given)
    unexpected = sorted(given - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weight(s) the {what} needs are not in the file (e.g. {', '.join(missing[:3])})")
        if unexpected:
            src = [mapping.get(k, k) for k in unexpected[:3]]
            parts.append(f"{len(unexpected)} tensor(s) in the file have no place in a {what} (e.g. {', '.join(src)})")
        raise ModelError(f"{ckpt.path}: " + "; ".join(parts) + ". It is not the file it should be, or it is damaged")
    for key, src in mapping.items():
        if tuple(ckpt.shapes[src]) != tuple(expected[key].shape):
            raise ModelError(f"{ckpt.path}: {src} has shape {list(ckpt.shapes[src])}, the {what} needs "
                             f"{list(expected[key].shape)}; the file does not match its own architecture (damaged?)")


# ---------------------------------------------------------------------------------------- experts
def expert_key_map(names: list[str]) -> dict[str, str]:
    """diffusers key -> original Wan key, through diffusers' own single-file converter."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    converted = convert_wan_transformer_to_diffusers({k: k for k in names})
    return dict(converted)


def build_expert(arch: ExpertArch) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    return _empty(lambda: WanTransformer3DModel(**arch.diffusers_config()))


def load_expert(path: Path, dtype: torch.dtype, role: str = "expert") -> Loaded:
    ckpt = open_checkpoint(path)
    arch = detect_expert(ckpt.shapes, source=f"{path}")
    model = build_expert(arch)
    _assign(model, ckpt, expert_key_map(ckpt.names()), dtype, "Wan 2.2 I2V expert")
    return Loaded(model.eval(), f"{arch.describe()}, {ckpt.layout.describe()}", ckpt)


# ---------------------------------------------------------------------------------------- VAE
def vae_key_map(names: list[str]) -> dict[str, str]:
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    return dict(convert_wan_vae_to_diffusers({k: k for k in names}))


def build_vae(arch: VaeArch) -> torch.nn.Module:
    from diffusers import AutoencoderKLWan

    return _empty(lambda: AutoencoderKLWan(**arch.diffusers_config()))


def load_vae(path: Path) -> Loaded:
    ckpt = open_checkpoint(path)
    arch = detect_vae(ckpt.shapes, source=f"{path}")
    model = build_vae(arch)
    # fp32 like the Diffusers-folder route: the decode is where bf16 rounding shows most
    _assign(model, ckpt, vae_key_map(ckpt.names()), torch.float32, "Wan 2.1 VAE")
    return Loaded(model.eval(), f"Wan 2.1 VAE (z_dim {arch.z_dim}, base width {arch.base_dim}), "
                                f"{ckpt.layout.describe()}", ckpt)


# ---------------------------------------------------------------------------------------- text encoder
TIED_EMBEDDING = "encoder.embed_tokens.weight"


def build_text_encoder(arch: TextArch) -> torch.nn.Module:
    from transformers import UMT5Config, UMT5EncoderModel

    return _empty(lambda: UMT5EncoderModel(UMT5Config(**arch.hf_config())))


def text_key_map(names: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(module key -> file key, tied module key -> module key it shares its tensor with)."""
    mapping = {k: k for k in names if k != TIED_EMBEDDING}
    if "shared.weight" not in mapping and TIED_EMBEDDING in names:
        mapping["shared.weight"] = TIED_EMBEDDING
    return mapping, {TIED_EMBEDDING: "shared.weight"}


def load_text_encoder(path: Path, dtype: torch.dtype) -> tuple[Loaded, object | None]:
    """The UMT5 encoder and, when the file carries one, its tokenizer (None otherwise)."""
    from .tokenizer import SentencePieceUMT5Tokenizer

    ckpt = open_checkpoint(path)
    arch = detect_text_encoder(ckpt.shapes, source=f"{path}")
    if TIED_EMBEDDING in ckpt.shapes and ckpt.shapes[TIED_EMBEDDING] != ckpt.shapes.get("shared.weight",
                                                                                     ckpt.shapes[TIED_EMBEDDING]):
        raise ModelError(f"{path}: {TIED_EMBEDDING} and shared.weight differ in shape; the file is damaged")
    model = build_text_encoder(arch)
    mapping, tied = text_key_map(ckpt.names())
    _assign(model, ckpt, mapping, dtype, "UMT5 text encoder", tied=tied)
    model.encoder.embed_tokens = model.shared  # one embedding table, as the library ties it
    spiece = ckpt.extra("spiece_model")
    tokenizer = SentencePieceUMT5Tokenizer.from_tensor(spiece, str(path)) if spiece is not None else None
    if tokenizer is not None and tokenizer.vocab_size > arch.vocab_size:
        raise ModelError(f"{path}: its sentencepiece model has {tokenizer.vocab_size} pieces but the embedding only "
                         f"{arch.vocab_size} rows; the tokenizer does not belong to this encoder")
    return Loaded(model.eval(), f"{arch.describe()}, {ckpt.layout.describe()}"
                                + (", tokenizer from its spiece_model" if tokenizer else ""), ckpt), tokenizer


# ---------------------------------------------------------------------------------------- inspection
def inspect_file(path: Path, part: str) -> str:
    """What the file for `part` is and how its weights are stored, from its header alone (fast: the
    module is built on the meta device to check every key and shape, no weight is read).

    Raises ModelError when the file is of the wrong kind or in a layout that is not read exactly.
    """
    ckpt = open_checkpoint(path)
    if part in ("high_noise", "low_noise"):
        arch = detect_expert(ckpt.shapes, source=str(path))
        _check_keys(build_expert(arch), ckpt, expert_key_map(ckpt.names()), "Wan 2.2 I2V expert")
        what = arch.describe()
    elif part == "vae":
        a = detect_vae(ckpt.shapes, source=str(path))
        _check_keys(build_vae(a), ckpt, vae_key_map(ckpt.names()), "Wan 2.1 VAE")
        what = f"Wan 2.1 VAE (z_dim {a.z_dim}, base width {a.base_dim})"
    elif part == "text_encoder":
        t = detect_text_encoder(ckpt.shapes, source=str(path))
        mapping, tied = text_key_map(ckpt.names())
        _check_keys(build_text_encoder(t), ckpt, mapping, "UMT5 text encoder", tied)
        what = t.describe()
        if not ckpt.has("spiece_model"):
            what += ", no tokenizer inside (spiece_model missing)"
    else:
        raise ValueError(part)
    return f"{what}, {ckpt.layout.describe()}"
