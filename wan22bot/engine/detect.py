"""What a checkpoint is, read from its tensor names and shapes alone (as ComfyUI's model detection does).

Each `detect_*` takes a mapping name -> shape (or anything with `.shape`), so it runs on a file's
header, on a dict of meta tensors (the full-size contract tests) or on a real state dict. A file
of the wrong kind raises a ModelError that says what the file is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ModelError

EXPERT_PREFIX = "model.diffusion_model."
HEAD_DIM = 128  # Wan's attention head width; ComfyUI derives heads = width / 128 the same way


def _shape(v) -> tuple[int, ...]:
    return tuple(v.shape) if hasattr(v, "shape") else tuple(v)


def _shapes(sd: Mapping) -> dict[str, tuple[int, ...]]:
    return {k: _shape(v) for k, v in sd.items()}


def _count(shapes: Mapping, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := rx.match(k))})


def what_is_it(shapes: Mapping) -> str:
    """A short name for a file that is not what was asked for."""
    keys = set(shapes)
    plain = strip_expert_prefix(shapes)
    if any(".lora_down." in k or ".lora_up." in k or ".lora_A." in k or ".lora_B." in k for k in keys):
        return "a LoRA"
    if "patch_embedding.weight" in plain and any(k.startswith("blocks.") for k in plain):
        return describe_expert(plain)
    if "encoder.conv1.weight" in keys and "decoder.conv1.weight" in keys:
        z = shapes["conv1.weight"][0] // 2 if "conv1.weight" in shapes else None
        return "the Wan 2.2 VAE (z_dim 48, made for TI2V-5B)" if z == 48 else f"a Wan VAE (z_dim {z})"
    if "encoder.conv_in.weight" in keys and "decoder.conv_in.weight" in keys:
        return "a VAE in Diffusers/SD naming (not a Wan VAE file)"
    if "shared.weight" in keys or any(k.startswith("encoder.block.") for k in keys):
        return describe_text_encoder(shapes)
    if any(k.startswith(("model.diffusion_model.input_blocks.", "input_blocks.")) for k in keys):
        return "a Stable Diffusion UNet"
    if any("double_blocks." in k for k in keys):
        return "a Flux-family model"
    if any(k.startswith(("text_model.", "vision_model.")) for k in keys):
        return "a CLIP model"
    some = ", ".join(sorted(keys)[:3])
    return f"not a Wan model (first keys: {some})"


# ---------------------------------------------------------------------------------------- experts
@dataclass(frozen=True)
class ExpertArch:
    width: int
    heads: int
    depth: int
    in_channels: int
    out_channels: int
    patch_size: tuple[int, int, int]
    ffn_dim: int
    text_dim: int
    freq_dim: int
    cross_attn_norm: bool
    qk_norm: bool
    image_branch: bool

    @property
    def is_a14b(self) -> bool:
        return self.width == 5120 and self.depth == 40

    def diffusers_config(self) -> dict:
        return dict(
            patch_size=self.patch_size,
            num_attention_heads=self.heads,
            attention_head_dim=HEAD_DIM,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            text_dim=self.text_dim,
            freq_dim=self.freq_dim,
            ffn_dim=self.ffn_dim,
            num_layers=self.depth,
            cross_attn_norm=self.cross_attn_norm,
            qk_norm="rms_norm_across_heads" if self.qk_norm else None,
            eps=1e-6,
            image_dim=None,
            added_kv_proj_dim=None,
        )

    def describe(self) -> str:
        name = "Wan 2.2 I2V A14B expert" if self.is_a14b else "Wan 2.2 I2V-layout expert (not the A14B size)"
        return f"{name}, {self.depth} blocks, width {self.width}"


def strip_expert_prefix(shapes: Mapping) -> dict:
    return {k.removeprefix(EXPERT_PREFIX): v for k, v in shapes.items()}


def _expert_arch(plain: Mapping[str, tuple[int, ...]]) -> ExpertArch:
    pe = plain["patch_embedding.weight"]  # (width, in_channels, pt, ph, pw)
    width, in_ch, patch = pe[0], pe[1], tuple(pe[2:5])
    head = plain.get("head.head.weight", (0,))
    n_patch = patch[0] * patch[1] * patch[2] if len(patch) == 3 else 1
    return ExpertArch(
        width=width,
        heads=width // HEAD_DIM,
        depth=_count(plain, r"blocks\.(\d+)\."),
        in_channels=in_ch,
        out_channels=head[0] // n_patch if n_patch else 0,
        patch_size=patch,  # type: ignore[arg-type]
        ffn_dim=plain.get("blocks.0.ffn.0.weight", (0,))[0],
        text_dim=plain.get("text_embedding.0.weight", (0, 0))[1],
        freq_dim=plain.get("time_embedding.0.weight", (0, 0))[1],
        cross_attn_norm="blocks.0.norm3.weight" in plain,
        qk_norm="blocks.0.self_attn.norm_q.weight" in plain,
        image_branch=any(k.startswith("img_emb.") or ".k_img." in k for k in plain),
    )


def describe_expert(plain: Mapping) -> str:
    a = _expert_arch(_shapes(plain))
    if any(k.startswith(("vace_blocks.", "vace_patch_embedding")) for k in plain):
        return f"a Wan VACE model ({a.depth} blocks, width {a.width})"
    if any(k.startswith(("motion_encoder.", "face_adapter.")) for k in plain):
        return "a Wan 2.2 Animate model"
    if a.image_branch:
        return (f"Wan 2.1 I2V (it has the CLIP image branch img_emb / k_img; {a.depth} blocks, width {a.width}), "
                "not a Wan 2.2 I2V A14B expert")
    if a.in_channels == 48 or a.width == 3072:
        return f"Wan 2.2 TI2V-5B ({a.in_channels} input channels, width {a.width})"
    if a.in_channels == 16:
        return f"a text-to-video Wan model (16 input channels, {a.depth} blocks, width {a.width}), not an I2V expert"
    if a.in_channels == 36:
        return a.describe()
    return f"a Wan-like transformer with {a.in_channels} input channels (width {a.width}), not a Wan 2.2 I2V expert"


def detect_expert(sd: Mapping, source: str = "the file") -> ExpertArch:
    """The architecture of a Wan 2.2 I2V expert; ModelError naming the file's real kind otherwise."""
    shapes = _shapes(sd)
    plain = strip_expert_prefix(shapes)
    if "patch_embedding.weight" not in plain or not any(k.startswith("blocks.") for k in plain):
        raise ModelError(f"{source} is {what_is_it(shapes)}, not a Wan 2.2 I2V expert "
                         "(diffusion_models/wan2.2_i2v_{high,low}_noise_14B_*.safetensors)")
    a = _expert_arch(plain)
    if a.image_branch or a.in_channels != 36 or a.out_channels != 16 or any(
            k.startswith(("vace_", "motion_encoder.", "face_adapter.")) for k in plain):
        raise ModelError(f"{source} is {describe_expert(plain)}; model.high_noise / model.low_noise need the "
                         "Wan 2.2 I2V A14B experts (wan2.2_i2v_high_noise_14B / low_noise_14B)")
    if a.width % HEAD_DIM or not a.depth or not a.ffn_dim or not a.text_dim or not a.freq_dim:
        raise ModelError(f"{source} looks like a Wan expert but its shapes are inconsistent (width {a.width}, "
                         f"{a.depth} blocks); the file is damaged, re-download it")
    return a


