"""LoRA files in the layouts real Wan LoRAs use, and the weights they should produce, computed here
independently of wan22bot (its own name table, fp64 arithmetic)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from wan22bot.engine.tiny import TRANSFORMER_CONFIG

DIM = TRANSFORMER_CONFIG["num_attention_heads"] * TRANSFORMER_CONFIG["attention_head_dim"]  # 24
FFN = TRANSFORMER_CONFIG["ffn_dim"]  # 32
TEXT = TRANSFORMER_CONFIG["text_dim"]  # 32
FREQ = TRANSFORMER_CONFIG["freq_dim"]  # 256
OUT = 16 * 4  # out channels x patch 1x2x2

# The ComfyUI / original Wan module -> the diffusers module, spelled out by hand for the tests.
BLOCK_LINEARS = {
    "self_attn.q": ("attn1.to_q", (DIM, DIM)),
    "self_attn.k": ("attn1.to_k", (DIM, DIM)),
    "self_attn.v": ("attn1.to_v", (DIM, DIM)),
    "self_attn.o": ("attn1.to_out.0", (DIM, DIM)),
    "cross_attn.q": ("attn2.to_q", (DIM, DIM)),
    "cross_attn.k": ("attn2.to_k", (DIM, DIM)),
    "cross_attn.v": ("attn2.to_v", (DIM, DIM)),
    "cross_attn.o": ("attn2.to_out.0", (DIM, DIM)),
    "ffn.0": ("ffn.net.0.proj", (FFN, DIM)),
    "ffn.2": ("ffn.net.2", (DIM, FFN)),
}
BLOCK_NORMS = {  # Wan name -> (diffusers name, has a bias)
    "self_attn.norm_q": ("attn1.norm_q", False),
    "self_attn.norm_k": ("attn1.norm_k", False),
    "cross_attn.norm_q": ("attn2.norm_q", False),
    "cross_attn.norm_k": ("attn2.norm_k", False),
    "norm3": ("norm2", True),
}
TOP_LINEARS = {
    "text_embedding.0": ("condition_embedder.text_embedder.linear_1", (DIM, TEXT)),
    "text_embedding.2": ("condition_embedder.text_embedder.linear_2", (DIM, DIM)),
    "time_embedding.0": ("condition_embedder.time_embedder.linear_1", (DIM, FREQ)),
    "time_embedding.2": ("condition_embedder.time_embedder.linear_2", (DIM, DIM)),
    "time_projection.1": ("condition_embedder.time_proj", (6 * DIM, DIM)),
    "head.head": ("proj_out", (OUT, DIM)),
}


class LoraBuilder:
    """Builds a LoRA state dict key by key; `expected(base, strength)` gives the weights it must make."""

    def __init__(self, seed: int = 0, prefix: str = "diffusion_model.", dtype=torch.float32):
        self.g = torch.Generator().manual_seed(seed)
        self.prefix = prefix
        self.dtype = dtype
        self.sd: dict[str, torch.Tensor] = {}
        self.deltas: dict[str, torch.Tensor] = {}  # diffusers parameter -> fp64 delta at strength 1

    def _rand(self, *shape) -> torch.Tensor:
        return (torch.randn(*shape, generator=self.g) * 0.5).to(self.dtype)

    def _key(self, wan: str, part: str) -> str:
        if self.prefix == "lora_unet_":
            return f"lora_unet_{wan.replace('.', '_')}.{part}"
        return f"{self.prefix}{wan}.{part}"

    def _add(self, param: str, delta: torch.Tensor) -> None:
        self.deltas[param] = self.deltas.get(param, 0) + delta

    def lora(self, wan: str, param_module: str, shape, rank: int = 4, alpha: float | None = 2.0,
             style: str = "kohya") -> "LoraBuilder":
        out_f, in_f = shape
        down, up = self._rand(rank, in_f), self._rand(out_f, rank)
        d_name, u_name = ("lora_down.weight", "lora_up.weight") if style == "kohya" else ("lora_A.weight", "lora_B.weight")
        self.sd[self._key(wan, d_name)] = down
        self.sd[self._key(wan, u_name)] = up
        scale = 1.0
        if alpha is not None:
            self.sd[self._key(wan, "alpha")] = torch.tensor(alpha, dtype=self.dtype)
            scale = float(torch.tensor(alpha, dtype=self.dtype)) / rank
        self._add(f"{param_module}.weight", scale * (up.double() @ down.double()))
        return self

    def diff(self, wan: str, param: str, shape, part: str = "diff") -> "LoraBuilder":
        t = self._rand(*shape)
        self.sd[self._key(wan, part)] = t
        self._add(param, t.double())
        return self

    def write(self, path: Path) -> Path:
        save_file({k: v.contiguous() for k, v in self.sd.items()}, str(path))
        return path

    def expected(self, base: dict[str, torch.Tensor], strength: float) -> dict[str, torch.Tensor]:
        """fp64 `W + strength * delta` for every patched parameter (others: unchanged)."""
        out = {k: v.double().clone() for k, v in base.items()}
        for k, d in self.deltas.items():
            out[k] = out[k] + strength * d
        return out


def lightx2v_like(blocks=(0, 1), rank: int = 4, alpha: float = 0.5, seed: int = 0, prefix: str = "diffusion_model.",
                  style: str = "kohya", image_branch: bool = False, norms: bool = True,
                  modulation: bool = True, model: torch.nn.Module | None = None) -> LoraBuilder:
    """What LightX2V distill LoRAs carry: low-rank factors on every linear of the blocks, diff_b on
    their biases, diff/diff_b on the norms, diff_m on each block's modulation, and diff_b on the
    text/time embeddings and the head with no factors there (alpha/rank = 1/8 as rank 64 / alpha 8).
    `image_branch` adds the Wan 2.1 I2V keys (k_img, v_img, norm_k_img, img_emb) the A14B experts lack.
    `model`: take the shapes from this expert instead of the built-in tiny one's."""
    b = LoraBuilder(seed, prefix)
    shape_of = {n: tuple(p.shape) for n, p in model.named_parameters()} if model is not None else None
    dim = shape_of["blocks.0.norm2.weight"][0] if shape_of else DIM
    for i in blocks:
        for wan, (mod, shape) in BLOCK_LINEARS.items():
            shape = shape_of[f"blocks.{i}.{mod}.weight"] if shape_of else shape
            b.lora(f"blocks.{i}.{wan}", f"blocks.{i}.{mod}", shape, rank=rank, alpha=alpha, style=style)
            b.diff(f"blocks.{i}.{wan}", f"blocks.{i}.{mod}.bias", (shape[0],), "diff_b")
        for wan, (mod, has_bias) in (BLOCK_NORMS.items() if norms else ()):
            b.diff(f"blocks.{i}.{wan}", f"blocks.{i}.{mod}.weight", (dim,))
            if has_bias:
                b.diff(f"blocks.{i}.{wan}", f"blocks.{i}.{mod}.bias", (dim,), "diff_b")
        if modulation:
            b.diff(f"blocks.{i}", f"blocks.{i}.scale_shift_table", (1, 6, dim), "diff_m")
        if image_branch:
            for wan in ("cross_attn.k_img", "cross_attn.v_img"):
                b.sd[b._key(f"blocks.{i}.{wan}", "lora_down.weight")] = b._rand(rank, DIM)
                b.sd[b._key(f"blocks.{i}.{wan}", "lora_up.weight")] = b._rand(DIM, rank)
                b.sd[b._key(f"blocks.{i}.{wan}", "alpha")] = torch.tensor(alpha)
                b.sd[b._key(f"blocks.{i}.{wan}", "diff_b")] = b._rand(DIM)
            b.sd[b._key(f"blocks.{i}.cross_attn.norm_k_img", "diff")] = b._rand(DIM)
    for wan, (mod, shape) in TOP_LINEARS.items():
        shape = shape_of[f"{mod}.weight"] if shape_of else shape
        b.diff(wan, f"{mod}.bias", (shape[0],), "diff_b")
    if image_branch:
        b.sd[b._key("img_emb.proj.1", "lora_down.weight")] = b._rand(rank, 1280)
        b.sd[b._key("img_emb.proj.1", "lora_up.weight")] = b._rand(1280, rank)
        b.sd[b._key("img_emb.proj.1", "diff_b")] = b._rand(1280)
        b.sd[b._key("img_emb.proj.0", "diff")] = b._rand(1280)
    return b


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}
