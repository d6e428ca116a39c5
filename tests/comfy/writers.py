"""Writers of tiny files in ComfyUI's own formats (key names, dtypes, quantisation layouts).

The names are the original Wan / Hugging Face T5 names that ComfyUI's files use, written out here
by rule from a diffusers model (the reverse of diffusers' single-file converter), and each writer
also returns the exact float values a correct reader must produce, computed by hand.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import save_file
from transformers import UMT5Config, UMT5EncoderModel

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0

# Small experts with Wan's real head width (128), so heads = width / 128 holds as at full size.
EXPERT_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=36, out_channels=16,
    text_dim=32, freq_dim=256, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
)
VAE_BASE_DIM = 8  # the Wan 2.1 VAE's structure (AutoencoderKLWan defaults), narrow
TEXT_CONFIG = dict(vocab_size=128, d_model=32, d_ff=40, d_kv=8, num_heads=4, num_layers=2,
                   relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0,
                   eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False)


# ------------------------------------------------------------------------------------- original names
_EXPERT_RULES = [  # diffusers -> original Wan, applied in order
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    ("proj_out", "head.head"),
]


def expert_original_name(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    m = re.match(r"blocks\.(\d+)\.scale_shift_table$", key)
    if m:
        return f"blocks.{m.group(1)}.modulation"
    for a, b in _EXPERT_RULES:
        key = key.replace(a, b)
    # diffusers' norm2 is the original cross-attention norm3 (and norm3 would be norm2)
    key = re.sub(r"(blocks\.\d+\.)norm2\.", r"\1norm3.", key)
    return key


def _res(name: str) -> str:
    return (name.replace("norm1.gamma", "residual.0.gamma").replace("conv1.", "residual.2.")
            .replace("norm2.gamma", "residual.3.gamma").replace("conv2.", "residual.6.")
            .replace("conv_shortcut.", "shortcut."))


def vae_original_name(key: str) -> str:
    fixed = {"quant_conv.weight": "conv1.weight", "quant_conv.bias": "conv1.bias",
             "post_quant_conv.weight": "conv2.weight", "post_quant_conv.bias": "conv2.bias"}
    if key in fixed:
        return fixed[key]
    m = re.match(r"(encoder|decoder)\.(.*)$", key)
    side, rest = m.group(1), m.group(2)
    if rest.startswith("conv_in."):
        return f"{side}.conv1.{rest[len('conv_in.'):]}"
    if rest.startswith("norm_out."):
        return f"{side}.head.0.{rest[len('norm_out.'):]}"
    if rest.startswith("conv_out."):
        return f"{side}.head.2.{rest[len('conv_out.'):]}"
    m = re.match(r"mid_block\.resnets\.(\d)\.(.*)$", rest)
    if m:
        return f"{side}.middle.{2 * int(m.group(1))}.{_res(m.group(2))}"
    m = re.match(r"mid_block\.attentions\.0\.(.*)$", rest)
    if m:
        return f"{side}.middle.1.{m.group(1)}"
    m = re.match(r"down_blocks\.(\d+)\.(.*)$", rest)
    if m:
        return f"{side}.downsamples.{m.group(1)}.{_res(m.group(2))}"
    m = re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", rest)
    if m:
        return f"{side}.upsamples.{4 * int(m.group(1)) + int(m.group(2))}.{_res(m.group(3))}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)$", rest)
    if m:
        return f"{side}.upsamples.{4 * int(m.group(1)) + 3}.{m.group(2)}"
    raise AssertionError(f"no original name for {key}")


# ------------------------------------------------------------------------------------- models
def tiny_expert(seed: int) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    m = WanTransformer3DModel(**EXPERT_CONFIG).eval()
    # diffusers initialises some tensors to zero/one; random values make every weight matter
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return m


def tiny_vae(seed: int) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=VAE_BASE_DIM).eval()


def tiny_text_encoder(seed: int) -> UMT5EncoderModel:
    torch.manual_seed(seed)
    return UMT5EncoderModel(UMT5Config(**TEXT_CONFIG)).eval()


def expert_sd(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Original-Wan-named float state dict (no prefix)."""
    return {expert_original_name(k): v.detach().clone() for k, v in model.state_dict().items()}