# ---------------------------------------------------------------------------------------- VAE
@dataclass(frozen=True)
class VaeArch:
    base_dim: int
    z_dim: int

    def diffusers_config(self) -> dict:
        # Everything else is AutoencoderKLWan's default, which is the Wan 2.1 VAE (checked by the
        # strict key comparison after conversion).
        return dict(base_dim=self.base_dim, z_dim=self.z_dim)


def detect_vae(sd: Mapping, source: str = "the file") -> VaeArch:
    shapes = _shapes(sd)
    if "encoder.conv1.weight" not in shapes or "decoder.conv1.weight" not in shapes or "conv1.weight" not in shapes:
        raise ModelError(f"{source} is {what_is_it(shapes)}, not the Wan 2.1 VAE (vae/wan_2.1_vae.safetensors)")
    z = shapes["conv1.weight"][0] // 2
    if z == 48:
        raise ModelError(f"{source} is the Wan 2.2 VAE (z_dim 48), made for TI2V-5B; Wan 2.2 I2V A14B uses "
                         "the Wan 2.1 VAE (vae/wan_2.1_vae.safetensors)")
    if z != 16:
        raise ModelError(f"{source} is a Wan-style VAE with z_dim {z}; Wan 2.2 I2V A14B needs the Wan 2.1 VAE "
                         "(z_dim 16, vae/wan_2.1_vae.safetensors)")
    return VaeArch(base_dim=shapes["encoder.conv1.weight"][0], z_dim=z)


