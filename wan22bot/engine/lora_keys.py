"""LoRA key names: ComfyUI / original-Wan names -> diffusers' WanTransformer3DModel parameters.

A Wan LoRA key is `<prefix><module>.<part>`:
- prefix: `diffusion_model.` (ComfyUI, LightX2V), none, or kohya's `lora_unet_` with the module's
  dots written as underscores (`lora_unet_blocks_0_self_attn_q.lora_down.weight`; Wan Fun files
  write `lora_unet__blocks_...`);
- module: an original Wan module (`blocks.0.self_attn.q`, `head.head`, `time_projection.1`, ...);
- part: `lora_down.weight` / `lora_up.weight` / `alpha` (kohya), `lora_A.weight` / `lora_B.weight`
  (PEFT), `diff` (a full weight delta), `diff_b` (a bias delta), or `diff_m` on `blocks.N` (a delta
  of the block's modulation table).

The renames are the ones diffusers' own single-file converter uses (convert_wan_transformer_to_
diffusers: self_attn -> attn1, cross_attn -> attn2, o -> to_out.0, ffn.0 -> ffn.net.0.proj, Wan's
norm3 (the affine cross-attention norm) -> norm2, modulation -> scale_shift_table with the same
(1, 6, dim) / (1, 2, dim) shape, ...), written out as a table so every name is checked, not guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Module names outside the blocks: Wan name -> (diffusers name, is a bare parameter, image branch)
_TOP: dict[str, tuple[str, bool, bool]] = {
    "patch_embedding": ("patch_embedding", False, False),
    "text_embedding.0": ("condition_embedder.text_embedder.linear_1", False, False),
    "text_embedding.2": ("condition_embedder.text_embedder.linear_2", False, False),
    "time_embedding.0": ("condition_embedder.time_embedder.linear_1", False, False),
    "time_embedding.2": ("condition_embedder.time_embedder.linear_2", False, False),
    "time_projection.1": ("condition_embedder.time_proj", False, False),
    "head.head": ("proj_out", False, False),
    "head.modulation": ("scale_shift_table", True, False),
    # Wan 2.1 I2V's CLIP image branch (absent from Wan 2.2 I2V A14B)
    "img_emb.proj.0": ("condition_embedder.image_embedder.norm1", False, True),
    "img_emb.proj.1": ("condition_embedder.image_embedder.ff.net.0.proj", False, True),
    "img_emb.proj.3": ("condition_embedder.image_embedder.ff.net.2", False, True),
    "img_emb.proj.4": ("condition_embedder.image_embedder.norm2", False, True),
    "img_emb.emb_pos": ("condition_embedder.image_embedder.pos_embed", True, True),
}

# Module names inside `blocks.N.`: Wan name -> (diffusers name, is a bare parameter, image branch)
_BLOCK: dict[str, tuple[str, bool, bool]] = {
    "self_attn.q": ("attn1.to_q", False, False),
    "self_attn.k": ("attn1.to_k", False, False),
    "self_attn.v": ("attn1.to_v", False, False),
    "self_attn.o": ("attn1.to_out.0", False, False),
    "self_attn.norm_q": ("attn1.norm_q", False, False),
    "self_attn.norm_k": ("attn1.norm_k", False, False),
    "cross_attn.q": ("attn2.to_q", False, False),
    "cross_attn.k": ("attn2.to_k", False, False),
    "cross_attn.v": ("attn2.to_v", False, False),
    "cross_attn.o": ("attn2.to_out.0", False, False),
    "cross_attn.norm_q": ("attn2.norm_q", False, False),
    "cross_attn.norm_k": ("attn2.norm_k", False, False),
    "cross_attn.k_img": ("attn2.add_k_proj", False, True),
    "cross_attn.v_img": ("attn2.add_v_proj", False, True),
    "cross_attn.norm_k_img": ("attn2.norm_added_k", False, True),
    "ffn.0": ("ffn.net.0.proj", False, False),
    "ffn.2": ("ffn.net.2", False, False),
    "norm3": ("norm2", False, False),
    "modulation": ("scale_shift_table", True, False),
}

# kohya writes the module path with underscores; these tables undo it without guessing
_TOP_KOHYA = {k.replace(".", "_"): k for k in _TOP}
_BLOCK_KOHYA = {k.replace(".", "_"): k for k in _BLOCK}
_BLOCK_RE = re.compile(r"blocks\.(\d+)\.(.+)")
_BLOCK_KOHYA_RE = re.compile(r"blocks_(\d+)_(.+)")

# part suffix -> (part, factor style)
_PARTS = (
    (".lora_down.weight", "down", "lora_up/down"),
    (".lora_up.weight", "up", "lora_up/down"),
    (".lora_A.weight", "down", "lora_A/B"),
    (".lora_B.weight", "up", "lora_A/B"),
    (".alpha", "alpha", ""),
    (".diff_b", "diff_b", "diff_b"),
    (".diff_m", "diff_m", "diff_m"),
    (".diff", "diff", "diff"),
)

IMAGE_BRANCH_NOTE = "Wan 2.1 image branch: k_img, v_img, norm_k_img, img_emb"


@dataclass(frozen=True)
class KeyName:
    """One file key, split: the Wan module it names and which part of a patch it holds."""

    key: str  # as written in the file
    module: str  # original Wan module name with dots, e.g. blocks.0.self_attn.q (or blocks.0 for diff_m)
    part: str  # down | up | alpha | diff | diff_b | diff_m
    style: str  # lora_up/down | lora_A/B | diff | diff_b | diff_m ('' for alpha)


@dataclass(frozen=True)
class Target:
    """The diffusers parameter a patch changes."""

    param: str  # e.g. blocks.0.attn1.to_q.weight, blocks.0.scale_shift_table
    image_branch: bool


def split_key(key: str) -> KeyName | None:
    """Prefix and part removed, kohya underscores undone. None when the key is not a Wan LoRA key."""
    for suffix, part, style in _PARTS:
        if key.endswith(suffix):
            body = key[: -len(suffix)]
            break
    else:
        return None
    if body.startswith("lora_unet_"):
        module = _from_kohya(body[len("lora_unet_"):].lstrip("_"))
        if module is None:
            return None
    else:
        module = body.removeprefix("diffusion_model.")
    return KeyName(key, module, part, style)


def _from_kohya(name: str) -> str | None:
    if name in _TOP_KOHYA:
        return _TOP_KOHYA[name]
    if name == "head":
        return "head"
    m = _BLOCK_KOHYA_RE.fullmatch(name)
    if m is None:
        m2 = re.fullmatch(r"blocks_(\d+)", name)
        return f"blocks.{m2.group(1)}" if m2 else None
    rest = _BLOCK_KOHYA.get(m.group(2))
    return f"blocks.{m.group(1)}.{rest}" if rest else None


def target_of(name: KeyName) -> Target | None:
    """The diffusers parameter `name` patches, or None when the module is not a Wan module."""
    if name.part == "diff_m":
        # `blocks.N.diff_m` (and `head.diff_m`) patch the modulation table of that block (of the head)
        if name.module == "head":
            return Target("scale_shift_table", False)
        m = re.fullmatch(r"blocks\.(\d+)", name.module)
        return Target(f"blocks.{m.group(1)}.scale_shift_table", False) if m else None
    m = _BLOCK_RE.fullmatch(name.module)
    if m is not None:
        hit = _BLOCK.get(m.group(2))
        if hit is None:
            return None
        module, bare, image = f"blocks.{m.group(1)}.{hit[0]}", hit[1], hit[2]
    elif name.module in _TOP:
        module, bare, image = _TOP[name.module]
    elif name.module.startswith("img_emb."):
        return Target(f"condition_embedder.image_embedder.{name.module}", True)
    else:
        return None
    if bare:
        # a parameter, not a module: only a full delta applies to it
        return Target(module, image) if name.part == "diff" else None
    return Target(f"{module}.bias" if name.part == "diff_b" else f"{module}.weight", image)