def vae_sd(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {vae_original_name(k): v.detach().clone() for k, v in model.state_dict().items()}


def text_sd(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # ComfyUI's UMT5 files hold shared.weight once (no encoder.embed_tokens copy)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


# ------------------------------------------------------------------------------------- layouts
def _is_linear(name: str, t: torch.Tensor) -> bool:
    return name.endswith(".weight") and t.ndim == 2 and not name.startswith("shared.")


def quantise(sd: dict[str, torch.Tensor], layout: str, *, prefix: str = "", input_scale_every: int = 3,
             fp8_bias: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(file tensors in `layout`, the exact fp32 values a correct reader returns for each weight).

    Layouts: "fp32", "bf16", "fp16", "fp8_scaled" (scaled_fp8 marker + scale_weight, e4m3 biases,
    some scale_input), "comfy_quant" (weight_scale + comfy_quant JSON per layer, some input_scale).
    """
    out: dict[str, torch.Tensor] = {}
    real: dict[str, torch.Tensor] = {}
    if layout in ("fp32", "bf16", "fp16"):
        dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[layout]
        for k, v in sd.items():
            out[prefix + k] = v.to(dt).contiguous()
            real[k] = out[prefix + k].float()
        return out, real
    assert layout in ("fp8_scaled", "comfy_quant"), layout
    if layout == "fp8_scaled":
        out[prefix + "scaled_fp8"] = torch.empty(0, dtype=E4M3)
    linears = [k for k, v in sd.items() if _is_linear(k, v)]
    for i, k in enumerate(linears):
        layer = k[: -len(".weight")]
        w = sd[k].float()
        scale = (w.abs().amax() / E4M3_MAX).clamp(min=1e-12)
        q = (w / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
        out[prefix + k] = q
        s = scale.reshape(())
        # by hand: the real weight is the e4m3 value times the float32 scale
        real[k] = q.float() * s
        if layout == "fp8_scaled":
            out[prefix + layer + ".scale_weight"] = s.clone()
            if i % input_scale_every == 0:
                out[prefix + layer + ".scale_input"] = torch.tensor(1.0 if i % 2 else 0.5, dtype=torch.float32)
        else:
            out[prefix + layer + ".weight_scale"] = s.clone()
            out[prefix + layer + ".comfy_quant"] = torch.tensor(
                list(json.dumps({"format": "float8_e4m3fn"}).encode("utf-8")), dtype=torch.uint8)
            if i % input_scale_every == 0:
                out[prefix + layer + ".input_scale"] = torch.tensor(0.5, dtype=torch.float32)
        b = layer + ".bias"
        if b in sd and fp8_bias:
            # ComfyUI's own fp8_scaled files store these biases as e4m3; they are NOT scaled
            qb = sd[b].float().clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
            out[prefix + b] = qb
            real[b] = qb.float()
    for k, v in sd.items():
        if k in real:
            continue
        out[prefix + k] = v.to(torch.bfloat16).contiguous()
        real[k] = out[prefix + k].float()
    return out, real


def save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def reference_model(make, real: dict[str, torch.Tensor], to_original) -> torch.nn.Module:
    """A fresh model of the same architecture holding exactly `real` (fp32), mapped by `to_original`."""
    m = make()
    sd = m.state_dict()
    with torch.no_grad():
        for k in sd:
            src = to_original(k)
            sd[k] = real[src].float() if src in real else sd[k]
    m.load_state_dict(sd)
    return m.float().eval()


# ------------------------------------------------------------------------------------- sentencepiece
SPM_TEXT = """a red kite flies over the sea at dawn
the camera slowly pans across a quiet harbour with boats
a woman smiles and turns her head toward the light
waves roll onto the sand while gulls circle overhead
a cat jumps from the table and runs out of the room
snow falls on the mountain village in the evening
an old man reads a newspaper beside a window, rain streaks the glass
two children build a sandcastle; their dog barks and digs next to them
fireworks burst above the river, reflected in the dark water below
the chef flips vegetables in a hot pan, steam rising quickly
a horse gallops through tall golden grass under a cloudy sky
leaves drift down from maple trees along the empty park path
zebras graze quietly; a jeep drives past with excited tourists
""" * 8


def train_spiece(workdir: Path, vocab_size: int = 100) -> bytes:
    """A real sentencepiece model with T5's special ids (pad 0, eos 1, unk 2, no bos)."""
    import sentencepiece

    workdir.mkdir(parents=True, exist_ok=True)
    corpus = workdir / "corpus.txt"
    corpus.write_text(SPM_TEXT, encoding="utf-8")
    prefix = workdir / "spm"
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False,
        minloglevel=2,
    )
    return (prefix.with_suffix(".model")).read_bytes()


def spiece_tensor(proto: bytes) -> torch.Tensor:
    return torch.tensor(list(proto), dtype=torch.uint8)