# ---------------------------------------------------------------------------------------- text encoder
@dataclass(frozen=True)
class TextArch:
    vocab_size: int
    d_model: int
    d_kv: int
    num_heads: int
    d_ff: int
    num_layers: int
    buckets: int
    gated: bool

    @property
    def is_xxl(self) -> bool:
        return self.d_model == 4096 and self.num_layers == 24 and self.vocab_size == 256384

    def hf_config(self) -> dict:
        return dict(
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            d_kv=self.d_kv,
            num_heads=self.num_heads,
            d_ff=self.d_ff,
            num_layers=self.num_layers,
            relative_attention_num_buckets=self.buckets,
            feed_forward_proj="gated-gelu" if self.gated else "relu",
            layer_norm_epsilon=1e-6,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
            tie_word_embeddings=False,
        )

    def describe(self) -> str:
        name = "UMT5-XXL encoder" if self.is_xxl else "UMT5 encoder (not the XXL size)"
        return f"{name}, {self.num_layers} layers, d_model {self.d_model}, vocab {self.vocab_size}"


def describe_text_encoder(shapes: Mapping) -> str:
    n_bias = _count(shapes, r"encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.")
    vocab = shapes["shared.weight"][0] if "shared.weight" in shapes else None
    if n_bias == 1 and _count(shapes, r"encoder\.block\.(\d+)\.") > 1:
        return f"a T5 encoder (one relative_attention_bias, vocab {vocab}: e.g. t5xxl for Flux/SD3), not UMT5-XXL"
    if any(k.startswith("decoder.") for k in shapes):
        return "a T5/UMT5 with its decoder (a full seq2seq checkpoint)"
    return f"a UMT5-style encoder (vocab {vocab})"


def detect_text_encoder(sd: Mapping, source: str = "the file") -> TextArch:
    shapes = _shapes(sd)
    if "shared.weight" not in shapes and "encoder.embed_tokens.weight" in shapes:
        # some exports keep the embedding only under the encoder's name; it is the same table
        shapes["shared.weight"] = shapes["encoder.embed_tokens.weight"]
    q = "encoder.block.0.layer.0.SelfAttention.q.weight"
    rab = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    if "shared.weight" not in shapes or q not in shapes or rab not in shapes:
        raise ModelError(f"{source} is {what_is_it(shapes)}, not the UMT5-XXL text encoder "
                         "(text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors or umt5_xxl_fp16.safetensors)")
    layers = _count(shapes, r"encoder\.block\.(\d+)\.")
    n_bias = _count(shapes, r"encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.")
    if n_bias != layers:
        raise ModelError(f"{source} is {describe_text_encoder(shapes)}; Wan needs UMT5-XXL "
                         "(text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors)")
    buckets, heads = shapes[rab]
    inner = shapes[q][0]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
    wi = "encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"
    if wi not in shapes or inner % heads:
        raise ModelError(f"{source} looks like a UMT5 encoder but its shapes are inconsistent; re-download it")
    vocab, d_model = shapes["shared.weight"]
    return TextArch(vocab_size=vocab, d_model=d_model, d_kv=inner // heads, num_heads=heads,
                    d_ff=shapes[wi][0], num_layers=layers, buckets=buckets, gated=gated)
